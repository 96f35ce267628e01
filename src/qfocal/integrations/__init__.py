"""Glue between qfocal's losses and other frameworks, one module per framework, imported on demand.

* :mod:`qfocal.integrations.yolov5`: ``ComputeLoss`` for YOLOv5, ``patch_train`` / ``train`` around YOLOv5's
  own ``train.py``; command ``qfocal yolov5-train``.
* :mod:`qfocal.integrations.ultralytics`: ``DetectionLoss`` (a ``v8DetectionLoss``), ``QFocalDetectionTrainer``
  and ``train``; command ``qfocal ultralytics-train``.
* :mod:`qfocal.integrations.torchvision`: torchvision's detection heads.
* :mod:`qfocal.integrations.mmdet`: mmdetection's ``QualityFocalLoss``, ``VarifocalLoss``,
  ``DistributionFocalLoss`` and ``FocalLoss``, registered as ``qfocal.<name>`` for mmdetection configs.

Importing this package imports none of those frameworks. :func:`offline` keeps YOLOv5 and Ultralytics from
downloading or installing anything; :func:`offline_import` is for importing them without Ultralytics' import-time
network probe; :func:`write_toy_dataset` writes a tiny YOLO-format dataset to try them on.
"""

from ._offline import OfflineError, offline, offline_import
from ._toydata import write_toy_dataset

__all__ = ["OfflineError", "offline", "offline_import", "write_toy_dataset"]
