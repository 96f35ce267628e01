"""Quality focal and focal loss on probabilities instead of logits: mmdetection's ``activated=True``.

Some heads apply the sigmoid (or another activation) before the loss, so the loss sees ``p = sigmoid(x)``
rather than ``x``; TOOD, for example, scores anchors with ``sqrt(sigmoid(cls) * sigmoid(prob))``. mmdetection
then runs ``quality_focal_loss_with_prob`` and ``py_focal_loss_with_prob``; these are the same losses, with
qfocal's validation, weights and reductions:

* :func:`quality_focal_loss_with_prob`: ``a_t * BCE(p, t) * |t - p| ** beta``;
* :func:`py_focal_loss_with_prob`: ``a_t * BCE(p, t) * (p (1 - t) + (1 - p) t) ** gamma``.

``BCE(p, t) = -(t log p + (1 - t) log(1 - p))`` with each log clamped at -100, as
:func:`torch.nn.functional.binary_cross_entropy` (which mmdetection calls) clamps it, so ``p = 0`` and ``p = 1``
give finite values and gradients. On probabilities there is no stable log-sum-exp form: a saturated probability
has lost the logit it came from, so use the logit versions (:func:`qfocal.quality_focal_loss`,
:func:`qfocal.sigmoid_focal_loss`) wherever the head can give logits.

The modulating factors, weights and reductions are those of :mod:`qfocal._reference`; only the BCE differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    _check_alpha,
    _check_avg_factor,
    _check_dense_target,
    _check_exponent,
    _check_float_tensor,
    _check_in_unit_interval,
    _check_reduction,
    _check_same_device,
    _check_sparse_target,
    _check_tensor,
    _check_weight,
    value_checks_enabled,
)
from ._reference import alpha_factor, compute_dtype, densify, safe_pow, weight_reduce

__all__ = ["py_focal_loss_with_prob", "quality_focal_loss_with_prob"]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_probs(probs: object) -> Tensor:
    probs = _check_float_tensor("probs", probs)
    _check_in_unit_interval("probs", probs)
    return probs


def _bce_prob(p: Tensor, t: Tensor) -> Tensor:
    # torch's binary_cross_entropy clamps each log at -100 and its gradient's denominator p (1 - p) at 1e-12.
    return F.binary_cross_entropy(p, t, reduction="none")


def quality_focal_loss_with_prob(
    probs: Tensor,
    target: Tensor | Sequence[Tensor],
    *,
    beta: float = 2.0,
    alpha: float | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Quality Focal Loss on probabilities: :func:`qfocal.quality_focal_loss` for already activated scores.

    .. math::
        \mathrm{QFL}(p, t) = a_t \, \mathrm{BCE}(p, t) \, |t - p|^{\beta},\qquad
        \mathrm{BCE}(p, t) = -\big(t \max(\log p, -100) + (1 - t) \max(\log(1 - p), -100)\big)

    with ``a_t = alpha t + (1 - alpha)(1 - t)`` (1 when ``alpha`` is None). From "Generalized Focal Loss" (Li et
    al., NeurIPS 2020, arXiv:2006.04388). Equals mmdetection's ``quality_focal_loss_with_prob`` (and
    ``QualityFocalLoss(activated=True)``) elementwise; mmdetection then sums over classes, so its per-anchor
    loss is ``quality_focal_loss_with_prob(p, target, reduction="none").sum(1)``. The logs are clamped as
    :func:`torch.nn.functional.binary_cross_entropy` clamps them, so ``p = 0`` and ``p = 1`` stay finite.

    Args:
        probs: probabilities in [0, 1], shape ``(*)``, any floating dtype; ``(N, C)`` with the sparse target.
        target: a dense float tensor shaped like ``probs`` with values in [0, 1] (0 for negatives), or
            mmdetection's pair ``(labels, scores)``: ``labels`` integer ``(N,)`` with classes in ``[0, C)`` for
            positives and ``C`` for background, ``scores`` float ``(N,)`` in [0, 1].
        beta: exponent of ``|t - p|``, ``>= 0``.
        alpha: balance between positives and negatives in [0, 1], or ``None`` for none (the paper, mmdetection).
        weight: elementwise weight broadcastable to ``probs``, or a per-anchor weight of shape
            ``probs.shape[:-1]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``reduction="mean"``, divide the sum by ``avg_factor + eps`` instead of taking the
            mean (mmdetection's meaning); an error with ``"sum"``.

    Returns:
        ``probs``'s dtype; shape ``(*)`` for ``"none"``, a scalar otherwise. Computed in fp32 for fp16/bf16.

    Example:
        >>> logits = torch.randn(8, 3, requires_grad=True)
        >>> iou = torch.rand(8, 3) * (torch.rand(8, 3) > 0.7)
        >>> quality_focal_loss_with_prob(logits.sigmoid(), iou, beta=2.0).backward()
    """
    probs = _check_probs(probs)
    beta = _check_exponent("beta", beta)
    alpha = _check_alpha(alpha)
    reduction = _check_reduction(reduction)
    avg_factor = _check_avg_factor(avg_factor, reduction)
    cdtype = compute_dtype(probs.dtype)
    if isinstance(target, (tuple, list)):
        if probs.dim() != 2:
            raise ValueError(
                f"probs: expected shape (N, C) with a (labels, scores) target, got {tuple(probs.shape)}"
            )
        labels, scores = _check_sparse_target(tuple(target), probs)
        t = densify(labels, scores, probs.shape, cdtype)
    else:
        t = _check_dense_target(target, probs).to(cdtype)
    weight = _check_weight(weight, probs.shape, probs)
    p = probs.to(cdtype)
    loss = _bce_prob(p, t) * safe_pow((t - p).abs(), beta) * alpha_factor(t, alpha)
    return weight_reduce(loss, weight, reduction, avg_factor).to(probs.dtype)


def py_focal_loss_with_prob(
    probs: Tensor,
    target: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Sigmoid focal loss on probabilities: :func:`qfocal.sigmoid_focal_loss` for already activated scores.

    .. math::
        \mathrm{FL}(p, t) = a_t \, \mathrm{BCE}(p, t) \, \big(p (1 - t) + (1 - p) t\big)^{\gamma}

    with ``a_t = alpha t + (1 - alpha)(1 - t)`` and BCE's logs clamped at -100 as in
    :func:`quality_focal_loss_with_prob`. From "Focal Loss for Dense Object Detection" (Lin et al., ICCV 2017,
    arXiv:1708.02002). Equals mmdetection's ``py_focal_loss_with_prob`` (and ``FocalLoss(activated=True)``)
    with the same names and defaults; the modulating factor is written as mmdetection writes it, so that it is
    exact for small ``p`` and hard targets.

    Args:
        probs: probabilities in [0, 1], shape ``(*, C)``, any floating dtype.
        target: a dense float tensor shaped like ``probs`` with values in [0, 1], or integer class indices of
            shape ``probs.shape[:-1]`` with values in ``[0, C]``, ``C`` meaning background (mmdetection's
            labels, one-hot encoded here).
        alpha: balance in [0, 1], or ``None`` for none.
        gamma: focusing exponent ``>= 0``; 0 gives (alpha-weighted) BCE.
        weight: elementwise weight broadcastable to ``probs``, or per-anchor of shape ``probs.shape[:-1]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by ``avg_factor + eps`` instead of taking the mean.

    Returns:
        ``probs``'s dtype; shape ``(*, C)`` for ``"none"``, a scalar otherwise. Computed in fp32 for fp16/bf16.

    Example:
        >>> logits = torch.randn(16, 80, requires_grad=True)
        >>> labels = torch.randint(0, 81, (16,))  # 80 = background
        >>> py_focal_loss_with_prob(logits.sigmoid(), labels, reduction="sum").backward()
    """
    probs = _check_probs(probs)
    gamma = _check_exponent("gamma", gamma)
    alpha = _check_alpha(alpha)
    reduction = _check_reduction(reduction)
    avg_factor = _check_avg_factor(avg_factor, reduction)
    cdtype = compute_dtype(probs.dtype)
    target = _check_tensor("target", target)
    if target.dtype in _INT_DTYPES:
        t = _one_hot(target, probs).to(cdtype)
    else:
        t = _check_dense_target(target, probs).to(cdtype)
    weight = _check_weight(weight, probs.shape, probs)
    p = probs.to(cdtype)
    one_minus_pt = p * (1.0 - t) + (1.0 - p) * t
    loss = _bce_prob(p, t) * safe_pow(one_minus_pt, gamma) * alpha_factor(t, alpha)
    return weight_reduce(loss, weight, reduction, avg_factor).to(probs.dtype)


def _one_hot(labels: Tensor, probs: Tensor) -> Tensor:
    """mmdetection's ``one_hot(labels, C + 1)[..., :C]``: class indices in [0, C], C meaning background."""
    if probs.dim() < 1:
        raise ValueError(f"probs: expected shape (*, C) with class-index targets, got {tuple(probs.shape)}")
    c = probs.shape[-1]
    if labels.shape != probs.shape[:-1]:
        raise ValueError(
            f"target: expected class indices of shape {tuple(probs.shape[:-1])} (probs without its class "
            f"dimension) or a dense target of shape {tuple(probs.shape)}, got {tuple(labels.shape)}"
        )
    _check_same_device("target", labels, "probs", probs)
    if value_checks_enabled() and labels.numel():
        bad = (labels < 0) | (labels > c)
        if bool(bad.any()):
            raise ValueError(
                f"target: expected class indices in [0, {c}] ({c} = background), got {int(bad.sum())} outside "
                f"(first: {int(labels[bad].flatten()[0])})"
            )
    return F.one_hot(labels.long(), c + 1)[..., :c]
