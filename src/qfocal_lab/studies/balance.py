"""The loss-balance study of YOLOv5 and Ultralytics: each loss term and the gradient it sends to the head, measured
on real models, logged along training and plotted. The rule itself (``cls_gain`` / ``obj_gain`` = ``"auto"``) is
the library's: :mod:`qfocal.integrations.balance`.

:func:`measure_yolov5` and :func:`measure_ultralytics` return, for a real model and one batch, each term's
value and the norm of its gradient with respect to the head outputs it acts on, for several criteria on the same
predictions. :func:`term_gradient_yolov5` and :func:`term_gradient_ultralytics` return that gradient itself, and
:func:`participation_ratio` how many of its elements carry it. :class:`BalanceLog` appends such measurements to a CSV along a training run (callbacks for both
frameworks). :func:`plot_balance` draws them (matplotlib, imported on use).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qfocal import losses_for
from qfocal.integrations.balance import AUTO, MAX_GAIN, check_gain, matched_gain

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

LOSSES = losses_for("ultralytics")  # the criteria both integrations take, from the loss table

# The terms of each framework and the slice of the head output each acts on (YOLOv5: the last dimension of
# (bs, na, ny, nx, 5 + nc); Ultralytics: the "boxes" (pred_distri) or "scores" (class logits) output).
YOLOV5_TERMS = {"box": slice(0, 4), "obj": slice(4, 5), "cls": slice(5, None)}
ULTRALYTICS_TERMS = {"box": "boxes", "cls": "scores", "dfl": "boxes"}


# ----------------------------------------------------------------------------------------------------------
# A batch of a YOLO dataset, for both frameworks
# ----------------------------------------------------------------------------------------------------------
def yolo_batch(
    data: str | Path, *, images: int = 8, start: int = 0, split: str = "train", imgsz: int | None = None
) -> tuple[Tensor, Tensor]:
    """``images`` images of a YOLO dataset (an image folder split, e.g. :func:`qfocal_lab.data.synth.write_toy_dataset`)
    as YOLOv5 takes them: ``(images (n, 3, H, W) in [0, 1], targets (nt, 6) rows (image, class, x, y, w, h))``.

    Images are read in file-name order from ``start``; each is resized to ``imgsz`` x ``imgsz`` when given (else
    all must share one size). No augmentation: the same files give the same batch. Needs numpy and Pillow.
    """
    import numpy as np
    from PIL import Image

    from ..data.yolo import IMAGE_SUFFIXES, _label_path, read_yolo_yaml

    folder = read_yolo_yaml(data)[split]
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[
        start : start + images
    ]
    if not files:
        raise ValueError(f"data: expected images in {folder} from index {start}, got none")
    pixels, rows = [], []
    for k, file in enumerate(files):
        with Image.open(file) as image:
            image = image.convert("RGB")
            if imgsz is not None:
                image = image.resize((imgsz, imgsz), Image.BILINEAR)
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
        label = _label_path(file)
        if label.is_file():
            for line in label.read_text().splitlines():
                if line.strip():
                    rows.append([k, *map(float, line.split()[:5])])
    return torch.stack(pixels), torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def ultralytics_batch(images: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """The batch dict Ultralytics' detection loss takes, from :func:`yolo_batch`'s ``(images, targets)``."""
    return {"img": images, "batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6]}


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """A training-mode forward that leaves the model as it was (BatchNorm statistics, mode)."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    try:
        model.train()
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


def _norm(grad: Tensor | None, index: Any = ...) -> float:
    if grad is None:
        return 0.0
    return float(torch.linalg.vector_norm(grad[index].double()))


def _variants(losses: Sequence[str] | Mapping[str, Mapping[str, Any]], keys: Callable[[str], dict]) -> dict:
    if isinstance(losses, Mapping):
        return {str(label): dict(options) for label, options in losses.items()}
    return {str(name): keys(name) for name in losses}


def yolov5_terms(compute_loss: Any, preds: Sequence[Tensor], targets: Tensor) -> dict[str, float]:
    """Each term of a qfocal YOLOv5 :class:`~qfocal.integrations.yolov5.ComputeLoss` (the loss items: ``box``,
    ``obj``, ``cls``, gains applied, per image) and ``<term>_grad``, the norm of its gradient with respect to the
    head outputs it acts on: the 4 box channels, the objectness channel, the class channels of every level.

    ``preds`` must be leaf tensors that require grad (detached training outputs of the model).
    """
    terms = dict(zip(YOLOV5_TERMS, compute_loss.terms(preds, targets), strict=True))
    out: dict[str, float] = {}
    for name, value in terms.items():
        out[name] = float(value.detach().sum())
        grads = (
            torch.autograd.grad(value.sum(), list(preds), retain_graph=True, allow_unused=True)
            if value.requires_grad
            else [None] * len(preds)
        )
        out[f"{name}_grad"] = math.sqrt(sum(_norm(g, (..., YOLOV5_TERMS[name])) ** 2 for g in grads))
    return out


def measure_yolov5(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    losses: Sequence[str] | Mapping[str, Mapping[str, Any]] = LOSSES,
    *,
    hyp: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Each loss term and its gradient norm (:func:`yolov5_terms`) for several criteria on one batch.

    Args:
        model: a YOLOv5 ``DetectionModel`` with ``model.hyp`` set (or pass ``hyp``). One training-mode forward is
            run without a graph; BatchNorm statistics and the mode are restored.
        images: ``(bs, 3, H, W)`` in [0, 1]. targets: ``(nt, 6)`` rows ``(image, class, x, y, w, h)``, normalised.
        losses: loss names, each used for both ``obj_loss`` and ``cls_loss``; or a mapping label -> hyp keys,
            e.g. ``{"qfl, gain 1": {"obj_loss": "qfl", "obj_gain": 1.0}}``.
        hyp: keys laid over ``model.hyp`` for every criterion (e.g. ``{"obj_gain": 1.0, "cls_gain": 1.0}``).

    Returns:
        ``{label: {"box": ..., "obj": ..., "cls": ..., "box_grad": ..., "obj_grad": ..., "cls_grad": ...}}``.
    """
    from qfocal.integrations import yolov5

    base = {**(getattr(model, "hyp", None) or {}), **(hyp or {})}
    variants = _variants(losses, lambda name: {"obj_loss": name, "cls_loss": name})
    with _measuring(model), torch.no_grad():
        out = model(images)
    preds = [p.detach().requires_grad_(True) for p in out]
    saved, results = getattr(model, "hyp", None), {}
    try:
        for label, keys in variants.items():
            model.hyp = {**base, **keys}
            results[label] = yolov5_terms(yolov5.ComputeLoss(model, log=False), preds, targets)
    finally:
        model.hyp = saved
    return results


def ultralytics_terms(
    criterion: Any, preds: Mapping[str, Tensor], batch: Mapping[str, Any]
) -> dict[str, float]:
    """Each term of an Ultralytics detection criterion (``box``, ``cls``, ``dfl``: the loss items, gains applied,
    per image) and ``<term>_grad``: the norm of its gradient with respect to the head output it acts on, the
    class logits (``pred_scores``) for ``cls``, the box distribution (``pred_distri``) for ``box`` and ``dfl``.

    ``preds`` is the model's training output whose ``"boxes"`` and ``"scores"`` are leaves that require grad.
    """
    bs = preds["scores"].shape[0]
    loss = criterion(dict(preds), batch)[0] / bs
    out: dict[str, float] = {}
    for k, (name, output) in enumerate(ULTRALYTICS_TERMS.items()):
        out[name] = float(loss[k].detach())
        grad = (
            torch.autograd.grad(loss[k], preds[output], retain_graph=True, allow_unused=True)[0]
            if loss[k].requires_grad
            else None
        )
        out[f"{name}_grad"] = _norm(grad)
    return out


def measure_ultralytics(
    model: nn.Module,
    batch: Mapping[str, Any],
    losses: Sequence[str] | Mapping[str, Mapping[str, Any]] = LOSSES,
    *,
    cls_gain: float | str | None = AUTO,
) -> dict[str, dict[str, float]]:
    """Each loss term and its gradient norm (:func:`ultralytics_terms`) for several classification criteria on one
    batch.

    Args:
        model: an Ultralytics ``DetectionModel``; ``model.args`` gives the gains (Ultralytics' defaults when
            unset). One training-mode forward is run without a graph; BatchNorm statistics and mode are restored.
        batch: Ultralytics' batch dict: ``img`` ``(bs, 3, H, W)`` in [0, 1], ``batch_idx`` ``(n,)``, ``cls``
            ``(n, 1)``, ``bboxes`` ``(n, 4)`` normalised xywh.
        losses: ``cls_loss`` names; or a mapping label -> keyword arguments of
            :class:`~qfocal.integrations.ultralytics.DetectionLoss` (``cls_loss``, ``cls_gain``, options).
        cls_gain: for names given as a sequence: ``"auto"`` (the rule) or a fixed gain (1.0: unbalanced).

    Returns:
        ``{label: {"box": ..., "cls": ..., "dfl": ..., "box_grad": ..., "cls_grad": ..., "dfl_grad": ...}}``.
    """
    from qfocal.integrations import ultralytics

    variants = _variants(losses, lambda name: {"cls_loss": name, "cls_gain": cls_gain})
    with _ultralytics_predictions(model, batch) as preds:
        results = {}
        for label, kwargs in variants.items():
            criterion = ultralytics.DetectionLoss(model, **kwargs)
            results[label] = ultralytics_terms(criterion, preds, batch)
    return results


@contextlib.contextmanager
def _ultralytics_predictions(model: nn.Module, batch: dict, *, fp32: bool = False) -> Iterator[dict]:
    """The head's outputs on ``batch`` without a graph through the model, boxes and scores as leaves that take a
    gradient (in fp32 with ``fp32``); Ultralytics' default ``model.args`` lent for the block when it has none."""
    saved = getattr(model, "args", None)
    if saved is None:
        from ultralytics.cfg import get_cfg

        model.args = get_cfg()
    try:
        with _measuring(model), torch.no_grad():
            out = model(batch["img"])
        out = out[1] if isinstance(out, tuple) else out
        yield {
            k: (v.detach().float() if fp32 else v.detach()).requires_grad_(True)
            if k in ("boxes", "scores")
            else v
            for k, v in out.items()
        }
    finally:
        if saved is None:
            del model.args


def grad_ratios(
    measured: Mapping[str, Mapping[str, float]], term: str, reference: str = "bce"
) -> dict[str, float]:
    """``{label: <term>_grad / reference's <term>_grad}`` of a :func:`measure_yolov5` / :func:`measure_ultralytics`
    result."""
    ref = measured[reference][f"{term}_grad"]
    return {label: m[f"{term}_grad"] / ref if ref else math.nan for label, m in measured.items()}


# ----------------------------------------------------------------------------------------------------------
# Where a term's gradient goes: the participation ratio
# ----------------------------------------------------------------------------------------------------------
def participation_ratio(grad: Tensor) -> float:
    """The effective number of elements that carry a gradient: ``PR = (sum g^2)^2 / sum g^4`` over its elements.

    One element carrying the whole gradient gives 1, ``n`` equal elements give ``n``; a focusing loss (QFL, focal)
    that concentrates the gradient on a few anchors lowers it. Computed in float64.

    Args:
        grad: a gradient of any shape (flattened); elements are taken as they are (signs do not matter).

    Returns:
        the ratio in ``[1, grad.numel()]``; nan for an empty or all-zero gradient.

    Example:
        >>> participation_ratio(torch.tensor([0.0, 3.0, 0.0]))
        1.0
        >>> participation_ratio(torch.full((4, 5), -0.1))
        20.0
    """
    g2 = grad.detach().double().reshape(-1).square()
    s2 = float(g2.sum())
    if not math.isfinite(s2) or s2 == 0.0:
        return math.nan
    return s2 * s2 / float(g2.square().sum())


def term_gradient_yolov5(
    model: nn.Module, images: Tensor, targets: Tensor, term: str, *, hyp: Mapping[str, Any] | None = None
) -> Tensor:
    """The gradient of one term of qfocal's YOLOv5 :class:`~qfocal.integrations.yolov5.ComputeLoss` with respect
    to the logits it acts on, every level concatenated: the objectness channel for ``"obj"``, the class channels
    for ``"cls"`` (``"box"``: the 4 box channels).

    Args:
        model: a YOLOv5 ``DetectionModel`` with ``model.hyp`` (laid under ``hyp``). One training-mode forward is run
            without a graph; BatchNorm statistics and the mode are restored.
        images, targets: as :func:`measure_yolov5`, on the model's device.
        term: ``"box"``, ``"obj"`` or ``"cls"``.
        hyp: keys over ``model.hyp``: the criteria and gains the term is computed with.

    Returns:
        a 1-D float tensor (zeros where the term sends nothing).
    """
    from qfocal.integrations import yolov5

    if term not in YOLOV5_TERMS:
        raise ValueError(f"term: expected one of {', '.join(YOLOV5_TERMS)}, got {term!r}")
    with _measuring(model), torch.no_grad():
        out = model(images)
    preds = [p.detach().float().requires_grad_(True) for p in out]
    saved = getattr(model, "hyp", None)
    try:
        model.hyp = {**(saved or {}), **(hyp or {})}
        value = dict(
            zip(YOLOV5_TERMS, yolov5.ComputeLoss(model, log=False).terms(preds, targets), strict=True)
        )[term]
    finally:
        model.hyp = saved
    if not value.requires_grad:
        return torch.cat([p[..., YOLOV5_TERMS[term]].detach().reshape(-1) * 0 for p in preds])
    grads = torch.autograd.grad(value.sum(), preds, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g)[..., YOLOV5_TERMS[term]].reshape(-1)
            for p, g in zip(preds, grads, strict=True)
        ]
    )


def term_gradient_ultralytics(
    model: nn.Module, batch: Mapping[str, Any], term: str = "cls", **criterion: Any
) -> Tensor:
    """The gradient of one term of qfocal's Ultralytics :class:`~qfocal.integrations.ultralytics.DetectionLoss`
    with respect to the head output it acts on: the class logits for ``"cls"``, the box distribution for ``"box"``
    and ``"dfl"``.

    Args:
        model: an Ultralytics ``DetectionModel`` (``model.args`` gives the gains; Ultralytics' defaults when unset).
            One training-mode forward is run without a graph; BatchNorm statistics and the mode are restored.
        batch: Ultralytics' batch dict (:func:`ultralytics_batch`), on the model's device.
        term: ``"box"``, ``"cls"`` or ``"dfl"``.
        **criterion: :class:`~qfocal.integrations.ultralytics.DetectionLoss`'s keyword arguments (``cls_loss``,
            ``cls_gain``, options).

    Returns:
        a 1-D float tensor.
    """
    from qfocal.integrations import ultralytics

    if term not in ULTRALYTICS_TERMS:
        raise ValueError(f"term: expected one of {', '.join(ULTRALYTICS_TERMS)}, got {term!r}")
    with _ultralytics_predictions(model, batch, fp32=True) as preds:
        loss = ultralytics.DetectionLoss(model, **criterion)(dict(preds), batch)[0]
    k = list(ULTRALYTICS_TERMS).index(term)
    output = preds[ULTRALYTICS_TERMS[term]]
    if not loss[k].requires_grad:
        return torch.zeros(output.numel())
    (grad,) = torch.autograd.grad(loss[k], output, allow_unused=True)
    return (torch.zeros_like(output) if grad is None else grad).reshape(-1)


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
        losses = {"bce": {"cls_loss": "bce"}}
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
        hyp = dict(model.hyp)
        obj, cls = hyp.get("obj_loss") or "bce", hyp.get("cls_loss") or "bce"
        losses = {"bce": {"obj_loss": "bce", "cls_loss": "bce", "obj_gain": AUTO, "cls_gain": AUTO}}
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


# ----------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------
def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def plot_balance(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    along: Iterable[Mapping[str, Any]] | None = None,
    title: str = "",
) -> Path:
    """Draw :class:`BalanceLog` rows: at their first epoch, each term's value and its gradient-norm ratio to BCE
    (bars, log scale, the band [1/3, 3] shaded; a loss's unbalanced ``"... (gain 1)"`` hatched in its colour); and
    the ratio along training of the rows ``along`` (by default ``rows``, when they span several epochs).

    Returns:
        ``path`` (PNG or any format matplotlib writes).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("rows: expected measurements, got none")
    first = min(r["epoch"] for r in rows)
    groups = list(dict.fromkeys((r["framework"], r["term"]) for r in rows))
    labels = list(dict.fromkeys(r["loss"] for r in rows))
    if along is None:
        along = rows if len({r["epoch"] for r in rows}) > 1 else []
    along = [dict(r) for r in along]
    fig, axes = plt.subplots(1, 3 if along else 2, figsize=(19 if along else 12, 6.5))
    bases = list(dict.fromkeys(label.split(" (")[0] for label in labels))
    colors = {label: plt.cm.tab10(bases.index(label.split(" (")[0]) % 10) for label in labels}
    width = 0.8 / max(len(labels), 1)
    at_first = {(r["framework"], r["term"], r["loss"]): r for r in rows if r["epoch"] == first}
    for ax, key, ylabel in (
        (axes[0], "value", "term value (gains applied)"),
        (axes[1], "grad_ratio", "grad-norm ratio to BCE"),
    ):
        for j, label in enumerate(labels):
            xs, ys = [], []
            for i, group in enumerate(groups):
                r = at_first.get((*group, label))
                if r is not None and isinstance(r[key], (int, float)) and r[key] > 0:
                    xs.append(i + (j - (len(labels) - 1) / 2) * width)
                    ys.append(r[key])
            hatch = "//" if "(gain" in label else None
            fill = "white" if hatch else colors[label]
            ax.bar(xs, ys, width, label=label, color=fill, edgecolor=colors[label], hatch=hatch)
        ax.set_xticks(range(len(groups)), [f"{f}\n{t}" for f, t in groups])
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{'initialisation' if first == 0 else f'epoch {first}'}: {ylabel.split(' (')[0]}")
    axes[1].axhspan(1 / 3, 3, color="green", alpha=0.08, label="within 3x of BCE")
    axes[1].axhline(1, color="black", lw=0.8)
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    if along:
        ax = axes[2]
        styles = ("-", "--", ":", "-.")
        # only the terms a criterion changes (box and DFL stay at BCE's, ratio 1)
        moving = [
            group
            for group in dict.fromkeys((r["framework"], r["term"]) for r in along)
            if any(
                (r["framework"], r["term"]) == group and _number_or_none(r["grad_ratio"]) not in (None, 1.0)
                for r in along
            )
        ]
        along_labels = list(dict.fromkeys(r["loss"] for r in along if r["loss"] != "bce"))
        along_bases = list(dict.fromkeys([*bases, *(label.split(" (")[0] for label in along_labels)]))
        for k, (framework, term) in enumerate(moving):
            for label in along_labels:
                pts = sorted(
                    (r["epoch"], r["grad_ratio"])
                    for r in along
                    if (r["framework"], r["term"], r["loss"]) == (framework, term, label)
                    and (_number_or_none(r["grad_ratio"]) or 0) > 0
                )
                if pts:
                    color = plt.cm.tab10(along_bases.index(label.split(" (")[0]) % 10)
                    width = 1.6 if "(gain" in label else 0.8
                    ax.plot(
                        *zip(*pts, strict=True),
                        styles[k % len(styles)],
                        color=color,
                        lw=width,
                        label=f"{framework} {term}: {label}",
                    )
        ax.axhspan(1 / 3, 3, color="green", alpha=0.08)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("grad-norm ratio to BCE")
        ax.set_title("along training")
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
