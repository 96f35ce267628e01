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

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._machine import package_version, run_facts
from .config import ConfigError

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

_TITLE = {"yolov5": "YOLOv5", "ultralytics": "Ultralytics"}
PR_IMAGES = 8  # images of the fixed batch the participation ratio is measured on


# ----------------------------------------------------------------------------------------------------------
# What each framework's trainer takes: train_args, models, devices
# ----------------------------------------------------------------------------------------------------------
# What the compare sets itself in each framework's trainer: train_args may not set these (they have options).
_SET_BY_COMPARE = {
    "yolov5": (
        "data", "cfg", "hyp", "weights", "epochs", "imgsz", "img", "batch_size", "seed", "device", "workers",
        "project", "name", "exist_ok", "noplots", "noval", "resume", "obj_loss", "obj_gain", "cls_loss", "cls_gain",
    ),
    "ultralytics": (
        "model", "data", "epochs", "imgsz", "batch", "seed", "device", "workers", "project", "name", "exist_ok",
        "plots", "val", "resume", "cls_loss", "cls_gain", "mode", "task",
    ),
}  # fmt: skip


def parse_train_arg(text: object) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as ``(key, value)``; the value as YAML would read a scalar: ``1`` an int, ``0.001`` a float,
    ``true`` / ``false`` a bool, ``none`` / ``null`` None, anything else the string (``AdamW``)."""
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"train_args: expected KEY=VALUE (e.g. optimizer=AdamW, lr0=0.001), got {text!r}")
    raw = raw.strip()
    low = raw.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low in ("none", "null", "~"):
        return key, None
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def _yolov5_hyp_keys() -> set[str]:
    """The keys of YOLOv5's stock hyp file and qfocal's hyp keys: what ``train_args`` sends to the hyp."""
    from qfocal.integrations import yolov5 as integration

    stock = integration.stock_hyp()
    return set(stock) | set(integration.LOSS_KEYS)


def _yolov5_options() -> dict[str, argparse.Action]:
    """The options of YOLOv5's ``train.py`` by destination, as its own parser declares them (type, choices)."""
    from qfocal.integrations import yolov5 as integration

    module = integration.load_train_module(None)
    seen: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_known_args

    def spy(self, *args, **kwargs):
        seen.append(self)
        return real(self, *args, **kwargs)

    argv, sys.argv = sys.argv, sys.argv[:1]
    argparse.ArgumentParser.parse_known_args = spy
    try:
        module.parse_opt(True)
    finally:
        argparse.ArgumentParser.parse_known_args = real
        sys.argv = argv
    return {a.dest: a for a in seen[0]._actions if a.dest != "help"}


def _known_train_keys(framework: str) -> set[str]:
    """Every key the framework's trainer takes (YOLOv5: hyp keys and ``train.py`` options; Ultralytics: its
    config keys)."""
    if framework == "yolov5":
        return _yolov5_hyp_keys() | set(_yolov5_options())
    from qfocal.integrations import offline

    with offline(yolov5_package=None):
        from ultralytics.cfg import DEFAULT_CFG_DICT
    return set(DEFAULT_CFG_DICT)


def check_train_args(
    framework: str, train_args: Mapping[str, Any] | Sequence[str], *, known: bool = True
) -> dict:
    """``train_args`` (a mapping, or ``KEY=VALUE`` strings) checked for ``framework``: keys the compare sets itself
    are refused (they have their own options), and, with ``known``, keys the trainer does not take.

    Raises:
        ConfigError: one line naming the key and what was expected.
    """
    try:
        pairs = (
            dict(train_args)
            if isinstance(train_args, Mapping)
            else dict(parse_train_arg(t) for t in train_args)
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key in pairs:
        if key in _SET_BY_COMPARE[framework]:
            raise ConfigError(
                f"train_args: {key} is set by the compare itself (--epochs, --imgsz, --batch, --losses, --seeds, "
                f"--device, --out ...), got {key}={pairs[key]!r}"
            )
    for key, value in pairs.items():  # whatever the trainer: a number that is no number never trains
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"train_args: {key}: expected a finite number, got {value!r}")
    if known and pairs:
        valid = _known_train_keys(framework)
        unknown = sorted(k for k in pairs if k not in valid)
        if unknown:
            raise ConfigError(
                f"train_args: expected {_TITLE[framework]} training keys (hyp keys or train options), got unknown "
                f"{', '.join(unknown)}"
            )
        try:
            (_check_yolov5_values if framework == "yolov5" else _check_ultralytics_values)(pairs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train_args: {str(exc).strip().splitlines()[0]}") from None
    return pairs


# YOLOv5's hyp keys that are fractions or probabilities (its hyp files' comments), and train.py's options that are.
_YOLOV5_FRACTIONS = (
    "lrf", "momentum", "warmup_momentum", "iou_t", "hsv_h", "hsv_s", "hsv_v", "translate", "perspective",
    "flipud", "fliplr", "mosaic", "mixup", "copy_paste", "label_smoothing",
)  # fmt: skip


def _check_yolov5_values(pairs: Mapping[str, Any]) -> None:
    """YOLOv5 has no validator of its own: its hyp values are numbers >= 0 (the learning rate > 0), fractions in
    [0, 1] where they are probabilities or fractions, qfocal's loss keys as the integration checks them; a
    ``train.py`` option must convert with the type its argparse declares and be one of its choices."""
    from qfocal.integrations import yolov5 as integration

    hyp_keys, options = _yolov5_hyp_keys(), _yolov5_options()
    loss = {k: v for k, v in pairs.items() if k in integration.LOSS_KEYS}
    if loss:
        integration.check_loss_keys(loss)
    for key, value in pairs.items():
        if key in hyp_keys:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number:
                if key in integration.LOSS_KEYS:  # names, "auto", None: checked by the integration above
                    continue
                raise TypeError(f"{key}: expected a number (a YOLOv5 hyp value), got {value!r}")
            if value < 0 or (key == "lr0" and value == 0):
                raise ValueError(
                    f"{key}: expected a number {'> 0' if key == 'lr0' else '>= 0'}, got {value!r}"
                )
        elif key in options:
            action = options[key]
            if action.nargs == 0:  # store_true / store_false
                if not isinstance(value, bool):
                    raise TypeError(f"{key}: expected true or false (a YOLOv5 train.py flag), got {value!r}")
                continue
            if value is None:
                continue
            if action.type is not None and not isinstance(value, list):
                try:
                    value = action.type(str(value))
                except (TypeError, ValueError, argparse.ArgumentTypeError):
                    kind = getattr(action.type, "__name__", "its type")
                    raise TypeError(
                        f"{key}: expected {kind} (YOLOv5 train.py --{key}), got {value!r}"
                    ) from None
            if action.choices is not None and value not in action.choices:
                raise ValueError(
                    f"{key}: expected one of {', '.join(map(str, action.choices))}, got {value!r}"
                )
        if key in _YOLOV5_FRACTIONS and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{key}: expected a fraction in [0, 1], got {value!r}")


def _check_ultralytics_values(pairs: Mapping[str, Any]) -> None:
    """Ultralytics' own validator (``ultralytics.cfg.check_cfg``: types, fractions in [0, 1], integer minimums)."""
    from qfocal.integrations import offline

    with offline(yolov5_package=None):
        from ultralytics.cfg import check_cfg
    check_cfg(dict(pairs), hard=True)


def _check_model(framework: str, model: str) -> None:
    """The model must be found before any run: a yaml of the framework (by name) or a local file."""
    path = Path(model)
    if framework == "yolov5":
        if path.suffix not in (".yaml", ".yml"):
            raise ConfigError(
                f"model: expected a YOLOv5 model yaml (yolov5n.yaml, yolov5s.yaml ...), got {model!r}"
            )
        root = Path(importlib.util.find_spec("yolov5").origin).parent
        if not (path.is_file() or any(root.glob(f"**/{path.name}"))):
            found = sorted(p.name for p in (root / "models").glob("*.yaml"))
            raise ConfigError(
                f"model: expected a YOLOv5 model yaml ({', '.join(found)}) or a path, got {model!r}"
            )
        return
    if path.suffix == ".pt":
        if not path.is_file():
            raise ConfigError(
                f"model: {model!r} is not on disk (no downloads); build from a .yaml or pass a local .pt"
            )
        return
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(
            f"model: expected an Ultralytics model yaml (yolov8n.yaml, yolo11n.yaml ...), got {model!r}"
        )
    from qfocal.integrations import offline

    with offline(yolov5_package=None):
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(model)
        except FileNotFoundError:
            raise ConfigError(
                f"model: expected an Ultralytics model yaml (yolov8n.yaml, yolo11n.yaml ...) or a path, got {model!r}"
            ) from None


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
# Threads, checkpoints
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def pinned_threads(n: int, framework: str) -> Iterator[None]:
    """torch uses ``n`` CPU threads in the block, also through Ultralytics' ``select_device`` (which resets them to
    its own ``NUM_THREADS``: patched for the block only); both are restored on exit."""
    old = torch.get_num_threads()
    torch_utils = None
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


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(path: Path) -> Any:
    """``torch.load`` as both frameworks load their own checkpoints (pickled modules: ``weights_only=False``; load
    only files you trust), with their packages importable offline."""
    from qfocal.integrations import offline_import

    with offline_import():
        if importlib.util.find_spec("yolov5") is not None:
            importlib.import_module(
                "yolov5.models.yolo"
            )  # a YOLOv5 checkpoint pickles yolov5.models.yolo classes
        return torch.load(path, map_location="cpu", weights_only=False)


def _model_of(ckpt: Any) -> nn.Module | None:
    if not isinstance(ckpt, dict):
        return None
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), nn.Module):
            return ckpt[key]
    return None


def _kind_of(ckpt: Any) -> str:
    """What a loaded file is, in words (``"a YOLOv5 checkpoint"``, ``"a qfocal FCOS checkpoint"``...)."""
    model = _model_of(ckpt)
    if model is not None:
        package = type(model).__module__.split(".")[0]
        head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
        if package == "ultralytics":
            from ultralytics.nn.tasks import DetectionModel

            return (
                "ultralytics"
                if isinstance(model, DetectionModel)
                else f"an Ultralytics {type(model).__name__}"
            )
        if package in ("yolov5", "models") and hasattr(head, "anchors"):
            return "yolov5"
        return f"a checkpoint of {type(model).__module__}.{type(model).__name__}"
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and "config" in ckpt:
        return "a qfocal FCOS checkpoint"
    if isinstance(ckpt, dict):
        return f"a dict with keys {sorted(map(str, ckpt))[:6]}"
    return f"a {type(ckpt).__name__}"


def check_weights(path: str | Path, framework: str) -> Path:
    """``path`` resolved, once it is known to hold a detection checkpoint of ``framework`` (loaded here).

    Raises:
        ConfigError: one line, ``weights: expected ..., got ...``: no such file, not a torch checkpoint, or a
            checkpoint of another model or framework.
    """
    expected = {
        "yolov5": "a YOLOv5 detection checkpoint (a .pt written by YOLOv5's train.py)",
        "ultralytics": "an Ultralytics detection checkpoint (a .pt written by an Ultralytics trainer)",
    }[framework]
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weights: expected {expected}, got {str(path)!r} (no such file)")
    try:
        ckpt = _load(file)
    except Exception as exc:  # any unpickling failure: not a checkpoint this machine can load
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(
            f"weights: expected {expected}, got {str(path)!r} (not loadable: {first})"
        ) from None
    kind = _kind_of(ckpt)
    if kind != framework:
        words = {"yolov5": "a YOLOv5 checkpoint", "ultralytics": "an Ultralytics checkpoint"}.get(kind, kind)
        raise ConfigError(f"weights: expected {expected}, got {words} in {str(path)!r}")
    return file.resolve()


def final_weights(run_dir: Path) -> Path:
    """The final weights both frameworks write: ``weights/last.pt`` (the EMA of the last epoch)."""
    return run_dir / "weights" / "last.pt"


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
        self._started(model.module if hasattr(model, "module") else model)
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
    def _unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def _set_cls(self, model: nn.Module, loss: str, gain: Any) -> None:
        from qfocal.integrations.ultralytics import check_cls_gain

        model.cls_loss, model.cls_gain = loss, check_cls_gain(loss, gain)
        model.criterion = None  # DetectionModel.loss builds the next one with init_criterion

    def ultralytics_callbacks(self) -> dict[str, Callable]:
        def train_start(trainer) -> None:
            model = self._unwrap(trainer.model)
            if self.variant.warmup:
                self._set_cls(model, "bce", 1.0)
            self._started(model)

        def epoch_start(trainer) -> None:
            if self._epoch_start(int(trainer.epoch)):
                self._set_cls(self._unwrap(trainer.model), self.variant.loss, self.variant.gain_label)

        def batch_end(trainer) -> None:
            criterion = getattr(self._unwrap(trainer.model), "criterion", None)
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
    if probe.framework == "ultralytics" and isinstance(getattr(model, "args", None), dict):
        from ultralytics.utils import IterableSimpleNamespace

        model.args = IterableSimpleNamespace(**model.args)
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
    if original is None:
        yield
        return

    def check_amp(model):
        record.amp = bool(original(model))
        return record.amp

    module.check_amp = check_amp
    try:
        yield
    finally:
        module.check_amp = original


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
        from qfocal.integrations.yolov5 import train
    else:
        from qfocal.integrations.ultralytics import train
    return train


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
