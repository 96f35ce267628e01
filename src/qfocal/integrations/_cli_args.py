"""Command-line options of the YOLOv5 and Ultralytics integrations, importable without either framework
(``qfocal --help`` lists the subcommands without importing them)."""

from __future__ import annotations

import argparse

from .._cli import loss_arg
from .._names import describe_losses

__all__ = ["ULTRALYTICS_LOSSES", "YOLOV5_LOSSES", "add_ultralytics_arguments", "add_yolov5_arguments"]

YOLOV5_LOSSES = ("bce", "focal", "qfl", "vfl")
ULTRALYTICS_LOSSES = ("bce", "qfl", "vfl", "focal")


def _alpha(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def add_yolov5_arguments(parser: argparse.ArgumentParser) -> None:
    """qfocal's options, absent from the namespace unless given; the rest belongs to YOLOv5's train.py."""
    group = parser.add_argument_group("qfocal (merged into the --hyp file)")
    s = argparse.SUPPRESS
    group.add_argument(
        "--obj-loss",
        type=loss_arg(YOLOV5_LOSSES),
        default=s,
        help=f"objectness criterion (hyp obj_loss): {describe_losses(YOLOV5_LOSSES)}",
    )
    group.add_argument(
        "--cls-loss",
        type=loss_arg(YOLOV5_LOSSES),
        default=s,
        help=f"classification criterion (hyp cls_loss): {describe_losses(YOLOV5_LOSSES)}",
    )
    group.add_argument(
        "--fl-gamma", type=float, default=s, help="exponent of focal/qfocal/varifocal (hyp fl_gamma)"
    )
    group.add_argument(
        "--fl-alpha", type=_alpha, default=s, help="alpha of focal/qfocal, or none (hyp fl_alpha)"
    )
    group.add_argument("--qfl-beta", type=float, default=s, help="exponent of qfocal only (hyp qfl_beta)")
    group.add_argument(
        "--vfl-alpha", type=float, default=s, help="weight of varifocal's negatives (hyp vfl_alpha)"
    )
    group.add_argument("--online", action="store_true", help="allow YOLOv5 its downloads and installs")


def add_ultralytics_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, Ultralytics' key=value training arguments, and qfocal's loss options."""
    parser.add_argument(
        "model", nargs="?", default="yolov8n.yaml", help="model YAML or local .pt (yolov8n.yaml)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="Ultralytics training arguments: data=... epochs=... imgsz=...",
    )
    group = parser.add_argument_group("qfocal")
    group.add_argument(
        "--cls-loss",
        type=loss_arg(ULTRALYTICS_LOSSES),
        default="bce",
        help=f"classification criterion: {describe_losses(ULTRALYTICS_LOSSES)}",
    )
    group.add_argument("--beta", type=float, help="qfocal: exponent of |t - p| (2.0)")
    group.add_argument(
        "--alpha", type=_alpha, default=argparse.SUPPRESS, help="the criterion's alpha, or none"
    )
    group.add_argument("--gamma", type=float, help="focal / varifocal: exponent (1.5 / 2.0)")
    group.add_argument(
        "--no-iou-weighted",
        dest="iou_weighted",
        action="store_false",
        default=None,
        help="varifocal: positives weigh 1",
    )
    group.add_argument("--online", action="store_true", help="allow Ultralytics its downloads and checks")
