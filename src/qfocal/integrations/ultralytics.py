"""Ultralytics YOLO with qfocal's classification losses: a ``v8DetectionLoss``, a trainer, one call and a command.

Ultralytics trains the classes of YOLOv8/YOLO11/YOLO26 detection heads with BCE against the task-aligned
assigner's soft targets (the alignment metric scaled to the IoU of the best-aligned anchor): IoU-aware scores in
[0, 1], exactly Quality Focal Loss's setting. :class:`DetectionLoss` keeps Ultralytics' assigner, box (CIoU) and
DFL terms and swaps only the elementwise classification criterion, so the term stays
``sum(loss * class_weights) / target_scores_sum`` as Ultralytics normalises BCE:

==============  ==========================================================================  ======================
``cls_loss``    criterion (:mod:`qfocal.functional`)                                        options (defaults)
==============  ==========================================================================  ======================
``"bce"``       Ultralytics' own ``nn.BCEWithLogitsLoss``; numbers identical to Ultralytics  none
``"qfocal"``    :func:`qfocal.quality_focal_loss`, arXiv:2006.04388                          ``beta=2.0, alpha=None``
``"varifocal"`` :func:`qfocal.varifocal_loss`, arXiv:2008.13367                              ``alpha=0.75, gamma=2.0,
                                                                                            iou_weighted=True``
``"focal"``     :func:`qfocal.sigmoid_focal_loss` (Ultralytics' ``FocalLoss`` defaults)     ``alpha=0.25, gamma=1.5``
==============  ==========================================================================  ======================

Training: :class:`QFocalDetectionTrainer` (a ``DetectionTrainer`` whose model builds :class:`DetectionLoss`),
:func:`train` (one call, offline), ``qfocal ultralytics-train`` on the command line. Checkpoints hold a plain
Ultralytics ``DetectionModel``: they load with ``ultralytics.YOLO("best.pt")`` without qfocal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._cli import CommandError, report
from .._names import loss_name
from ..modules import QualityFocalLoss, SigmoidFocalLoss, VarifocalLoss
from ._cli_args import ULTRALYTICS_LOSSES, add_ultralytics_arguments
from ._offline import offline, offline_import, preserved_torch_state

with offline_import():  # Ultralytics probes the network (DNS) on import unless YOLO_OFFLINE is set
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG
    from ultralytics.utils import loss as _ultralytics_loss
    from ultralytics.utils.loss import v8DetectionLoss

E2ELoss = getattr(_ultralytics_loss, "E2ELoss", None)  # Ultralytics >= 8.4: end-to-end (YOLO26) heads

__all__ = ["CLS_LOSSES", "DetectionLoss", "QFocalDetectionModel", "QFocalDetectionTrainer", "main", "train"]

CLS_LOSSES = ULTRALYTICS_LOSSES
_DEFAULTS: dict[str, dict[str, Any]] = {
    "bce": {},
    "qfl": {"beta": 2.0, "alpha": None},
    "vfl": {"alpha": 0.75, "gamma": 2.0, "iou_weighted": True},
    "focal": {"alpha": 0.25, "gamma": 1.5},
}
_MODULES = {"qfl": QualityFocalLoss, "vfl": VarifocalLoss, "focal": SigmoidFocalLoss}


def _check_cls_loss(cls_loss: object, loss_kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    cls_loss = loss_name(cls_loss, CLS_LOSSES, what="cls_loss")
    unknown = sorted(set(loss_kwargs) - set(_DEFAULTS[cls_loss]))
    if unknown:
        allowed = sorted(_DEFAULTS[cls_loss]) or "none"
        raise TypeError(f"cls_loss={cls_loss!r}: expected options among {allowed}, got {unknown}")
    return cls_loss, {**_DEFAULTS[cls_loss], **loss_kwargs}


class _ElementwiseCls(nn.Module):
    """``criterion(pred_scores, target_scores)`` -> the unreduced loss, in fp32 (BCE's dtype under autocast)."""

    def __init__(self, cls_loss: str, options: Mapping[str, Any]) -> None:
        super().__init__()
        self.loss = _MODULES[cls_loss](reduction="none", **options)
        # options the module's constructor lets through (varifocal's alpha=None) fail here, not mid-run
        self.loss(torch.zeros(1, 1), torch.zeros(1, 1))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.loss(pred.float(), target.float())


class DetectionLoss(v8DetectionLoss):
    """Ultralytics' ``v8DetectionLoss`` with the classification term chosen by ``cls_loss``.

    Args:
        model: an Ultralytics ``DetectionModel`` (de-paralleled, with ``model.args`` set, as for
            ``v8DetectionLoss``).
        cls_loss: ``"bce"`` (Ultralytics' own, the default) | ``"qfocal"`` | ``"varifocal"`` | ``"focal"``.
        tal_topk, tal_topk2: passed to ``v8DetectionLoss`` (task-aligned assigner).
        **loss_kwargs: the criterion's options (see the module docstring), e.g. ``beta=2.0, alpha=None``
            for ``"qfocal"``; unknown ones are errors.

    Call and return are ``v8DetectionLoss``'s: ``loss, items = criterion(preds, batch)``, ``loss`` of shape
    ``(3,)`` (box, cls, dfl) times the batch size.

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel  # doctest: +SKIP
        >>> model = DetectionModel("yolov8n.yaml", nc=2)  # doctest: +SKIP
        >>> model.args = ultralytics.cfg.get_cfg()  # doctest: +SKIP
        >>> loss, items = DetectionLoss(model, "qfocal")(model(batch["img"]), batch)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        cls_loss: str = "bce",
        *,
        tal_topk: int = 10,
        tal_topk2: int | None = None,
        **loss_kwargs: Any,
    ) -> None:
        cls_loss, options = _check_cls_loss(cls_loss, loss_kwargs)
        kwargs = (
            {"tal_topk": tal_topk} if tal_topk2 is None else {"tal_topk": tal_topk, "tal_topk2": tal_topk2}
        )
        super().__init__(model, **kwargs)
        self.cls_loss, self.cls_options = cls_loss, options
        if cls_loss != "bce":  # the only line v8DetectionLoss's classification term depends on
            self.bce = _ElementwiseCls(cls_loss, options).to(self.device)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.cls_options.items())
        return f"{type(self).__name__}(cls_loss={self.cls_loss!r}{', ' if options else ''}{options})"


class QFocalDetectionModel(DetectionModel):
    """A ``DetectionModel`` whose ``init_criterion`` builds :class:`DetectionLoss` (wrapped in ``E2ELoss`` for
    end-to-end heads such as YOLO26's, as Ultralytics does)."""

    def __init__(
        self,
        cfg: str | dict = "yolov8n.yaml",
        ch: int = 3,
        nc: int | None = None,
        verbose: bool = True,
        *,
        cls_loss: str = "bce",
        loss_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        loss_kwargs = dict(loss_kwargs or {})
        cls_loss = _check_cls_loss(cls_loss, loss_kwargs)[0]  # fail before building the network
        super().__init__(cfg, ch=ch, nc=nc, verbose=verbose)
        self.cls_loss, self.loss_kwargs = cls_loss, loss_kwargs

    def init_criterion(self):
        make = functools.partial(DetectionLoss, cls_loss=self.cls_loss, **self.loss_kwargs)
        if getattr(self.model[-1], "one2one_cv2", None) is not None:
            if E2ELoss is None:
                raise NotImplementedError("end-to-end heads need Ultralytics >= 8.4 (E2ELoss)")
            return E2ELoss(self, make)
        return make(self)


class QFocalDetectionTrainer(DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` training a :class:`QFocalDetectionModel`.

    Args:
        cfg, overrides, _callbacks: as ``DetectionTrainer``. ``overrides`` may also carry ``cls_loss`` and
            ``loss_kwargs`` (so ``YOLO(...).train(trainer=QFocalDetectionTrainer, cls_loss="qfocal")`` works);
            they are taken out before Ultralytics checks its arguments.
        cls_loss, loss_kwargs: the classification criterion and its options (:class:`DetectionLoss`).

    Example:
        >>> trainer = QFocalDetectionTrainer(  # doctest: +SKIP
        ...     overrides={"model": "yolov8n.yaml", "data": "data.yaml", "epochs": 1}, cls_loss="qfocal"
        ... )
        >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg=DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict | None = None,
        *,
        cls_loss: str | None = None,
        loss_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        overrides = dict(overrides or {})
        given_cls_loss = overrides.pop("cls_loss", None)
        given_kwargs = overrides.pop("loss_kwargs", None)
        cls_loss = cls_loss or given_cls_loss or "bce"
        loss_kwargs = dict(loss_kwargs if loss_kwargs is not None else (given_kwargs or {}))
        self.cls_loss, self.loss_kwargs = _check_cls_loss(cls_loss, loss_kwargs)[0], loss_kwargs
        super().__init__(cfg, overrides, _callbacks)

    def train(self):
        if getattr(self, "ddp", False) and self.cls_loss != "bce":
            # Ultralytics' DDP workers rebuild the trainer from its Ultralytics arguments only: they would train
            # with BCE without a word. Refuse instead.
            raise NotImplementedError(
                f"cls_loss={self.cls_loss!r} with multi-GPU DDP (device={self.args.device!r}): not supported; "
                "train on one device"
            )
        return super().train()

    def get_model(
        self, cfg: str | dict | None = None, weights: nn.Module | None = None, verbose: bool = True
    ):
        from ultralytics.utils import RANK

        model = QFocalDetectionModel(
            cfg,
            ch=self.data.get("channels", 3),
            nc=self.data["nc"],
            verbose=verbose and RANK == -1,
            cls_loss=self.cls_loss,
            loss_kwargs=self.loss_kwargs,
        )
        if hasattr(
            self, "set_model_names_for_load"
        ):  # Ultralytics >= 8.4: class names before loading weights
            model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        return model

    def save_model(self):
        # Save the EMA as Ultralytics' own DetectionModel: checkpoints then load without qfocal installed.
        ema = self.ema.ema if self.ema is not None else None
        if not isinstance(ema, QFocalDetectionModel):
            return super().save_model()
        ema.__class__ = DetectionModel
        try:
            return super().save_model()
        finally:
            ema.__class__ = QFocalDetectionModel


def train(
    model: str | Path = "yolov8n.yaml",
    *,
    data: str | Path,
    cls_loss: str = "bce",
    loss_kwargs: Mapping[str, Any] | None = None,
    offline_mode: bool = True,
    **overrides: Any,
) -> QFocalDetectionTrainer:
    """Train an Ultralytics YOLO detector with qfocal's classification loss in one call, offline by default.

    Args:
        model: a model YAML (``"yolov8n.yaml"``, ``"yolo11n.yaml"``, ...) to train from scratch, or a local ``.pt``.
        data: dataset YAML (Ultralytics / YOLO format).
        cls_loss: ``"bce"`` | ``"qfocal"`` | ``"varifocal"`` | ``"focal"`` (:class:`DetectionLoss`).
        loss_kwargs: the criterion's options, e.g. ``{"beta": 2.0}``.
        offline_mode: no downloads, installs or hub calls (:func:`qfocal.integrations.offline`).
        **overrides: any Ultralytics training argument: ``epochs``, ``imgsz``, ``batch``, ``device``, ``workers``,
            ``project``, ``name``, ``exist_ok``, ``plots``, ``cls`` (the classification gain) ...

    Returns:
        the trainer after training (``trainer.save_dir``, ``trainer.metrics``, ``trainer.best``).

    Example:
        >>> from qfocal.integrations import ultralytics as qu
        >>> qu.train("yolov8n.yaml", data="toy/data.yaml", cls_loss="qfocal", epochs=1, imgsz=64)  # doctest: +SKIP
    """
    args = {"model": str(model), "data": str(data), **overrides}
    with offline(yolov5_package=None) if offline_mode else contextlib.nullcontext(), preserved_torch_state():
        trainer = QFocalDetectionTrainer(overrides=args, cls_loss=cls_loss, loss_kwargs=loss_kwargs)
        trainer.train()
    return trainer


# ----------------------------------------------------------------------------------------------------------
# Command line: `qfocal ultralytics-train MODEL key=value ...`
# ----------------------------------------------------------------------------------------------------------
def _value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def run_command(args: argparse.Namespace) -> int:
    """``qfocal ultralytics-train``: every argument is checked before Ultralytics scans the dataset."""
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"expected key=value, got {item!r}", usage=True)
        overrides[key.lstrip("-").replace("-", "_")] = _value(value)
    if "data" not in overrides:
        raise CommandError("expected data=<dataset.yaml>", usage=True)
    loss_kwargs = {
        k: getattr(args, k) for k in ("beta", "gamma", "iou_weighted") if getattr(args, k) is not None
    }
    if hasattr(args, "alpha"):
        loss_kwargs["alpha"] = args.alpha
    try:
        cls_loss, options = _check_cls_loss(args.cls_loss, loss_kwargs)
        if cls_loss != "bce":
            _ElementwiseCls(cls_loss, options)  # the values, not only the names
    except (TypeError, ValueError) as exc:
        raise CommandError(f"--cls-loss {args.cls_loss}: {exc}", usage=True) from None
    data = overrides.pop("data")
    if not Path(str(data)).is_file():
        raise CommandError(f"data: expected a dataset yaml file, got {data!r}", usage=True)
    trainer = train(
        args.model,
        data=data,
        cls_loss=args.cls_loss,
        loss_kwargs=loss_kwargs,
        offline_mode=not args.online,
        **overrides,
    )
    print(f"results in {trainer.save_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qfocal.integrations.ultralytics MODEL data=... [key=value ...] [--cls-loss qfocal]``."""
    parser = argparse.ArgumentParser(
        prog="python -m qfocal.integrations.ultralytics",
        description="Train an Ultralytics YOLO detector with qfocal's classification loss, offline.",
    )
    add_ultralytics_arguments(parser)
    try:
        return run_command(parser.parse_args(argv))
    except CommandError as exc:
        return report(parser.prog, exc)


if __name__ == "__main__":
    import sys

    sys.exit(main())
