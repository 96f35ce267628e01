"""What every ``qfocal`` subcommand shares: the one error type, the one-line argparse errors, and the check for
optional dependencies ("extras").

The convention: a subcommand raises :class:`CommandError` for anything the user can fix; ``qfocal`` prints
``qfocal <cmd>: error: <message>`` on one line and exits 2 for usage errors, 1 for run failures. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

from ._names import LOSSES, loss_name

__all__ = [
    "MAX_SEED",
    "ArgumentParser",
    "CommandError",
    "add_command",
    "device_arg",
    "file_stem_arg",
    "float_arg",
    "int_arg",
    "loss_arg",
    "loss_list_arg",
    "max_threads",
    "missing_extras",
    "report",
    "require",
    "seed_arg",
    "threads_arg",
]

_ParserT = TypeVar("_ParserT", bound=argparse.ArgumentParser)

# Seeds go to numpy's and torch's generators (and are multiplied there): 32 bits, as numpy's legacy seeds.
MAX_SEED = 2**32 - 1


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
    "matplotlib": "lab",
    "numpy": "lab",
    "tqdm": "lab",
    "PIL": "lab",
    "pycocotools": "lab",
    "torchvision": "lab",
    "yaml": "lab",
    "yolov5": "integrations",
    "ultralytics": "integrations",
    "kornia": "dev",
    "mmdet": "mmdet",
    "mmengine": "mmdet",
    "submitit": "cluster",
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


def max_threads() -> int:
    """The most CPU threads a run may ask for: 4x the cores (more only makes threads wait for each other)."""
    return 4 * (os.cpu_count() or 1)


def int_arg(low: int, high: int, *, what: str = "an integer") -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (``"expected an integer in [1, 4096], got '0'"``)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} in [{low}, {high}], got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


def float_arg(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in the interval from ``low`` to ``high`` (open at an end when asked):
    ``nan``, ``inf`` and values like ``1e308`` for a learning rate are refused before anything runs."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"expected a finite number in {interval}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


seed_arg = int_arg(0, MAX_SEED, what="a seed (an integer)")


def threads_arg(low: int = 0) -> Callable[[str], int]:
    """An argparse ``type`` for ``--threads``: ``low`` (0 = auto where allowed) to :func:`max_threads`."""

    def parse(text: str) -> int:
        return int_arg(low, max_threads(), what=f"a thread count (at most 4x the {os.cpu_count()} cores)")(
            text
        )

    parse.__name__ = "thread count"
    return parse


def file_stem_arg(text: str) -> str:
    """An argparse ``type`` for a name that becomes file names inside an output folder: no path separator, no
    ``..``, nothing that could write outside that folder."""
    bad = (
        not text.strip()
        or text in (".", "..")
        or ".." in text
        or "/" in text
        or "\\" in text
        or (os.altsep or "/") in text
        or "\x00" in text
        or len(text) > 200
    )
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected a file name without path separators or '..' (it names files inside the output folder), "
            f"got {text!r}"
        )
    return text


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


def loss_arg(allowed: Iterable[str] = tuple(LOSSES)) -> Callable[[str], str]:
    """An argparse ``type`` taking one loss name or alias (any case) of ``allowed``; returns the canonical name."""

    def loss(text: str) -> str:
        try:
            return loss_name(text, allowed, what="loss")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("loss: ")) from None

    return loss


def loss_list_arg(allowed: Iterable[str] = tuple(LOSSES)) -> Callable[[str], list[str]]:
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` as qfocal prints it: descriptions wrapped to the terminal, indented lines (examples) kept as
    written, and every option's default shown (``(default: X)``) unless its help already says it or it is a
    switch."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            keep = not line.strip() or line.startswith(" ") or line.rstrip().endswith(":")
            lines.append(
                indent + line
                if keep
                else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            )
        return "\n".join(lines)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if (
            text
            and text != argparse.SUPPRESS
            and "default" not in text.lower()
            and "%(default)" not in text
            and not any(action.default is v for v in (None, argparse.SUPPRESS, False, True))
            and action.option_strings
        ):
            default = action.default
            if isinstance(default, (list, tuple)):
                default = ",".join(map(str, default))
            text = f"{text} (default: {str(default).replace('%', '%%')})"
        return text


def add_command(
    subparsers: argparse._SubParsersAction[_ParserT],
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    pass_through: bool = False,
    example: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> _ParserT:
    """Add subcommand ``name`` running ``func(args)``; the parsed namespace keeps its parser (for errors).

    ``help`` is the one line in ``qfocal --help``; ``description`` (default: ``help``) heads ``qfocal NAME --help``;
    ``example``: command lines printed under it. Options show their defaults (:class:`HelpFormatter`).
    """
    kwargs.setdefault("formatter_class", HelpFormatter)
    if kwargs.get("help") and not kwargs.get("description"):
        kwargs["description"] = kwargs["help"][:1].upper() + kwargs["help"][1:] + "."
    if example is not None:
        lines = [example] if isinstance(example, str) else list(example)
        epilog = "example:\n" + "\n".join(f"  {line}" for line in lines)
        kwargs["epilog"] = f"{kwargs['epilog'].rstrip()}\n\n{epilog}" if kwargs.get("epilog") else epilog
    parser = subparsers.add_parser(name, **kwargs)
    parser.set_defaults(func=func, parser=parser, pass_through=pass_through)
    return parser
