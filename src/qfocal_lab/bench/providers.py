"""The providers :mod:`qfocal_lab.bench.losses` times, by exact name (:data:`PROVIDERS`): qfocal's losses on each
backend, and the focal-family losses of YOLOv5, torchvision, Ultralytics and kornia, plain BCE and a copy (the
memory-bandwidth floor). Each entry is a description and a factory that returns ``fn(x, t, label)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

FUSED = "qfocal-fused"


# ----------------------------------------------------------------------------------------------------------
# Providers: name -> (what it computes, factory(pos_weight) -> loss(x, t, label) callable)
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _qfocal_mode(backend: str, checks: bool) -> Iterator[None]:
    import qfocal

    previous_checks = qfocal.set_value_checks(checks)
    try:
        with qfocal.backend(backend):
            yield
    finally:
        qfocal.set_value_checks(previous_checks)


def _qfocal(kind: str, backend: str, checks: bool = False) -> Callable:
    def make(pos_weight: Tensor) -> Callable:
        import qfocal

        def run(x: Tensor, t: Tensor, label: Tensor) -> Tensor:
            with _qfocal_mode(backend, checks):
                if kind == "qfl":
                    return qfocal.quality_focal_loss(x, t, beta=1.5, alpha=0.25, pos_weight=pos_weight)
                if kind == "focal":
                    return qfocal.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0)
                return qfocal.varifocal_loss(x, t, alpha=0.75, gamma=2.0, reduction="sum") / x.shape[-1]

        return run

    return make


def _yolov5(name: str) -> Callable:
    def make(pos_weight: Tensor) -> Callable:
        from yolov5.utils import loss as yolov5_loss

        criterion = getattr(yolov5_loss, name)(
            torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight), gamma=1.5, alpha=0.25
        )
        return lambda x, t, label: criterion(x, t)

    return make


def _yolov5_compiled(pos_weight: Tensor) -> Callable:
    """YOLOv5's QFocalLoss under ``torch.compile``: what a savvy user tries before a fused kernel."""
    from yolov5.utils.loss import QFocalLoss

    criterion = QFocalLoss(torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight), gamma=1.5, alpha=0.25)
    compiled = torch.compile(criterion, dynamic=False)
    return lambda x, t, label: compiled(x, t)


def _torchvision(pos_weight: Tensor) -> Callable:
    from torchvision.ops import sigmoid_focal_loss

    return lambda x, t, label: sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="mean")


def _ultralytics(pos_weight: Tensor) -> Callable:
    from ultralytics.utils.loss import VarifocalLoss

    criterion = VarifocalLoss(gamma=2.0, alpha=0.75)
    return lambda x, t, label: criterion(x, t, label)


def _kornia(pos_weight: Tensor) -> Callable:
    from kornia.losses import binary_focal_loss_with_logits

    return lambda x, t, label: binary_focal_loss_with_logits(x, t, alpha=0.25, gamma=2.0, reduction="mean")


def _bce(pos_weight: Tensor) -> Callable:
    return lambda x, t, label: F.binary_cross_entropy_with_logits(x, t)


def _bce_compiled(pos_weight: Tensor) -> Callable:
    """BCE under ``torch.compile``: one fused pass for the loss and one for its gradient, the least any
    focal-family loss must compute (the floor the fused op is measured against)."""
    compiled = torch.compile(lambda x, t: F.binary_cross_entropy_with_logits(x, t), dynamic=False)
    return lambda x, t, label: compiled(x, t)


def _criterion(gain: str | float) -> Callable:
    """The criterion the YOLOv5 / Ultralytics integrations run for ``qfl`` (QualityFocalLoss, beta 2, mean; value
    checks on, as by default) times its gain: ``"auto"`` balances it to BCE's gradient norm on every call
    (:func:`qfocal.integrations.balance.loss_and_gain`), 1.0 leaves it as it is."""

    def make(pos_weight: Tensor) -> Callable:
        import qfocal
        from qfocal.integrations.balance import loss_and_gain

        qfl, bce = qfocal.QualityFocalLoss(beta=2.0), torch.nn.BCEWithLogitsLoss()

        def run(x: Tensor, t: Tensor, label: Tensor) -> Tensor:
            with _qfocal_mode("fused", True):
                if gain == "auto":
                    loss, g = loss_and_gain(qfl, bce, x, t)
                    return loss * g
                return qfl(x, t)

        return run

    return make


def _copy(pos_weight: Tensor) -> Callable:
    out: dict[str, Tensor] = {}

    def run(x: Tensor, t: Tensor, label: Tensor) -> Tensor:
        buf = out.get("buf")
        if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or buf.device != x.device:
            buf = out["buf"] = torch.empty_like(x)
        return buf.copy_(x)

    return run


PROVIDERS: dict[str, tuple[str, Callable]] = {
    FUSED: (
        "qfocal.quality_focal_loss, YOLOv5 form (beta=1.5, alpha=0.25, pos_weight), backend 'fused'",
        _qfocal("qfl", "fused"),
    ),
    "qfocal-reference": ("the same, backend 'reference' (plain PyTorch)", _qfocal("qfl", "reference")),
    "qfocal-inductor": (
        "the same, backend 'inductor' (on CUDA: Inductor's generated Triton)",
        _qfocal("qfl", "inductor"),
    ),
    "qfocal-fused-checked": (
        "qfocal-fused with the value-range checks on (the default)",
        _qfocal("qfl", "fused", True),
    ),
    "qfocal-fused-focal": (
        "qfocal.sigmoid_focal_loss(alpha=0.25, gamma=2), backend 'fused'",
        _qfocal("focal", "fused"),
    ),
    "qfocal-fused-vfl": (
        "qfocal.varifocal_loss, Ultralytics' normalisation, backend 'fused'",
        _qfocal("vfl", "fused"),
    ),
    "yolov5-qfocal": (
        "yolov5.utils.loss.QFocalLoss(BCEWithLogitsLoss(pos_weight), 1.5, 0.25)",
        _yolov5("QFocalLoss"),
    ),
    "yolov5-qfocal-compiled": (
        "torch.compile(yolov5.utils.loss.QFocalLoss(BCEWithLogitsLoss(pos_weight), 1.5, 0.25))",
        _yolov5_compiled,
    ),
    "yolov5-focal": (
        "yolov5.utils.loss.FocalLoss(BCEWithLogitsLoss(pos_weight), 1.5, 0.25)",
        _yolov5("FocalLoss"),
    ),
    "torchvision-focal": ("torchvision.ops.sigmoid_focal_loss(alpha=0.25, gamma=2, mean)", _torchvision),
    "ultralytics-vfl": ("ultralytics.utils.loss.VarifocalLoss(gamma=2, alpha=0.75)", _ultralytics),
    "kornia-focal": ("kornia.losses.binary_focal_loss_with_logits(alpha=0.25, gamma=2, mean)", _kornia),
    "qfocal-criterion": (
        "qfocal.QualityFocalLoss(beta=2), mean, checks on: the integrations' qfl criterion at gain 1",
        _criterion(1.0),
    ),
    "qfocal-criterion-auto": (
        "the same balanced to BCE's gradient norm on every call (cls_gain / obj_gain 'auto', the default)",
        _criterion("auto"),
    ),
    "bce": ("torch.nn.functional.binary_cross_entropy_with_logits (eager, mean)", _bce),
    "bce-compiled": (
        "torch.compile(binary_cross_entropy_with_logits): the floor of any focal-family loss",
        _bce_compiled,
    ),
    "copy": ("device copy of the logits into a preallocated buffer (bandwidth yardstick, fwd only)", _copy),
}


_FORWARD_ONLY = {"copy"}
_CUDA_ONLY = {"qfocal-inductor"}  # on the CPU it is what qfocal-fused runs
