"""Glue between qfocal's losses and other frameworks, one module per framework, imported on demand.

* :mod:`qfocal.integrations.yolov5`: ``ComputeLoss`` for YOLOv5, ``patch_train`` / ``train`` around YOLOv5's
  own ``train.py``; command ``qfocal yolov5-train``.
* :mod:`qfocal.integrations.ultralytics`: ``DetectionLoss`` (a ``v8DetectionLoss``), ``QFocalDetectionTrainer``
  and ``train``; command ``qfocal ultralytics-train``.
* :mod:`qfocal.integrations.balance`: the loss balance of those two (a criterion other than BCE gets BCE's gradient
  norm by default).
* :mod:`qfocal.integrations.torchvision`: torchvision's detection heads.
* :mod:`qfocal.integrations.mmdet`: mmdetection's ``QualityFocalLoss``, ``VarifocalLoss``,
  ``DistributionFocalLoss`` and ``FocalLoss``, registered as ``qfocal.<name>`` for mmdetection configs.

Importing this package imports none of those frameworks. :func:`offline` keeps YOLOv5 and Ultralytics from
downloading or installing anything; :func:`offline_import` is for importing them without Ultralytics' import-time
network probe. A small YOLO-format dataset to try them on: the lab's
:func:`qfocal_lab.data.write_toy_dataset`.
"""

from ._offline import OfflineError, offline, offline_import

__all__ = ["OfflineError", "offline", "offline_import"]
