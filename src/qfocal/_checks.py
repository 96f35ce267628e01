"""Input validation shared by every qfocal loss: one place for the "expected X, got Y" errors.

Structural checks (types, shapes, devices, hyper-parameters) are cheap and always run. Value-range checks
(targets in [0, 1], labels in [0, C]) read the whole tensor and, on a GPU, synchronise with the host, so they
can be switched off for hot loops with :func:`set_value_checks` or ``QFOCAL_VALUE_CHECKS=0``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar, overload

import torch
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., object])

_REDUCTIONS = ("none", "mean", "sum")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_value_checks = os.environ.get("QFOCAL_VALUE_CHECKS", "1").strip().lower() not in ("0", "false", "no", "off")


def set_value_checks(enabled: bool) -> bool:
    """Turn the value-range checks on or off for the whole process; returns the previous setting.

    Example:
        >>> import qfocal
        >>> previous = qfocal.set_value_checks(False)  # hot loop: skip the pass over the targets
        >>> _ = qfocal.set_value_checks(previous)
    """
    global _value_checks
    if not isinstance(enabled, bool):
        raise TypeError(f"set_value_checks: expected a bool, got {type(enabled).__name__}")
    previous, _value_checks = _value_checks, enabled
    return previous


def value_checks_enabled() -> bool:
    """Whether the value-range checks (targets in [0, 1], labels in range) run.

    Never while ``torch.compile`` traces (a check reads tensor values on the host, a graph break) nor inside
    ``torch.func.vmap`` (whose batched values cannot be read). Check the targets outside the compiled or
    vmapped region with :func:`check_target` instead.
    """
    return _value_checks and not torch.compiler.is_compiling() and not _vmap_active()


def _vmap_active() -> bool:
    """Whether a ``torch.func.vmap`` is active: its batched tensors cannot be read on the host, so a value check
    would fail as under torch.compile (check the targets outside with :func:`check_target`). Other functorch
    transforms (grad, jvp) read values fine and keep the checks."""
    current_level = getattr(torch._C._functorch, "maybe_current_level", None)
    if current_level is None or current_level() is None:
        return False
    try:
        from torch._functorch.pyfunctorch import (  # type: ignore[attr-defined]  # torch re-exports it, no __all__
            TransformType,
            retrieve_all_functorch_interpreters,
        )
    except ImportError:  # a torch without these names: treat any transform as a vmap
        return True
    return any(
        interpreter.key() == TransformType.Vmap for interpreter in retrieve_all_functorch_interpreters()
    )


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_value_checks`."""
    previous = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def check_target(target: Tensor, *, name: str = "target") -> Tensor:
    """Check that ``target`` holds values in [0, 1], as the losses do outside ``torch.compile``; returns it.

    Under ``torch.compile`` the losses skip their value checks (a check reads tensor values on the host, which
    would break the graph), so a target of 5 would give a negative loss there without a word. Call this on the
    targets outside the compiled region (it always runs eagerly, whatever :func:`set_value_checks` says). One
    reduction pass, no temporary of the target's size.

    Example:
        >>> import torch, qfocal
        >>> iou = qfocal.check_target(torch.rand(8, 3))
    """
    return _eager_check_target()(target, name)


@functools.cache
def _eager_check_target() -> Callable[[Tensor, str], Tensor]:
    # torch.compiler.disable imports torch._dynamo (and triton): done on first use, so `import qfocal` stays light
    @torch.compiler.disable  # type: ignore[untyped-decorator]  # torch.compiler.disable has no annotations
    def run(target: Tensor, name: str) -> Tensor:
        target = _check_float_tensor(name, target)
        with value_checks(True):
            _check_in_unit_interval(name, target)
        return target

    return run  # type: ignore[no-any-return]  # Any through the unannotated torch.compiler.disable


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return f"{type(x).__name__} {x!r}"


def _check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(x)}")
    return x


def _check_float_tensor(name: str, x: object) -> Tensor:
    x = _check_tensor(name, x)
    if x.dtype not in _FLOAT_DTYPES:  # float8 too: no loss math is defined (or tested) in it
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    return x


def _check_same_device(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(
            f"{name}: expected a tensor on {ref_name}'s device {ref.device}, got device {x.device}"
        )


def _check_same_shape(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(ref.shape)} (the shape of {ref_name}), got {tuple(x.shape)}"
        )


def _check_reduction(reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {_describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int (or Fraction) beyond float range, e.g. 10**400
        raise ValueError(
            f"{name}: expected a finite number, got a {type(value).__name__} too large for a float"
        ) from None
    if value != value:
        raise ValueError(f"{name}: expected a number, got nan")
    return value


def _check_finite_real(name: str, value: object) -> float:
    value = _check_real(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def _check_exponent(name: str, value: object) -> float:
    value = _check_real(name, value)
    if value < 0 or value == float("inf"):
        raise ValueError(f"{name}: expected a finite value >= 0, got {value}")
    return value


@overload
def _check_alpha(value: float, *, negative_disables: Literal[False] = ...) -> float: ...
@overload
def _check_alpha(value: object, *, negative_disables: bool = ...) -> float | None: ...
def _check_alpha(value: object, *, negative_disables: bool = False) -> float | None:
    """None disables alpha; torchvision's convention (alpha < 0 disables) only where ``negative_disables``."""
    if value is None:
        return None
    value = _check_real("alpha", value)
    if negative_disables and value < 0:
        return None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1] or None, got {value}")
    return value


def _check_avg_factor(avg_factor: object, reduction: str) -> float | Tensor | None:
    if avg_factor is None:
        return None
    if reduction == "sum":
        raise ValueError(
            'avg_factor: expected None with reduction="sum" (avg_factor only rescales "mean"), got a value'
        )
    if isinstance(avg_factor, Tensor):
        if avg_factor.numel() != 1:
            raise ValueError(
                f"avg_factor: expected a number or a one-element tensor, got shape {tuple(avg_factor.shape)}"
            )
        if value_checks_enabled() and _has_values(avg_factor):  # one host read of one element
            value = float(avg_factor.detach().reshape(()))
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"avg_factor: expected a value >= 0 and finite, got tensor({value})")
        return avg_factor
    value = _check_real("avg_factor", avg_factor)
    if value < 0 or value == float("inf"):
        raise ValueError(f"avg_factor: expected a value >= 0 and finite, got {value}")
    return value


def _has_values(x: Tensor) -> bool:
    """Whether ``x`` holds values to read: not a meta tensor (shapes only, as under ``torch.device("meta")``)."""
    return x.device.type != "meta"


def _check_in_unit_interval(name: str, x: Tensor) -> None:
    if not value_checks_enabled() or x.numel() == 0 or not _has_values(x):
        return
    low, high = torch.aminmax(x.detach())  # one pass, two scalars (NaN propagates into both)
    if not (bool(low >= 0) and bool(high <= 1)):
        bad = ~((x >= 0) & (x <= 1))  # the error path only: count and show the first offender
        first = x[bad].flatten()[0].item()
        raise ValueError(
            f"{name}: expected values in [0, 1], got {int(bad.sum())} outside (first: {first}); "
            "pass probabilities, not logits or class indices"
        )


def _broadcasts_to(shape: torch.Size, target_shape: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target_shape`` without growing it."""
    try:
        return bool(torch.broadcast_shapes(shape, target_shape) == target_shape)
    except RuntimeError:
        return False


def _check_broadcast_tensor(name: str, x: object, shape: torch.Size, ref: Tensor, hint: str = "") -> Tensor:
    x = _check_float_tensor(name, x)
    _check_same_device(name, x, "logits", ref)
    if not _broadcasts_to(x.shape, shape):
        raise ValueError(
            f"{name}: expected a shape broadcastable to {tuple(shape)}{hint}, got {tuple(x.shape)}"
        )
    return x


def _check_weight(weight: object, loss_shape: torch.Size, ref: Tensor) -> Tensor | None:
    """The weight rule, one for every batch size: a weight with exactly one dimension fewer than the loss is per
    anchor and must have the shape ``loss_shape[:-1]`` (mmdetection's per-anchor weight); any other weight
    broadcasts to the elementwise loss by torch's rules (so a per-class weight of 2-D logits is ``(1, C)``)."""
    if weight is None:
        return None
    if isinstance(weight, Tensor) and len(loss_shape) >= 2 and weight.dim() == len(loss_shape) - 1:
        _check_same_device("weight", _check_float_tensor("weight", weight), "logits", ref)
        if weight.shape != loss_shape[:-1]:
            raise ValueError(
                f"weight: expected a shape {tuple(loss_shape[:-1])} (per anchor: one dimension fewer than logits "
                f"{tuple(loss_shape)}; a per-class weight is {(1,) * (len(loss_shape) - 1) + (loss_shape[-1],)}), "
                f"got {tuple(weight.shape)}"
            )
        weight = _check_broadcast_tensor("weight", weight, loss_shape[:-1], ref)
        return weight.unsqueeze(-1)
    hint = (
        f" (the elementwise loss) or the per-anchor shape {tuple(loss_shape[:-1])}"
        if len(loss_shape) >= 2
        else ""
    )
    return _check_broadcast_tensor("weight", weight, loss_shape, ref, hint)


def _check_pos_weight(pos_weight: object, loss_shape: torch.Size, ref: Tensor) -> Tensor | None:
    if pos_weight is None:
        return None
    return _check_broadcast_tensor("pos_weight", pos_weight, loss_shape, ref, " (e.g. one weight per class)")


def _check_sparse_target(target: tuple[object, ...], logits: Tensor) -> tuple[Tensor, Tensor]:
    """mmdetection's ``(labels, scores)`` form: labels in [0, C], C meaning background."""
    if len(target) != 2:
        raise ValueError(
            f"target: expected a dense tensor or a (labels, scores) pair, got a sequence of {len(target)}"
        )
    labels, scores = target
    labels = _check_tensor("labels", labels)
    scores = _check_float_tensor("scores", scores)
    if logits.dim() != 2:
        raise ValueError(
            f"logits: expected shape (N, C) with a (labels, scores) target, got {tuple(logits.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"labels: expected an integer tensor (int64) of class indices, got {labels.dtype}")
    n, c = logits.shape
    if labels.shape != (n,):
        raise ValueError(
            f"labels: expected shape ({n},) (one label per row of logits), got {tuple(labels.shape)}"
        )
    if scores.shape != (n,):
        raise ValueError(f"scores: expected shape ({n},) like labels, got {tuple(scores.shape)}")
    _check_same_device("labels", labels, "logits", logits)
    _check_same_device("scores", scores, "logits", logits)
    if value_checks_enabled() and n and _has_values(labels):
        low, high = torch.aminmax(labels)
        if not (int(low) >= 0 and int(high) <= c):
            bad = (labels < 0) | (labels > c)
            raise ValueError(
                f"labels: expected class indices in [0, {c}] ({c} = background), got {int(bad.sum())} outside "
                f"(first: {int(labels[bad][0])})"
            )
        _check_in_unit_interval("scores", scores)
    return labels, scores


def _check_dense_target(target: object, logits: Tensor, *, values: bool = True) -> Tensor:
    """A dense target's type, device and shape; its values in [0, 1] too unless ``values=False`` (the caller
    then leaves that check to :func:`qfocal._backend.run_loss`, which the fused op does in its own loop)."""
    if isinstance(target, (tuple, list)):
        raise ValueError(
            "target: a (labels, scores) pair is accepted by quality_focal_loss only; pass a dense tensor"
        )
    target = _check_float_tensor("target", target)
    _check_same_device("target", target, "logits", logits)
    _check_same_shape("target", target, "logits", logits)
    if values:
        _check_in_unit_interval("target", target)
    return target


def torchscript_message(name: str) -> str:
    """The one line a ``torch.jit.script`` of a qfocal loss fails with."""
    return (
        f"{name} cannot be scripted: qfocal does not support torch.jit.script (deprecated by PyTorch); "
        "use torch.compile or torch.export, which it supports"
    )


def refuse_torchscript(fn: _F) -> _F:
    """Mark ``fn`` so that ``torch.jit.script(fn)`` fails with :func:`torchscript_message` (torch reads the
    attribute ``__script_unsupported``) instead of a parser error about keyword-only arguments."""
    setattr(fn, "__script_unsupported", torchscript_message(f"qfocal.{fn.__name__}"))
    return fn
