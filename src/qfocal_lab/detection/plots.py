"""Training plots (matplotlib, Agg): loss curves and AP per epoch, a grid of validation predictions, score vs IoU
of the validation detections, and the compare charts (APs with the paired differences, score vs IoU per loss)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.records import DetectionData, load_rgb

__all__ = ["plot_compare", "plot_compare_score_iou", "plot_history", "plot_predictions", "plot_score_iou"]


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
    for key in ("AP", "AP50", "AP75", "AP90"):
        if key in history[0]:
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
        ax.imshow(np.asarray(load_rgb(rec.path)))
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


def _score_iou_panel(
    ax, scores: np.ndarray, ious: np.ndarray, *, bins: int = 10, hexbin: bool = True
) -> None:
    """Score (x) vs IoU (y): a hexbin of the detections and the mean IoU per score bin."""
    from .quality import mean_iou_per_score_bin, spearman

    if scores.size == 0:
        ax.text(0.5, 0.5, "no detection on an object", ha="center", va="center", fontsize=8)
    else:
        if hexbin:
            ax.hexbin(scores, ious, gridsize=25, extent=(0, 1, 0, 1), bins="log", cmap="Blues", mincnt=1)
        centres, mean, _ = mean_iou_per_score_bin(scores, ious, bins=bins)
        ax.plot(
            centres,
            mean,
            "o-",
            color="C3",
            ms=3,
            label=f"mean IoU per score bin (ρ={spearman(scores, ious):.2f})",
        )
        ax.legend(fontsize=7, loc="lower right")
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("score")
    ax.set_ylabel("IoU with the best same-class object")


def plot_score_iou(scores: np.ndarray, ious: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """Score vs IoU of the validation detections that lie on an object (IoU > 0.1,
    :func:`qfocal_lab.detection.quality.score_iou_pairs`): a log-count hexbin with the mean IoU per score bin; a
    quality-aware score puts the curve near the diagonal (the GFL / VarifocalNet figure)."""
    plt = _plt()
    scores, ious = np.asarray(scores, dtype=float), np.asarray(ious, dtype=float)
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    _score_iou_panel(ax, scores, ious)
    ax.set_title(f"{title}: {scores.size} detections" if title else f"{scores.size} detections", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_compare_score_iou(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, title: str = ""
) -> Path:
    """One score-vs-IoU panel per loss (``{loss: (scores, ious)}``, pooled over seeds) and a last panel with
    every loss's mean IoU per score bin."""
    from .quality import mean_iou_per_score_bin

    plt = _plt()
    losses = list(pairs)
    fig, axes = plt.subplots(1, len(losses) + 1, figsize=(3.8 * (len(losses) + 1), 3.9), squeeze=False)
    for ax, loss in zip(axes[0], losses, strict=False):
        scores, ious = (np.asarray(a, dtype=float) for a in pairs[loss])
        _score_iou_panel(ax, scores, ious)
        ax.set_title(f"{loss}: {scores.size} detections", fontsize=9)
    ax = axes[0, -1]
    for i, loss in enumerate(losses):
        scores, ious = (np.asarray(a, dtype=float) for a in pairs[loss])
        if scores.size:
            centres, mean, _ = mean_iou_per_score_bin(scores, ious)
            ax.plot(centres, mean, "o-", ms=3, color=f"C{i}", label=loss)
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("score")
    ax.set_ylabel("mean IoU per score bin")
    if ax.get_legend_handles_labels()[0]:  # no curve without detections
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_compare(
    summary: dict[str, dict[str, list[float]]],
    path: str | Path,
    *,
    title: str = "",
    deltas: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    keys: Sequence[str] | None = None,
    ylabel: str = "COCO val (%)",
) -> Path:
    """Bars of the mean of each metric of ``keys`` (fractions, drawn in percent) per loss with the standard
    deviation over seeds as error bars; with ``deltas`` (:func:`qfocal_lab.detection.stats.paired_deltas`) a panel of
    the mean paired difference from the baseline with its 95 % interval for the fractions (APs, mAPs: percentage
    points), and one for the other metrics (the score-IoU correlations) when ``deltas`` has any.

    ``keys`` default to the COCO six and AP90 (the FCOS compare); a metric without a value >= 0 is left out
    (pycocotools' -1: no object of that size)."""
    from .evaluate import METRIC_KEYS
    from .stats import is_percent_metric

    plt = _plt()
    losses = list(summary)
    candidates = [*METRIC_KEYS, "AP90"] if keys is None else list(keys)
    keys = [k for k in candidates if any(v >= 0 for loss in losses for v in summary[loss].get(k, []))]
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(losses))
    deltas = {loss: d for loss, d in (deltas or {}).items() if d}
    groups = []  # (metric names, is a fraction) of each delta panel
    if deltas:
        names = list(next(iter(deltas.values())))
        for percent in (True, False):
            group = [m for m in names if is_percent_metric(m) == percent]
            if group:
                groups.append((group, percent))
    if groups:
        ratios = [len(keys) + 1] + [len(keys) + 1 if percent else 3 for _, percent in groups]
        fig, axes = plt.subplots(
            1,
            len(ratios),
            figsize=(1.4 * len(keys) + 3 * len(ratios), 3.8),
            gridspec_kw={"width_ratios": ratios},
        )
        ax = axes[0]
    else:
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
    ax.set_ylabel(ylabel)
    ax.legend()
    if groups:
        fig.suptitle(title, fontsize=9)
        colours = {loss: f"C{i}" for i, loss in enumerate(losses)}
        for ax_d, (names, percent) in zip(axes[1:], groups, strict=True):
            _delta_panel(ax_d, deltas, names, colours)
            unit = "mAP" if all(m.startswith("mAP") for m in names) else "AP"
            ax_d.set_ylabel(
                f"paired difference vs baseline ({unit} points)"
                if percent
                else "difference in correlation"
                if all("spearman" in m or "pearson" in m for m in names)
                else "paired difference (own units)"
            )
        axes[1].set_title("mean per-seed difference, 95 % CI", fontsize=9)
    else:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _delta_panel(ax, deltas, names: list[str], colours: dict[str, str]) -> None:
    """Mean paired difference per metric and loss with its 95 % interval (none for one seed)."""
    losses = list(deltas)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(losses))
    for i, loss in enumerate(losses):
        d = [deltas[loss][m] for m in names]
        mean = np.array([float(v["mean"]) for v in d])
        lo = np.array([float(v["ci95_low"]) for v in d])
        hi = np.array([float(v["ci95_high"]) for v in d])
        err = np.where(np.isfinite(lo) & np.isfinite(hi), np.stack([mean - lo, hi - mean]), 0.0)
        ax.errorbar(
            x + (i - (len(losses) - 1) / 2) * width,
            np.where(np.isfinite(mean), mean, np.nan),
            yerr=np.nan_to_num(err),
            fmt="o",
            capsize=3,
            color=colours.get(loss),
            label=loss,
        )
    ax.axhline(0, color="gray", lw=1)
    short = {"score_iou_spearman": "Spearman", "score_iou_pearson": "Pearson"}
    ax.set_xticks(x, [short.get(m, m) for m in names], fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.legend(fontsize=8)
