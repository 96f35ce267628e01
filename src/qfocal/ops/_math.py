"""The fused loss-and-gradient math in plain PyTorch: the body of the eager and Inductor backends.

One function computes, from logits and targets, both the (weighted, reduced) loss and ``d loss / d logits``
of :func:`qfocal.quality_focal_loss`, :func:`qfocal.sigmoid_focal_loss` and :func:`qfocal.varifocal_loss`.
Run eagerly it is only a correctness baseline (it allocates like any eager code); compiled by Inductor it
becomes one loop that reads the logits and targets once and writes the gradient once.

Hyper-parameters arrive as 0-dim tensors so that one compiled graph serves every value; only the structure
(loss kind, sparse or dense target, presence of weights, reduction) selects a graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._reference import KINDS


def _safe_pow_and_slope(base: Tensor, gamma: Tensor, tiny: float) -> tuple[Tensor, Tensor]:
    """``base ** gamma`` and its derivative, with the slope of :func:`qfocal._reference.safe_pow`.

    Where ``base <= tiny`` (0 or sub-normal) the reference's slope is 0 for ``gamma < 1`` and
    ``gamma * base ** (gamma - 1)`` otherwise; the latter is taken as ``1`` for ``gamma == 1`` and ``0`` for
    ``gamma > 1``, which differs from the reference only for sub-normal bases with ``1 < gamma < ~1.3``.
    """
    value = base.pow(gamma)
    ok = base > tiny
    slope_ok = gamma * value / torch.where(ok, base, 1.0)
    slope_bad = (gamma == 1.0).to(base.dtype)
    return value, torch.where(ok, slope_ok, slope_bad)


def _stable_bce_and_grad(x: Tensor, t: Tensor, pos_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """BCE with logits and its derivative, exact to rounding at any logit (see :func:`qfocal._reference._bce`).

    ``bce = w t softplus(-x) + (1 - t) softplus(x)`` and ``dbce = (1 - t) sigmoid(x) - w t sigmoid(-x)``
    (``w = pos_weight`` or 1): sums and differences of terms that are each computed without cancellation, from
    one ``exp(-|x|)``. torch's ``(1 - t) x - log sigmoid(x)`` and ``sigmoid(x) - t`` lose every digit at
    ``t = 0``, ``x << 0`` and at ``t = 1``, ``x >> 0``.
    """
    e = torch.exp(-x.abs())
    log1p_e = torch.log1p(e)
    softplus_pos = torch.clamp(x, min=0.0) + log1p_e  # -log sigmoid(-x)
    softplus_neg = torch.clamp(-x, min=0.0) + log1p_e  # -log sigmoid(x)
    inv = 1.0 / (1.0 + e)
    nonneg = x >= 0
    sigmoid_pos = torch.where(nonneg, inv, e * inv)  # sigmoid(x)
    sigmoid_neg = torch.where(nonneg, e * inv, inv)  # sigmoid(-x), not 1 - sigmoid(x)
    w_pos = t if pos_weight is None else pos_weight * t
    w_neg = 1.0 - t
    return w_pos * softplus_neg + w_neg * softplus_pos, w_neg * sigmoid_pos - w_pos * sigmoid_neg


def fused_loss_and_grad(
    x: Tensor,
    target: Tensor | None,
    labels: Tensor | None,
    scores: Tensor | None,
    pos_weight: Tensor | None,
    weight: Tensor | None,
    exponent: Tensor,
    alpha: Tensor,
    alpha_offset: Tensor,
    alpha_slope: Tensor,
    iou_weighted: Tensor,
    scale: Tensor,
    kind: str,
    reduce: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Loss (0-dim sum times ``scale`` if ``reduce``, else elementwise) and gradient, both in ``x``'s dtype.

    ``a_t = alpha_offset + alpha_slope * t`` (``1 - alpha`` and ``2 alpha - 1``, or 1 and 0 without alpha);
    ``alpha`` alone is varifocal's negative weight. The gradient already includes weight and ``scale``.
    """
    out_dtype = x.dtype
    cdtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    tiny = torch.finfo(cdtype).tiny
    x = x.to(cdtype)
    if labels is not None:
        # Sparse QFL target: t[i, j] = scores[i] where labels[i] == j, as _reference.densify (the same values);
        # the Inductor implementation receives it densified (see _op._forward_impl)
        cols = torch.arange(x.shape[-1], device=x.device)
        t = torch.where(labels.unsqueeze(-1) == cols, scores.to(cdtype).unsqueeze(-1), 0.0)  # type: ignore[union-attr]  # scores come with labels
    else:
        t = target.to(cdtype)  # type: ignore[union-attr]  # dense: target is given

    # torch.sigmoid, as the reference: |t - p| ** gamma is ill-conditioned where t ~ p (for gamma < 1 its slope
    # is singular there), so p must round as the reference's does, not merely be as accurate.
    p = torch.sigmoid(x)
    dp = p * (1.0 - p)
    bce, dbce = _stable_bce_and_grad(x, t, None if pos_weight is None else pos_weight.to(cdtype))

    if kind == "qfl":
        diff = t - p
        power, slope = _safe_pow_and_slope(diff.abs(), exponent, tiny)
        a_t = alpha_offset + alpha_slope * t
        m = a_t * power
        dm = -a_t * slope * torch.sign(diff) * dp
    elif kind == "focal":
        # 1 - p_t in mmdetection's form, as the reference
        power, slope = _safe_pow_and_slope(p * (1.0 - t) + (1.0 - p) * t, exponent, tiny)
        a_t = alpha_offset + alpha_slope * t
        m = a_t * power
        dm = a_t * slope * (1.0 - 2.0 * t) * dp
    elif kind == "vfl":
        diff = p - t
        power, slope = _safe_pow_and_slope(diff.abs(), exponent, tiny)
        pos = t > 0
        m = torch.where(pos, torch.where(iou_weighted, t, 1.0), alpha * power)
        dm = torch.where(pos, 0.0, alpha * slope * torch.sign(diff) * dp)
    else:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")

    loss = bce * m
    if weight is not None:
        w = weight.to(cdtype)
        loss = loss * w
    grad = None
    if need_grad:
        grad = dbce * m + bce * dm
        if weight is not None:
            grad = grad * w
        if reduce:
            grad = grad * scale
        grad = grad.to(out_dtype)
    loss = (loss.sum() * scale) if reduce else loss
    return loss.to(out_dtype), grad
