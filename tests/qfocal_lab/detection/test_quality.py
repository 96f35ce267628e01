"""Score-IoU diagnostics and AP90 (qfocal_lab.detection.quality, evaluate.coco_metrics) on hand-made detections with
known answers, and a one-epoch compare that reports them with the paired differences."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from qfocal_lab.data.records import DetectionData, ImageRecord
from qfocal_lab.detection.evaluate import METRIC_KEYS, QUALITY_KEYS, coco_metrics, to_coco_results
from qfocal_lab.detection.quality import (
    box_iou,
    mean_iou_per_score_bin,
    pearson,
    score_iou_metrics,
    score_iou_pairs,
    spearman,
)

scipy_stats = pytest.importorskip("scipy.stats")


def _data(gt: list[tuple[list[list[float]], list[int]]], classes=("a", "b")) -> DetectionData:
    records = [
        ImageRecord(
            path=Path(f"im{i}.png"),
            width=200,
            height=200,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            image_id=i + 1,
        )
        for i, (boxes, labels) in enumerate(gt)
    ]
    return DetectionData(records, list(classes), [1, 2][: len(classes)], source="hand-made")


def _pred(boxes, scores, labels) -> dict:
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=np.float32),
        "labels": np.asarray(labels, dtype=np.int64),
    }


def test_score_iou_pairs_and_correlations_by_hand():
    # Image 1: one object of class 0 at [0, 0, 10, 10]; boxes [0, 0, 10, h] have IoU h / 10 with it.
    # Image 2: objects of class 0 and class 1; each detection takes the best box of its own class.
    data = _data([([[0, 0, 10, 10]], [0]), ([[0, 0, 100, 100], [0, 0, 100, 50]], [0, 1])])
    preds = [
        _pred(
            [[0, 0, 10, 9], [0, 0, 10, 7], [0, 0, 10, 5], [0, 0, 10, 0.5], [0, 0, 10, 10]],
            [0.8, 0.9, 0.4, 0.99, 0.7],
            [
                0,
                0,
                0,
                0,
                1,
            ],  # IoU 0.9, 0.7, 0.5, 0.05 (left out), and a class-1 box on a class-0 object (left out)
        ),
        _pred([[0, 0, 100, 30], [0, 0, 100, 50]], [0.2, 0.6], [0, 1]),  # IoU 0.3 with the class-0 box; 1.0
    ]
    scores, ious = score_iou_pairs(preds, data)
    np.testing.assert_allclose(scores, [0.8, 0.9, 0.4, 0.2, 0.6], rtol=1e-6)
    np.testing.assert_allclose(ious, [0.9, 0.7, 0.5, 0.3, 1.0], rtol=1e-6)
    m = score_iou_metrics(preds, data)
    # Without the last pair: ranks of IoU 4 3 2 1 and of score 3 4 2 1, so rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert spearman(scores[:4], ious[:4]) == pytest.approx(0.8)
    # Pearson by hand for the same four: sum dx dy = 0.23, sum dx^2 = 0.2, sum dy^2 = 0.3275.
    assert pearson(scores[:4], ious[:4]) == pytest.approx(0.23 / math.sqrt(0.2 * 0.3275), rel=1e-6)
    assert m["score_iou_n"] == 5
    assert m["score_iou_spearman"] == pytest.approx(scipy_stats.spearmanr(scores, ious).statistic)
    assert m["score_iou_pearson"] == pytest.approx(scipy_stats.pearsonr(scores, ious).statistic)
    assert score_iou_metrics(preds, data, min_iou=0.95)["score_iou_n"] == 1


def test_correlations_with_ties_match_scipy_and_undefined_cases_are_nan():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 200).astype(float)  # many ties
    y = x + rng.integers(0, 3, 200)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, rel=1e-12)
    assert pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y).statistic, rel=1e-12)
    assert spearman(-x, y) == pytest.approx(-spearman(x, y))
    assert math.isnan(spearman([0.5], [0.5])) and math.isnan(pearson([], []))
    assert math.isnan(pearson([1.0, 1.0, 1.0], [0.2, 0.4, 0.6]))  # constant score: undefined
    data = _data([([[0, 0, 10, 10]], [0])])
    empty = score_iou_metrics([_pred(np.zeros((0, 4)), [], [])], data)
    assert empty["score_iou_n"] == 0 and math.isnan(empty["score_iou_spearman"])


def test_score_iou_input_errors():
    data = _data([([[0, 0, 10, 10]], [0])])
    with pytest.raises(
        ValueError, match=r"predictions: expected one entry per image of the data \(1\), got 2"
    ):
        score_iou_pairs([_pred([], [], []), _pred([], [], [])], data)
    with pytest.raises(ValueError, match="expected as many boxes, scores and labels, got 1, 2, 1"):
        score_iou_pairs([_pred([[0, 0, 1, 1]], [0.1, 0.2], [0])], data)
    with pytest.raises(ValueError, match="missing 'labels'"):
        score_iou_pairs([{"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}], data)
    with pytest.raises(ValueError, match=r"min_iou: expected a number in \[0, 1\)"):
        score_iou_pairs([_pred([], [], [])], data, min_iou=1.0)


def test_box_iou_and_binned_mean():
    iou = box_iou(np.array([[0, 0, 10, 10], [5, 5, 15, 15]]), np.array([[0, 0, 10, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 0.0], [25 / 175, 0.0]])
    centres, mean, count = mean_iou_per_score_bin([0.05, 0.08, 0.95, 1.0], [0.2, 0.4, 0.9, 0.7], bins=2)
    np.testing.assert_allclose(centres, [0.25, 0.75])
    np.testing.assert_allclose(mean, [0.3, 0.8])
    assert count.tolist() == [2, 2]


def _ap90_case(heights: list[float], scores: list[float]) -> dict:
    """One 100x100 object per image (area 10000: "large"); image i's detection [0, 0, 100, h_i] has IoU h_i / 100."""
    data = _data([([[0, 0, 100, 100]], [0]) for _ in heights])
    preds = [_pred([[0, 0, 100, h]], [s], [0]) for h, s in zip(heights, scores, strict=True)]
    return coco_metrics(data.to_coco(), to_coco_results(data, preds))


def test_ap90_known_values():
    strict = _ap90_case([95, 96], [0.9, 0.8])  # every box above IoU 0.9
    assert strict["AP90"] == pytest.approx(1.0) and strict["AP50"] == pytest.approx(1.0)
    loose = _ap90_case([85, 86], [0.9, 0.8])  # every box between IoU 0.85 and 0.9
    assert loose["AP90"] == pytest.approx(0.0) and loose["AP50"] == pytest.approx(1.0)
    assert loose["AP75"] == pytest.approx(1.0) and strict["APs"] == -1.0
    # At IoU 0.9 the better-scored box is right and the other wrong: recall 0.5 at precision 1, so 51 of COCO's
    # 101 recall points (0, 0.01, ..., 0.5) have precision 1.
    half = _ap90_case([95, 85], [0.9, 0.8])
    assert half["AP90"] == pytest.approx(51 / 101)
    # The other order: the first (wrong) box gives precision 0 until the second; recall 0.5 at precision 0.5.
    assert _ap90_case([85, 95], [0.9, 0.8])["AP90"] == pytest.approx(0.5 * 51 / 101)
    assert list(strict) == [*METRIC_KEYS, "AP90"]
    data = _data([([[0, 0, 100, 100]], [0])])
    assert coco_metrics(data.to_coco(), [])["AP90"] == 0.0


def test_compare_reports_quality_and_paired_differences(tmp_path):
    """Two losses x two seeds, one epoch on 10 tiny images: every new key lands in metrics.json, compare.json and
    compare.md, and every plot is written."""
    from qfocal_lab.data import generate_dataset
    from qfocal_lab.detection import COMPARE_KEYS, TrainConfig, compare

    generate_dataset(
        tmp_path / "data", images=10, seed=0, imgsz=64, min_size=6, val_fraction=0.2, mean_objects=3
    )
    base = TrainConfig(
        data=str(tmp_path / "data"), epochs=1, imgsz=64, batch=4, amp="off", progress=False, warmup_iters=1
    )  # threads=0: compare resolves it once for every run
    out = tmp_path / "cmp"
    result = compare(base, losses=["focal", "qfl"], seeds=[0, 1], out=out, log=lambda m: None)
    saved = json.loads((out / "compare.json").read_text())
    assert (
        isinstance(saved["threads"], int) and saved["threads"] >= 1 and result["threads"] == saved["threads"]
    )
    assert saved["baseline"] == "focal" and saved["config"]["threads"] == 0
    for run in saved["runs"]:
        assert set(COMPARE_KEYS) <= set(run), run
        metrics = json.loads((out / f"{run['loss']}-s{run['seed']}" / "metrics.json").read_text())
        assert list(metrics) == [*METRIC_KEYS, *QUALITY_KEYS, "score_iou_n"]
        for k in QUALITY_KEYS:
            assert metrics[k] is None or -1.0 <= metrics[k] <= 1.0, (k, metrics[k])
        run_dir = out / f"{run['loss']}-s{run['seed']}"
        with np.load(run_dir / "score_iou.npz") as z:
            assert z["scores"].shape == z["ious"].shape == (metrics["score_iou_n"],)
            assert ((z["ious"] > 0.1) & (z["ious"] <= 1)).all()
        assert (run_dir / "score_iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "delta_vs_baseline" not in saved["summary"]["focal"]
    delta = saved["summary"]["qfl"]["delta_vs_baseline"]
    assert list(delta) == list(COMPARE_KEYS)
    for k, d in delta.items():
        assert set(d) == {"mean", "ci95_low", "ci95_high", "n"} and d["n"] in (0, 1, 2), (k, d)
    d = delta["AP"]
    assert d["n"] == 2
    a = {r["seed"]: r["AP"] for r in saved["runs"] if r["loss"] == "qfl"}
    b = {r["seed"]: r["AP"] for r in saved["runs"] if r["loss"] == "focal"}
    assert d["mean"] == pytest.approx(100 * np.mean([a[s] - b[s] for s in (0, 1)]))
    assert d["ci95_low"] <= d["mean"] <= d["ci95_high"]
    md = (out / "compare.md").read_text()
    assert "| AP90 | score-IoU ρ |" in md and "| loss − focal | n |" in md and "| qfl | 2 |" in md
    assert "- qfl vs focal (n=" in md
    for png in ("compare.png", "compare_score_iou.png"):
        assert (out / png).stat().st_size > 1000, png


def test_delta_table_and_plots_with_real_differences(tmp_path):
    """The compare outputs on made-up runs where the differences are known: the table cells, the words line,
    and the plots with intervals and hexbins (the one-epoch compare above has too few detections for them)."""
    from qfocal_lab.detection.compare import COMPARE_KEYS, format_deltas, format_table
    from qfocal_lab.detection.plots import plot_compare, plot_compare_score_iou, plot_score_iou
    from qfocal_lab.detection.stats import paired_deltas

    runs, summary = [], {}
    for loss, shift in (("focal", 0.0), ("qfl", 0.02)):
        summary[loss] = {k: [] for k in COMPARE_KEYS}
        for seed, noise in enumerate((-0.005, 0.0, 0.005)):
            run = {"loss": loss, "seed": seed}
            for k in COMPARE_KEYS:
                base = 0.3 if k.startswith("AP") else 0.2
                run[k] = base + shift * (1 if k.startswith("AP") else 10) + (noise if loss == "qfl" else 0.0)
                summary[loss][k].append(run[k])
            runs.append(run)
    deltas = paired_deltas(runs, "focal", COMPARE_KEYS)
    text = format_deltas(deltas, "focal")
    # qfl - focal: 2 + (-0.5, 0, 0.5) AP points, sd 0.5, half width t_{0.975,2} * 0.5 / sqrt(3) = 1.242.
    assert "| qfl | 3 | +2.0 [+0.8, +3.2] |" in text
    # The correlations: 0.2 + (-0.005, 0, 0.005), half width 1.242 / 100, unscaled.
    assert "| +0.200 [+0.188, +0.212] |" in text
    assert "- qfl vs focal (n=3 seeds): excludes 0: +2.0 AP [0.8, 3.2]" in text
    table = format_table(summary)
    assert "| qfl | 3 | 32.0 ± 0.5 |" in table and "| 0.40 ± 0.01 |" in table
    plot_compare(summary, tmp_path / "c.png", title="t", deltas=deltas)
    rng = np.random.default_rng(0)
    iou = rng.uniform(0.1, 1, 500)
    pairs = {
        "focal": (rng.uniform(0, 1, 500), iou),
        "qfl": (np.clip(iou + rng.normal(0, 0.05, 500), 0, 1), iou),
    }
    plot_compare_score_iou(pairs | {"vfl": (np.zeros(0), np.zeros(0))}, tmp_path / "s.png", title="t")
    plot_score_iou(*pairs["qfl"], tmp_path / "one.png", title="qfl")
    plot_score_iou(np.zeros(0), np.zeros(0), tmp_path / "none.png")
    for png in ("c.png", "s.png", "one.png", "none.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
