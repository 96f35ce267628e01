"""nn.Module wrappers: they store hyper-parameters and call :mod:`qfocal.functional`, nothing more.

Besides the torch-style modules, ``QFocalLoss`` and ``FocalLoss`` are drop-ins for YOLOv5's classes of the same
names (``utils/loss.py``): same constructor, same call, same numbers, but they never mutate the
``nn.BCEWithLogitsLoss`` they wrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn, TypedDict, cast

from torch import Tensor, nn

from ._checks import (
    _check_alpha,
    _check_exponent,
    _check_finite_real,
    _check_reduction,
    torchscript_message,
)
from ._names import loss_entry, losses_for
from .functional import distribution_focal_loss, quality_focal_loss, sigmoid_focal_loss, varifocal_loss

__all__ = [
    "DistributionFocalLoss",
    "FocalLoss",
    "QFocalLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "VarifocalLoss",
    "build_loss",
]


class _Loss(nn.Module):
    """Shared forward: call ``loss_fn`` with the stored hyper-parameters, then scale by ``loss_weight``.

    ``loss_fn`` is a class attribute (a staticmethod of :mod:`qfocal.functional`): the one place to swap or wrap
    the function a module runs, e.g. to count calls.
    """

    loss_fn: staticmethod[..., Tensor]

    def __init__(self, reduction: str, loss_weight: float) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self.loss_weight = _check_finite_real("loss_weight", loss_weight)

    def _hparams(self) -> dict[str, object]:
        raise NotImplementedError

    def __prepare_scriptable__(self) -> NoReturn:
        raise RuntimeError(torchscript_message(f"qfocal.{type(self).__name__}"))

    def forward(
        self,
        logits: Tensor,
        target: Tensor | Sequence[Tensor],
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """The loss of ``logits`` against ``target`` times ``loss_weight``; ``reduction_override`` (mmdetection's
        name) replaces the stored reduction for this call."""
        reduction = self.reduction if reduction_override is None else _check_reduction(reduction_override)
        loss = self.loss_fn(
            logits, target, weight=weight, reduction=reduction, avg_factor=avg_factor, **self._hparams()
        )
        return loss * self.loss_weight if self.loss_weight != 1.0 else loss

    def extra_repr(self) -> str:
        hp = {k: v for k, v in self._hparams().items() if k != "pos_weight"}
        items = [f"{k}={v}" for k, v in hp.items()] + [
            f"reduction={self.reduction!r}",
            f"loss_weight={self.loss_weight}",
        ]
        return ", ".join(items)


class QualityFocalLoss(_Loss):
    """Module form of :func:`qfocal.quality_focal_loss` (GFL, arXiv:2006.04388).

    Args:
        beta: exponent of ``|t - sigmoid(x)|`` (the paper's beta), ``>= 0``.
        alpha: balance in [0, 1], or None (the paper; mmdetection's ``QualityFocalLoss``).
        pos_weight: optional BCE ``pos_weight`` (stored as a buffer, moves with ``.to()``).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        loss_weight: a scalar multiplier (mmdetection's ``loss_weight``).

    Example:
        >>> import torch
        >>> criterion = QualityFocalLoss(beta=2.0)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.rand(4, 3)).backward()
    """

    def __init__(
        self,
        *,
        beta: float = 2.0,
        alpha: float | None = None,
        pos_weight: Tensor | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction, loss_weight)
        self.beta = _check_exponent("beta", beta)
        self.alpha = _check_alpha(alpha)
        self.register_buffer("pos_weight", pos_weight)

    loss_fn = staticmethod(quality_focal_loss)

    def _hparams(self) -> dict[str, object]:
        return {"beta": self.beta, "alpha": self.alpha, "pos_weight": self.pos_weight}


class SigmoidFocalLoss(_Loss):
    """Module form of :func:`qfocal.sigmoid_focal_loss` (arXiv:1708.02002); soft targets allowed.

    Example:
        >>> import torch
        >>> criterion = SigmoidFocalLoss(alpha=0.25, gamma=2.0)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, (torch.rand(4, 3) > 0.5).float()).backward()
    """

    def __init__(
        self,
        *,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        pos_weight: Tensor | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction, loss_weight)
        self.alpha = _check_alpha(alpha, negative_disables=True)
        self.gamma = _check_exponent("gamma", gamma)
        self.register_buffer("pos_weight", pos_weight)

    loss_fn = staticmethod(sigmoid_focal_loss)

    def _hparams(self) -> dict[str, object]:
        return {"alpha": self.alpha, "gamma": self.gamma, "pos_weight": self.pos_weight}


class VarifocalLoss(_Loss):
    """Module form of :func:`qfocal.varifocal_loss` (VarifocalNet, arXiv:2008.13367).

    Example:
        >>> import torch
        >>> criterion = VarifocalLoss(alpha=0.75, gamma=2.0)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.rand(4, 3) * (torch.rand(4, 3) > 0.5)).backward()
    """

    def __init__(
        self,
        *,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction, loss_weight)
        if alpha is None:
            raise ValueError("alpha: expected a value in [0, 1] for VarifocalLoss, got None")
        self.alpha = _check_alpha(alpha)
        self.gamma = _check_exponent("gamma", gamma)
        if not isinstance(iou_weighted, bool):
            raise TypeError(f"iou_weighted: expected a bool, got {type(iou_weighted).__name__}")
        self.iou_weighted = iou_weighted

    loss_fn = staticmethod(varifocal_loss)

    def _hparams(self) -> dict[str, object]:
        return {"alpha": self.alpha, "gamma": self.gamma, "iou_weighted": self.iou_weighted}


class DistributionFocalLoss(_Loss):
    """Module form of :func:`qfocal.distribution_focal_loss` (GFL, arXiv:2006.04388).

    Example:
        >>> import torch
        >>> criterion = DistributionFocalLoss()
        >>> logits = torch.randn(8, 17, requires_grad=True)
        >>> criterion(logits, torch.rand(8) * 15.9).backward()
    """

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)

    loss_fn = staticmethod(distribution_focal_loss)

    def _hparams(self) -> dict[str, object]:
        return {}


class _WrappedBCE(TypedDict):
    """What a YOLOv5 drop-in passes to its function besides the logits, target and exponent."""

    alpha: float | None
    pos_weight: Tensor | None
    weight: Tensor | None
    reduction: str


class _YOLOv5Wrapper(nn.Module):
    """Common part of the YOLOv5 drop-ins: read, never write, the wrapped ``nn.BCEWithLogitsLoss``, and follow
    its broadcasting: its ``weight`` and ``pos_weight`` broadcast to the logits by torch's rules, as in YOLOv5
    (unlike the functions' weight rule, where a weight one dimension short is per anchor)."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss | None, gamma: float, alpha: float | None) -> None:
        super().__init__()
        if loss_fcn is None:
            loss_fcn = nn.BCEWithLogitsLoss()
        if not isinstance(loss_fcn, nn.BCEWithLogitsLoss):
            raise TypeError(f"loss_fcn: expected an nn.BCEWithLogitsLoss, got {type(loss_fcn).__name__}")
        self.loss_fcn = loss_fcn
        self.gamma = _check_exponent("gamma", gamma)
        self.alpha = _check_alpha(alpha)

    def __prepare_scriptable__(self) -> NoReturn:
        raise RuntimeError(torchscript_message(f"qfocal.{type(self).__name__}"))

    @property
    def reduction(self) -> str:
        """The wrapped BCE's reduction, which these losses honour (YOLOv5 overwrote it with "none")."""
        return self.loss_fcn.reduction

    def _kwargs(self, pred: Tensor) -> _WrappedBCE:
        weight = self.loss_fcn.weight
        if isinstance(weight, Tensor) and weight.dim() < pred.dim():
            # nn.BCEWithLogitsLoss broadcasts its weight by torch's rules (a (C,) weight is per class, whatever
            # N is); the functions would read a weight one dimension short as per anchor, so align it first.
            weight = weight.reshape((1,) * (pred.dim() - weight.dim()) + tuple(weight.shape))
        return {
            "alpha": self.alpha,
            "pos_weight": self.loss_fcn.pos_weight,
            "weight": weight,
            "reduction": self.loss_fcn.reduction,
        }

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"


class QFocalLoss(_YOLOv5Wrapper):
    """Drop-in for YOLOv5's ``QFocalLoss(loss_fcn, gamma=1.5, alpha=0.25)``: :func:`qfocal.quality_focal_loss`
    with ``beta=gamma``, the wrapped BCE's ``pos_weight``, ``weight`` and ``reduction``.

    Example:
        >>> import torch
        >>> criterion = QFocalLoss(nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0])), gamma=1.5)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.rand(4, 3)).backward()
    """

    def __init__(
        self, loss_fcn: nn.BCEWithLogitsLoss | None = None, gamma: float = 1.5, alpha: float | None = 0.25
    ):
        super().__init__(loss_fcn, gamma, alpha)

    loss_fn = staticmethod(quality_focal_loss)

    def forward(self, pred: Tensor, true: Tensor) -> Tensor:
        return self.loss_fn(pred, true, beta=self.gamma, **self._kwargs(pred))


class FocalLoss(_YOLOv5Wrapper):
    """Drop-in for YOLOv5's ``FocalLoss(loss_fcn, gamma=1.5, alpha=0.25)``: :func:`qfocal.sigmoid_focal_loss`
    with the wrapped BCE's ``pos_weight``, ``weight`` and ``reduction``.

    Example:
        >>> import torch
        >>> criterion = FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.rand(4, 3)).backward()
    """

    def __init__(
        self, loss_fcn: nn.BCEWithLogitsLoss | None = None, gamma: float = 1.5, alpha: float | None = 0.25
    ):
        super().__init__(loss_fcn, gamma, alpha)

    loss_fn = staticmethod(sigmoid_focal_loss)

    def forward(self, pred: Tensor, true: Tensor) -> Tensor:
        return self.loss_fn(pred, true, gamma=self.gamma, **self._kwargs(pred))


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """The loss module called ``name`` (any name or alias of :mod:`qfocal._names`: ``"qfl"``, ``"QFocal"``,
    ``"varifocal"``, ...) built with ``kwargs``.

    Example:
        >>> build_loss("qfocal", beta=2.0)
        QualityFocalLoss(beta=2.0, alpha=None, reduction='mean', loss_weight=1.0)
    """
    module: nn.Module = globals()[cast(str, loss_entry(name, losses_for("functional")).module)](**kwargs)
    return module  # every "functional" loss has a module
