"""The fused loss-and-gradient math in plain PyTorch: the body of the eager and Inductor backends.

One function computes, from logits and targets, both the (weighted, reduced) loss and ``d loss / d logits``
of :func:`qfocal.quality_focal_loss`, :func:`qfocal.sigmoid_focal_loss` and :func:`qfocal.varifocal_loss`, and on
request the squared norms that gradient-norm matching (:mod:`qfocal.integrations.balance`) needs. Run eagerly it
is only a correctness baseline (it allocates like any eager code); compiled by Inductor it becomes one loop that
reads the logits and targets once and writes the gradient once.

Hyper-parameters arrive as 0-dim tensors so that one compiled graph serves every value; only the structure
(loss kind, sparse or dense target, presence of weights, reduction, outputs) selects a graph, and so does the
exponent where :func:`power_form` gives it a closed form (``|d| ** 2`` as ``d * d``, ``|d| ** 1.5`` as
``|d| * sqrt(|d|)``): no ``pow`` (a ``log`` and an ``exp``), no division in the slope, and one exponential
for ``sigmoid`` and BCE together.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from .._reference import KINDS

GENERAL = "general"
# Exponents with a closed form: integer or half-integer, >= 1.5, so that the slope ``gamma |d| ** (gamma - 1)``
# is continuous and 0 at d = 0 (below that, and for gamma = 1, see _safe_pow_and_slope).
_CLOSED_FORMS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


def power_form(exponent: float) -> str:
    """The static form the fused math compiles for ``base ** exponent``: ``str(exponent)`` for the closed forms
    (``1.5, 2, 2.5, 3, 3.5, 4``), else ``"general"`` (``pow`` with the exponent as a tensor: one graph for all)."""
    return str(float(exponent)) if float(exponent) in _CLOSED_FORMS else GENERAL


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


def _closed_pow_and_slope(
    base: Tensor, exponent: float, signed: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``base ** exponent`` and ``exponent * base ** (exponent - 1)`` by products and one ``sqrt``.

    The products are those of torch's own ``pow`` for 2 and 3 (``b * b``, ``b * b * b``) and of its backward
    (``2 * b``, ``3 * (b * b)``), so those match the reference's bits; 1.5 takes ``b * sqrt(b)``, within an ulp of
    ``pow``. Exact at 0 and for sub-normal bases (slope 0 at 0).

    With ``signed`` (``d`` where ``base = |d|``) the slope is that of ``|d| ** exponent`` in ``d``, i.e. times
    ``sign(d)``: one factor ``|d|`` of the slope is ``d`` instead (``2 d`` for 2), or for 1.5 the sign is copied
    onto ``sqrt(|d|)``. The same bits as multiplying by ``sign(d)`` (rounding is symmetric), fewer operations.
    """
    k = int(exponent)
    half = exponent != k
    root = base.sqrt() if half else None
    # base ** (exponent - 1), as the factors of its product in order
    factors: list[Tensor] = [base] * (k - 1) + ([cast(Tensor, root)] if half else [])
    low = factors[0]
    for f in factors[1:]:
        low = low * f
    value = low * base
    if signed is None:
        return value, exponent * low
    if k >= 2:  # one factor |d| becomes d
        factors[0] = signed
        low_signed = factors[0]
        for f in factors[1:]:
            low_signed = low_signed * f
    else:  # 1.5: sqrt(|d|) with d's sign (0 at d = 0, as sign(0) * 0)
        low_signed = torch.copysign(cast(Tensor, root), signed)  # half: root is set
    return value, exponent * low_signed


def _bce_parts(
    x: Tensor, t: Tensor, pos_weight: Tensor | None, p: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BCE with logits, its derivative, ``sigmoid(x)`` and ``sigmoid(-x)``, exact to rounding at any logit, from
    one ``exp(-|x|)`` (see :func:`qfocal._reference._bce`).

    ``bce = w t softplus(-x) + (1 - t) softplus(x)`` and ``dbce = (1 - t) sigmoid(x) - w t sigmoid(-x)``
    (``w = pos_weight`` or 1): sums and differences of terms that are each computed without cancellation.
    torch's ``(1 - t) x - log sigmoid(x)`` and ``sigmoid(x) - t`` lose every digit at ``t = 0``, ``x << 0``
    and at ``t = 1``, ``x >> 0``.

    The sigmoids come from ``1 / (1 + exp(-|x|))`` or, given ``p = torch.sigmoid(x)``, without a division: the
    smaller of the two is ``exp(-|x|)`` times the larger, and the larger is ``p`` or ``1 - p`` (no cancellation:
    ``p < 1/2`` there); ``e * (1 - p)`` keeps the sub-normal ``sigmoid(x)`` where ``torch.sigmoid`` has underflowed.
    """
    e = torch.exp(-x.abs())
    log1p_e = torch.log1p(e)
    softplus_pos = torch.clamp(x, min=0.0) + log1p_e  # -log sigmoid(-x)
    softplus_neg = torch.clamp(-x, min=0.0) + log1p_e  # -log sigmoid(x)
    nonneg = x >= 0
    if p is None:
        inv = 1.0 / (1.0 + e)
        sigmoid_pos = torch.where(nonneg, inv, e * inv)  # sigmoid(x)
        sigmoid_neg = torch.where(nonneg, e * inv, inv)  # sigmoid(-x), not 1 - sigmoid(x)
    else:
        q = 1.0 - p
        sigmoid_pos = torch.where(nonneg, p, e * q)
        sigmoid_neg = torch.where(nonneg, e * p, q)
    w_pos = t if pos_weight is None else pos_weight * t
    w_neg = 1.0 - t
    bce = w_pos * softplus_neg + w_neg * softplus_pos
    dbce = w_neg * sigmoid_pos - w_pos * sigmoid_neg
    return bce, dbce, sigmoid_pos, sigmoid_neg


def _bce_parts_one_exp(
    x: Tensor, t: Tensor, pos_weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_bce_parts` with ``sigmoid(x)`` rounded as ``torch.sigmoid`` rounds it, from its own ``exp(-x)``
    alone (no second exponential): ``log1p(exp(-|x|))`` is ``log1p(exp(-x))`` for ``x >= 0`` and
    ``-log1p(-sigmoid(x))`` for ``x < 0`` (``sigmoid(x) < 1/2`` there: no cancellation).

    Exact to rounding like :func:`_bce_parts` except in float32 below ``x = -87`` with ``t = 0``, where
    ``sigmoid(x)`` (and so BCE, ``softplus(x)``) is sub-normal or 0 as ``torch.sigmoid``'s: for the closed-form
    exponents that use it the loss is multiplied there by ``|t - p| ** gamma``, 0 or sub-normal too, as in the
    reference.
    """
    e_neg = torch.exp(-x)
    p = 1.0 / (1.0 + e_neg)  # torch.sigmoid's formula, and its rounding
    q = 1.0 - p
    nonneg = x >= 0
    log1p_abs = torch.log1p(torch.where(nonneg, e_neg, -p))
    log1p_e = torch.where(nonneg, log1p_abs, -log1p_abs)
    softplus_pos = torch.clamp(x, min=0.0) + log1p_e  # -log sigmoid(-x)
    softplus_neg = torch.clamp(-x, min=0.0) + log1p_e  # -log sigmoid(x)
    sigmoid_neg = torch.where(nonneg, e_neg * p, q)  # e_neg may be inf where x < 0: not selected there
    w_pos = t if pos_weight is None else pos_weight * t
    w_neg = 1.0 - t
    bce = w_pos * softplus_neg + w_neg * softplus_pos
    dbce = w_neg * p - w_pos * sigmoid_neg
    return bce, dbce, p, q


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
    power: str = GENERAL,
    need_norms: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss (0-dim sum times ``scale`` if ``reduce``, else elementwise), gradient and norms.

    ``a_t = alpha_offset + alpha_slope * t`` (``1 - alpha`` and ``2 alpha - 1``, or 1 and 0 without alpha);
    ``alpha`` alone is varifocal's negative weight. The gradient already includes weight and ``scale``; loss and
    gradient are in ``x``'s dtype. ``power``: :func:`power_form` of the exponent (the tensor ``exponent`` is
    read only for ``"general"``).

    With ``need_norms``, the third output is ``[||g||^2, ||g_bce||^2]`` (float64, or the compute dtype off CPU and
    CUDA): ``g`` the gradient (to rounding: the scale is applied to the sum; before any cast to ``x``'s dtype),
    ``g_bce`` the gradient of BCE with logits with the same ``pos_weight``, ``weight`` and ``scale``; else None.
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

    pw = None if pos_weight is None else pos_weight.to(cdtype)
    if power == GENERAL:
        # torch.sigmoid, as the reference: |t - p| ** gamma is ill-conditioned where t ~ p (for gamma < 1 its
        # slope is singular there), so p must round as the reference's does, not merely be as accurate. BCE
        # (the whole loss for gamma = 0) from its own exp(-|x|), its sigmoids from p (no division).
        p = torch.sigmoid(x)
        q = 1.0 - p
        bce, dbce, _, _ = _bce_parts(x, t, pw, p)
    elif float(power) < 2.0:
        # 1.5: the slope's own slope is singular at t = p, so p rounds as torch.sigmoid; BCE from the same exp
        bce, dbce, p, q = _bce_parts_one_exp(x, t, pw)
    else:
        # from gamma = 2 on the slope is Lipschitz in p: the shared exp(-|x|) gives p (within an ulp of
        # torch.sigmoid, and 1 - p without cancellation), with no second exp.
        bce, dbce, p, q = _bce_parts(x, t, pw)
    dp = p * q
    if power == GENERAL:

        def pow_and_slope(base: Tensor, signed: Tensor | None = None) -> tuple[Tensor, Tensor]:
            value, slope = _safe_pow_and_slope(base, exponent, tiny)
            return value, (slope if signed is None else slope * torch.sign(signed))

    else:
        gamma = float(power)

        def pow_and_slope(base: Tensor, signed: Tensor | None = None) -> tuple[Tensor, Tensor]:
            return _closed_pow_and_slope(base, gamma, signed)

    if kind == "qfl":
        diff = p - t  # |t - p|, with the slope in p (no negation)
        power_value, slope = pow_and_slope(diff.abs(), diff)  # slope: d |diff| ** gamma / d diff
        a_t = alpha_offset + alpha_slope * t
        m = a_t * power_value
        dm = a_t * slope * dp
    elif kind == "focal":
        # 1 - p_t in mmdetection's form, as the reference
        power_value, slope = pow_and_slope(p * (1.0 - t) + q * t)
        a_t = alpha_offset + alpha_slope * t
        m = a_t * power_value
        dm = a_t * slope * (1.0 - 2.0 * t) * dp
    elif kind == "vfl":
        diff = p - t
        power_value, slope = pow_and_slope(diff.abs(), diff)
        pos = t > 0
        m = torch.where(pos, torch.where(iou_weighted, t, 1.0), alpha * power_value)
        dm = torch.where(pos, 0.0, alpha * slope * dp)
    else:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")

    loss = bce * m
    w = None
    if weight is not None:
        w = weight.to(cdtype)
        loss = loss * w
    grad = norms = None
    if need_grad:
        g = dbce * m + bce * dm
        if w is not None:
            g = g * w
        if reduce:
            g = g * scale
        grad = g.to(out_dtype)
    if need_norms:
        # The gradient's terms in the compute dtype, without the mean's scale (applied to the sums), squared and
        # summed in float64 (a gradient of 1e-25 must not vanish from the norm). Written as bce * dm + dbce * m,
        # not as g itself: g is also the gradient's node, and a sum of it would be a second pass over the written
        # gradient (or a buffer of its own); this sum reads what the loss's sum reads and joins its loop.
        nd = torch.float64 if x.device.type in ("cpu", "cuda") else cdtype
        own, own_bce = bce * dm + dbce * m, dbce
        if w is not None:
            own, own_bce = own * w, own_bce * w
        norms = torch.stack((own.to(nd).square().sum(), own_bce.to(nd).square().sum()))
        if reduce:
            norms = norms * scale.to(nd).square()
    loss = (loss.sum() * scale) if reduce else loss
    return loss.to(out_dtype), grad, norms
