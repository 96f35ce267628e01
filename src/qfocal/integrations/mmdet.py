"""mmdetection plugin: qfocal's losses as mmdetection loss modules, registered under the scope ``qfocal``.

Enable it in a config with ``custom_imports=dict(imports=['qfocal.integrations.mmdet'])`` and replace
``type='QualityFocalLoss'`` by ``type='qfocal.QualityFocalLoss'`` (likewise ``qfocal.VarifocalLoss``,
``qfocal.DistributionFocalLoss``, ``qfocal.FocalLoss``). Importing this module is the whole registration.

mmengine reads the text before the first dot of a type name as a registry scope, so the modules live in a child
registry :data:`MODELS` with scope ``"qfocal"``. Its parent is mmengine's root ``MODELS``, the common ancestor
of mmdetection's registry and of its downstream projects' (mmyolo, ...), so that ``mmdet.registry.MODELS.build``
and theirs both find it. Without the import, mmengine would resolve ``qfocal.QualityFocalLoss`` to the Python
object of that name, qfocal's own module with other semantics; :mod:`qfocal.registry` closes that gap by
importing this module when mmengine looks it up.

Each class takes exactly the constructor arguments of the mmdetection class of the same name, with the same
defaults, and its ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``, and applies
mmdetection's target forms, weight shapes and reductions where they differ from qfocal's functions:

* ``QualityFocalLoss`` sums the elementwise loss over classes (dim 1) before weighting and reducing, so its
  ``weight`` is per anchor, ``(N,)``, ``"none"`` returns ``(N,)`` and ``"mean"`` without ``avg_factor``
  divides by N; labels outside ``[0, C)`` (-1, C) are background.
* ``FocalLoss`` takes a dense target or integer labels ``(N,)`` (C and -1 = background) and mmdetection's
  focal weight shapes: ``(N, C)``, ``(N,)`` per anchor, or ``(N * C,)`` flattened.
* ``VarifocalLoss`` multiplies by ``weight`` with broadcasting, as mmdetection does; a per-anchor weight is
  ``(N, 1)``.
* ``DistributionFocalLoss`` takes ``(N, n + 1)`` logits, ``(N,)`` targets and a weight broadcastable to ``(N,)``.

Options qfocal cannot honour fail when the model is built, with ``ValueError`` / ``TypeError``. Deliberate
differences (docs/frameworks/mmdet.md lists every option): targets are validated (scores in [0, 1], labels in range;
``qfocal.set_value_checks(False)`` turns that off); fp16/bf16 are computed in fp32; ``reduction="mean"`` of an
empty batch without ``avg_factor`` is 0 (mmdetection: 0 / 0 = nan); weights that mmdetection would broadcast
into a larger loss are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch
import torch.nn.functional as F
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry
from torch import Tensor, nn

from .. import functional as QF
from .._checks import (
    _check_exponent,
    _check_finite_real,
    _check_real,
    _check_reduction,
    _check_tensor,
    torchscript_message,
    value_checks_enabled,
)
from .._with_prob import py_focal_loss_with_prob, quality_focal_loss_with_prob

__all__ = ["MODELS", "DistributionFocalLoss", "FocalLoss", "QualityFocalLoss", "VarifocalLoss"]

SCOPE = "qfocal"


def _child_registry() -> Registry:
    """The ``qfocal`` child of mmengine's root MODELS; the existing one on a reload (mmengine refuses two)."""
    existing = MMENGINE_MODELS.children.get(SCOPE)
    if existing is not None:
        return existing
    return Registry("model", parent=MMENGINE_MODELS, scope=SCOPE, locations=["qfocal.integrations.mmdet"])


MODELS: Registry = _child_registry()

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# ----------------------------------------------------------------------------------------------------------
# Constructor checks: what mmdetection accepts and qfocal cannot honour fails here, when the model is built.
# ----------------------------------------------------------------------------------------------------------
def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def _check_use_sigmoid(cls: str, value: object) -> bool:
    if value is not True:
        raise ValueError(
            f"{cls}: use_sigmoid: expected True (the loss is sigmoid-based; mmdetection supports nothing "
            f"else either), got {value!r}"
        )
    return True


def _check_loss_weight(value: object) -> float:
    return _check_finite_real("loss_weight", value)


def _check_unit_alpha(cls: str, value: object, hint: str) -> float:
    """alpha in [0, 1]; mmdetection applies any number literally, qfocal's functions do not."""
    if value is None:
        raise TypeError(f"{cls}: alpha: expected a number in [0, 1], got None")
    alpha = _check_real("alpha", value)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{cls}: alpha: expected a value in [0, 1] ({hint}), got {alpha}")
    return alpha


def _check_reduction_override(value: object, default: str) -> str:
    return default if value is None else _check_reduction(value)


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else f"{type(x).__name__}"


def _check_weight_broadcasts(weight: object, shape: torch.Size, what: str) -> Tensor:
    """A weight that multiplies a loss of ``shape`` without growing it (numpy broadcasting, as mmdet multiplies)."""
    weight = _check_tensor("weight", weight)
    try:
        ok = torch.broadcast_shapes(weight.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"weight: expected a shape broadcastable to {tuple(shape)} ({what}), got {_describe(weight)}"
        )
    return weight


def _leading_ones(weight: Tensor, ndim: int) -> Tensor:
    """View ``weight`` with ``ndim`` dims, as broadcasting aligns it, so qfocal cannot read it as per-anchor."""
    return weight.reshape((1,) * (ndim - weight.dim()) + tuple(weight.shape))


class _MMDetLoss(nn.Module):
    """Shared parts: reduction, loss_weight, reduction_override and the repr."""

    def __init__(self, reduction: str, loss_weight: float) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self.loss_weight = _check_loss_weight(loss_weight)

    def _hparams(self) -> dict[str, object]:
        raise NotImplementedError

    def __prepare_scriptable__(self) -> NoReturn:
        raise RuntimeError(torchscript_message(f"qfocal.integrations.mmdet.{type(self).__name__}"))

    def extra_repr(self) -> str:
        params = {**self._hparams(), "reduction": self.reduction, "loss_weight": self.loss_weight}
        return ", ".join(f"{k}={v!r}" for k, v in params.items())


@MODELS.register_module(force=True)
class QualityFocalLoss(_MMDetLoss):
    r"""mmdetection's ``QualityFocalLoss`` computed by :func:`qfocal.quality_focal_loss`.

    Config: ``dict(type='qfocal.QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0)``. From
    "Generalized Focal Loss" (Li et al., NeurIPS 2020, arXiv:2006.04388). The loss of each anchor is the
    elementwise QFL ``BCE(x, t) |t - sigmoid(x)|^beta`` summed over classes; ``weight`` multiplies it per anchor.

    Args:
        use_sigmoid: must be True (as in mmdetection).
        beta: exponent of ``|t - p|``, ``>= 0``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        loss_weight: factor of the loss.
        activated: ``pred`` holds probabilities, not logits (:func:`qfocal._with_prob.quality_focal_loss_with_prob`).

    Forward:
        ``pred`` ``(N, C)``; ``target`` either ``(labels (N,), scores (N,))`` with labels outside ``[0, C)``
        meaning background, or a dense tensor shaped like ``pred`` (``(N, C, *)``, summed over dim 1);
        ``weight`` broadcastable to ``(N,)`` (``(N, *)`` for a dense target). Returns ``(N,)`` (``(N, *)``)
        for ``"none"``, else a scalar, in ``pred``'s dtype.

    Example:
        >>> loss = QualityFocalLoss(beta=2.0)
        >>> pred = torch.randn(6, 4, requires_grad=True)
        >>> labels, scores = torch.tensor([0, 4, 2, 4, 1, 3]), torch.rand(6)
        >>> loss(pred, (labels, scores), avg_factor=4.0).backward()
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        beta: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        activated: bool = False,
    ) -> None:
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid("QualityFocalLoss", use_sigmoid)
        self.beta = _check_exponent("beta", beta)
        self.activated = _check_bool("activated", activated)

    def _hparams(self) -> dict[str, object]:
        return {"beta": self.beta, "activated": self.activated}

    def forward(
        self,
        pred: Tensor,
        target: Tensor | Sequence[Tensor],
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        reduction = _check_reduction_override(reduction_override, self.reduction)
        pred = _check_tensor("pred", pred)
        fn = quality_focal_loss_with_prob if self.activated else QF.quality_focal_loss
        if isinstance(target, Tensor):
            if target.shape != pred.shape:
                raise ValueError(
                    f"target: expected a dense target of pred's shape {tuple(pred.shape)}, got {tuple(target.shape)}"
                )
            if pred.dim() < 2:
                raise ValueError(f"pred: expected shape (N, C, *), got {tuple(pred.shape)}")
            target = target.type_as(pred)
        elif isinstance(target, (tuple, list)) and len(target) == 2:
            target = _background_outside_classes(pred, *target)
        else:
            raise TypeError(
                f"target: expected a (labels, scores) pair or a dense tensor, got {type(target).__name__}"
            )
        loss = _sum_over_classes(
            lambda **kw: fn(pred, target, beta=self.beta, **kw), pred, weight, reduction, avg_factor
        )
        return self.loss_weight * loss


def _background_outside_classes(pred: Tensor, labels: object, scores: object) -> tuple[Tensor, Tensor]:
    """mmdetection's (labels, scores): a label outside [0, C) (-1, C, ...) is background, its score unused."""
    labels = _check_tensor("labels", labels)
    scores = _check_tensor("scores", scores)
    if pred.dim() != 2:
        raise ValueError(
            f"pred: expected shape (N, C) with a (labels, scores) target, got {tuple(pred.shape)}"
        )
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"labels: expected an integer tensor of class indices, got {labels.dtype}")
    c = pred.shape[1]
    labels = labels.long()
    pos = (labels >= 0) & (labels < c)
    labels = torch.where(pos, labels, torch.full_like(labels, c))
    if scores.shape == pos.shape:
        scores = torch.where(
            pos, scores.to(pred.dtype), torch.zeros((), dtype=pred.dtype, device=scores.device)
        )
    return labels, scores  # other shapes: qfocal names the error


def _sum_over_classes(
    fn: Callable[..., Tensor],
    pred: Tensor,
    weight: Tensor | None,
    reduction: str,
    avg_factor: float | Tensor | None,
) -> Tensor:
    """mmdetection's QFL reduction: the elementwise loss summed over dim 1, then ``weight_reduce_loss``."""
    anchors = pred.shape[:1] + pred.shape[2:]
    if weight is not None:
        what = "one weight per anchor: mmdetection's QFL sums over classes first"
        weight = _check_weight_broadcasts(weight, anchors, what).expand(anchors).unsqueeze(1)
    if reduction == "none":
        return fn(weight=weight, reduction="none").sum(1)
    if reduction == "mean" and avg_factor is None:
        # mmdetection's loss.mean() over anchors; an empty batch gives 0 (connected), not 0 / 0.
        total = fn(weight=weight, reduction="sum")
        count = math.prod(anchors)
        return total / count if count else total
    return fn(weight=weight, reduction=reduction, avg_factor=avg_factor)


@MODELS.register_module(force=True)
class FocalLoss(_MMDetLoss):
    r"""mmdetection's sigmoid ``FocalLoss`` computed by :func:`qfocal.sigmoid_focal_loss`.

    Config: ``dict(type='qfocal.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)``. From
    "Focal Loss for Dense Object Detection" (Lin et al., ICCV 2017, arXiv:1708.02002):
    ``a_t BCE(x, t) (1 - p_t)^gamma`` elementwise.

    Args:
        use_sigmoid: must be True (as in mmdetection).
        gamma: focusing exponent, ``>= 0``.
        alpha: balance in [0, 1] (qfocal's functions read a negative alpha as "none"; mmdetection does not).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        loss_weight: factor of the loss.
        activated: ``pred`` holds probabilities (:func:`qfocal._with_prob.py_focal_loss_with_prob`).

    Forward:
        ``pred`` ``(N, C)``; ``target`` a dense tensor of the same shape, or integer labels ``(N,)`` with ``C``
        and negative labels (-1) meaning background; ``weight`` of shape ``(N, C)``, ``(N,)`` (per anchor) or
        ``(N * C,)``, as mmdetection reshapes it. Returns ``(N, C)`` for ``"none"``, else a scalar.

    Example:
        >>> loss = FocalLoss(gamma=2.0, alpha=0.25)
        >>> pred = torch.randn(6, 4, requires_grad=True)
        >>> loss(pred, torch.tensor([0, 4, 2, 4, 1, -1]), avg_factor=3.0).backward()
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        gamma: float = 2.0,
        alpha: float = 0.25,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        activated: bool = False,
    ) -> None:
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid("FocalLoss", use_sigmoid)
        self.gamma = _check_exponent("gamma", gamma)
        self.alpha = _check_unit_alpha(
            "FocalLoss", alpha, "qfocal's sigmoid_focal_loss reads a negative alpha as 'no alpha'"
        )
        self.activated = _check_bool("activated", activated)

    def _hparams(self) -> dict[str, object]:
        return {"gamma": self.gamma, "alpha": self.alpha, "activated": self.activated}

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        reduction = _check_reduction_override(reduction_override, self.reduction)
        pred = _check_tensor("pred", pred)
        target = _check_tensor("target", target)
        if pred.dim() == target.dim():
            target = target.type_as(pred)  # dense (one-hot or soft) target
        else:
            if pred.dim() != 2 or target.dim() != 1:
                raise ValueError(
                    f"target: expected labels (N,) for pred (N, C) or a dense target of pred's shape, got "
                    f"pred {tuple(pred.shape)} and target {tuple(target.shape)}"
                )
            if target.dtype not in _INT_DTYPES:
                raise TypeError(f"target: expected integer class labels, got {target.dtype}")
            labels = target.long()
            # mmdetection's CUDA kernel treats every label matching no class as background; its CPU one_hot
            # raises on -1. -1 is background here; labels above C are still refused.
            target = torch.where(labels < 0, torch.full_like(labels, pred.shape[1]), labels)
            target = _check_label_range(target, pred.shape[1])
            if not self.activated:  # py_focal_loss_with_prob one-hot encodes them itself
                target = F.one_hot(target, pred.shape[1] + 1)[:, : pred.shape[1]].to(pred.dtype)
        if weight is not None:
            weight = _focal_weight(weight, pred)
        if reduction == "none":
            avg_factor = None  # mmdetection ignores it there
        fn = py_focal_loss_with_prob if self.activated else QF.sigmoid_focal_loss
        loss = fn(
            pred,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            weight=weight,
            reduction=reduction,
            avg_factor=avg_factor,
        )
        return self.loss_weight * loss


def _check_label_range(labels: Tensor, c: int) -> Tensor:
    if value_checks_enabled() and labels.numel() and bool((labels > c).any()):
        raise ValueError(
            f"target: expected class labels in [-1, {c}] ({c} and -1 = background), got "
            f"{int((labels > c).sum())} above {c} (first: {int(labels[labels > c][0])})"
        )
    return labels


def _focal_weight(weight: object, pred: Tensor) -> Tensor:
    """mmdetection's focal weight: shaped like the loss, or ``(N,)`` per anchor, or ``(N * C,)`` flattened."""
    weight = _check_tensor("weight", weight)
    if weight.shape == pred.shape:
        return weight
    if pred.dim() == 2 and weight.dim() >= 1:
        n, c = pred.shape
        if weight.shape[0] == n and weight.numel() == n:
            return weight.reshape(n, 1)
        if weight.shape[0] != n and weight.numel() == n * c:
            return weight.reshape(n, c)
    raise ValueError(
        f"weight: expected shape {tuple(pred.shape)}, ({pred.shape[0]},) per anchor or "
        f"({pred.numel()},) flattened (mmdetection's focal weight shapes), got {_describe(weight)}"
    )


@MODELS.register_module(force=True)
class VarifocalLoss(_MMDetLoss):
    r"""mmdetection's ``VarifocalLoss`` computed by :func:`qfocal.varifocal_loss`.

    Config: ``dict(type='qfocal.VarifocalLoss', use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True,
    loss_weight=1.0)``. From "VarifocalNet" (Zhang et al., CVPR 2021, arXiv:2008.13367).

    Args:
        use_sigmoid: must be True (as in mmdetection).
        alpha: weight of the negatives in [0, 1] (mmdetection also takes alpha > 1; qfocal does not).
        gamma: focusing exponent of the negatives, ``>= 0``.
        iou_weighted: weight positives by their IoU target (True) or by 1.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        loss_weight: factor of the loss.

    Forward:
        ``pred`` ``(N, C)`` logits; ``target`` of the same shape (IoU at the class of a positive, else 0);
        ``weight`` broadcastable to ``(N, C)`` (per anchor: ``(N, 1)``). Returns ``(N, C)`` for ``"none"``.

    Example:
        >>> loss = VarifocalLoss()
        >>> pred = torch.randn(6, 4, requires_grad=True)
        >>> loss(pred, torch.rand(6, 4) * (torch.rand(6, 4) > 0.7), avg_factor=3.0).backward()
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid("VarifocalLoss", use_sigmoid)
        self.alpha = _check_unit_alpha("VarifocalLoss", alpha, "qfocal's varifocal_loss takes no other")
        self.gamma = _check_exponent("gamma", gamma)
        self.iou_weighted = _check_bool("iou_weighted", iou_weighted)

    def _hparams(self) -> dict[str, object]:
        return {"alpha": self.alpha, "gamma": self.gamma, "iou_weighted": self.iou_weighted}

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        reduction = _check_reduction_override(reduction_override, self.reduction)
        pred = _check_tensor("pred", pred)
        target = _check_tensor("target", target)
        if target.shape != pred.shape:
            raise ValueError(f"target: expected pred's shape {tuple(pred.shape)}, got {tuple(target.shape)}")
        if weight is not None:
            what = "mmdetection multiplies the elementwise loss; a per-anchor weight is (N, 1)"
            weight = _leading_ones(_check_weight_broadcasts(weight, pred.shape, what), pred.dim())
        loss = QF.varifocal_loss(
            pred,
            target.type_as(pred),
            alpha=self.alpha,
            gamma=self.gamma,
            iou_weighted=self.iou_weighted,
            weight=weight,
            reduction=reduction,
            avg_factor=None if reduction == "none" else avg_factor,
        )
        return self.loss_weight * loss


@MODELS.register_module(force=True)
class DistributionFocalLoss(_MMDetLoss):
    r"""mmdetection's ``DistributionFocalLoss`` computed by :func:`qfocal.distribution_focal_loss`.

    Config: ``dict(type='qfocal.DistributionFocalLoss', loss_weight=0.25)``. From "Generalized Focal Loss"
    (Li et al., arXiv:2006.04388): cross-entropy towards the two bins around each continuous target.

    Args:
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        loss_weight: factor of the loss.

    Forward:
        ``pred`` ``(N, n + 1)`` logits over the bins ``0..n``; ``target`` ``(N,)`` in ``[0, n)``; ``weight``
        broadcastable to ``(N,)``. Returns ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> loss = DistributionFocalLoss(loss_weight=0.25)
        >>> pred = torch.randn(8, 17, requires_grad=True)
        >>> loss(pred, torch.rand(8) * 15.9, avg_factor=4.0).backward()
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)

    def _hparams(self) -> dict[str, object]:
        return {}

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        reduction = _check_reduction_override(reduction_override, self.reduction)
        pred = _check_tensor("pred", pred)
        if pred.dim() != 2:
            raise ValueError(f"pred: expected shape (N, n + 1) (mmdetection's DFL), got {tuple(pred.shape)}")
        if weight is not None:
            weight = _check_weight_broadcasts(weight, pred.shape[:1], "one weight per row of pred")
        loss = QF.distribution_focal_loss(
            pred,
            target,
            weight=weight,
            reduction=reduction,
            avg_factor=None if reduction == "none" else avg_factor,
        )
        return self.loss_weight * loss
