"""Command-line options of the YOLOv5 and Ultralytics integrations, importable without either framework
(``qfocal --help`` lists the subcommands without importing them)."""

from __future__ import annotations

import argparse

from .._cli import float_arg, loss_arg
from .._names import describe_losses, losses_for

__all__ = [
    "ULTRALYTICS_LOSSES",
    "YOLOV5_LOSSES",
    "add_ultralytics_arguments",
    "add_yolov5_arguments",
    "gain_arg",
]

YOLOV5_LOSSES = losses_for("yolov5")
ULTRALYTICS_LOSSES = losses_for("ultralytics")


_fraction = float_arg(0.0, 1.0)
_exponent = float_arg(0.0, 100.0)


def _alpha(text: str) -> float | None:
    """``none`` or a weight in [0, 1]."""
    return None if text.strip().lower() in ("none", "null") else _fraction(text)


def _gain(text: str) -> str | float:
    """``auto`` or a number >= 0 (qfocal.integrations.balance.check_gain, restated: this module imports no torch)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}") from None
    if not (0 <= value <= 1e6):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a finite number in [0, 1e6], got {text!r}")
    return value


gain_arg = _gain

_GAIN_HELP = (
    "balance of the {term} term: auto (default: {loss} gets BCE's gradient norm on every batch; bce stays "
    "untouched) or a fixed multiplier, 1 = unbalanced"
)


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
        "--obj-gain",
        type=_gain,
        default=s,
        help=_GAIN_HELP.format(term="objectness", loss="the --obj-loss") + " (hyp obj_gain)",
    )
    group.add_argument(
        "--cls-gain",
        type=_gain,
        default=s,
        help=_GAIN_HELP.format(term="classification", loss="the --cls-loss") + " (hyp cls_gain)",
    )
    group.add_argument(
        "--fl-gamma",
        type=_exponent,
        default=s,
        help="exponent of focal (1.5), and of qfl/vfl unless --qfl-beta/--vfl-gamma (hyp fl_gamma)",
    )
    group.add_argument(
        "--fl-alpha",
        type=_alpha,
        default=s,
        help="alpha of focal (0.25), and of qfl unless --qfl-alpha; or none (hyp fl_alpha)",
    )
    group.add_argument(
        "--qfl-beta", type=_exponent, default=s, help="exponent of qfl only (2.0; hyp qfl_beta)"
    )
    group.add_argument(
        "--qfl-alpha", type=_alpha, default=s, help="alpha of qfl only, or none (none; hyp qfl_alpha)"
    )
    group.add_argument(
        "--vfl-gamma", type=_exponent, default=s, help="exponent of vfl's negatives only (2.0; hyp vfl_gamma)"
    )
    group.add_argument(
        "--vfl-alpha", type=_exponent, default=s, help="weight of vfl's negatives (0.75; hyp vfl_alpha)"
    )
    group.add_argument("--online", action="store_true", help="allow YOLOv5 its downloads and installs")


def add_ultralytics_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, Ultralytics' key=value training arguments, and qfocal's loss options."""
    parser.add_argument(
        "model", nargs="?", default=None, help="model YAML or local .pt (yolov8n.yaml); or model=..."
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
        default=None,
        help=f"classification criterion (or cls_loss=...; default bce): {describe_losses(ULTRALYTICS_LOSSES)}",
    )
    group.add_argument(
        "--cls-gain",
        type=_gain,
        default=None,
        help=_GAIN_HELP.format(term="classification", loss="the --cls-loss") + " (or cls_gain=...)",
    )
    group.add_argument("--beta", type=_exponent, help="qfocal: exponent of |t - p| (2.0)")
    group.add_argument(
        "--alpha", type=_alpha, default=argparse.SUPPRESS, help="the criterion's alpha, or none"
    )
    group.add_argument("--gamma", type=_exponent, help="focal / varifocal: exponent (1.5 / 2.0)")
    group.add_argument(
        "--no-iou-weighted",
        dest="iou_weighted",
        action="store_false",
        default=None,
        help="varifocal: positives weigh 1",
    )
    group.add_argument("--online", action="store_true", help="allow Ultralytics its downloads and checks")
