"""Glue between qfocal's losses and other frameworks, one module per framework, imported on demand.

* :mod:`qfocal.integrations.yolov5`: ``ComputeLoss`` for YOLOv5, ``patch_train`` / ``train`` around YOLOv5's
  own ``train.py``; command ``qfocal yolov5-train``.
* :mod:`qfocal.integrations.ultralytics`: ``DetectionLoss`` (a ``v8DetectionLoss``), ``QFocalDetectionTrainer``
  and ``train``; command ``qfocal ultralytics-train``.
* :mod:`qfocal.integrations.balance`: the loss balance of those two (a criterion other than BCE gets BCE's gradient
  norm by default), and tools to measure each loss term and its gradient, log them along training and plot them.
* :mod:`qfocal.integrations.torchvision`: torchvision's detection heads.
* :mod:`qfocal.integrations.mmdet`: mmdetection's ``QualityFocalLoss``, ``VarifocalLoss``,
  ``DistributionFocalLoss`` and ``FocalLoss``, registered as ``qfocal.<name>`` for mmdetection configs.

Importing this package imports none of those frameworks. :func:`offline` keeps YOLOv5 and Ultralytics from
downloading or installing anything; :func:`offline_import` is for importing them without Ultralytics' import-time
network probe; :func:`write_toy_dataset` (the embedded dataset generator at a small size,
:func:`qfocal.data.synth.write_toy_dataset`) writes a small YOLO-format dataset to try them on.
"""

from ._offline import OfflineError, offline, offline_import

__all__ = ["OfflineError", "offline", "offline_import", "write_toy_dataset"]


def __getattr__(name: str):
    if name == "write_toy_dataset":  # needs numpy and Pillow (the harness extra): imported on first use
        from ..data.synth import write_toy_dataset

        return write_toy_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
