"""The training and evaluation harness: FCOS trainer, COCO evaluation, plots, and the focal/QFL/VFL compare.

``qfocal train``, ``qfocal evaluate``, ``qfocal compare`` and ``qfocal demo`` are defined in
:mod:`qfocal.detection.cli`; the library entry points are :func:`train` with :class:`TrainConfig`,
:func:`compare`, and :func:`coco_metrics`.
"""

from .compare import compare, format_table
from .evaluate import METRIC_KEYS, coco_metrics, evaluate
from .train import NonFiniteLossError, TrainConfig, load_checkpoint, train

__all__ = [
    "METRIC_KEYS",
    "NonFiniteLossError",
    "TrainConfig",
    "coco_metrics",
    "compare",
    "evaluate",
    "format_table",
    "load_checkpoint",
    "train",
]
