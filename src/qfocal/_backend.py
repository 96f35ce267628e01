"""Which implementation the public losses run: the plain reference math or a fused single-pass kernel.

``qfocal.set_backend(name)`` or the environment variable ``QFOCAL_BACKEND`` choose:

- ``"auto"`` (default): the fused kernel wherever one is available for the input's device, else the reference;
- ``"reference"``: always the plain PyTorch math of :mod:`qfocal._reference`;
- ``"fused"``: the fused kernel, an error where none is available;
- ``"triton"`` / ``"inductor"`` / ``"eager"``: one fused implementation by exact name (see :mod:`qfocal.ops`).

Names are case-insensitive (:mod:`qfocal._names` holds them).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

from torch import Tensor

from ._checks import _check_in_unit_interval, value_checks_enabled
from ._names import BACKENDS, backend_name
from ._reference import LossSpec, LossTensors, reference_loss

if TYPE_CHECKING:
    from typing_extensions import Unpack  # a dependency of torch; typing has it from Python 3.11

__all__ = ["BACKENDS", "backend", "fused_impl", "get_backend", "run_loss", "set_backend"]

_backend = "auto"

_validate = backend_name


def set_backend(name: str) -> str:
    """Select the implementation behind the public losses for the whole process; returns the previous one.

    Example:
        >>> import qfocal
        >>> previous = qfocal.set_backend("reference")
        >>> _ = qfocal.set_backend(previous)
    """
    global _backend
    previous, _backend = _backend, _validate(name)
    return previous


def get_backend() -> str:
    """The backend chosen by :func:`set_backend` or ``QFOCAL_BACKEND`` (default ``"auto"``)."""
    env = os.environ.get("QFOCAL_BACKEND")
    if env and _backend == "auto":
        return _validate(env, what="QFOCAL_BACKEND")
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    previous = set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def fused_impl(logits: Tensor) -> Callable[..., Tensor] | None:
    """The fused loss entry point to use for ``logits``, or None for the reference math."""
    name = get_backend()
    if name == "reference":
        return None
    try:
        from .ops import select
    except ImportError:  # ops not built into this install
        if name == "auto":
            return None
        raise
    return select(name, logits)


def run_loss(
    spec: LossSpec, logits: Tensor, *, check_target: bool = False, **tensors: Unpack[LossTensors]
) -> Tensor:
    """Compute ``spec`` on validated inputs with the selected backend (``tensors``: those of
    :func:`qfocal._reference.reference_loss`: target or labels/scores, pos_weight, weight, avg_factor).

    ``check_target``: the dense target's value check is left to this call (the fused op does it in its own loop
    where it can); it runs where :func:`qfocal.value_checks_enabled` says, as it would in the caller."""
    check = None
    if check_target and tensors.get("target") is not None and value_checks_enabled():
        check = functools.partial(_check_in_unit_interval, "target")
    fused = fused_impl(logits)
    if fused is not None:
        return fused(spec, logits, check_target=check, **tensors)
    if check is not None:
        check(cast(Tensor, tensors["target"]))
    return reference_loss(spec, logits, **tensors)
