"""The loss-balance study of YOLOv5 and Ultralytics: each loss term and the gradient it sends to the head, measured
on real models, logged along training and plotted. The rule itself (``cls_gain`` / ``obj_gain`` = ``"auto"``) is
the library's: :mod:`qfocal.integrations.balance`.

:func:`measure_yolov5` and :func:`measure_ultralytics` return, for a real model and one batch, each term's
value and the norm of its gradient with respect to the head outputs it acts on, for several criteria on the same
predictions. :func:`term_gradient_yolov5` and :func:`term_gradient_ultralytics` return that gradient itself, and
:func:`participation_ratio` how many of its elements carry it. :class:`BalanceLog` appends such measurements to a CSV along a training run (callbacks for both
frameworks). :func:`plot_balance` draws them (matplotlib, imported on use).

The log lives here; the measurements are :mod:`qfocal_lab.studies.balance_measure`'s, the plot
:mod:`qfocal_lab.studies.balance_plot`'s; every name stays importable from here.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qfocal.integrations.balance import AUTO, MAX_GAIN, check_gain, matched_gain

from .balance_measure import (  # noqa: F401  (moved to balance_measure; importable from here)
    LOSSES,
    ULTRALYTICS_TERMS,
    YOLOV5_TERMS,
    grad_ratios,
    measure_ultralytics,
    measure_yolov5,
    participation_ratio,
    term_gradient_ultralytics,
    term_gradient_yolov5,
    ultralytics_batch,
    ultralytics_terms,
    yolo_batch,
    yolov5_terms,
)
from .balance_plot import (
    plot_balance,
)

__all__ = [
    "AUTO",
    "LOSSES",
    "MAX_GAIN",
    "BalanceLog",
    "check_gain",
    "grad_ratios",
    "matched_gain",
    "measure_ultralytics",
    "measure_yolov5",
    "participation_ratio",
    "plot_balance",
    "read_log",
    "term_gradient_ultralytics",
    "term_gradient_yolov5",
    "ultralytics_batch",
    "yolo_batch",
]


# ----------------------------------------------------------------------------------------------------------
# Logging along training
# ----------------------------------------------------------------------------------------------------------
LOG_FIELDS = ("framework", "epoch", "loss", "term", "value", "grad_norm", "grad_ratio")


class BalanceLog:
    """Appends measurements to a CSV, one row per (epoch, criterion, term), with the gradient-norm ratio to
    ``bce``; and measures along a training run through either framework's callbacks.

    Along training, one batch is drawn once from the training data and kept. At the start of training and at the end
    of every epoch, the current model is measured on it with BCE and with the run's own criterion. The model is left
    untouched: no optimizer state or parameter gradient, and BatchNorm statistics are restored.

    Args:
        path: the CSV file (created with a header, appended to otherwise).
        images: how many images of the first training batch to keep.
        compare: loss names also measured, unbalanced (gain 1), on both terms in YOLOv5; labelled
            ``"qfl (gain 1)"``. They show how far a loss drifts from BCE's gradient norm along the run.

    Example (Ultralytics):
        >>> log = BalanceLog("runs/balance.csv")  # doctest: +SKIP
        >>> qfocal.integrations.ultralytics.train(..., callbacks=log.ultralytics_callbacks())  # doctest: +SKIP
        >>> plot_balance(read_log("runs/balance.csv"), "balance.png")  # doctest: +SKIP

    Example (YOLOv5): ``qfocal.integrations.yolov5.train(..., callbacks=log.yolov5_callbacks())``. YOLOv5 calls
    back with a batch only after its first optimizer step, so there the first row (epoch 0) is taken then.
    """

    def __init__(self, path: str | Path, *, images: int = 8, compare: Sequence[str] = ()) -> None:
        from qfocal import loss_name

        self.path = Path(path)
        self.images = images
        self.compare = [loss_name(name, LOSSES, what="compare") for name in compare]
        self._batch: Any = None
        self._model: nn.Module | None = None

    def append(self, framework: str, epoch: int, measured: Mapping[str, Mapping[str, float]]) -> list[dict]:
        """Write ``measured`` (a ``measure_*`` result) for ``epoch``; returns the rows written."""
        rows = []
        for label, terms in measured.items():
            for term in [k for k in terms if not k.endswith("_grad")]:
                ref = measured.get("bce", {}).get(f"{term}_grad")
                grad = terms[f"{term}_grad"]
                rows.append(
                    {
                        "framework": framework,
                        "epoch": epoch,
                        "loss": label,
                        "term": term,
                        "value": terms[term],
                        "grad_norm": grad,
                        "grad_ratio": grad / ref if ref else "",
                    }
                )
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        return rows

    # Ultralytics ---------------------------------------------------------------------------------------------
    def ultralytics_callbacks(self) -> dict[str, Callable]:
        """``{event: function}`` for ``trainer.add_callback`` or ``ultralytics.train(callbacks=...)``."""
        return {
            "on_train_start": lambda trainer: self._ultralytics_measure(trainer, 0),
            "on_train_epoch_end": lambda trainer: self._ultralytics_measure(trainer, trainer.epoch + 1),
        }

    def _ultralytics_measure(self, trainer: Any, epoch: int) -> None:
        from ultralytics.utils import RANK

        if RANK not in (-1, 0):
            return
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        if self._batch is None:
            dataset = trainer.train_loader.dataset
            items = [dataset[i] for i in range(min(self.images, len(dataset)))]
            self._batch = trainer.preprocess_batch(dataset.collate_fn(items))
        own = {
            "cls_loss": getattr(trainer, "cls_loss", "bce"),
            "cls_gain": getattr(trainer, "cls_gain", None),
            **getattr(trainer, "loss_kwargs", {}),
        }
        losses: dict[str, dict[str, Any]] = {"bce": {"cls_loss": "bce"}}
        if own["cls_loss"] != "bce" or own["cls_gain"] not in (None, 1.0):
            losses[_label(own["cls_loss"], own["cls_gain"])] = own
        for name in self.compare:
            losses.setdefault(_label(name, 1.0), {"cls_loss": name, "cls_gain": 1.0})
        self.append("ultralytics", epoch, measure_ultralytics(_fp32(model), self._batch, losses))

    # YOLOv5 --------------------------------------------------------------------------------------------------
    def yolov5_callbacks(self) -> dict[str, Callable]:
        """``{event: function}`` for YOLOv5's ``Callbacks.register_action`` or ``yolov5.train(callbacks=...)``."""
        return {"on_train_batch_end": self._yolov5_batch_end, "on_train_epoch_end": self._yolov5_epoch_end}

    def _yolov5_batch_end(self, model, ni, imgs, targets, *args, **kwargs) -> None:
        if self._batch is not None:
            return
        model = model.module if hasattr(model, "module") else model
        n = min(self.images, imgs.shape[0])
        kept = targets[targets[:, 0] < n]
        self._batch, self._model = (imgs[:n].detach().clone(), kept.detach().clone()), model
        self._yolov5_measure(0)

    def _yolov5_epoch_end(self, epoch: int = 0, **kwargs) -> None:
        if self._batch is not None:
            self._yolov5_measure(epoch + 1)

    def _yolov5_measure(self, epoch: int) -> None:
        model = self._model
        if model is None:  # set with the batch, by _yolov5_batch_end
            return
        # YOLOv5's train.py attaches hyp, a dict (torch types Module attributes as Tensor | Module)
        hyp = dict(model.hyp)  # type: ignore[arg-type]
        obj, cls = hyp.get("obj_loss") or "bce", hyp.get("cls_loss") or "bce"
        losses: dict[str, dict[str, Any]] = {
            "bce": {"obj_loss": "bce", "cls_loss": "bce", "obj_gain": AUTO, "cls_gain": AUTO}
        }
        if (obj, cls) != ("bce", "bce"):
            losses[obj if obj == cls else f"obj {obj}, cls {cls}"] = {}
        for name in self.compare:
            keys = {"obj_loss": name, "cls_loss": name, "obj_gain": 1.0, "cls_gain": 1.0}
            losses.setdefault(_label(name, 1.0), keys)
        images, targets = self._batch
        self.append("yolov5", epoch, measure_yolov5(_fp32(model), images.float(), targets, losses, hyp=hyp))


def _label(loss: str, gain: float | None) -> str:
    return loss if gain is None else f"{loss} (gain {gain:g})"


def _fp32(model: nn.Module) -> nn.Module:
    """The model itself when it is fp32, else an fp32 copy (measuring must not cast the training model)."""
    if all(p.dtype == torch.float32 for p in model.parameters()):
        return model
    return copy.deepcopy(model).float()


def read_log(path: str | Path) -> list[dict]:
    """The rows of a :class:`BalanceLog` CSV, numbers as numbers."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row["epoch"] = int(row["epoch"])
            for key in ("value", "grad_norm", "grad_ratio"):
                row[key] = float(row[key]) if row[key] not in ("", None) else math.nan
            rows.append(row)
    return rows
