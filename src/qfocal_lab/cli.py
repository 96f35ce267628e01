"""The lab's subcommands of ``qfocal``, registered through the entry-point group ``qfocal.commands``.

Registration imports only the standard library and :mod:`qfocal.cli`: without the ``lab`` extra the commands are
still listed, and each names what to install.
"""

from __future__ import annotations

import argparse
import importlib

from qfocal.cli import missing_extras, register_missing

__all__ = ["register"]

# module: (the modules it needs beyond torch, the commands it registers)
_COMMAND_MODULES = {
    "qfocal_lab.bench.cli": ((), ("bench",)),
    "qfocal_lab.detection.cli": (
        ("numpy", "PIL", "torchvision", "pycocotools"),
        ("data", "train", "evaluate", "compare", "pretrain", "demo"),
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the lab's commands to the ``qfocal`` command."""
    for name, (needs, commands) in _COMMAND_MODULES.items():
        message = missing_extras(*needs)
        if message:
            register_missing(subparsers, commands, message)
        else:
            importlib.import_module(name).register(subparsers)
