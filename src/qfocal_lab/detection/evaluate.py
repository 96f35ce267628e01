"""COCO evaluation of a detector with pycocotools: predictions in original pixels, the six standard APs, AP at
IoU 0.9, and the score-IoU correlations of :mod:`qfocal_lab.detection.quality`."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch

from ..data.dataset import DetectionDataset, collate
from ..data.records import DetectionData
from .quality import score_iou_metrics

__all__ = ["METRIC_KEYS", "QUALITY_KEYS", "coco_metrics", "evaluate", "json_ready", "predict"]

# pycocotools' six summary APs, in its order.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Beside them, what tells quality-aware losses apart: AP at IoU 0.9 (strict localisation) and how well the score
# ranks the boxes by IoU (qfocal_lab.detection.quality).
QUALITY_KEYS = ("AP90", "score_iou_spearman", "score_iou_pearson")


def coco_metrics(ground_truth: dict, detections: list[dict]) -> dict[str, float]:
    """COCO box metrics of ``detections`` against a COCO instances dict.

    Args:
        ground_truth: ``{"images", "annotations", "categories"}`` in COCO format.
        detections: COCO results, ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` each.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AP90"}`` as fractions in [0, 1]; pycocotools' ``-1`` (no
        ground truth in that size range) is kept as ``-1.0``. No detections give 0 where ground truth exists.
        ``AP90`` is AP at IoU 0.9 over all sizes with 100 detections per image, read from COCOeval's precision
        array the way ``summarize`` reads AP75 (mean of the entries > -1).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {k: list(v) for k, v in ground_truth.items()}
        gt.dataset.setdefault("annotations", [])
        gt.createIndex()
        if not detections:
            # loadRes rejects an empty list; an empty result scores 0 wherever ground truth exists.
            out = {key: 0.0 if _has_gt(ground_truth, key) else -1.0 for key in METRIC_KEYS}
            out["AP90"] = out["AP"]
            return out
        dt = gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats[:6], strict=True)}
    out["AP90"] = _ap_at(ev, 0.9)
    return out


def _ap_at(ev, iou: float) -> float:
    """AP at one IoU threshold, all areas, 100 detections per image, from an accumulated COCOeval."""
    p = ev.params
    t = np.flatnonzero(np.isclose(p.iouThrs, iou))
    if not t.size:
        raise ValueError(f"iou: expected one of COCOeval's thresholds {list(p.iouThrs)}, got {iou}")
    prec = ev.eval["precision"][t[0], :, :, p.areaRngLbl.index("all"), p.maxDets.index(100)]
    valid = prec[prec > -1]
    return float(valid.mean()) if valid.size else -1.0


def _has_gt(ground_truth: dict, key: str) -> bool:
    ranges = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, float("inf"))}
    anns = [a for a in ground_truth.get("annotations", []) if not a.get("iscrowd", 0)]
    if key not in ranges:
        return bool(anns)
    lo, hi = ranges[key]
    return any(lo <= a.get("area", a["bbox"][2] * a["bbox"][3]) < hi for a in anns)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: DetectionData,
    *,
    imgsz: int,
    batch: int = 16,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    indices: list[int] | None = None,
) -> list[dict]:
    """Run ``model`` on the images of ``data``; return per-image ``{"boxes" (original pixels), "scores",
    "labels"}`` numpy arrays, in record order (or the order of ``indices``)."""
    was_training = model.training
    model.eval()
    ds = DetectionDataset(data, imgsz)
    sub = ds if indices is None else torch.utils.data.Subset(ds, indices)
    loader = torch.utils.data.DataLoader(sub, batch_size=batch, shuffle=False, collate_fn=collate)
    device = torch.device(device)
    out: list[dict] = []
    for images, _targets, idxs in loader:
        images = [im.to(device) for im in images]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            dets = model(images)
        for det, i in zip(dets, idxs, strict=True):
            rec = data.records[i]
            scale = np.array([rec.width, rec.height, rec.width, rec.height], dtype=np.float32) / imgsz
            out.append(
                {
                    "boxes": det["boxes"].float().cpu().numpy() * scale,
                    "scores": det["scores"].float().cpu().numpy(),
                    "labels": det["labels"].cpu().numpy(),
                }
            )
    model.train(was_training)
    return out


def to_coco_results(data: DetectionData, predictions: list[dict]) -> list[dict]:
    """Per-image predictions (record order) as a COCO results list."""
    results = []
    for rec, pred in zip(data.records, predictions, strict=True):
        for box, score, label in zip(
            pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": rec.image_id,
                    "category_id": data.category_ids[int(label)],
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": float(score),
                }
            )
    return results


def evaluate(
    model: torch.nn.Module,
    data: DetectionData,
    *,
    imgsz: int,
    batch: int = 16,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """COCO metrics and localisation-quality diagnostics of ``model`` on ``data``.

    Returns:
        ``(metrics, per-image predictions)``; ``metrics`` holds :data:`METRIC_KEYS` and ``AP90`` (fractions, see
        :func:`coco_metrics`), ``score_iou_spearman`` and ``score_iou_pearson`` (correlation of score and IoU of
        the detections on a same-class object, nan when undefined) and ``score_iou_n`` (how many detections that
        is); see :func:`qfocal_lab.detection.quality.score_iou_metrics`.
    """
    preds = predict(model, data, imgsz=imgsz, batch=batch, device=device, amp_dtype=amp_dtype)
    metrics: dict[str, float] = coco_metrics(data.to_coco(), to_coco_results(data, preds))
    metrics.update(score_iou_metrics(preds, data))
    return metrics, preds


def json_ready(obj):
    """``obj`` with every non-finite float replaced by None, so that ``json.dumps`` writes strict JSON (``null``
    rather than ``NaN``) for the undefined values (a correlation of fewer than two detections, a one-seed
    interval)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj
