"""The training and evaluation harness: FCOS trainer, COCO evaluation, plots, and the focal/QFL/VFL compare.

``qfocal train``, ``qfocal evaluate``, ``qfocal compare`` and ``qfocal demo`` are defined in
:mod:`qfocal_lab.detection.cli`; the library entry points are :func:`train` (built from :func:`train_one_epoch`,
:func:`evaluate` and the checkpoint functions) with :class:`TrainConfig`, :func:`compare`,
:func:`compare_framework` (the same compare through YOLOv5's or Ultralytics' own trainer, :mod:`.frameworks`) and
:func:`coco_metrics`; :mod:`.quality` has the score-IoU diagnostics and :mod:`.stats` the paired statistics over
seeds that compare reports. This package needs the ``harness`` extra (torchvision, pycocotools, numpy, Pillow).
"""

from .compare import COMPARE_KEYS, compare, format_deltas, format_table
from .config import ConfigError, TrainConfig
from .evaluate import METRIC_KEYS, QUALITY_KEYS, coco_metrics, evaluate
from .frameworks import compare_framework
from .quality import score_iou_metrics, score_iou_pairs
from .stats import describe_delta, paired_deltas
from .train import (
    CheckpointError,
    NonFiniteLossError,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    train,
    train_one_epoch,
)

__all__ = [
    "COMPARE_KEYS",
    "METRIC_KEYS",
    "QUALITY_KEYS",
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "TrainConfig",
    "coco_metrics",
    "compare",
    "compare_framework",
    "describe_delta",
    "evaluate",
    "format_deltas",
    "format_table",
    "load_checkpoint",
    "paired_deltas",
    "resume_checkpoint",
    "save_checkpoint",
    "score_iou_metrics",
    "score_iou_pairs",
    "train",
    "train_one_epoch",
]
