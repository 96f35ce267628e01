"""The qfocal losses as plain functions of tensors: the specification every other layer is tested against.

Every focal-family loss here has the form ``BCE(x, t) * m(sigmoid(x), t)``:

============================  =====================================================================
loss                          modulating factor ``m(p, t)``
============================  =====================================================================
:func:`quality_focal_loss`    ``a_t * |t - p| ** beta``
:func:`sigmoid_focal_loss`    ``a_t * (1 - p_t) ** gamma`` with ``p_t = t p + (1 - t)(1 - p)``
:func:`varifocal_loss`        ``t`` (or 1) where ``t > 0``, else ``alpha * p ** gamma``
============================  =====================================================================

with ``a_t = alpha t + (1 - alpha)(1 - t)``. The public functions validate their input and then run either the
plain PyTorch math of :mod:`qfocal._reference` (the *reference* backend, the truth tests compare against) or a
fused single-pass kernel from :mod:`qfocal.ops` (see :func:`qfocal.set_backend`); both give the same values and
gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor

from ._backend import run_loss
from ._checks import (
    _check_alpha,
    _check_avg_factor,
    _check_broadcast_tensor,
    _check_dense_target,
    _check_exponent,
    _check_float_tensor,
    _check_pos_weight,
    _check_reduction,
    _check_same_device,
    _check_sparse_target,
    _check_tensor,
    _check_weight,
    _has_values,
    refuse_torchscript,
    value_checks_enabled,
)
from ._names import loss_entry, losses_for
from ._reference import LossSpec, distribution_focal_elementwise, weight_reduce
from ._with_prob import py_focal_loss_with_prob, quality_focal_loss_with_prob

__all__ = [
    "distribution_focal_loss",
    "loss_function",
    "py_focal_loss_with_prob",
    "quality_focal_loss",
    "quality_focal_loss_with_prob",
    "sigmoid_focal_loss",
    "varifocal_loss",
]


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def quality_focal_loss(
    logits: Tensor,
    target: Tensor | Sequence[Tensor],
    *,
    beta: float = 2.0,
    alpha: float | None = None,
    pos_weight: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Quality Focal Loss: binary cross-entropy scaled by the distance between the soft target and the prediction.

    .. math::
        \mathrm{QFL}(x, t) = a_t \, \mathrm{BCE}(x, t) \, |t - \sigma(x)|^{\beta},
        \qquad a_t = \alpha t + (1 - \alpha)(1 - t)\ \text{(or 1 when alpha is None)}

    From "Generalized Focal Loss" (Li et al., NeurIPS 2020, arXiv:2006.04388). A prediction equal to its soft
    target costs nothing, which focal loss does not give for targets in (0, 1). One function covers both forms:

    * the paper's and mmdetection's ``QualityFocalLoss``: ``alpha=None`` (the default), ``beta=2``;
    * YOLOv5's ``QFocalLoss(nn.BCEWithLogitsLoss(pos_weight=pw), gamma=1.5, alpha=0.25)``:
      ``beta=1.5, alpha=0.25, pos_weight=pw`` (YOLOv5 calls the exponent ``gamma``).

    Args:
        logits: raw scores, shape ``(*)``, any floating dtype; ``(N, C)`` with the sparse target.
        target: either a dense float tensor shaped like ``logits`` with values in [0, 1] (the IoU-aware
            classification score of each anchor and class, 0 for negatives), or mmdetection's pair
            ``(labels, scores)``: ``labels`` integer ``(N,)`` with classes in ``[0, C)`` for positives and ``C``
            for background, ``scores`` float ``(N,)`` in [0, 1]. Both give the same bits, values and gradients,
            on every backend.
        beta: exponent of ``|t - sigmoid(x)|``, ``>= 0``; 0 gives (alpha-weighted) BCE.
        alpha: balance between positives and negatives in [0, 1], or ``None`` for none (the paper).
        pos_weight: ``pos_weight`` of :func:`torch.nn.functional.binary_cross_entropy_with_logits`,
            broadcastable to ``logits`` (e.g. ``(C,)``).
        weight: elementwise weight broadcastable to ``logits``, or a per-anchor weight of shape
            ``logits.shape[:-1]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``reduction="mean"``, divide the sum by this instead of the element count
            (mmdetection's meaning, e.g. the number of positives); an error with ``"sum"``.

    Returns:
        ``logits``'s dtype; shape ``(*)`` (``(N, C)``) for ``"none"``, a scalar otherwise. Computed in fp32
        for fp16/bf16 input.

    Example:
        >>> logits = torch.randn(8, 3, requires_grad=True)
        >>> iou = torch.rand(8, 3) * (torch.rand(8, 3) > 0.7)
        >>> loss = quality_focal_loss(logits, iou, beta=2.0)
        >>> loss.backward()
    """
    logits = _check_float_tensor("logits", logits)
    exponent = _check_exponent("beta", beta)
    alpha = _check_alpha(alpha)
    reduction = _check_reduction(reduction)
    avg_factor = _check_avg_factor(avg_factor, reduction)
    if isinstance(target, (tuple, list)):
        labels, scores = _check_sparse_target(tuple(target), logits)
        targets = {"labels": labels, "scores": scores}
    else:
        targets = {"target": _check_dense_target(target, logits, values=False)}
    pos_weight = _check_pos_weight(pos_weight, logits.shape, logits)
    weight = _check_weight(weight, logits.shape, logits)
    spec = LossSpec("qfl", exponent, alpha, reduction=reduction)
    return run_loss(
        spec,
        logits,
        **targets,
        pos_weight=pos_weight,
        weight=weight,
        avg_factor=avg_factor,
        check_target="target" in targets,
    )


def sigmoid_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    pos_weight: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Sigmoid focal loss, with soft targets allowed.

    .. math::
        \mathrm{FL}(x, t) = a_t \, \mathrm{BCE}(x, t) \, (1 - p_t)^{\gamma},
        \qquad p_t = t\,\sigma(x) + (1 - t)(1 - \sigma(x)),\quad a_t = \alpha t + (1 - \alpha)(1 - t)

    From "Focal Loss for Dense Object Detection" (Lin et al., ICCV 2017, arXiv:1708.02002). Equals
    :func:`torchvision.ops.sigmoid_focal_loss` (same argument names and defaults, except that torchvision's
    default reduction is ``"none"``) and, with ``gamma=1.5`` and the BCE's ``pos_weight``, YOLOv5's
    ``FocalLoss``, whose soft-target semantics it keeps. For soft targets in (0, 1), ``1 - p_t`` is not
    0 where the prediction equals the target: use :func:`quality_focal_loss` for IoU-valued targets.

    Args:
        logits: raw scores, shape ``(*)``, any floating dtype.
        target: same shape, values in [0, 1].
        alpha: balance in [0, 1]; ``None`` or a negative value (torchvision's convention) disables it.
        gamma: focusing exponent ``>= 0``; 0 gives (alpha-weighted) BCE.
        pos_weight: ``pos_weight`` of :func:`torch.nn.functional.binary_cross_entropy_with_logits`.
        weight: elementwise weight broadcastable to ``logits``, or per-anchor of shape ``logits.shape[:-1]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this instead of the element count.

    Returns:
        ``logits``'s dtype; shape ``(*)`` for ``"none"``, a scalar otherwise.

    Example:
        >>> logits = torch.randn(16, 80, requires_grad=True)
        >>> target = (torch.rand(16, 80) > 0.95).float()
        >>> sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="sum").backward()
    """
    logits = _check_float_tensor("logits", logits)
    gamma = _check_exponent("gamma", gamma)
    alpha = _check_alpha(alpha, negative_disables=True)
    reduction = _check_reduction(reduction)
    avg_factor = _check_avg_factor(avg_factor, reduction)
    target = _check_dense_target(target, logits, values=False)
    pos_weight = _check_pos_weight(pos_weight, logits.shape, logits)
    weight = _check_weight(weight, logits.shape, logits)
    spec = LossSpec("focal", gamma, alpha, reduction=reduction)
    return run_loss(
        spec,
        logits,
        target=target,
        pos_weight=pos_weight,
        weight=weight,
        avg_factor=avg_factor,
        check_target=True,
    )


def varifocal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Varifocal loss: IoU-weighted BCE on positives, focal down-weighting on negatives only.

    .. math::
        \mathrm{VFL}(x, t) = \mathrm{BCE}(x, t) \cdot
        \begin{cases} t & t > 0 \ (\text{1 if not iou\_weighted}) \\ \alpha\, \sigma(x)^{\gamma} & t = 0 \end{cases}

    From "VarifocalNet: An IoU-aware Dense Object Detector" (Zhang et al., CVPR 2021, arXiv:2008.13367).
    Equals mmdetection's ``varifocal_loss`` (same arguments and defaults). Ultralytics' ``VarifocalLoss``
    ``(pred (B, A, C), gt_score, label)`` is ``varifocal_loss(pred, gt_score, reduction="sum") / A`` when
    ``label = gt_score > 0``.

    Args:
        logits: raw scores, shape ``(*)``, any floating dtype.
        target: same shape, values in [0, 1]: the IoU of the positive's box with its ground truth at the
            ground-truth class, 0 elsewhere.
        alpha: weight of the negatives' term in [0, 1].
        gamma: focusing exponent of the negatives, ``>= 0``.
        iou_weighted: weight positives by their target (True, the paper) or by 1.
        weight: elementwise weight broadcastable to ``logits``, or per-anchor of shape ``logits.shape[:-1]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this instead of the element count.

    Returns:
        ``logits``'s dtype; shape ``(*)`` for ``"none"``, a scalar otherwise.

    Example:
        >>> logits = torch.randn(8, 4, requires_grad=True)
        >>> iou = torch.rand(8, 4) * (torch.rand(8, 4) > 0.8)
        >>> varifocal_loss(logits, iou, avg_factor=max(1, int((iou > 0).sum()))).backward()
    """
    logits = _check_float_tensor("logits", logits)
    gamma = _check_exponent("gamma", gamma)
    alpha = _check_alpha(alpha)
    if alpha is None:
        raise ValueError("alpha: expected a value in [0, 1] for varifocal_loss, got None")
    if not isinstance(iou_weighted, bool):
        raise TypeError(f"iou_weighted: expected a bool, got {type(iou_weighted).__name__}")
    reduction = _check_reduction(reduction)
    avg_factor = _check_avg_factor(avg_factor, reduction)
    target = _check_dense_target(target, logits, values=False)
    weight = _check_weight(weight, logits.shape, logits)
    spec = LossSpec("vfl", gamma, alpha, iou_weighted, reduction)
    return run_loss(spec, logits, target=target, weight=weight, avg_factor=avg_factor, check_target=True)


def distribution_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Distribution Focal Loss: cross-entropy towards the two bins around a continuous box-side target.

    .. math::
        \mathrm{DFL}(S, y) = -\big((y_{i+1} - y)\log S_i + (y - y_i)\log S_{i+1}\big),
        \qquad y_i = \lfloor y \rfloor,\ y_{i+1} = y_i + 1

    From "Generalized Focal Loss" (Li et al., arXiv:2006.04388). Equals mmdetection's
    ``distribution_focal_loss``; Ultralytics' ``DFLoss(reg_max)`` on ``(M*4, reg_max)`` logits and
    ``(M, 4)`` targets equals this with ``reduction="none"``, viewed as ``(M, 4)`` and averaged over the
    four sides (Ultralytics first clamps targets to ``reg_max - 1.01``).

    Args:
        logits: ``(*, n + 1)`` raw scores over the ``n + 1`` bins ``0..n``, any floating dtype.
        target: ``(*)`` float distances in bin units, in ``[0, n)``.
        weight: broadcastable to ``target``'s shape.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this instead of the element count.

    Returns:
        ``logits``'s dtype; shape ``(*)`` for ``"none"``, a scalar otherwise.

    Example:
        >>> logits = torch.randn(32, 17, requires_grad=True)  # reg_max = 16
        >>> target = torch.rand(32) * 15.99
        >>> distribution_focal_loss(logits, target).backward()
    """
    logits = _check_float_tensor("logits", logits)
    target = _check_float_tensor("target", _check_tensor("target", target))
    reduction = _check_reduction(reduction)
    avg_factor = _check_avg_factor(avg_factor, reduction)
    _check_same_device("target", target, "logits", logits)
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits: expected shape (*, n + 1) with at least 2 bins, got {tuple(logits.shape)}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target: expected shape {tuple(logits.shape[:-1])} (logits without its bin dimension), "
            f"got {tuple(target.shape)}"
        )
    n = logits.shape[-1] - 1
    if value_checks_enabled() and target.numel() and _has_values(target):
        low, high = torch.aminmax(target.detach())  # one pass; NaN fails both comparisons
        if not (bool(low >= 0) and bool(high < n)):
            bad = ~((target >= 0) & (target < n))
            raise ValueError(
                f"target: expected distances in [0, {n}) for {n + 1} bins, got {int(bad.sum())} outside "
                f"(first: {target[bad][0].item()}); clamp to {n} - 0.01 as Ultralytics does"
            )
    if weight is not None:
        weight = _check_broadcast_tensor("weight", weight, target.shape, logits)
    loss = distribution_focal_elementwise(logits, target)
    return weight_reduce(loss, weight, reduction, avg_factor).to(logits.dtype)


for _loss in (
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
    distribution_focal_loss,
    quality_focal_loss_with_prob,
    py_focal_loss_with_prob,
):
    refuse_torchscript(_loss)


def loss_function(name: str) -> Callable[..., Tensor]:
    """The function of loss ``name`` (any name or alias of the loss table, :mod:`qfocal._names`, any case).

    Example:
        >>> loss_function("QFocal") is quality_focal_loss
        True
    """
    entry = loss_entry(name, losses_for("functional"))
    function: Callable[..., Tensor] = globals()[cast(str, entry.function)]  # set for every "functional" loss
    return function
