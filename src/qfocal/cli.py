"""The ``qfocal`` command: one entry point, subcommands registered by the modules that implement them.

The library's own commands (``table``, ``plot``, ``yolov5-train``, ``ultralytics-train``) are listed in
``_COMMAND_MODULES``; other packages add theirs through the entry-point group ``qfocal.commands`` (the lab,
:mod:`qfocal_lab`, registers ``data``, ``train``, ``evaluate``, ``compare``, ``pretrain``, ``demo`` and ``bench``
that way). Each registers with ``register(subparsers)``, adding subcommands with ``func`` (called with the parsed
``argparse.Namespace``, returning an exit code). Registration imports only the standard library and torch, so
``qfocal --help`` works on a core install; heavy imports (torchvision, YOLOv5, Ultralytics, matplotlib) happen
inside the subcommand, which names the extra to install when one is missing.

Errors follow one convention: ``qfocal <cmd>: error: <message>`` on one line, exit 2 for a bad argument and 1 for
a run that failed. Other exceptions are bugs and keep their traceback. The helpers of that convention
(:class:`CommandError`, :func:`add_command`, the bounded argparse types) are public here, for the commands of
other packages.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from ._cli import (
    MAX_SEED,
    ArgumentParser,
    CommandError,
    add_command,
    device_arg,
    file_stem_arg,
    float_arg,
    int_arg,
    loss_arg,
    loss_list_arg,
    max_threads,
    missing_extras,
    report,
    require,
    seed_arg,
    threads_arg,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "MAX_SEED",
    "ArgumentParser",
    "CommandError",
    "add_command",
    "build_parser",
    "device_arg",
    "file_stem_arg",
    "float_arg",
    "int_arg",
    "loss_arg",
    "loss_list_arg",
    "main",
    "max_threads",
    "missing_extras",
    "parse_args",
    "register_missing",
    "report",
    "require",
    "seed_arg",
    "threads_arg",
]

# The entry-point group through which other packages add subcommands: ``name = "package.module:register"``.
ENTRY_POINT_GROUP = "qfocal.commands"

# module: (the modules it needs beyond torch, the commands it registers); the extra that brings them is named
# by qfocal._cli.missing_extras
_COMMAND_MODULES = {
    "qfocal.cli_losses": ((), ("table", "plot")),
    "qfocal.integrations.cli": ((), ("yolov5-train", "ultralytics-train")),
}


def register_missing(
    sub: argparse._SubParsersAction[ArgumentParser], commands: tuple[str, ...], message: str
) -> None:
    """Commands whose extra is not installed: listed in ``--help``, and each says what to install."""

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
            register_missing(sub, commands, message)
        else:
            importlib.import_module(name).register(sub)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
        except (
            ImportError
        ) as exc:  # a plugin that cannot import: its commands are missing, qfocal still works
            print(f"qfocal: warning: commands of {entry.value} not loaded ({exc})", file=sys.stderr)
            continue
        register(sub)
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
