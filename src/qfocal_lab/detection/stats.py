"""Paired statistics over seeds: how much one loss differs from a baseline trained with the same seeds.

Two runs with the same seed share the data order, the augmentation and the initial weights (up to the head that
the loss changes), so the per-seed difference removes most of the seed-to-seed noise that a comparison of two
means keeps. :func:`paired_deltas` gives the mean difference per metric with a Student-t 95 % confidence
interval; :func:`describe_delta` and :func:`significance_line` say in words whether the interval excludes 0.
Pure Python and numpy: the t quantile is computed here (inverse of the regularised incomplete beta function),
so scipy is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "describe_delta",
    "excludes_zero",
    "is_percent_metric",
    "mean_ci95",
    "noise_line",
    "paired_deltas",
    "paired_sd",
    "seeds_for_halfwidth",
    "significance_line",
    "t_quantile",
]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0 under Student's t with ``df`` degrees of freedom."""
    return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (``scipy.stats.t.ppf``).

    Solves ``P(T <= t) = p`` by bisection on the exact CDF, ``1 - I_{df/(df+t^2)}(df/2, 1/2) / 2`` for t >= 0
    (symmetric below), to about 1e-12 relative; ``t_quantile(0.975, 4) = 2.7764451...``.

    Args:
        p: probability in (0, 1).
        df: degrees of freedom, > 0 (need not be an integer).
    """
    p, df = float(p), float(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: expected a probability in (0, 1), got {p!r}")
    if not df > 0.0 or math.isinf(df):
        raise ValueError(f"df: expected a finite number > 0, got {df!r}")
    if p == 0.5:
        return 0.0
    tail = 1.0 - p if p > 0.5 else p  # P(T > t) for the positive quantile
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            break
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * hi:
            break
    t = 0.5 * (lo + hi)
    return t if p > 0.5 else -t


def mean_ci95(values: Iterable[float]) -> dict[str, float]:
    """Mean of ``values`` with the Student-t 95 % interval ``mean ± t_{0.975, n-1} * sd / sqrt(n)``.

    ``sd`` is the sample standard deviation (ddof 1). Returns ``{"mean", "ci95_low", "ci95_high", "n"}``; the bounds
    are nan for ``n = 1`` (one value has no spread) and every float is nan for ``n = 0``.
    """
    v = np.asarray(list(values), dtype=np.float64).reshape(-1)
    n = int(v.size)
    if n == 0:
        return {"mean": math.nan, "ci95_low": math.nan, "ci95_high": math.nan, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "ci95_low": math.nan, "ci95_high": math.nan, "n": 1}
    half = t_quantile(0.975, n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


def paired_sd(delta: Mapping) -> float:
    """The sample sd of the paired differences behind a :func:`mean_ci95` / :func:`paired_deltas` entry, recovered
    from its interval: ``half-width * sqrt(n) / t_{0.975, n-1}``; nan below ``n = 2``."""
    n = int(delta["n"])
    lo, hi = float(delta["ci95_low"]), float(delta["ci95_high"])
    if n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    return (hi - lo) / 2.0 * math.sqrt(n) / t_quantile(0.975, n - 1)


def seeds_for_halfwidth(sd: float, halfwidth: float = 1.0, *, n_max: int = 10_000) -> int:
    """The fewest seeds ``n >= 2`` whose paired 95 % interval, ``t_{0.975, n-1} * sd / sqrt(n)``, is at most
    ``halfwidth`` when the differences have sample sd ``sd`` (the same units: AP points for AP deltas).

    Plans a benchmark from a pilot's noise: ``seeds_for_halfwidth(2.0, 1.0) = 18``. Returns ``n_max`` when even
    that many are not enough.

    Example:
        >>> seeds_for_halfwidth(1.0, 1.0), seeds_for_halfwidth(2.0, 1.0)
        (7, 18)
    """
    sd, halfwidth = float(sd), float(halfwidth)
    if not (math.isfinite(sd) and sd >= 0.0):
        raise ValueError(f"sd: expected a finite number >= 0, got {sd!r}")
    if not (math.isfinite(halfwidth) and halfwidth > 0.0):
        raise ValueError(f"halfwidth: expected a finite number > 0, got {halfwidth!r}")
    for n in range(2, n_max + 1):
        if t_quantile(0.975, n - 1) * sd / math.sqrt(n) <= halfwidth:
            return n
    return n_max


def noise_line(loss: str, delta: Mapping, metric: str, *, halfwidth: float = 1.0) -> str:
    """How noisy one paired difference is and how many seeds a ``± halfwidth`` interval would take, e.g.
    ``"qfl, AP: half-width 2.3 points (sd 2.1, n=6); ± 1.0: needs about 21 seeds"``."""
    n = int(delta["n"])
    sd = paired_sd(delta)
    if not math.isfinite(sd):
        return f"{loss}, {metric}: n={n}, no interval yet"
    half = (float(delta["ci95_high"]) - float(delta["ci95_low"])) / 2.0
    need = seeds_for_halfwidth(sd, halfwidth)
    verdict = "reached" if half <= halfwidth else f"needs about {need} seeds"
    return (
        f"{loss}, {metric}: half-width {half:.1f} points (sd {sd:.1f}, n={n}); ± {halfwidth:.1f}: {verdict}"
    )


def is_percent_metric(metric: str) -> bool:
    """Whether ``metric`` is a COCO AP (``AP``, ``AP50``, ``APs``, ``AP90``...) or a YOLO framework's mAP
    (``mAP50``, ``mAP50-95``): a fraction in [0, 1] that tables show in percent and where pycocotools' ``-1``
    means no ground truth in that size range."""
    return metric.startswith(("AP", "mAP"))


def _value(run: Mapping, metric: str) -> float:
    v = run.get(metric)
    return math.nan if v is None else float(v)


def paired_deltas(
    runs: Iterable[Mapping],
    baseline: str,
    metrics: Sequence[str],
    *,
    percent: Collection[str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean per-seed difference ``loss - baseline`` of each metric, with a 95 % confidence interval.

    Runs of two losses are paired by seed; only seeds that both losses have count. The interval is
    ``mean ± t_{0.975, n-1} * sd / sqrt(n)`` over the ``n`` paired differences (sample sd), the paired t-test's
    interval; ``n = 1`` gives nan bounds.

    Units: runs hold the APs as fractions in [0, 1] (as ``metrics.json`` and pycocotools do); their differences are
    reported in percentage points (x 100), like the compare tables, so ``+1.2`` means 1.2 AP points better than
    the baseline. Other metrics (the score-IoU correlations) are differences in their own units. A pair is
    skipped for a metric when either value is missing, None or nan, or, for an AP metric, pycocotools' ``-1`` (no
    ground truth of that size).

    Args:
        runs: one mapping per run with ``"loss"``, ``"seed"`` and the metric values (``compare.json``'s
            ``runs``).
        baseline: the loss the others are compared with.
        metrics: the metric names to compare.
        percent: the metrics held as fractions (scaled by 100, ``-1`` skipped); default: those whose name starts
            with ``AP`` or ``mAP`` (:func:`is_percent_metric`).

    Returns:
        ``{loss: {metric: {"mean", "ci95_low", "ci95_high", "n"}}}`` for every loss other than ``baseline``, in
        the order they first appear in ``runs``.

    Example:
        >>> runs = [{"loss": "focal", "seed": s, "AP": 0.30} for s in (0, 1, 2)]
        >>> runs += [{"loss": "qfl", "seed": s, "AP": 0.30 + d} for s, d in zip((0, 1, 2), (0.01, 0.02, 0.03))]
        >>> d = paired_deltas(runs, "focal", ["AP"])["qfl"]["AP"]
        >>> round(d["mean"], 6), d["n"]
        (2.0, 3)
    """
    by_loss: dict[str, dict[int, Mapping]] = {}
    for run in runs:
        try:
            loss, seed = str(run["loss"]), int(run["seed"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"runs: expected mappings with 'loss' and 'seed', got {run!r}") from None
        seeds = by_loss.setdefault(loss, {})
        if seed in seeds:
            raise ValueError(f"runs: expected one run per loss and seed, got two of {loss!r} seed {seed}")
        seeds[seed] = run
    if baseline not in by_loss:
        raise ValueError(f"baseline: expected one of the runs' losses {list(by_loss)}, got {baseline!r}")
    percent = {m for m in metrics if is_percent_metric(m)} if percent is None else set(percent)
    base = by_loss[baseline]
    result: dict[str, dict[str, dict[str, float]]] = {}
    for loss, seeds in by_loss.items():
        if loss == baseline:
            continue
        shared = [s for s in seeds if s in base]
        result[loss] = {}
        for metric in metrics:
            diffs = []
            for s in shared:
                a, b = _value(seeds[s], metric), _value(base[s], metric)
                if not (math.isfinite(a) and math.isfinite(b)):
                    continue
                if metric in percent:
                    if a < 0 or b < 0:
                        continue
                    a, b = 100.0 * a, 100.0 * b
                diffs.append(a - b)
            result[loss][metric] = mean_ci95(diffs)
    return result


def _digits(metric: str) -> int:
    return 1 if is_percent_metric(metric) else 3


def _interval(delta: Mapping, metric: str) -> str:
    k = _digits(metric)
    text = f"{delta['mean']:+.{k}f} {metric}"
    if delta["n"] >= 2:
        text += f" [{delta['ci95_low']:.{k}f}, {delta['ci95_high']:.{k}f}]"
    return text


def excludes_zero(delta: Mapping) -> bool:
    """Whether the 95 % interval of a :func:`paired_deltas` entry lies entirely above or below 0."""
    lo, hi = float(delta["ci95_low"]), float(delta["ci95_high"])
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def describe_delta(delta: Mapping, metric: str) -> str:
    """One :func:`paired_deltas` entry in words, e.g. ``"significant: +1.2 AP [0.3, 2.1], n=5"`` when the 95 %
    interval excludes 0, ``"not significant: +0.4 AP [-0.8, 1.6], n=5"`` when it does not. APs are in percentage
    points (1 decimal), correlations in their own units (3 decimals); ``n=1`` has no interval and ``n=0``
    says there are no paired seeds."""
    n = int(delta["n"])
    if n == 0:
        return f"no paired seeds for {metric}"
    if n == 1:
        return f"not significant: {_interval(delta, metric)}, n=1 (one seed has no interval)"
    word = "significant" if excludes_zero(delta) else "not significant"
    return f"{word}: {_interval(delta, metric)}, n={n}"


def significance_line(loss: str, baseline: str, deltas: Mapping[str, Mapping]) -> str:
    """One sentence per loss: which metrics' 95 % intervals of ``loss - baseline`` exclude 0 (with the interval)
    and which do not, e.g. ``"qfl vs focal (n=5 seeds): excludes 0: +1.2 AP90 [0.3, 2.1]; includes 0: AP, AP50"``.
    """
    ns = sorted({int(d["n"]) for d in deltas.values() if int(d["n"]) > 0})
    if not ns:
        return f"{loss} vs {baseline}: no paired seeds"
    seeds = f"n={ns[0]} seeds" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]} seeds"
    if ns[-1] < 2:
        return f"{loss} vs {baseline} ({seeds}): one paired seed, no interval yet"
    sig = [_interval(d, m) for m, d in deltas.items() if excludes_zero(d)]
    rest = [m for m, d in deltas.items() if int(d["n"]) > 0 and not excludes_zero(d)]
    parts = [f"excludes 0: {', '.join(sig)}" if sig else "no difference excludes 0"]
    if rest and sig:
        parts.append(f"includes 0: {', '.join(rest)}")
    return f"{loss} vs {baseline} ({seeds}): " + "; ".join(parts)


def verdict_lines(
    deltas: Mapping[str, Mapping[str, Mapping]], baseline: str, metric: str = "AP", *, n_max: int = 1000
) -> list[str]:
    """The answer of a compare in plain sentences, one per loss, built from its :func:`paired_deltas` of
    ``metric``: by how much the loss beats (or trails) ``baseline`` and whether the 95 % interval excludes 0;
    where it does not, how many seeds would settle it at the measured paired sd (:func:`seeds_for_halfwidth`
    with the measured mean as the half-width), or that no feasible number would.

    Example:
        >>> d = {"gfl": {"AP": {"mean": 2.3, "ci95_low": 2.0, "ci95_high": 2.6, "n": 4}}}
        >>> verdict_lines(d, "focal")[0]
        'gfl beats focal by 2.3 AP points (95 % interval +2.0 to +2.6, 4 seeds): the interval excludes 0.'
    """
    lines = []
    points = "points" if is_percent_metric(metric) else "(own units)"
    for loss, per_metric in deltas.items():
        d = per_metric.get(metric)
        if d is None or int(d["n"]) < 2:
            lines.append(f"{loss} vs {baseline}: fewer than 2 paired seeds, no interval yet.")
            continue
        n = int(d["n"])
        k = _digits(metric)
        mean, lo, hi = float(d["mean"]), float(d["ci95_low"]), float(d["ci95_high"])
        interval = f"95 % interval {lo:+.{k}f} to {hi:+.{k}f}, {n} seeds"
        if excludes_zero(d):
            verb = "beats" if mean > 0 else "trails"
            lines.append(
                f"{loss} {verb} {baseline} by {abs(mean):.{k}f} {metric} {points} ({interval}): "
                "the interval excludes 0."
            )
            continue
        sd = paired_sd(d)
        need = seeds_for_halfwidth(sd, abs(mean), n_max=n_max) if abs(mean) > 0 else n_max
        settle = (
            f"at the measured paired sd ({sd:.{k}f}) about {need} seeds would settle a difference of this size"
            if need < n_max
            else "the difference is too small against the noise for any practical number of seeds"
        )
        lines.append(
            f"{loss} vs {baseline}: {mean:+.{k}f} {metric} {points} ({interval}): not settled, the interval "
            f"includes 0; {settle}."
        )
    return lines
