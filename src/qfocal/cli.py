"""The ``qfocal`` command: one entry point, subcommands registered by the modules that implement them.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)`` which adds its subcommands and sets
``func`` (called with the parsed ``argparse.Namespace``, returning an exit code). Heavy imports (torchvision,
YOLOv5, Ultralytics) happen inside the subcommand, so ``qfocal table`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_COMMAND_MODULES = (
    "qfocal.cli_losses",  # table, plot
    "qfocal.ops.cli",  # bench
    "qfocal.detection.cli",  # data, train, evaluate, compare, demo
    "qfocal.integrations.cli",  # yolov5-train, ultralytics-train
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qfocal",
        description="Quality-aware focal losses for dense object detection: tables, plots, benchmarks, training.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"qfocal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name and name.startswith(exc.name)):  # it exists but an import inside it is missing
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qfocal table | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
