"""The Inductor backend: :func:`qfocal.ops._math.fused_loss_and_grad` compiled once per structure.

Compiled with dynamic shapes and hyper-parameters passed as tensors, so new batch sizes or new gamma/alpha
values do not recompile. If compilation fails (no C++ compiler, an unsupported platform) the first failure
is reported by one warning and the same math then runs eagerly.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._math import fused_loss_and_grad

# One graph per (kind, sparse, weights, reduction, grad, dtype, rank): more than dynamo's default of 8.
_RECOMPILE_LIMIT = 64

_lock = threading.Lock()
_compiled: Callable[..., tuple[Tensor, Tensor | None]] | None = None
_broken: str | None = None


def inductor_failed() -> str | None:
    """The reason compilation failed in this process, or None if it has not failed (yet)."""
    return _broken


def _limit_patch() -> contextlib.AbstractContextManager[object]:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.7
        if hasattr(config, name):
            return config.patch({name: max(getattr(config, name), _RECOMPILE_LIMIT)})  # type: ignore[no-any-return]  # torch's config module is unannotated
    return contextlib.nullcontext()


def _get_compiled() -> Callable[..., tuple[Tensor, Tensor | None]]:
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = torch.compile(fused_loss_and_grad, dynamic=True, fullgraph=True)
        return _compiled


def inductor_loss_and_grad(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """Compiled :func:`fused_loss_and_grad`; eager after a compilation failure (warned once)."""
    global _broken
    if _broken is None:
        try:
            with _limit_patch():
                return _get_compiled()(*args, **kwargs)
        except torch.OutOfMemoryError:  # the input's fault, not the compiler's
            raise
        except Exception as exc:  # any compiler failure: keep the numbers, lose only the speed
            _broken = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            warnings.warn(
                f"qfocal: torch.compile of the fused loss failed ({_broken}); the fused math runs eagerly from "
                "now on and backend 'auto' uses the reference on the CPU",
                RuntimeWarning,
                stacklevel=2,
            )
    return fused_loss_and_grad(*args, **kwargs)
