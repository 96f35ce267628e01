"""Fused single-pass kernels for the focal-family losses: loss and ``d loss / d logits`` from one read.

:func:`select` is what :func:`qfocal.set_backend` reaches: it returns the fused callable to run for given
logits, or None for the reference math of :mod:`qfocal.functional`. Implementations, by exact name:

- ``"triton"``: a Triton kernel (CUDA tensors; CPU tensors too under ``TRITON_INTERPRET=1``);
- ``"inductor"``: the fused math compiled by ``torch.compile`` (CPU or CUDA), eager if compilation fails;
- ``"eager"``: the same fused math in plain PyTorch, uncompiled (a baseline; no faster than the reference).

``"fused"`` picks Triton on CUDA and Inductor elsewhere. ``"auto"`` (the default) picks Triton on CUDA and, on
the CPU, Inductor only for inputs of at least ``QFOCAL_INDUCTOR_MIN_NUMEL`` elements (default ``2**18``), where
the one-off compilation (seconds) pays for itself; smaller inputs and other devices use the reference.

All of them go through the ``qfocal::fused_loss`` custom op (:mod:`qfocal.ops._op`), so they compose with
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from torch import Tensor

from ._inductor import inductor_failed
from ._op import fused_loss, fused_loss_op

__all__ = ["available_impls", "fused_loss", "fused_loss_op", "inductor_min_numel", "select"]

_NAMES = ("auto", "fused", "triton", "inductor", "eager")
_DEFAULT_MIN_NUMEL = 1 << 18


def inductor_min_numel() -> int:
    """Smallest ``logits.numel()`` for which ``"auto"`` uses Inductor on the CPU (``QFOCAL_INDUCTOR_MIN_NUMEL``)."""
    raw = os.environ.get("QFOCAL_INDUCTOR_MIN_NUMEL")
    if raw is None or not raw.strip():
        return _DEFAULT_MIN_NUMEL
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"QFOCAL_INDUCTOR_MIN_NUMEL: expected an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"QFOCAL_INDUCTOR_MIN_NUMEL: expected a value >= 0, got {value}")
    return value


@functools.cache
def _triton_importable() -> bool:
    try:
        from . import _triton  # noqa: F401
    except Exception:  # triton missing or broken: the other implementations remain
        return False
    return True


def _triton_usable(logits: Tensor) -> bool:
    if logits.device.type == "cuda":
        return _triton_importable()
    if logits.device.type == "cpu":
        from_env = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
        return from_env and _triton_importable()
    return False


def available_impls(logits: Tensor) -> tuple[str, ...]:
    """The fused implementations that can run on ``logits``'s device in this process."""
    impls = ["eager"]
    if logits.device.type in ("cpu", "cuda"):
        impls.append("inductor")
    if _triton_usable(logits):
        impls.append("triton")
    return tuple(impls)


def select(name: str, logits: Tensor) -> Callable | None:
    """The fused loss callable for backend ``name`` and these logits, or None to run the reference math.

    Raises ValueError for an unknown name, and for ``"triton"`` where Triton cannot run on ``logits``.
    """
    if name not in _NAMES:
        raise ValueError(f"backend: expected one of {_NAMES} (or 'reference'), got {name!r}")
    device = logits.device.type
    if name == "auto":
        if device == "cuda" and _triton_usable(logits):
            impl = "triton"
        elif device == "cpu" and logits.numel() >= inductor_min_numel() and inductor_failed() is None:
            impl = "inductor"
        else:
            return None
    elif name == "fused":
        if device == "cuda" and _triton_usable(logits):
            impl = "triton"
        elif device in ("cpu", "cuda"):
            impl = "inductor"
        else:
            impl = "eager"
    elif name == "triton":
        if not _triton_usable(logits):
            raise ValueError(
                f"backend 'triton': expected CUDA logits with triton installed (or TRITON_INTERPRET=1 for CPU "
                f"tensors), got logits on {logits.device}"
                + ("" if _triton_importable() else " and triton not importable")
            )
        impl = "triton"
    elif name == "inductor":
        if device not in ("cpu", "cuda"):
            raise ValueError(f"backend 'inductor': expected logits on cpu or cuda, got {logits.device}")
        impl = "inductor"
    else:
        impl = "eager"
    return functools.partial(fused_loss, impl=impl)
