"""``qfocal yolov5-train`` and ``qfocal ultralytics-train``: train through each framework's own trainer with
qfocal's losses, offline. YOLOv5 and Ultralytics are imported only when one of these commands runs."""

from __future__ import annotations

import argparse

from .._cli import ArgumentParser, CommandError, add_command

__all__ = ["register"]

_YOLOV5_EPILOG = """\
Every other argument is YOLOv5's train.py's, passed through unchanged (see `python -m yolov5.train --help`).
Example (a toy dataset: python -c "from qfocal_lab.data import write_toy_dataset as w; w('toy')"):
  qfocal yolov5-train --obj-loss qfocal --data toy/data.yaml --cfg yolov5n.yaml --img 64 --epochs 1 --batch-size 4
"""

_ULTRALYTICS_EPILOG = """\
Ultralytics' training arguments go as key=value, as with the `yolo` command.
Example:
  qfocal ultralytics-train yolov8n.yaml data=toy/data.yaml epochs=1 imgsz=64 batch=4 --cls-loss qfocal
"""


def _yolov5_train(args: argparse.Namespace) -> int:
    from . import yolov5

    return yolov5.run_command(args, args.framework_args)


def _ultralytics_train(args: argparse.Namespace) -> int:
    # key=value arguments may come before or after qfocal's --flags; anything else is not Ultralytics' form
    wrong = [a for a in args.framework_args if a.startswith("-") or "=" not in a]
    if wrong:
        raise CommandError(
            f"unrecognized arguments: {' '.join(wrong)} (Ultralytics' training arguments go as key=value)",
            usage=True,
        )
    args.overrides = [*args.overrides, *args.framework_args]
    from . import ultralytics

    return ultralytics.run_command(args)


def register(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add ``yolov5-train`` and ``ultralytics-train`` to the ``qfocal`` command."""
    # Argument definitions live beside the code they drive; importing them must not import the frameworks.
    from ._cli_args import add_ultralytics_arguments, add_yolov5_arguments

    p = add_command(
        subparsers,
        "yolov5-train",
        _yolov5_train,
        pass_through=True,
        help="train YOLOv5 (its own train.py) with qfocal's objectness/classification losses",
        description="Train with YOLOv5's train.py and qfocal's ComputeLoss, offline, from scratch unless --weights.",
        epilog=_YOLOV5_EPILOG,
        allow_abbrev=False,
    )
    add_yolov5_arguments(p)

    p = add_command(
        subparsers,
        "ultralytics-train",
        _ultralytics_train,
        pass_through=True,
        help="train an Ultralytics YOLO detector with qfocal's classification loss",
        description="Train with Ultralytics' DetectionTrainer and qfocal's DetectionLoss, offline.",
        epilog=_ULTRALYTICS_EPILOG,
        allow_abbrev=False,
    )
    add_ultralytics_arguments(p)
