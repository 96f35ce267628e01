"""Training plots (matplotlib, Agg): loss curves and AP per epoch, a grid of validation predictions, and the
compare chart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.records import DetectionData

__all__ = ["plot_compare", "plot_history", "plot_predictions"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], path: str | Path, *, title: str = "") -> Path:
    """Loss components (left) and COCO AP / AP50 per epoch (right) from the rows of ``history.csv``."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in [k for k in history[0] if k == "loss" or k.startswith("loss_")]:
        ax_l.plot(epochs, [r[key] for r in history], marker="o", ms=3, label=key)
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("training loss (epoch mean)")
    ax_l.set_yscale("log")
    ax_l.legend(fontsize=8)
    for key in ("AP", "AP50", "AP75"):
        ax_a.plot(epochs, [float(r.get(key, "nan")) for r in history], marker="o", ms=3, label=key)
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("COCO val")
    ax_a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_predictions(
    data: DetectionData,
    predictions: list[dict] | None,
    path: str | Path,
    *,
    imgsz: int,
    count: int = 8,
    score_thresh: float = 0.3,
    max_per_image: int = 10,
) -> Path:
    """A grid of the first ``count`` validation images: true boxes dashed green, the ``max_per_image`` best
    predictions with score >= ``score_thresh`` solid red with class and score."""
    from PIL import Image

    plt = _plt()
    n = min(count, len(data.records))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        rec = data.records[k]
        with Image.open(rec.path) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        for x1, y1, x2, y2 in rec.boxes.tolist():
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1, ls="--"))
        if predictions is not None:
            p = predictions[k]
            best = np.argsort(-p["scores"], kind="stable")[:max_per_image]
            p = {key: v[best] for key, v in p.items()}
            for (x1, y1, x2, y2), s, lab in zip(
                p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True
            ):
                if s < score_thresh:
                    continue
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1))
                ax.text(x1, y1, f"{data.class_names[lab]} {s:.2f}", color="yellow", fontsize=6, va="bottom")
    fig.suptitle("val: true (green, dashed) and predicted (red) boxes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_compare(summary: dict[str, dict[str, list[float]]], path: str | Path, *, title: str = "") -> Path:
    """Bars of mean AP per metric and loss with the standard deviation over seeds as error bars."""
    from .evaluate import METRIC_KEYS

    plt = _plt()
    losses = list(summary)
    keys = [k for k in METRIC_KEYS if any(v >= 0 for loss in losses for v in summary[loss][k])]
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(losses))
    fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 2, 3.8))
    for i, loss in enumerate(losses):
        vals = [np.asarray(summary[loss][k], dtype=float) * 100 for k in keys]
        ax.bar(
            x + (i - (len(losses) - 1) / 2) * width,
            [v.mean() for v in vals],
            width,
            yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
            capsize=3,
            label=loss,
        )
    ax.set_xticks(x, keys)
    ax.set_ylabel("COCO val (%)")
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
