"""The ``qfocal`` command: one entry point, subcommands registered by the modules that implement them.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommands with ``func``
(called with the parsed ``argparse.Namespace``, returning an exit code). Registration imports only the standard
library and torch, so ``qfocal --help`` works on a core install; heavy imports (torchvision, YOLOv5, Ultralytics,
matplotlib) happen inside the subcommand, which names the extra to install when one is missing.

Errors follow one convention (:mod:`qfocal._cli`): ``qfocal <cmd>: error: <message>`` on one line, exit 2 for a
bad argument and 1 for a run that failed. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from ._cli import ArgumentParser, CommandError, add_command, missing_extras, report

# module: (the modules it needs beyond torch, the commands it registers); the extra that brings them is named
# by qfocal._cli.missing_extras
_COMMAND_MODULES = {
    "qfocal.cli_losses": ((), ("table", "plot")),
    "qfocal.bench.cli": ((), ("bench",)),
    "qfocal.detection.cli": (
        ("numpy", "PIL", "torchvision", "pycocotools"),
        ("data", "train", "evaluate", "compare", "pretrain", "demo"),
    ),
    "qfocal.integrations.cli": ((), ("yolov5-train", "ultralytics-train")),
}


def _register_missing(sub, commands: tuple[str, ...], message: str) -> None:
    """Commands whose extra is not installed: listed, and each says what to install."""

    def fail(args: argparse.Namespace) -> int:
        raise CommandError(message)

    for name in commands:
        add_command(sub, name, fail, pass_through=True, add_help=False, help=f"({message})")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="qfocal",
        description="Quality-aware focal losses for dense object detection: tables, plots, benchmarks, training.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"qfocal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (needs, commands) in _COMMAND_MODULES.items():
        message = missing_extras(*needs)
        if message:
            _register_missing(sub, commands, message)
        else:
            importlib.import_module(name).register(sub)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a ``qfocal`` command line. A subcommand registered with ``pass_through=True`` receives the arguments
    it does not define in ``framework_args`` (YOLOv5's and Ultralytics' own); elsewhere they are errors."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command_parser = getattr(args, "parser", parser)
    if extras and not getattr(args, "pass_through", False):
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    args.framework_args = [*getattr(args, "framework_args", []), *extras]
    if not getattr(args, "func", None):
        args.parser = parser
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The ``qfocal`` command. A Ctrl-C anywhere, the imports of the subcommands included, prints one line
    (``interrupted``) and exits 130; a training run keeps its last checkpoint."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("interrupted", file=sys.stderr, flush=True)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if not getattr(args, "func", None):
        args.parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        if exc.usage:
            args.parser.error(str(exc))
        return report(args.parser.prog, exc)
    except BrokenPipeError:  # `qfocal table | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
