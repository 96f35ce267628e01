"""COCO evaluation of a detector with pycocotools: predictions in original pixels, the six standard APs."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ..data.dataset import DetectionDataset, collate
from ..data.records import DetectionData

__all__ = ["METRIC_KEYS", "coco_metrics", "evaluate", "predict"]

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_metrics(ground_truth: dict, detections: list[dict]) -> dict[str, float]:
    """COCO box metrics of ``detections`` against a COCO instances dict.

    Args:
        ground_truth: ``{"images", "annotations", "categories"}`` in COCO format.
        detections: COCO results, ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` each.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as fractions in [0, 1]; pycocotools' ``-1`` (no ground
        truth in that size range) is kept as ``-1.0``. No detections give 0 where ground truth exists.
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
            stats = []
            for key in METRIC_KEYS:
                stats.append(0.0 if _has_gt(ground_truth, key) else -1.0)
            return dict(zip(METRIC_KEYS, stats, strict=True))
        dt = gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats[:6], strict=True)}


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
    """COCO metrics of ``model`` on ``data``; returns ``(metrics, per-image predictions)``."""
    preds = predict(model, data, imgsz=imgsz, batch=batch, device=device, amp_dtype=amp_dtype)
    return coco_metrics(data.to_coco(), to_coco_results(data, preds)), preds
