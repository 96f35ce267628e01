"""Paired statistics over seeds (qfocal_lab.detection.stats): the t quantile against scipy, the interval of the paired
differences on hand-made numbers, pairing by seed, pycocotools' -1, and the sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qfocal_lab.detection.stats import (
    describe_delta,
    excludes_zero,
    mean_ci95,
    noise_line,
    paired_deltas,
    paired_sd,
    seeds_for_halfwidth,
    significance_line,
    t_quantile,
)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [0.5, 1, 2, 3, 4, 5, 9, 10, 29, 100, 1e4])
@pytest.mark.parametrize("p", [1e-5, 0.025, 0.1, 0.5, 0.7, 0.95, 0.975, 0.995])
def test_t_quantile_matches_scipy(p, df):
    ours, ref = t_quantile(p, df), float(scipy_stats.t.ppf(p, df))
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12), f"t_quantile({p}, {df}): {ours} vs scipy {ref}"


def test_t_quantile_table_values_and_errors():
    # Printed tables: t_{0.975} for 1, 4 and 30 degrees of freedom.
    assert t_quantile(0.975, 1) == pytest.approx(12.706204736, rel=1e-9)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445105, rel=1e-9)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272456, rel=1e-9)
    assert t_quantile(0.025, 4) == -t_quantile(0.975, 4)
    for p in (0, 1, 1.5, math.nan):
        with pytest.raises(ValueError, match="p: expected a probability in"):
            t_quantile(p, 3)
    with pytest.raises(ValueError, match="df: expected a finite number > 0"):
        t_quantile(0.9, 0)


def _runs(values: dict[str, list[float]], metric: str = "AP", seeds=None) -> list[dict]:
    runs = []
    for loss, vals in values.items():
        for seed, v in zip(seeds or range(len(vals)), vals, strict=True):
            runs.append({"loss": loss, "seed": seed, metric: v})
    return runs


def test_paired_interval_by_hand_and_against_scipy():
    focal = [0.300, 0.310, 0.290, 0.305, 0.295]
    qfl = [f + d for f, d in zip(focal, [0.01, 0.02, 0.03, 0.02, 0.02], strict=True)]
    d = paired_deltas(_runs({"focal": focal, "qfl": qfl}), "focal", ["AP"])
    assert list(d) == ["qfl"]
    got = d["qfl"]["AP"]
    # By hand: differences 1, 2, 3, 2, 2 AP points; mean 2, sample sd sqrt(2/4), t_{0.975,4} = 2.7764451052.
    half = 2.7764451052 * math.sqrt(0.5) / math.sqrt(5)
    assert got["n"] == 5
    assert got["mean"] == pytest.approx(2.0, abs=1e-9)
    assert got["ci95_low"] == pytest.approx(2.0 - half, abs=1e-8)  # 1.12202
    assert got["ci95_high"] == pytest.approx(2.0 + half, abs=1e-8)  # 2.87798
    diffs = (np.array(qfl) - np.array(focal)) * 100
    lo, hi = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((lo, hi), abs=1e-9)
    assert describe_delta(got, "AP") == "significant: +2.0 AP [1.1, 2.9], n=5"


def test_pairs_only_shared_seeds_and_skips_missing_values():
    runs = [
        {"loss": "focal", "seed": 0, "AP": 0.30, "APs": -1.0, "score_iou_spearman": 0.10},
        {"loss": "focal", "seed": 1, "AP": 0.32, "APs": 0.10, "score_iou_spearman": 0.20},
        {"loss": "focal", "seed": 2, "AP": 0.31, "APs": 0.12, "score_iou_spearman": None},
        {"loss": "qfl", "seed": 2, "AP": 0.36, "APs": 0.13, "score_iou_spearman": 0.5},
        {"loss": "qfl", "seed": 0, "AP": 0.31, "APs": 0.05, "score_iou_spearman": -1.0},
        {"loss": "qfl", "seed": 1, "AP": 0.30, "APs": 0.11, "score_iou_spearman": 0.4},
        {"loss": "qfl", "seed": 7, "AP": 0.90, "APs": 0.90, "score_iou_spearman": 0.9},  # no focal seed 7
        {"loss": "vfl", "seed": 0, "AP": 0.33, "APs": 0.2, "score_iou_spearman": math.nan},
    ]
    d = paired_deltas(runs, "focal", ["AP", "APs", "score_iou_spearman"])
    assert list(d) == ["qfl", "vfl"]
    ap = d["qfl"]["AP"]  # seeds 0, 1, 2: +1, -2, +5 points
    assert ap["n"] == 3 and ap["mean"] == pytest.approx(4 / 3)
    diffs = np.array([1.0, -2.0, 5.0])
    half = float(scipy_stats.t.ppf(0.975, 2)) * diffs.std(ddof=1) / math.sqrt(3)
    assert (ap["ci95_low"], ap["ci95_high"]) == pytest.approx((4 / 3 - half, 4 / 3 + half))
    aps = d["qfl"]["APs"]  # seed 0 has no small objects for focal (-1): skipped
    assert aps["n"] == 2 and aps["mean"] == pytest.approx(1.0)
    rho = d["qfl"]["score_iou_spearman"]  # a correlation of -1 is a value; None is missing; no x100
    assert rho["n"] == 2 and rho["mean"] == pytest.approx(((-1.0 - 0.1) + (0.4 - 0.2)) / 2)
    one = d["vfl"]["AP"]
    assert one["n"] == 1 and one["mean"] == pytest.approx(3.0)
    assert math.isnan(one["ci95_low"]) and math.isnan(one["ci95_high"]) and not excludes_zero(one)
    assert describe_delta(one, "AP") == "not significant: +3.0 AP, n=1 (one seed has no interval)"
    none = d["vfl"]["score_iou_spearman"]
    assert none["n"] == 0 and math.isnan(none["mean"])
    assert describe_delta(none, "score_iou_spearman") == "no paired seeds for score_iou_spearman"


def test_not_significant_and_the_line_per_loss():
    runs = _runs({"focal": [0.30, 0.30, 0.30], "qfl": [0.31, 0.29, 0.305]})
    runs += _runs({"focal": [0.10, 0.10, 0.10], "qfl": [0.15, 0.16, 0.14]}, metric="AP90")
    merged: dict = {}
    for r in runs:
        merged.setdefault((r["loss"], r["seed"]), {}).update(r)
    d = paired_deltas(list(merged.values()), "focal", ["AP", "AP90"])["qfl"]
    assert not excludes_zero(d["AP"]) and excludes_zero(d["AP90"])
    assert describe_delta(d["AP"], "AP").startswith("not significant: +0.2 AP [")
    assert describe_delta(d["AP90"], "AP90") == "significant: +5.0 AP90 [2.5, 7.5], n=3"
    line = significance_line("qfl", "focal", d)
    assert line == "qfl vs focal (n=3 seeds): excludes 0: +5.0 AP90 [2.5, 7.5]; includes 0: AP"


def test_mean_ci95_edges_and_bad_runs():
    assert mean_ci95([])["n"] == 0
    assert mean_ci95([4.0, 4.0]) == {"mean": 4.0, "ci95_low": 4.0, "ci95_high": 4.0, "n": 2}
    with pytest.raises(
        ValueError, match=r"baseline: expected one of the runs' losses \['qfl'\], got 'focal'"
    ):
        paired_deltas([{"loss": "qfl", "seed": 0, "AP": 0.1}], "focal", ["AP"])
    with pytest.raises(ValueError, match="expected one run per loss and seed"):
        paired_deltas([{"loss": "qfl", "seed": 0}, {"loss": "qfl", "seed": 0}], "qfl", ["AP"])
    with pytest.raises(ValueError, match="expected mappings with 'loss' and 'seed'"):
        paired_deltas([{"loss": "qfl"}], "qfl", ["AP"])


def test_seeds_for_halfwidth_and_the_noise_line():
    """The planner inverts the interval: the sd recovered from an interval is the sample sd, and the n it picks is
    the first whose half-width t_{0.975, n-1} * sd / sqrt(n) is at most the target (checked against scipy)."""
    diffs = [1.0, 4.0, -2.0, 3.0, 0.5, 2.5]
    d = mean_ci95(diffs)
    assert paired_sd(d) == pytest.approx(float(np.std(diffs, ddof=1)), rel=1e-9)
    for sd, target in [(1.0, 1.0), (2.0, 1.0), (2.8, 1.0), (0.5, 1.0), (3.0, 0.5)]:
        n = seeds_for_halfwidth(sd, target)
        half = [float(scipy_stats.t.ppf(0.975, k - 1)) * sd / math.sqrt(k) for k in (n - 1, n)]
        assert half[1] <= target and (n == 2 or half[0] > target), (sd, target, n)
    assert (seeds_for_halfwidth(1.0), seeds_for_halfwidth(2.0), seeds_for_halfwidth(0.0)) == (7, 18, 2)
    assert seeds_for_halfwidth(100.0, 0.01, n_max=50) == 50
    with pytest.raises(ValueError, match="sd: expected a finite number >= 0"):
        seeds_for_halfwidth(float("nan"))
    with pytest.raises(ValueError, match="halfwidth: expected a finite number > 0"):
        seeds_for_halfwidth(1.0, 0.0)
    sd = float(np.std(diffs, ddof=1))
    line = noise_line("qfl", d, "AP")
    assert (
        line.startswith("qfl, AP: half-width 2.3 points (sd 2.1, n=6)")
        and f"needs about {seeds_for_halfwidth(sd)} seeds" in line
    )
    assert "reached" in noise_line("vfl", mean_ci95([1.0, 1.1, 0.9, 1.0]), "AP")
    assert "no interval yet" in noise_line("gfl", mean_ci95([1.0]), "AP") and math.isnan(
        paired_sd(mean_ci95([1.0]))
    )
