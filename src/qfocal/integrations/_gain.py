"""The balance rule of the YOLOv5 and Ultralytics integrations: a term's gain, ``"auto"`` (gradient-norm matching
to BCE on every call) or a fixed number. Why and how: :mod:`qfocal.integrations.balance`. Imports no framework."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["AUTO", "MAX_GAIN", "check_gain", "gain_label", "matched_gain"]

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
    ratio = ref / own.clamp(min=torch.finfo(torch.float64).tiny)
    ratio = torch.where((own > 0) & (ref > 0), ratio, torch.ones_like(ratio))
    return ratio.clamp(max=max_gain).float().detach()
