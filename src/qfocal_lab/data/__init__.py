"""Datasets for the training harness: the embedded synthetic generator and the COCO / YOLO readers.

:func:`generate_dataset` writes the embedded dataset; :func:`read_coco` and :func:`read_yolo` read user data and
raise :class:`AnnotationError` on bad items (or skip and count them with ``skip_bad=True``); :func:`load_split`
finds either layout on disk; :class:`DetectionDataset` serves a split to torch.
"""

from .coco import read_coco
from .dataset import DetectionDataset, collate, load_split
from .records import AnnotationError, DetectionData, ImageRecord, SkipReport
from .synth import CLASS_NAMES, generate_dataset, write_toy_dataset
from .yolo import read_yolo, read_yolo_yaml

__all__ = [
    "CLASS_NAMES",
    "AnnotationError",
    "DetectionData",
    "DetectionDataset",
    "ImageRecord",
    "SkipReport",
    "collate",
    "generate_dataset",
    "load_split",
    "read_coco",
    "read_yolo",
    "read_yolo_yaml",
    "write_toy_dataset",
]
