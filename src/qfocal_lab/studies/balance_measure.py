"""The measurements of the loss-balance study, on real YOLOv5 and Ultralytics models and one batch: each loss
term's value and the norm of its gradient with respect to the head outputs it acts on, for several criteria on
the same predictions (:func:`measure_yolov5`, :func:`measure_ultralytics`), that gradient itself
(:func:`term_gradient_yolov5`, :func:`term_gradient_ultralytics`) and how many of its elements carry it
(:func:`participation_ratio`). The log along training is :mod:`qfocal_lab.studies.balance`'s.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qfocal import losses_for
from qfocal.integrations.balance import AUTO

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
                image = image.resize((imgsz, imgsz), Image.Resampling.BILINEAR)
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
            model.hyp = {**base, **keys}  # type: ignore[assignment]  # torch: Module.__setattr__ takes Tensor | Module
            results[label] = yolov5_terms(yolov5.ComputeLoss(model, log=False), preds, targets)
    finally:
        model.hyp = saved  # type: ignore[assignment]  # torch: Module.__setattr__ takes Tensor | Module
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
def _ultralytics_predictions(
    model: nn.Module, batch: Mapping[str, Any], *, fp32: bool = False
) -> Iterator[dict]:
    """The head's outputs on ``batch`` without a graph through the model, boxes and scores as leaves that take a
    gradient (in fp32 with ``fp32``); Ultralytics' default ``model.args`` lent for the block when it has none."""
    saved = getattr(model, "args", None)
    if saved is None:
        from ultralytics.cfg import get_cfg

        model.args = get_cfg()  # type: ignore[assignment]  # torch: Module.__setattr__ takes Tensor | Module
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
        model.hyp = {**(saved or {}), **(hyp or {})}  # type: ignore[assignment]  # torch: Module.__setattr__ takes Tensor | Module
        value = dict(
            zip(YOLOV5_TERMS, yolov5.ComputeLoss(model, log=False).terms(preds, targets), strict=True)
        )[term]
    finally:
        model.hyp = saved  # type: ignore[assignment]  # torch: Module.__setattr__ takes Tensor | Module
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
    model: nn.Module, batch: dict[str, Any], term: str = "cls", **criterion: Any
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
