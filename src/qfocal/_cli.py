"""What every ``qfocal`` subcommand shares: the one error type, the one-line argparse errors, and the check for
optional dependencies ("extras").

The convention: a subcommand raises :class:`CommandError` for anything the user can fix; ``qfocal`` prints
``qfocal <cmd>: error: <message>`` on one line and exits 2 for usage errors, 1 for run failures. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import NoReturn

from ._names import LOSSES, loss_name

__all__ = ["ArgumentParser", "CommandError", "add_command", "loss_arg", "loss_list_arg", "report", "require"]


class CommandError(Exception):
    """A failure the user can fix. ``usage=True``: a bad argument (exit 2); otherwise the run failed (exit 1)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage

    @property
    def exit_code(self) -> int:
        return 2 if self.usage else 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``PROG: error: MESSAGE (see PROG --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The extra that brings each optional top-level module.
_EXTRAS = {
    "matplotlib": "harness",
    "numpy": "harness",
    "tqdm": "harness",
    "PIL": "harness",
    "pycocotools": "harness",
    "torchvision": "harness",
    "yaml": "harness",
    "yolov5": "integrations",
    "ultralytics": "integrations",
    "kornia": "dev",
    "mmdet": "mmdet",
    "mmengine": "mmdet",
}


def missing_extras(*modules: str) -> str | None:
    """``"needs X, Y: pip install "qfocal[extra]""`` for the ``modules`` that cannot be imported, or None."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    extras = sorted({_EXTRAS.get(m, "integrations") for m in missing})
    return f"needs {', '.join(missing)}: pip install " + " ".join(f'"qfocal[{e}]"' for e in extras)


def require(*modules: str, what: str) -> None:
    """Raise :class:`CommandError` naming the extra to install if any of ``modules`` cannot be imported."""
    message = missing_extras(*modules)
    if message:
        raise CommandError(f"{what} {message}")


def device_arg(text: str) -> str:
    """An argparse ``type`` for ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and a device this machine
    has (checked before any expensive work)."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but this machine has no CUDA GPU")
    return text


def report(prog: str, exc: CommandError) -> int:
    """Print ``exc`` as ``PROG: error: ...`` on stderr; return its exit code."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return exc.exit_code


def loss_arg(allowed=tuple(LOSSES)):
    """An argparse ``type`` taking one loss name or alias (any case) of ``allowed``; returns the canonical name."""

    def loss(text: str) -> str:
        try:
            return loss_name(text, allowed, what="loss")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("loss: ")) from None

    return loss


def loss_list_arg(allowed=tuple(LOSSES)):
    """An argparse ``type`` taking comma-separated loss names; refuses repeats (they are not independent runs)."""
    one = loss_arg(allowed)

    def losses(text: str) -> list[str]:
        names = [one(s) for s in text.split(",") if s.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected comma-separated loss names, got {text!r}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(f"expected each loss once, got {', '.join(repeated)} repeated")
        return names

    return losses


def add_command(
    subparsers, name: str, func, *, pass_through: bool = False, **kwargs
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``func(args)``; the parsed namespace keeps its parser (for errors)."""
    parser = subparsers.add_parser(name, **kwargs)
    parser.set_defaults(func=func, parser=parser, pass_through=pass_through)
    return parser
