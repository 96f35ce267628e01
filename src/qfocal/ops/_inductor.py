"""The Inductor backend: :func:`qfocal.ops._math.fused_loss_and_grad` compiled once per structure.

Compiled with dynamic shapes and hyper-parameters passed as tensors. Logits and a dense target that have a 1-D
view (contiguous, or evenly strided like YOLOv5's ``p[..., 4]``) are passed as that view, and each weight in a
compact form (one value, per class ``(C,)``, per row ``(rows,)``, or full), spread to the elements inside the
graph as an index expression: one graph serves every size and rank. All inputs are detached, so that dynamo
guards on no view's base. What still compiles a new graph (each one entry of dynamo's cache for this function, at
most ``_RECOMPILE_LIMIT`` in all; 200 random shapes of ranks 1 to 4 take 2):

- the structure: loss kind, reduction (none or reduced), gradient requested or not, norms requested or not
  (:func:`qfocal.ops.capture_grad_norms`), the exponent's form (:func:`qfocal.ops._math.power_form`: one graph
  per closed-form exponent, one for all others);
- dtypes of logits, target and weights; the device;
- which optional tensors are present (``pos_weight``, ``weight``, a tensor ``avg_factor``) and the form of each
  weight (one value, per class, per row, full);
- the element count: 1, up to 4096, or more (Inductor reduces small counts without its cascade helper);
- inputs without a 1-D view (transposed, permuted, channels_last, sliced rows, a broadcast target, a weight of
  another broadcast, or mmdetection's ``(labels, scores)`` pair): these keep their layout, and a new layout, rank
  or size-1 dimension may compile a graph.

Past the limit, a new layout runs the same math eagerly (warned once; :func:`eager_fallbacks` counts such
calls) while the graphs compiled so far keep serving theirs. If compilation fails (no C++ compiler, an
unsupported platform) the first failure is reported by one warning and the same math then runs eagerly.

With the norms, Inductor sums them in the loop that writes the gradient for inputs with a 1-D view; for the other
layouts (rows with gaps, as YOLOv5's classification logits) it may keep one intermediate the size of the
logits and read it in a second loop.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

from ._math import fused_loss_and_grad

# One cache entry per structure and specialisation (see above): more than dynamo's default of 8.
_RECOMPILE_LIMIT = 64

_lock = threading.Lock()
_compiled: Callable[..., tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]] | None = None
_broken: str | None = None
_limit_calls = 0  # calls that ran eagerly because the cache was full


def inductor_failed() -> str | None:
    """The reason compilation failed in this process, or None if it has not failed (yet)."""
    return _broken


def eager_fallbacks() -> int:
    """Calls in this process that ran the fused math eagerly because dynamo's recompile limit was reached."""
    return _limit_calls


def _limit_patch() -> contextlib.AbstractContextManager[object]:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.7
        if hasattr(config, name):
            patch = config.patch({name: max(getattr(config, name), _RECOMPILE_LIMIT)})
            return cast("contextlib.AbstractContextManager[object]", patch)  # torch's config.patch is untyped
    return contextlib.nullcontext()


def _get_compiled() -> Callable[..., tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]]:
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = torch.compile(
                _flat_loss_and_grad,
                dynamic=True,
                fullgraph=True,
                # multiply-adds fused (one rounding instead of two): a few per cent of the loop, no accuracy lost
                options={"cpp.enable_floating_point_contract_flag": "fast"},
            )
        return _compiled


def _spread(b: Tensor | None, layout: str, n: int) -> Tensor | None:
    """A weight given compactly, as the 1-D logits' ``n`` values: per class ``(C,)`` or per row ``(rows,)``;
    an index expression for Inductor, no buffer."""
    if layout == "col":
        b = cast(Tensor, b)  # "col" and "row" come with a weight
        return b.unsqueeze(0).expand(n // b.shape[0], b.shape[0]).reshape(n)
    if layout == "row":
        b = cast(Tensor, b)
        return b.unsqueeze(1).expand(b.shape[0], n // b.shape[0]).reshape(n)
    return b


def _flat_loss_and_grad(
    *args: Any, layouts: tuple[str, str] = ("", ""), check_range: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """:func:`fused_loss_and_grad` on 1-D logits and target, its weights spread from their compact forms (the
    compiled function; ``layouts`` as :func:`_compact` gives them), or on its arguments as they are. With
    ``check_range``, also ``[min, max]`` of the target: a reduction Inductor computes in the loss's own loop, so
    the value check costs no pass of its own."""
    if layouts != ("", ""):
        n = args[0].shape[0]
        args = (*args[:4], _spread(args[4], layouts[0], n), _spread(args[5], layouts[1], n), *args[6:])
    loss, grad, norms = fused_loss_and_grad(*args)
    target_range = torch.stack(torch.aminmax(args[1])) if check_range and args[1] is not None else None
    return loss, grad, norms, target_range


def _compact(b: Tensor | None, shape: torch.Size, rows: int, cols: int) -> tuple[Tensor | None, str] | None:
    """A weight broadcastable to ``shape`` (logits viewed as ``(rows, cols)``) in a 1-D form and its layout:
    ``"one"`` (one value), ``"full"`` (contiguous), ``"col"`` (per class, ``(cols,)``), ``"row"`` (per row,
    ``(rows,)``); None if it is none of these."""
    if b is None:
        return None, "none"
    if b.numel() == 1:
        return b.reshape(1), "one"
    full = b.expand(shape)
    if full.is_contiguous():
        return full.reshape(-1), "full"
    try:
        view = full.view(rows, cols)
    except RuntimeError:  # a broadcast no 2-D view expresses
        return None
    if view.stride() == (0, 1):
        return view[0], "col"
    if view.stride() == (1, 0):
        return view[:, 0], "row"
    return None


def _flat(t: Tensor) -> Tensor | None:
    """``t`` as a 1-D view in its logical order (contiguous, or evenly strided like YOLOv5's ``p[..., 4]``), or
    None where no view can express it (transposed, permuted)."""
    try:
        return t.view(-1)
    except RuntimeError:
        return None


def _canonical(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], dict[str, Any], torch.Size | None]:
    """``args`` with logits and target as 1-D views and the weights compact (:func:`_compact`) where a view
    allows it; else as they are. Detached in every case: dynamo guards on a view's base, which would make every
    rank its own graph."""
    x, target, labels, scores, pos_weight, weight = args[:6]
    detached = tuple(
        None if t is None else t.detach() for t in (x, target, labels, scores, pos_weight, weight)
    )
    as_they_are: tuple[tuple[Any, ...], dict[str, Any], torch.Size | None] = (*detached, *args[6:]), {}, None
    if labels is not None or target is None:
        return as_they_are
    x1, t1 = _flat(x), _flat(target)
    if x1 is None or t1 is None:
        return as_they_are
    shape = x.shape
    cols = shape[-1] if x.dim() else 1
    rows = x.numel() // cols
    compact = [_compact(b, shape, rows, cols) for b in (pos_weight, weight)]
    if any(c is None for c in compact):
        return as_they_are
    (pw, pw_layout), (w, w_layout) = cast("list[tuple[Tensor | None, str]]", compact)  # no None (checked)
    flat = [None if t is None else t.detach() for t in (x1, t1, None, None, pw, w)]
    return (*flat, *args[6:]), {"layouts": (pw_layout, w_layout)}, shape


def _compiled_call(
    args: tuple[Any, ...], check_range: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The compiled math on ``args``, in 1-D form where the inputs allow it."""
    args2, kwargs, shape = _canonical(args)
    if check_range:  # only then: a call without the check compiles the graph it always had
        kwargs["check_range"] = True
    loss, grad, norms, target_range = _get_compiled()(*args2, **kwargs)
    if shape is None:
        return loss, grad, norms, target_range
    reduce = args[13]  # fused_loss_and_grad's positional "reduce"
    # detached: the op's outputs must not be views (autograd forbids scaling a view output in place)
    return (
        (loss if reduce else loss.view(shape).detach()),
        (None if grad is None else grad.view(shape).detach()),
        norms,
        target_range,
    )


def inductor_loss_and_grad(
    *args: Any, check_range: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Compiled :func:`fused_loss_and_grad` (positional arguments) and, with ``check_range``, ``[min, max]`` of
    the target from the same loop; eager after a compilation failure (warned once), and for a new layout once
    dynamo's cache for it is full (warned once)."""
    global _broken, _limit_calls
    if _broken is None:
        try:
            with _limit_patch():
                return _compiled_call(args, check_range)
        except torch.OutOfMemoryError:  # the input's fault, not the compiler's
            raise
        except torch._dynamo.exc.FailOnRecompileLimitHit:  # this layout only: the compiled ones still serve
            _limit_calls += 1
            if _limit_calls == 1:
                warnings.warn(
                    f"qfocal: the fused loss reached torch.compile's recompile limit ({_RECOMPILE_LIMIT} graphs); "
                    "new argument layouts run the fused math eagerly (see qfocal.ops._inductor)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        except Exception as exc:  # any compiler failure: keep the numbers, lose only the speed
            _broken = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            warnings.warn(
                f"qfocal: torch.compile of the fused loss failed ({_broken}); the fused math runs eagerly from "
                "now on and backend 'auto' uses the reference on the CPU",
                RuntimeWarning,
                stacklevel=2,
            )
    return _flat_loss_and_grad(*args, check_range=check_range)
