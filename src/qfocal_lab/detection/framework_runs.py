"""One run of the framework compare (:mod:`qfocal_lab.detection.frameworks`): train a loss variant with YOLOv5's or
Ultralytics' own trainer, and read what the run reports and what qfocal measures along it.

Per run, through the frameworks' callbacks (:class:`Probe`):

* the warm-up (TOOD's recipe): the first ``warmup`` epochs train the varied term with BCE, then the variant's
  criterion takes over at the start of epoch ``warmup`` (0-based). YOLOv5: the compare builds the integration's
  :class:`~qfocal.integrations.yolov5.ComputeLoss` itself (``train(compute_loss=...)``) and switches it with
  :meth:`~qfocal.integrations.yolov5.ComputeLoss.set_criterion` on ``on_train_epoch_start``. Ultralytics: on
  ``on_train_epoch_start`` the model's ``cls_loss`` / ``cls_gain`` are set and its ``criterion`` cleared, so that
  ``DetectionModel.loss`` builds the next criterion through ``init_criterion``. ``loss_by_epoch`` records the
  criterion that computed each training batch of each epoch (read at ``on_train_batch_end``).
* the score-IoU Spearman correlation of the framework's own validation predictions of the final epoch (after
  NMS, at the validator's confidence threshold): each prediction's score and its best IoU with a ground-truth box
  of its class (:func:`qfocal_lab.detection.quality.match_scores`), pooled over the validation images.
* the participation ratio of the gradient of the varied term with respect to its logits
  (:func:`qfocal_lab.studies.balance.participation_ratio`) on a fixed batch of training images (the first 8 of
  the training split, resized, no augmentation), computed with the criterion the run ends with: ``pr_start`` on
  the starting weights (seen at the start of training), ``pr_end`` on the final weights (the run's
  ``weights/last.pt``, the EMA the framework validated).
* the run facts (:func:`qfocal_lab._machine.run_facts`): the autocast dtype the framework trained in (YOLOv5: what its
  ``check_amp`` returned; Ultralytics: ``trainer.amp`` and ``args.amp``), CPU, threads, versions.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import numpy as np
import torch
from torch import nn

from .._machine import package_version, run_facts
from .config import ConfigError
from .framework_checks import (
    _load,
    _model_of,
    _yolov5_hyp_keys,
    check_train_args,
    check_weights,
    file_sha256,
    final_weights,
    parse_train_arg,
)

if TYPE_CHECKING:
    from qfocal.integrations.ultralytics import QFocalDetectionModel

__all__ = [
    "Probe",
    "check_train_args",
    "check_weights",
    "file_sha256",
    "parse_train_arg",
    "run_one",
    "train_ultralytics",
    "train_yolov5",
]

PR_IMAGES = 8  # images of the fixed batch the participation ratio is measured on


def _device(spec: str) -> str:
    """qfocal's ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` as both frameworks' device string (``cpu`` / ``N``)."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec in ("cuda", "cuda:0") or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} asked for, but this machine has no CUDA GPU")
        return spec[5:] if ":" in spec else "0"
    raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}")


# ----------------------------------------------------------------------------------------------------------
# Devices and threads
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def pinned_threads(n: int, framework: str) -> Iterator[None]:
    """torch uses ``n`` CPU threads in the block, also through Ultralytics' ``select_device`` (which resets them to
    its own ``NUM_THREADS``: patched for the block only); both are restored on exit."""
    old = torch.get_num_threads()
    torch_utils: Any = None  # the module, imported by name (its NUM_THREADS is set at run time)
    if framework == "ultralytics" and importlib.util.find_spec("ultralytics") is not None:
        from qfocal.integrations import offline_import

        with offline_import():
            torch_utils = importlib.import_module("ultralytics.utils.torch_utils")
    had = torch_utils is not None and hasattr(torch_utils, "NUM_THREADS")
    if had:
        old_ultralytics, torch_utils.NUM_THREADS = torch_utils.NUM_THREADS, n
    torch.set_num_threads(n)
    try:
        yield
    finally:
        if had:
            torch_utils.NUM_THREADS = old_ultralytics
        torch.set_num_threads(old)


def _unwrap(model: nn.Module) -> nn.Module:
    """``model`` out of its DataParallel / DistributedDataParallel wrapper (``.module``), else ``model``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


# ----------------------------------------------------------------------------------------------------------
# The probe: warm-up switch, criterion per epoch, PR at the start, score-IoU pairs of the validations
# ----------------------------------------------------------------------------------------------------------
class Probe:
    """Instruments one run through the framework's callbacks (see the module docstring).

    Args:
        framework: ``"yolov5"`` or ``"ultralytics"``.
        variant: the :class:`~qfocal_lab.detection.frameworks.Variant` (``loss``, ``gain_label``, ``warmup``).
        term: the varied term, ``"obj"`` or ``"cls"``.
        batch: the fixed ``(images, targets)`` of the PR (:func:`qfocal_lab.studies.balance.yolo_batch`), or None.
    """

    def __init__(self, framework: str, variant: Any, term: str, batch: tuple | None) -> None:
        self.framework, self.variant, self.term, self.batch = framework, variant, term, batch
        self.epoch = -1
        self.switch_epoch: int | None = None
        self.loss_by_epoch: list[list[str]] = []
        self.pr_start = math.nan
        self.validations: list[tuple[int, list, list]] = []  # (epoch, scores, ious) per validation
        self.loss: Any = None  # YOLOv5: the ComputeLoss train.py trains with
        self.amp: bool | None = None

    # shared ------------------------------------------------------------------------------------------------
    def _started(self, model: nn.Module) -> None:
        """The starting weights (the live model before the first step): the PR at the start."""
        if self.batch is not None:
            self.pr_start = self.participation(model)

    def participation(self, model: nn.Module) -> float:
        """The PR of the varied term's gradient for ``model`` on the fixed batch, with the variant's criterion."""
        from ..studies.balance import (
            participation_ratio,
            term_gradient_ultralytics,
            term_gradient_yolov5,
            ultralytics_batch,
        )

        if self.batch is None:
            raise ValueError("participation: expected a probe with a fixed batch, got batch=None")
        device = next(model.parameters()).device
        images, targets = (t.to(device) for t in self.batch)
        if self.framework == "yolov5":
            keys = {f"{self.term}_loss": self.variant.loss, f"{self.term}_gain": self.variant.gain_label}
            grad = term_gradient_yolov5(model, images, targets, self.term, hyp=keys)
        else:
            grad = term_gradient_ultralytics(
                model,
                ultralytics_batch(images, targets),
                "cls",
                cls_loss=self.variant.loss,
                cls_gain=self.variant.gain_label,
            )
        return participation_ratio(grad)

    def _epoch_start(self, epoch: int) -> bool:
        """Note the epoch; True when the warm-up ends here (the caller switches the criterion)."""
        self.epoch = epoch
        self.loss_by_epoch.append([])
        if self.variant.warmup and epoch == self.variant.warmup:
            self.switch_epoch = epoch
            return True
        return False

    def _batch_loss(self, name: str) -> None:
        if self.loss_by_epoch and name not in self.loss_by_epoch[-1]:
            self.loss_by_epoch[-1].append(name)

    def _val_start(self) -> None:
        self.validations.append((self.epoch, [], []))

    def _pairs(self, boxes, scores, labels, gt_boxes, gt_labels) -> None:
        from .quality import match_scores

        if not self.validations:
            return
        s, i = match_scores(
            *(np.asarray(t.detach().float().cpu()) for t in (boxes, scores, labels, gt_boxes, gt_labels))
        )
        self.validations[-1][1].append(s)
        self.validations[-1][2].append(i)

    def score_iou(self, last_epoch: int) -> tuple[float, int]:
        """Spearman of score and IoU over the first validation of ``last_epoch`` (the final epoch's, not the
        re-validation of ``best.pt`` after training), and the number of pairs; (nan, 0) when there was none."""
        from .quality import spearman

        for epoch, scores, ious in self.validations:
            if epoch == last_epoch:
                s = np.concatenate(scores) if scores else np.zeros(0)
                i = np.concatenate(ious) if ious else np.zeros(0)
                return spearman(s, i), int(s.size)
        return math.nan, 0

    def record(self, epochs: int) -> dict[str, Any]:
        rho, n = self.score_iou(epochs - 1)
        return {
            "score_iou_spearman": rho,
            "score_iou_n": n,
            "pr_start": self.pr_start,
            "warmup": self.variant.warmup,
            "switch_epoch": self.switch_epoch,
            "loss_by_epoch": ["+".join(names) for names in self.loss_by_epoch],
        }

    # YOLOv5 ------------------------------------------------------------------------------------------------
    def yolov5_compute_loss(self, model: nn.Module, autobalance: bool = False):
        """What train.py builds its loss with: the integration's ComputeLoss, BCE on the term during a warm-up."""
        from qfocal.integrations.yolov5 import ComputeLoss

        loss = ComputeLoss(model, autobalance)
        if self.variant.warmup:
            loss.set_criterion(self.term, "bce")
        self.loss = loss
        self._started(_unwrap(model))
        return loss

    def yolov5_callbacks(self) -> dict[str, Callable]:
        def epoch_start(*args, **kwargs) -> None:
            if self._epoch_start(self.epoch + 1):
                self.loss.set_criterion(self.term, self.variant.loss, self.variant.gain_label)

        def batch_end(*args, **kwargs) -> None:
            self._batch_loss(getattr(self.loss, f"{self.term}_loss", "?"))

        def val_batch_end(batch_i, im, targets, paths, shapes, preds, *args, **kwargs) -> None:
            for si, pred in enumerate(preds):
                labels = targets[
                    targets[:, 0] == si, 1:
                ]  # (class, x, y, w, h) in pixels of the letterboxed image
                xy, wh = labels[:, 1:3], labels[:, 3:5]
                self._pairs(
                    pred[:, :4],
                    pred[:, 4],
                    pred[:, 5],
                    torch.cat((xy - wh / 2, xy + wh / 2), 1),
                    labels[:, 0],
                )

        return {
            "on_train_epoch_start": epoch_start,
            "on_train_batch_end": batch_end,
            "on_val_start": lambda *a, **k: self._val_start(),
            "on_val_batch_end": val_batch_end,
        }

    # Ultralytics -------------------------------------------------------------------------------------------
    @staticmethod
    def _trainer_model(trainer: Any) -> QFocalDetectionModel:
        """The model an Ultralytics trainer trains (built by ``QFocalDetectionTrainer``), out of its DDP wrapper."""
        model = trainer.model
        return model.module if hasattr(model, "module") else model

    def _set_cls(self, model: QFocalDetectionModel, loss: str, gain: Any) -> None:
        from qfocal.integrations.ultralytics import check_cls_gain

        model.cls_loss, model.cls_gain = loss, check_cls_gain(loss, gain)
        model.criterion = None  # DetectionModel.loss builds the next one with init_criterion

    def ultralytics_callbacks(self) -> dict[str, Callable]:
        def train_start(trainer) -> None:
            model = self._trainer_model(trainer)
            if self.variant.warmup:
                self._set_cls(model, "bce", 1.0)
            self._started(model)

        def epoch_start(trainer) -> None:
            if self._epoch_start(int(trainer.epoch)):
                self._set_cls(self._trainer_model(trainer), self.variant.loss, self.variant.gain_label)

        def batch_end(trainer) -> None:
            criterion = getattr(self._trainer_model(trainer), "criterion", None)
            self._batch_loss(getattr(criterion, "cls_loss", type(criterion).__name__))

        def val_start(validator) -> None:
            self._val_start()
            if getattr(validator, "_qfocal_probe", None) is self:
                return
            original = validator.update_metrics

            def update_metrics(preds, batch):
                for si, pred in enumerate(preds):
                    truth = validator._prepare_batch(
                        si, batch
                    )  # boxes in the letterboxed image's pixels, as pred
                    self._pairs(pred["bboxes"], pred["conf"], pred["cls"], truth["bboxes"], truth["cls"])
                return original(preds, batch)

            validator.update_metrics, validator._qfocal_probe = update_metrics, self

        return {
            "on_train_start": train_start,
            "on_train_epoch_start": epoch_start,
            "on_train_batch_end": batch_end,
            "on_val_start": val_start,
        }


def _fixed_batch(data: str, imgsz: int) -> tuple | None:
    """The PR's batch: the first :data:`PR_IMAGES` training images, or None when the data cannot give one."""
    from ..studies.balance import yolo_batch

    try:
        return yolo_batch(data, images=PR_IMAGES, imgsz=imgsz)
    except Exception:  # a data yaml yolo_batch does not read (a .txt list...): no PR, the run goes on
        return None


def _pr_end(probe: Probe, run_dir: Path, device: str) -> float:
    """The PR on the run's final weights (``weights/last.pt``, the EMA the framework validated)."""
    path = final_weights(run_dir)
    if probe.batch is None or not path.is_file():
        return math.nan
    model = _model_of(_load(path))
    if model is None:
        return math.nan
    model = model.float()
    args = getattr(model, "args", None)
    if probe.framework == "ultralytics" and isinstance(args, dict):
        from ultralytics.utils import IterableSimpleNamespace

        # torch types Module.__setattr__'s value as Tensor | Module; a Module takes any attribute
        model.args = IterableSimpleNamespace(**args)  # type: ignore[assignment]
    return probe.participation(model.to("cpu" if device == "cpu" else f"cuda:{device.split(',')[0]}"))


# ----------------------------------------------------------------------------------------------------------
# One run per framework
# ----------------------------------------------------------------------------------------------------------
def _yolov5_metrics(save_dir: Path) -> dict[str, Any]:
    """The final epoch's validation (YOLOv5 validates the EMA weights after every epoch): the trained model, not the
    epoch that scored best on the very images it is reported on."""
    csv = save_dir / "results.csv"
    if not csv.is_file():
        raise RuntimeError(f"YOLOv5 finished without validation results (no {csv})")
    lines = [line for line in csv.read_text().splitlines() if line.strip()]
    row = dict(zip((k.strip() for k in lines[0].split(",")), lines[-1].split(","), strict=False))
    p, r, map50, map5095 = (
        row[k] for k in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
    )
    return {
        "mAP50": float(map50),
        "mAP50-95": float(map5095),
        "precision": float(p),
        "recall": float(r),
        "source": "final epoch's validation (results.csv, last row)",
    }


@contextlib.contextmanager
def _yolov5_amp(record: Probe) -> Iterator[None]:
    """Record what YOLOv5's ``check_amp`` returns (train.py's ``amp``) in the block."""
    module = sys.modules.get("yolov5.train")
    original = getattr(module, "check_amp", None)
    if module is None or original is None:
        yield
        return

    def check_amp(model):
        record.amp = bool(original(model))
        return record.amp

    with mock.patch.object(module, "check_amp", check_amp):
        yield


def train_yolov5(train_fn, variant, seed: int, run_dir: Path, s: dict, *, diagnostics: bool = True) -> dict:
    """One YOLOv5 run; its final validation, diagnostics and facts (see the module docstring)."""
    # YOLOv5 7.0's noval crashes on non-final epochs, so it validates every epoch; the last one is reported.
    extra, term = s["train_args"], s["term"]
    hyp_keys = _yolov5_hyp_keys() if extra else set()
    opts = {k: v for k, v in extra.items() if k not in hyp_keys}
    hyp = {k: v for k, v in extra.items() if k in hyp_keys}
    if term == "obj":
        terms = {"obj_loss": variant.loss, "obj_gain": variant.gain_label, "cls_loss": "bce"}
    else:
        terms = {"obj_loss": "bce", "cls_loss": variant.loss, "cls_gain": variant.gain_label}
    probe = Probe("yolov5", variant, term, _fixed_batch(s["data"], s["imgsz"]) if diagnostics else None)
    if s.get("init"):  # fine-tune: the architecture is the checkpoint's (cfg "" keeps its anchors too)
        opts.update(weights=str(s["init"]), cfg="")
    else:
        opts.update(cfg=s["model"])
    if importlib.util.find_spec("yolov5") is not None:
        from qfocal.integrations.yolov5 import load_train_module

        load_train_module(None)  # imported, so that check_amp can be watched
    opts.update(callbacks=probe.yolov5_callbacks(), compute_loss=probe.yolov5_compute_loss)
    with _yolov5_amp(probe):
        opt = train_fn(
            data=str(s["data"]),
            hyp={**hyp, **terms},
            **opts,
            epochs=s["epochs"],
            imgsz=s["imgsz"],
            batch_size=s["batch"],
            seed=seed,
            device=s["device"],
            workers=s["workers"],
            project=str(run_dir.parent),
            name=run_dir.name,
            exist_ok=True,
            noplots=not s["plots"],
        )
    save_dir = Path(getattr(opt, "save_dir", run_dir))
    autocast = "unknown" if probe.amp is None else ("fp16" if probe.amp else "fp32")
    return {
        **_yolov5_metrics(save_dir),
        **probe.record(s["epochs"]),
        "pr_end": _pr_end(probe, save_dir, s["device"]) if diagnostics else math.nan,
        "run_facts": run_facts(autocast=autocast, framework="yolov5", device=s["device"]),
    }


def train_ultralytics(
    train_fn, variant, seed: int, run_dir: Path, s: dict, *, diagnostics: bool = True
) -> dict:
    """One Ultralytics run; its final validation, diagnostics and facts (see the module docstring)."""
    probe = Probe("ultralytics", variant, "cls", _fixed_batch(s["data"], s["imgsz"]) if diagnostics else None)
    trainer = train_fn(
        str(s["init"]) if s.get("init") else s["model"],  # a .pt: Ultralytics builds its model and loads it
        **s["train_args"],
        data=str(s["data"]),
        cls_loss=variant.loss,
        cls_gain=variant.gain_label,
        epochs=s["epochs"],
        imgsz=s["imgsz"],
        batch=s["batch"],
        seed=seed,
        device=s["device"],
        workers=s["workers"],
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
        plots=s["plots"],
        val=False,  # validate the final epoch only: faster, and the trained model is what gets reported
        callbacks=probe.ultralytics_callbacks(),
    )
    m = dict(getattr(trainer, "metrics", None) or {})
    missing = [k for k in ("metrics/mAP50(B)", "metrics/mAP50-95(B)") if k not in m]
    if missing:
        raise RuntimeError(
            f"Ultralytics finished without validation metrics: trainer.metrics lacks {missing}"
        )
    amp, args = getattr(trainer, "amp", None), getattr(trainer, "args", None)
    if getattr(args, "amp", None) == "bf16":
        autocast = "bf16"
    else:
        autocast = "unknown" if amp is None else ("fp16" if amp else "fp32")
    save_dir = Path(getattr(trainer, "save_dir", run_dir))
    return {
        "mAP50": float(m["metrics/mAP50(B)"]),
        "mAP50-95": float(m["metrics/mAP50-95(B)"]),
        "precision": float(m.get("metrics/precision(B)", math.nan)),
        "recall": float(m.get("metrics/recall(B)", math.nan)),
        "source": "final epoch's validation (val=False: best.pt is the last epoch; trainer.metrics)",
        **probe.record(s["epochs"]),
        "pr_end": _pr_end(probe, save_dir, s["device"]) if diagnostics else math.nan,
        "run_facts": run_facts(autocast=autocast, framework="ultralytics", device=s["device"]),
    }


RUN = {"yolov5": train_yolov5, "ultralytics": train_ultralytics}


def default_train_fn(framework: str) -> Callable[..., Any]:
    if framework == "yolov5":
        from qfocal.integrations.yolov5 import train as train_yolov5_run

        return train_yolov5_run
    from qfocal.integrations.ultralytics import train as train_ultralytics_run

    return train_ultralytics_run


def version(framework: str) -> str:
    return package_version(framework)


def run_one(
    framework: str,
    train_fn: Callable[..., Any],
    variant: Any,
    seed: int,
    run_dir: Path,
    s: dict,
    threads: int,
    *,
    diagnostics: bool = True,
    tag: str | None = None,
) -> tuple[dict, float]:
    """Train one run with ``threads`` pinned threads; its metrics and seconds. In a worker process of a parallel
    compare (``tag`` set), the frameworks' log lines go to stderr prefixed with the run's name."""
    t0 = time.perf_counter()
    with pinned_threads(threads, framework):
        metrics = RUN[framework](train_fn, variant, seed, run_dir, s, diagnostics=diagnostics)
    if tag is not None:
        print(f"[{tag}] finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return metrics, time.perf_counter() - t0
