"""The training and evaluation harness: FCOS trainer, COCO evaluation, plots, and the focal/QFL/VFL compare.

``qfocal train``, ``qfocal evaluate``, ``qfocal compare`` and ``qfocal demo`` are defined in
:mod:`qfocal.detection.cli`; the library entry points are :func:`train` (built from :func:`train_one_epoch`,
:func:`evaluate` and the checkpoint functions) with :class:`TrainConfig`, :func:`compare`, and
:func:`coco_metrics`. This package needs the ``harness`` extra (torchvision, pycocotools, numpy, Pillow).
"""

from .compare import compare, format_table
from .config import ConfigError, TrainConfig
from .evaluate import METRIC_KEYS, coco_metrics, evaluate
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
    "METRIC_KEYS",
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "TrainConfig",
    "coco_metrics",
    "compare",
    "evaluate",
    "format_table",
    "load_checkpoint",
    "resume_checkpoint",
    "save_checkpoint",
    "train",
    "train_one_epoch",
]
