"""Ultralytics YOLO with qfocal's classification losses: a ``v8DetectionLoss``, a trainer, one call and a command.

Ultralytics trains the classes of YOLOv8/YOLO11/YOLO26 detection heads with BCE against the task-aligned
assigner's soft targets (the alignment metric scaled to the IoU of the best-aligned anchor): IoU-aware scores in
[0, 1], exactly Quality Focal Loss's setting. :class:`DetectionLoss` keeps Ultralytics' assigner, box (CIoU) and
DFL terms and swaps only the elementwise classification criterion, so the term stays
``sum(loss * class_weights) / target_scores_sum`` as Ultralytics normalises BCE:

* ``cls_loss="bce"``: Ultralytics' own ``nn.BCEWithLogitsLoss``, numbers identical to Ultralytics'; no options.
* ``cls_loss="qfocal"``: :func:`qfocal.quality_focal_loss` (arXiv:2006.04388); ``beta=2.0, alpha=None``.
* ``cls_loss="varifocal"``: :func:`qfocal.varifocal_loss` (arXiv:2008.13367); ``alpha=0.75, gamma=2.0,
  iou_weighted=True``.
* ``cls_loss="focal"``: :func:`qfocal.sigmoid_focal_loss` with Ultralytics' ``FocalLoss`` defaults;
  ``alpha=0.25, gamma=1.5``.

Balance (``cls_gain``): Ultralytics' gains were tuned for BCE, and these criteria shrink its gradient (QFL's to
0.02-0.09x of BCE's at initialisation, about 0.5x later). By default (``cls_gain="auto"``) the classification
term is scaled on every batch so that its gradient with respect to the class logits has BCE's norm
(:mod:`qfocal.integrations.balance`). A number is a fixed multiplier, ``1.0`` the unbalanced criterion. With
``"bce"`` nothing is scaled and the numbers are Ultralytics' own, bit for bit.

Training: :class:`QFocalDetectionTrainer` (a ``DetectionTrainer`` whose model builds :class:`DetectionLoss`),
:func:`train` (one call, offline), ``qfocal ultralytics-train`` on the command line. The trainer logs one line with
the criterion, its options and gain. It records them under ``qfocal`` in the run's ``args.yaml`` and on the model
as ``model.qfocal``, so in every checkpoint, ``best.pt`` included. They are not kept in ``trainer.args``, which
Ultralytics checks again against its own keys. Checkpoints hold a plain Ultralytics ``DetectionModel``: they load with
``ultralytics.YOLO("best.pt")`` without qfocal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from .. import modules
from .._cli import CommandError
from .._names import loss_entry, loss_name
from ._cli_args import ULTRALYTICS_LOSSES
from ._gain import AUTO, check_gain, gain_label, loss_and_gain
from ._offline import offline, offline_import, preserved_torch_state

with offline_import():  # Ultralytics probes the network (DNS) on import unless YOLO_OFFLINE is set
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG, LOGGER
    from ultralytics.utils import loss as _ultralytics_loss
    from ultralytics.utils.loss import v8DetectionLoss

E2ELoss = getattr(_ultralytics_loss, "E2ELoss", None)  # Ultralytics >= 8.4: end-to-end (YOLO26) heads

__all__ = [
    "CLS_LOSSES",
    "DetectionLoss",
    "QFocalDetectionModel",
    "QFocalDetectionTrainer",
    "check_cls_gain",
    "describe",
    "main",
    "record",
    "train",
]

CLS_LOSSES = ULTRALYTICS_LOSSES
# Each criterion's options and their defaults at this entry point, and its module: from the loss table.
_DEFAULTS: dict[str, dict[str, Any]] = {
    name: loss_entry(name).defaults_at("ultralytics") for name in CLS_LOSSES
}
_MODULES: dict[str, Callable[..., nn.Module]] = {
    name: getattr(modules, module) for name in CLS_LOSSES if (module := loss_entry(name).module)
}


def _check_cls_loss(cls_loss: object, loss_kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    cls_loss = loss_name(cls_loss, CLS_LOSSES, what="cls_loss")
    unknown = sorted(set(loss_kwargs) - set(_DEFAULTS[cls_loss]))
    if unknown:
        allowed = sorted(_DEFAULTS[cls_loss]) or "none"
        raise TypeError(f"cls_loss={cls_loss!r}: expected options among {allowed}, got {unknown}")
    return cls_loss, {**_DEFAULTS[cls_loss], **loss_kwargs}


def check_cls_gain(cls_loss: str, cls_gain: object) -> float | None:
    """The gain: a number, or None for gradient-norm matching; BCE's "auto" is exactly 1."""
    gain = check_gain(cls_gain, what="cls_gain")
    return 1.0 if gain is None and cls_loss == "bce" else gain


def describe(cls_loss: str, options: Mapping[str, Any], cls_gain: float | None) -> str:
    """``"qfl(beta=2.0, alpha=None) x auto (BCE's gradient norm)"``: the criterion as the trainer logs it."""
    text = f"{cls_loss}({', '.join(f'{k}={v!r}' for k, v in options.items())})" if options else cls_loss
    if cls_gain is None:
        return f"{text} x auto (BCE's gradient norm)"
    return text if cls_gain == 1.0 else f"{text} x {cls_gain:g}"


class _ElementwiseCls(nn.Module):
    """``criterion(pred_scores, target_scores)`` -> the unreduced loss times the balance, in fp32 (BCE's dtype
    under autocast). ``gain`` None: on each call, the gain that gives the summed loss the gradient norm of BCE."""

    def __init__(self, cls_loss: str, options: Mapping[str, Any], gain: float | None = 1.0) -> None:
        super().__init__()
        self.gain = gain
        if cls_loss == "bce":
            self.loss: nn.Module = nn.BCEWithLogitsLoss(reduction="none")
        else:
            self.loss = _MODULES[cls_loss](reduction="none", **options)
            # options the module's constructor lets through (varifocal's alpha=None) fail here, not mid-run
            self.loss(torch.zeros(1, 1), torch.zeros(1, 1))
        self.reference = nn.BCEWithLogitsLoss(reduction="none")  # Ultralytics' own criterion

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = pred.float(), target.float()
        if self.gain is None:  # the loss's own pass gives the norms where it can (loss_and_gain)
            loss, gain = loss_and_gain(self.loss, self.reference, pred, target)
            return loss * gain
        loss = cast(Tensor, self.loss(pred, target))  # nn.Module's __call__ returns Any
        return loss if self.gain == 1.0 else loss * self.gain


class DetectionLoss(v8DetectionLoss):
    """Ultralytics' ``v8DetectionLoss`` with the classification term chosen by ``cls_loss``.

    Args:
        model: an Ultralytics ``DetectionModel`` (de-paralleled, with ``model.args`` set, as for
            ``v8DetectionLoss``).
        cls_loss: ``"bce"`` (Ultralytics' own, the default) | ``"qfocal"`` | ``"varifocal"`` | ``"focal"``.
        cls_gain: ``"auto"`` (or ``None``; the default): the classification term gets BCE's gradient norm with
            respect to the class logits on every batch, :mod:`qfocal.integrations.balance`; a number >= 0: a fixed
            multiplier of the term, ``1.0`` the unbalanced criterion. ``"bce"`` with ``"auto"`` is Ultralytics'
            own criterion, untouched. The multiplier is on top of Ultralytics' ``cls`` gain.
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
        cls_gain: float | str | None = AUTO,
        tal_topk: int = 10,
        tal_topk2: int | None = None,
        **loss_kwargs: Any,
    ) -> None:
        cls_loss, options = _check_cls_loss(cls_loss, loss_kwargs)
        gain = check_cls_gain(cls_loss, cls_gain)
        kwargs = (
            {"tal_topk": tal_topk} if tal_topk2 is None else {"tal_topk": tal_topk, "tal_topk2": tal_topk2}
        )
        super().__init__(model, **kwargs)
        self.cls_loss, self.cls_options, self.cls_gain = cls_loss, options, gain
        if cls_loss != "bce" or gain != 1.0:  # the only line v8DetectionLoss's classification term depends on
            # Ultralytics types bce as nn.BCEWithLogitsLoss; it only calls it as criterion(pred, target)
            self.bce = _ElementwiseCls(cls_loss, options, gain).to(self.device)  # type: ignore[assignment]

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.cls_options.items())
        return f"{type(self).__name__}(cls_loss={self.cls_loss!r}{options}, cls_gain={gain_label(self.cls_gain)!r})"


def record(cls_loss: str, options: Mapping[str, Any], cls_gain: float | None) -> dict[str, Any]:
    """What a run records of its classification criterion: ``{"cls_loss", "loss_kwargs", "cls_gain"}``, the
    options with their defaults filled in and the gain as ``"auto"`` or the number."""
    return {"cls_loss": cls_loss, "loss_kwargs": dict(options), "cls_gain": gain_label(cls_gain)}


class QFocalDetectionModel(DetectionModel):
    """A ``DetectionModel`` whose ``init_criterion`` builds :class:`DetectionLoss` (wrapped in ``E2ELoss`` for
    end-to-end heads such as YOLO26's, as Ultralytics does)."""

    def __init__(
        self,
        cfg: str | dict[str, Any] = "yolov8n.yaml",
        ch: int = 3,
        nc: int | None = None,
        verbose: bool = True,
        *,
        cls_loss: str = "bce",
        loss_kwargs: Mapping[str, Any] | None = None,
        cls_gain: float | str | None = AUTO,
    ) -> None:
        loss_kwargs = dict(loss_kwargs or {})
        cls_loss, options = _check_cls_loss(cls_loss, loss_kwargs)  # fail before building the network
        gain = check_cls_gain(cls_loss, cls_gain)
        super().__init__(cfg, ch=ch, nc=nc, verbose=verbose)  # type: ignore[no-untyped-call]  # Ultralytics' method, unannotated
        self.cls_loss, self.loss_kwargs, self.cls_gain = cls_loss, loss_kwargs, gain
        # the run record, pickled with the model into every checkpoint (a plain dict: loads without qfocal)
        self.qfocal = record(cls_loss, options, gain)

    def init_criterion(self) -> Any:  # DetectionLoss, or Ultralytics' E2ELoss around it
        make: Callable[[nn.Module], DetectionLoss] = functools.partial(
            DetectionLoss, cls_loss=self.cls_loss, cls_gain=self.cls_gain, **self.loss_kwargs
        )
        # Ultralytics leaves DetectionModel.model unannotated: nn.Module.__getattr__ types it Tensor | Module
        if getattr(self.model[-1], "one2one_cv2", None) is not None:  # type: ignore[index]
            if E2ELoss is None:
                raise NotImplementedError("end-to-end heads need Ultralytics >= 8.4 (E2ELoss)")
            return E2ELoss(self, make)
        return make(self)


class QFocalDetectionTrainer(DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` training a :class:`QFocalDetectionModel`.

    Args:
        cfg, overrides, _callbacks: as ``DetectionTrainer``. ``overrides`` may also carry ``cls_loss``,
            ``loss_kwargs`` and ``cls_gain`` (so ``YOLO(...).train(trainer=QFocalDetectionTrainer,
            cls_loss="qfocal")`` works), or a run record ``qfocal`` (see below) to take them from; they are taken
            out before Ultralytics checks its arguments.
        cls_loss, loss_kwargs, cls_gain: the classification criterion, its options and its balance
            (:class:`DetectionLoss`).

    The run record ``trainer.qfocal``, ``{"cls_loss", "loss_kwargs", "cls_gain"}`` with the options' defaults
    filled in (:func:`record`), is written under ``qfocal`` into the run's ``args.yaml``. The model carries it as
    ``model.qfocal`` into every checkpoint. :meth:`get_model` logs the criterion in one line.

    Example:
        >>> trainer = QFocalDetectionTrainer(  # doctest: +SKIP
        ...     overrides={"model": "yolov8n.yaml", "data": "data.yaml", "epochs": 1}, cls_loss="qfocal"
        ... )
        >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: str | Path | dict[str, Any] | SimpleNamespace = DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict[str, Any] | None = None,
        *,
        cls_loss: str | None = None,
        loss_kwargs: Mapping[str, Any] | None = None,
        cls_gain: float | str | None = None,
    ) -> None:
        from ultralytics.utils import RANK, YAML

        overrides = dict(overrides or {})
        given = overrides.pop("qfocal", None) or {}  # a run record, e.g. from a previous run's args
        if not isinstance(given, Mapping):
            raise TypeError(f"qfocal: expected the run record (a mapping), got {given!r}")
        for key in ("cls_loss", "loss_kwargs", "cls_gain"):
            if key in overrides:
                given = {**given, key: overrides.pop(key)}
        cls_loss = cls_loss or given.get("cls_loss") or "bce"
        loss_kwargs = dict(loss_kwargs if loss_kwargs is not None else (given.get("loss_kwargs") or {}))
        cls_gain = cls_gain if cls_gain is not None else given.get("cls_gain", AUTO)
        self.cls_loss, options = _check_cls_loss(cls_loss, loss_kwargs)
        self.loss_kwargs, self.cls_gain = loss_kwargs, check_cls_gain(self.cls_loss, cls_gain)
        super().__init__(cfg, overrides, _callbacks)
        self.qfocal = record(self.cls_loss, options, self.cls_gain)
        if RANK in {
            -1,
            0,
        }:  # args.yaml again, with the record: the run's arguments say which loss it trained with
            YAML.save(self.save_dir / "args.yaml", {**vars(self.args), "qfocal": self.qfocal})

    def train(self) -> None:
        if getattr(self, "ddp", False) and self.cls_loss != "bce":
            # Ultralytics' DDP workers rebuild the trainer from its Ultralytics arguments only: they would train
            # with BCE without a word. Refuse instead.
            raise NotImplementedError(
                f"cls_loss={self.cls_loss!r} with multi-GPU DDP (device={self.args.device!r}): not supported; "
                "train on one device"
            )
        return super().train()  # type: ignore[no-untyped-call,no-any-return]  # Ultralytics' method, unannotated

    def get_model(
        self, cfg: str | dict[str, Any] | None = None, weights: nn.Module | None = None, verbose: bool = True
    ) -> QFocalDetectionModel:
        from ultralytics.utils import RANK

        model = QFocalDetectionModel(
            cfg,  # type: ignore[arg-type]  # as Ultralytics' get_model: the trainer passes its model yaml
            ch=self.data.get("channels", 3),
            nc=self.data["nc"],
            verbose=verbose and RANK == -1,
            cls_loss=self.cls_loss,
            loss_kwargs=self.loss_kwargs,
            cls_gain=self.cls_gain,
        )
        if verbose and RANK in {-1, 0}:
            LOGGER.info(
                f"qfocal: cls_loss={describe(self.cls_loss, model.qfocal['loss_kwargs'], self.cls_gain)}"
            )
        if hasattr(
            self, "set_model_names_for_load"
        ):  # Ultralytics >= 8.4: class names before loading weights
            model = self.set_model_names_for_load(model)  # type: ignore[no-untyped-call]  # Ultralytics' method, unannotated
        if weights:
            model.load(weights)  # type: ignore[no-untyped-call]  # Ultralytics' method, unannotated
        return model

    def save_model(self) -> None:
        # Save the EMA as Ultralytics' own DetectionModel: checkpoints then load without qfocal installed.
        ema = self.ema.ema if self.ema is not None else None
        if not isinstance(ema, QFocalDetectionModel):
            return super().save_model()  # type: ignore[no-untyped-call,no-any-return]  # Ultralytics' method, unannotated
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
    cls_gain: float | str | None = AUTO,
    offline_mode: bool = True,
    callbacks: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> QFocalDetectionTrainer:
    """Train an Ultralytics YOLO detector with qfocal's classification loss in one call, offline by default.

    Args:
        model: a model YAML (``"yolov8n.yaml"``, ``"yolo11n.yaml"``, ...) to train from scratch, or a local ``.pt``.
        data: dataset YAML (Ultralytics / YOLO format).
        cls_loss: ``"bce"`` | ``"qfocal"`` | ``"varifocal"`` | ``"focal"`` (:class:`DetectionLoss`).
        loss_kwargs: the criterion's options, e.g. ``{"beta": 2.0}``.
        cls_gain: ``"auto"`` (BCE's gradient norm on every batch) or a fixed multiplier (:class:`DetectionLoss`).
        offline_mode: no downloads, installs or hub calls (:func:`qfocal.integrations.offline`).
        callbacks: Ultralytics events to functions (or lists of them), added with ``trainer.add_callback``, e.g.
            :meth:`qfocal.integrations.balance.BalanceLog.ultralytics_callbacks`.
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
        trainer = QFocalDetectionTrainer(
            overrides=args, cls_loss=cls_loss, loss_kwargs=loss_kwargs, cls_gain=cls_gain
        )
        for event, functions in (callbacks or {}).items():
            for function in functions if isinstance(functions, (list, tuple)) else (functions,):
                trainer.add_callback(event, function)
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


DEFAULT_MODEL = "yolov8n.yaml"
_T = TypeVar("_T")
# qfocal's settings that may also come as key=value among Ultralytics' arguments, and the option each one is.
_QFOCAL_KEYS = {
    "model": "MODEL",
    "cls_loss": "--cls-loss",
    "cls_gain": "--cls-gain",
    "loss_kwargs": "--beta ...",
}


def _resolve_command(
    args: argparse.Namespace,
) -> tuple[str, str, float | str | None, dict[str, Any], dict[str, Any]]:
    """``(model, cls_loss, cls_gain, loss_kwargs, overrides)`` of the command line: the key=value forms of
    ``model``, ``data``, ``cls_loss``, ``cls_gain`` and ``loss_kwargs`` mean what the options mean (a positional
    ``data=...`` is not taken for the model); the same setting given twice with different values is an error."""
    from .._cli import loss_arg
    from ._cli_args import ULTRALYTICS_LOSSES, gain_arg

    items = list(args.overrides)
    model = args.model
    if model is not None and "=" in model:  # `data=x.yaml` without a model: argparse took it for the model
        items.insert(0, model)
        model = None
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise CommandError(f"expected key=value, got {item!r}", usage=True)
        if key in overrides:
            raise CommandError(f"{key}: given twice ({key}={overrides[key]!r} and {item!r})", usage=True)
        overrides[key] = _value(value)

    def merge(key: str, option_value: _T | None, parse: Callable[[object], _T]) -> _T | None:
        if key not in overrides:
            return option_value
        raw = overrides.pop(key)
        try:
            value = parse(raw)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise CommandError(f"{key}: {exc}", usage=True) from None
        if option_value is not None and option_value != value:
            raise CommandError(
                f"{key}={raw!r} and {_QFOCAL_KEYS[key]} {option_value!r} disagree; give one of them",
                usage=True,
            )
        return value

    def text(value: object) -> str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError(f"expected a name, got {value!r}")
        return str(value)

    model = merge("model", model, lambda v: text(v).strip())
    cls_loss = merge("cls_loss", args.cls_loss, lambda v: loss_arg(ULTRALYTICS_LOSSES)(text(v)))
    cls_gain = merge("cls_gain", args.cls_gain, lambda v: gain_arg(text(v)))
    loss_kwargs = {
        k: getattr(args, k) for k in ("beta", "gamma", "iou_weighted") if getattr(args, k) is not None
    }
    if hasattr(args, "alpha"):
        loss_kwargs["alpha"] = args.alpha
    if "loss_kwargs" in overrides:
        given = overrides.pop("loss_kwargs")
        if not isinstance(given, dict) or not all(isinstance(k, str) for k in given):
            raise CommandError(
                f"loss_kwargs: expected a mapping such as {{beta: 2.0}}, got {given!r}", usage=True
            )
        clash = sorted(k for k in given if k in loss_kwargs and loss_kwargs[k] != given[k])
        if clash:
            raise CommandError(
                f"loss_kwargs: {', '.join(clash)} also given as an option, differently", usage=True
            )
        loss_kwargs.update(given)
    return (
        model or DEFAULT_MODEL,
        cls_loss or "bce",
        cls_gain if cls_gain is not None else AUTO,
        loss_kwargs,
        overrides,
    )


def _check_model(model: str) -> None:
    """The model must be found before Ultralytics starts (no downloads): a local file, or a model yaml it
    knows by name."""
    path = Path(model)
    if path.suffix == ".pt":
        if not path.is_file():
            raise CommandError(
                f"model: {model!r} is not on disk (no downloads); build from a .yaml or pass a local .pt",
                usage=True,
            )
        return
    if path.suffix not in (".yaml", ".yml"):
        raise CommandError(
            f"model: expected a model yaml (yolov8n.yaml, yolo11n.yaml ...) or a .pt, got {model!r}",
            usage=True,
        )
    with offline(yolov5_package=None):
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(model)
        except (FileNotFoundError, OSError):
            raise CommandError(
                f"model: expected an Ultralytics model yaml (yolov8n.yaml, yolo11n.yaml ...) or a path, got {model!r}",
                usage=True,
            ) from None


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    """Ultralytics' own validator of its training arguments (types, fractions in [0, 1], integer minimums), before
    anything is built: ``epochs=-1`` is one line, not a traceback after the dataset scan."""
    with offline(yolov5_package=None):
        from ultralytics.cfg import check_cfg

        try:
            check_cfg(dict(overrides), hard=True)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc).strip().splitlines()[0], usage=True) from None


def run_command(args: argparse.Namespace) -> int:
    """``qfocal ultralytics-train``: every argument is checked before Ultralytics scans the dataset."""
    model, cls_loss_name, cls_gain, loss_kwargs, overrides = _resolve_command(args)
    if "data" not in overrides:
        raise CommandError("expected data=<dataset.yaml>", usage=True)
    try:
        cls_loss, options = _check_cls_loss(cls_loss_name, loss_kwargs)
        check_cls_gain(cls_loss, cls_gain)
        if cls_loss != "bce":
            _ElementwiseCls(cls_loss, options)  # the values, not only the names
    except (TypeError, ValueError) as exc:
        raise CommandError(f"--cls-loss {cls_loss_name}: {exc}", usage=True) from None
    data = overrides.pop("data")
    if not Path(str(data)).is_file():
        raise CommandError(f"data: expected a dataset yaml file, got {data!r}", usage=True)
    _check_overrides(overrides)
    _check_model(model)
    trainer = train(
        model,
        data=data,
        cls_loss=cls_loss_name,
        loss_kwargs=loss_kwargs,
        cls_gain=cls_gain,
        offline_mode=not args.online,
        **overrides,
    )
    print(f"results in {trainer.save_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qfocal.integrations.ultralytics ...``: the same as ``qfocal ultralytics-train ...``."""
    import sys

    from ..cli import main as qfocal_main

    return qfocal_main(["ultralytics-train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    import sys

    sys.exit(main())
