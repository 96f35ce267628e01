"""The balance rule of the YOLOv5 and Ultralytics integrations: a term's gain, ``"auto"`` (gradient-norm matching
to BCE on every call) or a fixed number. Why and how: :mod:`qfocal.integrations.balance`. Imports no framework.

:func:`matched_gain` is the rule's definition, for any pair of criteria: it differentiates both again on a copy.
:func:`loss_and_gain` is what the integrations call: where the loss is a qfocal criterion that runs the fused op
and the reference is the BCE it would be matched to, the op's own pass gives both norms (no second evaluation, no
copy); elsewhere it falls back to :func:`matched_gain`. Both give the same gain to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # at run time the ops are imported where used (they may not be built into this install)
    from ..ops import GradNorms

__all__ = ["AUTO", "MAX_GAIN", "check_gain", "gain_label", "loss_and_gain", "matched_gain"]

AUTO = "auto"
# A guard, far above the gains met in practice (below 100, docs/balance.md): the loss's gradient can underflow
# (p ** gamma of a very confident negative) while BCE's does not.
MAX_GAIN = 1e4


def check_gain(value: object, *, what: str = "gain") -> float | None:
    """``None`` for ``"auto"`` (or ``None``): gradient-norm matching; otherwise the fixed gain as a float.

    Raises:
        ValueError: a string other than ``"auto"``, or a negative, infinite or NaN number.
        TypeError: anything else (a bool, a list...).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what}: expected 'auto' or a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what}: expected 'auto' or a number >= 0, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(
            f"{what}: expected 'auto' or a finite number >= 0, got an int too large for a float"
        ) from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what}: expected 'auto' or a finite number >= 0, got {value!r}")
    return value


def gain_label(gain: float | None) -> str | float:
    """What the run record holds: ``"auto"`` or the number."""
    return AUTO if gain is None else gain


def _grad_norm(criterion: Callable[[Tensor, Tensor], Tensor], pred: Tensor, target: Tensor) -> Tensor:
    x = pred.detach().clone().float().requires_grad_(True)  # a clone: never an inference tensor
    (grad,) = torch.autograd.grad(criterion(x, target).sum(), x)
    return torch.linalg.vector_norm(grad.double())  # type: ignore[no-any-return]  # torch.linalg is unannotated


def matched_gain(
    loss: Callable[[Tensor, Tensor], Tensor],
    reference: Callable[[Tensor, Tensor], Tensor],
    pred: Tensor,
    target: Tensor,
    *,
    max_gain: float = MAX_GAIN,
) -> Tensor:
    """``||d reference / d pred|| / ||d loss / d pred||``: the detached gain that gives ``loss`` the gradient norm
    of ``reference`` on this ``pred`` and ``target``.

    Both criteria are called as ``criterion(pred, target)`` and summed. The gradients are taken on a detached fp32
    copy of ``pred``: this works under ``torch.no_grad``, ``torch.inference_mode`` and autocast, and leaves the
    caller's graph alone. Where either gradient is 0 (no element, a loss without slope there) the gain is 1:
    no gain can give a zero gradient a norm, and a large one would only inflate the loss's value.

    Args:
        loss, reference: criteria of ``(pred, target)``, e.g. QFL and BCE with the same reduction.
        pred: logits of any shape. target: same shape.
        max_gain: the cap.

    Returns:
        a 0-dim float32 tensor on ``pred``'s device (no host synchronisation).

    Example:
        >>> import qfocal
        >>> x, t = torch.randn(8, 3, requires_grad=True), torch.rand(8, 3)
        >>> qfl, bce = qfocal.QualityFocalLoss(), torch.nn.BCEWithLogitsLoss()
        >>> (qfl(x, t) * matched_gain(qfl, bce, x, t)).backward()
    """
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(pred.device.type, enabled=False),
    ):
        target = target.detach().clone()  # cloned here: never an inference tensor
        ref = _grad_norm(reference, pred, target)
        own = _grad_norm(loss, pred, target)
    return _ratio(ref, own, max_gain)


def _ratio(ref: Tensor, own: Tensor, max_gain: float) -> Tensor:
    """``ref / own`` (float64 norms) as the gain: 1 where either is 0, capped, detached float32."""
    ratio = ref / own.clamp(min=torch.finfo(torch.float64).tiny)
    ratio = torch.where((own > 0) & (ref > 0), ratio, torch.ones_like(ratio))
    return ratio.clamp(max=max_gain).float().detach()


def loss_and_gain(
    loss: Callable[[Tensor, Tensor], Tensor],
    reference: Callable[[Tensor, Tensor], Tensor],
    pred: Tensor,
    target: Tensor,
    *,
    max_gain: float = MAX_GAIN,
) -> tuple[Tensor, Tensor]:
    """``(loss(pred, target), matched_gain(loss, reference, pred, target))``, the gain from the loss's own pass
    where that pass can give it.

    It can where ``loss`` ran the fused op once (:func:`qfocal.ops.capture_grad_norms`) and returned that op's
    output unchanged, on ``pred`` and ``target`` themselves, and ``reference`` is an ``nn.BCEWithLogitsLoss`` with
    the same reduction (mean without ``avg_factor``, sum or none), ``weight`` and ``pos_weight`` (None counting as
    all ones): the op then returns ``||d loss / d pred||^2`` and the squared norm of that BCE's gradient from the
    same pass. Anything else (the reference backend, inputs below ``"auto"``'s size threshold, other criteria)
    takes :func:`matched_gain`. The loss, and its gradient, are those of a plain ``loss(pred, target)`` call.

    Returns:
        the loss, and the gain as a detached 0-dim float32 tensor on ``pred``'s device.
    """
    try:
        from ..ops import capture_grad_norms
    except ImportError:  # ops not built into this install
        value = loss(pred, target)
        return value, matched_gain(loss, reference, pred, target, max_gain=max_gain)
    with capture_grad_norms() as records:
        value = loss(pred, target)
    if len(records) == 1 and _fusable(records[0], value, reference, pred, target):
        own_sq, bce_sq = records[0].own_sq, records[0].bce_sq
        return value, _ratio(bce_sq.sqrt(), own_sq.sqrt(), max_gain)
    return value, matched_gain(loss, reference, pred, target, max_gain=max_gain)


def _fusable(record: GradNorms, value: Tensor, reference: object, pred: Tensor, target: Tensor) -> bool:
    """Whether the fused call ``record`` computed ``value`` from ``pred`` and ``target`` as they are, and its BCE
    norm is that of ``reference``."""
    if record.loss is not value or record.logits is not pred or record.target is not target:
        return False
    if type(reference) is not nn.BCEWithLogitsLoss or record.avg_factor is not None:
        return False
    if reference.reduction != record.reduction:
        return False
    return _same(record.weight, reference.weight) and _same(record.pos_weight, reference.pos_weight)


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    """Whether two optional weights, each broadcastable to the logits, give the same values (None: all ones).
    Identical objects (YOLOv5's criterion reads its BCE's ``pos_weight``) need no comparison and no host read."""
    if a is b:
        return True
    try:
        if a is None or b is None:
            return bool((cast(Tensor, b if a is None else a) == 1).all())  # one of them is set (a is not b)
        common = torch.broadcast_shapes(a.shape, b.shape)  # both broadcast to shape: compare them here
        return bool((a.expand(common) == b.to(a.device).expand(common)).all())
    except RuntimeError:  # shapes that do not broadcast together: not the same
        return False
