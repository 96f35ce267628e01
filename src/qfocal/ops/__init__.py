"""Fused single-pass kernels for the focal-family losses: loss and ``d loss / d logits`` from one read.

:func:`select` is what :func:`qfocal.set_backend` reaches: it returns the fused callable to run for given
logits, or None for the reference math of :mod:`qfocal._reference`. This package builds on
:mod:`qfocal._reference` and never imports :mod:`qfocal.functional`. Implementations, by exact name:

- ``"triton"``: a Triton kernel (CUDA tensors; CPU tensors too under ``TRITON_INTERPRET=1``);
- ``"inductor"``: the fused math compiled by ``torch.compile`` (CPU or CUDA), eager if compilation fails;
- ``"eager"``: the same fused math in plain PyTorch, uncompiled (a baseline; no faster than the reference).

``"fused"`` picks Triton on CUDA and Inductor elsewhere. ``"auto"`` (the default) picks Triton on CUDA and, on
the CPU, Inductor only where the one-off compilation (seconds) pays for itself: for inputs of at least
``QFOCAL_INDUCTOR_MIN_NUMEL`` elements (default ``2**18``), once ``QFOCAL_INDUCTOR_WARMUP`` such calls (default
16) have run on the reference, so that a short script or test does not pay a compilation a training loop
amortises. Under ``torch.compile`` there is no warm-up. Smaller inputs and other devices use the reference.

All of them go through the ``qfocal::fused_loss`` custom op (:mod:`qfocal.ops._op`), so they compose with
``torch.compile(fullgraph=True)``. Inside :func:`capture_grad_norms` they run ``qfocal::fused_loss_norms``
instead, which also returns the squared gradient norms of the loss and of BCE from the same pass (the ``"auto"``
gain of :mod:`qfocal.integrations.balance`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import Tensor

from .._names import BACKENDS, backend_name
from ._inductor import eager_fallbacks, inductor_failed
from ._op import GradNorms, capture_grad_norms, fused_loss, fused_loss_norms_op, fused_loss_op

__all__ = [
    "GradNorms",
    "available_impls",
    "capture_grad_norms",
    "eager_fallbacks",
    "fused_loss",
    "fused_loss_norms_op",
    "fused_loss_op",
    "inductor_failed",
    "inductor_min_numel",
    "inductor_warmup",
    "select",
]

_NAMES = tuple(n for n in BACKENDS if n != "reference")
_DEFAULT_MIN_NUMEL = 1 << 18
_DEFAULT_WARMUP = 16
_large_calls = 0  # CPU calls of "auto" at or above the size threshold so far


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: expected a value >= 0, got {value}")
    return value


def inductor_min_numel() -> int:
    """Smallest ``logits.numel()`` for which ``"auto"`` uses Inductor on the CPU (``QFOCAL_INDUCTOR_MIN_NUMEL``)."""
    return _env_int("QFOCAL_INDUCTOR_MIN_NUMEL", _DEFAULT_MIN_NUMEL)


def inductor_warmup() -> int:
    """Large CPU calls ``"auto"`` runs on the reference before compiling (``QFOCAL_INDUCTOR_WARMUP``)."""
    return _env_int("QFOCAL_INDUCTOR_WARMUP", _DEFAULT_WARMUP)


def _auto_cpu_uses_inductor(logits: Tensor) -> bool:
    global _large_calls
    if logits.numel() < inductor_min_numel() or inductor_failed() is not None:
        return False
    if torch.compiler.is_compiling():  # the caller compiles anyway: no counter to guard on
        return True
    if _large_calls < inductor_warmup():
        _large_calls += 1
        return False
    return True


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


def select(name: str, logits: Tensor) -> Callable[..., Tensor] | None:
    """The fused loss callable for backend ``name`` and these logits, or None to run the reference math.

    Raises ValueError for an unknown name, and for ``"triton"`` where Triton cannot run on ``logits``.
    """
    name = backend_name(name, _NAMES)
    device = logits.device.type
    if name == "auto":
        if device == "cuda" and _triton_usable(logits):
            impl = "triton"
        elif device == "cpu" and _auto_cpu_uses_inductor(logits):
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
