"""Localisation-quality diagnostics of a detector: how well its scores rank its boxes by IoU.

Quality-aware losses (QFL, VFL) train the classification score to be the IoU of the box, so that NMS and AP's
ranking keep the best-localised box; the GFL and VarifocalNet papers show it as a score-vs-IoU scatter. Here:
:func:`score_iou_pairs` matches every detection to its best same-class ground-truth box (one image:
:func:`match_scores`),
:func:`score_iou_metrics` gives the Spearman and Pearson correlations of score and IoU, and
:func:`mean_iou_per_score_bin` the curve the plots draw. AP at IoU 0.9 (``AP90``, the strict-localisation AP)
is computed with the COCO APs in :func:`qfocal_lab.detection.evaluate.coco_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..data.records import DetectionData

__all__ = [
    "MIN_IOU",
    "box_iou",
    "match_scores",
    "mean_iou_per_score_bin",
    "pearson",
    "score_iou_metrics",
    "score_iou_pairs",
    "spearman",
]

# A detection counts as "on" an object above this IoU; below it the score says nothing about localisation.
MIN_IOU = 0.1


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)``, both ``[x1, y1, x2, y2]``;
    returns ``(N, M)`` float64 (``torchvision.ops.box_iou``'s definition: no +1 on widths)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def score_iou_pairs(
    predictions: Sequence[dict], data: DetectionData, *, min_iou: float = MIN_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(score, IoU)`` of every detection that lies on a ground-truth box of its class.

    Each detection is matched to the same-class ground-truth box of its image with the highest IoU (several
    detections may match one box: this measures the score's ranking of boxes, as NMS sees it, not AP's one-to-one
    assignment); it counts when that IoU exceeds ``min_iou``.

    Args:
        predictions: per-image ``{"boxes" (K, 4) [x1, y1, x2, y2] original pixels, "scores" (K,), "labels" (K,)}``
            numpy arrays, in the order of ``data.records`` (what :func:`qfocal_lab.detection.evaluate.predict`
            returns).
        data: the ground truth (boxes in original pixels, contiguous labels).
        min_iou: detections whose best IoU is at or below this are left out; in [0, 1).

    Returns:
        ``(scores, ious)``: float64 arrays of equal length ``(P,)``.
    """
    if len(predictions) != len(data.records):
        raise ValueError(
            f"predictions: expected one entry per image of the data ({len(data.records)}), got {len(predictions)}"
        )
    if not 0.0 <= float(min_iou) < 1.0:
        raise ValueError(f"min_iou: expected a number in [0, 1), got {min_iou!r}")
    scores, ious = [], []
    for rec, pred in zip(data.records, predictions, strict=True):
        try:
            boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
            score = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
            label = np.asarray(pred["labels"]).reshape(-1).astype(np.int64)
        except KeyError as exc:
            raise ValueError(f"predictions: expected 'boxes', 'scores' and 'labels', missing {exc}") from None
        if not (len(boxes) == len(score) == len(label)):
            raise ValueError(
                f"predictions: image {rec.image_id}: expected as many boxes, scores and labels, got "
                f"{len(boxes)}, {len(score)}, {len(label)}"
            )
        s, i = match_scores(boxes, score, label, rec.boxes, rec.labels, min_iou=min_iou)
        scores.append(s)
        ious.append(i)
    if not scores:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(scores), np.concatenate(ious)


def match_scores(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    *,
    min_iou: float = MIN_IOU,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_iou_pairs` for one image: the ``(score, IoU)`` of each detection whose best IoU with a
    same-class ground-truth box exceeds ``min_iou``.

    Args:
        boxes: ``(K, 4)`` detections ``[x1, y1, x2, y2]``; scores ``(K,)``; labels ``(K,)`` integer classes.
        gt_boxes: ``(M, 4)`` ground truth in the same coordinates (any common scale and offset: IoU ignores them);
            gt_labels ``(M,)``.
        min_iou: in [0, 1).

    Returns:
        ``(scores, ious)``: float64 arrays of equal length ``(P,)``, ``P <= K``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    gt_labels = np.asarray(gt_labels).reshape(-1).astype(np.int64)
    if not len(boxes) or not len(gt_labels):
        return np.zeros(0), np.zeros(0)
    iou = box_iou(boxes, gt_boxes)
    iou[labels[:, None] != gt_labels[None, :]] = 0.0
    best = iou.max(axis=1)
    keep = best > min_iou
    return scores[keep], best[keep]


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (``scipy.stats.rankdata``'s default)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equal-length arrays; nan with fewer than 2 values or a constant array."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"expected arrays of equal length, got {x.size} and {y.size}")
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if den == 0.0:
        return math.nan
    return float(np.clip(float(dx @ dy) / den, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of the ranks, ties averaged; ``scipy.stats.spearmanr``)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"expected arrays of equal length, got {x.size} and {y.size}")
    if x.size < 2:
        return math.nan
    return pearson(_rank(x), _rank(y))


def score_iou_metrics(
    predictions: Sequence[dict], data: DetectionData, *, min_iou: float = MIN_IOU
) -> dict[str, float]:
    """Spearman and Pearson correlation between the score and the IoU of the matched detections
    (:func:`score_iou_pairs`).

    Returns:
        ``{"score_iou_spearman", "score_iou_pearson", "score_iou_n"}``: correlations in [-1, 1] (nan with fewer
        than two matched detections or constant scores or IoUs) and the number of matched detections.
    """
    scores, ious = score_iou_pairs(predictions, data, min_iou=min_iou)
    return {
        "score_iou_spearman": spearman(scores, ious),
        "score_iou_pearson": pearson(scores, ious),
        "score_iou_n": int(scores.size),
    }


def mean_iou_per_score_bin(
    scores: np.ndarray, ious: np.ndarray, *, bins: int = 10, lo: float = 0.0, hi: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean IoU of the detections in each of ``bins`` equal score bins over ``[lo, hi]``.

    Returns:
        ``(centres, mean_iou, count)`` of shape ``(bins,)``; ``mean_iou`` is nan for an empty bin.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    total = np.bincount(idx, weights=ious, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return (edges[:-1] + edges[1:]) / 2, mean, count
