"""The reference math of the focal-family losses: the specification every backend is tested against.

This module is the bottom layer: it imports nothing else from qfocal. :mod:`qfocal.functional` (validation and
the public API) and :mod:`qfocal.ops` (the fused kernels) both build on it and neither imports the other.

Every loss here has the form ``BCE(x, t) * m(sigmoid(x), t)``:

====================  ============================================================================
``LossSpec.kind``     modulating factor ``m(p, t)``
====================  ============================================================================
``"qfl"``             ``a_t * |t - p| ** exponent``
``"focal"``           ``a_t * (p (1 - t) + (1 - p) t) ** exponent`` (that is ``(1 - p_t) ** exponent``)
``"vfl"``             ``t`` (or 1) where ``t > 0``, else ``alpha * |p - t| ** exponent``
====================  ============================================================================

with ``a_t = alpha t + (1 - alpha)(1 - t)`` (1 without alpha).
"""

from __future__ import annotations

import dataclasses
from typing import TypedDict, cast

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AVG_EPS",
    "KINDS",
    "LossSpec",
    "LossTensors",
    "alpha_factor",
    "compute_dtype",
    "densify",
    "distribution_focal_elementwise",
    "reference_loss",
    "safe_pow",
    "weight_reduce",
]

KINDS = ("qfl", "focal", "vfl")

# mmdetection's weight_reduce_loss divides by (avg_factor + eps) so that avg_factor = 0 stays finite.
AVG_EPS = torch.finfo(torch.float32).eps


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What one call of a focal-family loss computes, apart from its tensors.

    Attributes:
        kind: ``"qfl"`` | ``"focal"`` | ``"vfl"``.
        exponent: QFL's beta, focal's and varifocal's gamma (``>= 0``).
        alpha: the positive/negative balance (QFL, focal; None for none), or varifocal's negative weight.
        iou_weighted: varifocal only: positives weigh their target (True) or 1.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    """

    kind: str
    exponent: float
    alpha: float | None = None
    iou_weighted: bool = True
    reduction: str = "mean"


class LossTensors(TypedDict, total=False):
    """The keyword inputs of :func:`reference_loss` after ``spec`` and ``logits`` (the fused entry points take
    the same)."""

    target: Tensor | None
    labels: Tensor | None
    scores: Tensor | None
    pos_weight: Tensor | None
    weight: Tensor | None
    avg_factor: float | Tensor | None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 are computed in fp32; fp32 and fp64 stay as they are."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` with a finite gradient everywhere.

    For ``0 < exponent < 1`` the slope is infinite at ``base = 0``; there (and for sub-normal bases, whose
    ``base ** (exponent - 1)`` overflows) the gradient is defined as 0, the symmetric sub-gradient of
    ``|d| ** exponent`` at ``d = 0``. The value is always the exact power.
    """
    if exponent == 0.0:
        return torch.ones_like(base)
    if exponent >= 1.0:
        return base.pow(exponent)
    ok = base > torch.finfo(base.dtype).tiny
    safe = torch.where(ok, base, torch.ones_like(base))
    return torch.where(ok, safe.pow(exponent), base.detach().pow(exponent))


def alpha_factor(t: Tensor, alpha: float | None) -> Tensor | float:
    if alpha is None:
        return 1.0
    return t * alpha + (1.0 - t) * (1.0 - alpha)


def _bce(x: Tensor, t: Tensor, pos_weight: Tensor | None) -> Tensor:
    """BCE with logits as ``-(w t log sigmoid(x) + (1 - t) log sigmoid(-x))``, ``w = pos_weight`` (or 1).

    Two non-negative terms, each accurate to rounding (``logsigmoid`` is ``min(x, 0) - log1p(exp(-|x|))``, and
    its derivative ``sigmoid(-x)`` is computed without cancellation), so the loss keeps its relative precision
    at any logit. torch's ``binary_cross_entropy_with_logits`` computes ``(1 - t) x - log sigmoid(x)``, which
    cancels for ``t = 0`` at very negative ``x``: 1.5 % off at -11 in fp32 and 0 below about -16 (fp64: -37).
    """
    pos = t if pos_weight is None else t * pos_weight.to(x.dtype)
    return -(pos * F.logsigmoid(x) + (1.0 - t) * F.logsigmoid(-x))


def _elementwise(spec: LossSpec, x: Tensor, t: Tensor, pos_weight: Tensor | None) -> Tensor:
    """The unreduced, unweighted loss of ``spec`` in ``x``'s dtype."""
    p = torch.sigmoid(x)
    if spec.kind == "qfl":
        m = safe_pow((t - p).abs(), spec.exponent) * alpha_factor(t, spec.alpha)
    elif spec.kind == "focal":
        # 1 - p_t written as mmdetection does: 1 - p_t itself loses p to rounding where p << 1.
        m = safe_pow(p * (1.0 - t) + (1.0 - p) * t, spec.exponent) * alpha_factor(t, spec.alpha)
    elif spec.kind == "vfl":
        pos_factor = t if spec.iou_weighted else torch.ones_like(t)
        alpha = cast(float, spec.alpha)  # varifocal always has one (qfocal.functional checks it)
        m = torch.where(t > 0, pos_factor, alpha * safe_pow((p - t).abs(), spec.exponent))
    else:
        raise ValueError(f"kind: expected one of {KINDS}, got {spec.kind!r}")
    return _bce(x, t, pos_weight) * m


def densify(labels: Tensor, scores: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """The dense (N, C) target equivalent to mmdetection's (labels, scores); label C (or < 0) is background.

    Built by comparison, not by indexing: no data-dependent shape, so it works under ``torch.func.vmap``, and it
    is the construction of the fused math (:mod:`qfocal.ops._math`).
    """
    cols = torch.arange(shape[1], device=scores.device)
    return torch.where(labels.unsqueeze(-1) == cols, scores.to(dtype).unsqueeze(-1), 0.0)


def weight_reduce(
    loss: Tensor, weight: Tensor | None, reduction: str, avg_factor: float | Tensor | None
) -> Tensor:
    """mmdetection's ``weight_reduce_loss``: weight, then none / sum / mean, mean = sum / avg_factor if given."""
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    if reduction == "none":
        return loss
    if loss.numel() == 0:
        return loss.sum() * 0.0  # zero, but still connected to the graph
    if reduction == "sum":
        return loss.sum()
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / (avg_factor + AVG_EPS)


def reference_loss(
    spec: LossSpec,
    logits: Tensor,
    target: Tensor | None = None,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    pos_weight: Tensor | None = None,
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """The loss of ``spec`` by the plain math, in ``logits``'s dtype (computed in fp32 for fp16/bf16).

    The target is either dense (``target``, shaped like ``logits``) or mmdetection's sparse pair
    (``labels``, ``scores``); inputs are assumed valid (:mod:`qfocal.functional` checks them).
    """
    cdtype = compute_dtype(logits.dtype)
    if labels is not None:
        target = densify(labels, cast(Tensor, scores), logits.shape, cdtype)  # scores come with labels
    elem = _elementwise(
        spec, logits.to(cdtype), cast(Tensor, target).to(cdtype), pos_weight
    )  # dense or sparse
    return weight_reduce(elem, weight, spec.reduction, avg_factor).to(logits.dtype)


def distribution_focal_elementwise(logits: Tensor, target: Tensor) -> Tensor:
    """DFL per element in the compute dtype: cross-entropy towards the two bins around ``target``.

    The bin weights are ``right - y`` and ``y - left`` (mmdetection's form: ``1 - w_left`` would lose the
    fractional part of targets just above an integer), computed in the target's own precision when it is finer
    than the logits' (a float64 target with float32 logits, as mmdetection computes them): rounding the target
    to float32 first would move the fractional part of ``3 + 1e-7`` by 20 %, and the gradient with it.
    """
    n = logits.shape[-1] - 1
    cdtype = compute_dtype(logits.dtype)
    logp = F.log_softmax(logits.to(cdtype), dim=-1)
    y = target.to(torch.promote_types(target.dtype, cdtype))
    left = y.long().clamp(0, n - 1)
    left_f = left.to(y.dtype)
    w_left = (left_f + 1.0 - y).to(cdtype)
    w_right = (y - left_f).to(cdtype)
    lp_left = logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    lp_right = logp.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return -(lp_left * w_left + lp_right * w_right)
