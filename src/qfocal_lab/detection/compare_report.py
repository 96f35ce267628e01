"""What a compare writes: the metrics it reports (:class:`CompareMetrics`, :data:`FCOS_METRICS`), the markdown
tables (:func:`format_table`, :func:`format_deltas`) and the one writer of ``compare.md``, ``compare.json`` and
``compare.png`` (:func:`write_compare`) that the FCOS compare and the frameworks' compare share, and the FCOS
compare's own summary of its finished runs (with ``compare_score_iou.png``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .._machine import autocast_name, run_facts
from .evaluate import METRIC_KEYS, QUALITY_KEYS, json_ready
from .stats import is_percent_metric, noise_line, paired_deltas, significance_line
from .train import (
    amp_dtype,
    resolve_device,
)

# Every metric compare tabulates and tests between losses: the COCO six, AP90, the score-IoU correlations.
COMPARE_KEYS = (*METRIC_KEYS, *QUALITY_KEYS)
# Columns of the first table: the APs, AP90 and the Spearman correlation (Pearson is in compare.json).
_TABLE_KEYS = (*METRIC_KEYS, "AP90", "score_iou_spearman")
_HEADINGS = {"score_iou_spearman": "score-IoU ρ", "score_iou_pearson": "score-IoU r"}


@dataclasses.dataclass(frozen=True)
class CompareMetrics:
    """The metrics a compare records per run, and how :func:`write_compare` reports them.

    Metrics that :func:`qfocal_lab.detection.stats.is_percent_metric` names (``AP...``, ``mAP...``) are fractions in
    [0, 1], shown in percent and differenced in percentage points; the others are shown in their own units.

    Attributes:
        keys: every metric of a run: summarised (mean, std) in ``compare.json`` and differenced from the baseline.
        table: the columns of the mean ± std table, a subset of ``keys``.
        bars: the fractions drawn as bars in ``compare.png`` (the delta panels show every metric of ``keys``).
        axis: the y label of the bars, e.g. ``"COCO val (%)"``.
        delta_units: how ``compare.md`` states the units of the differences.
        json_units: ``compare.json``'s ``units``.
        headings: column titles for metrics whose name is not one (``score_iou_spearman``: ``score-IoU ρ``).
    """

    keys: tuple[str, ...]
    table: tuple[str, ...]
    bars: tuple[str, ...]
    axis: str
    delta_units: str
    json_units: str
    headings: dict[str, str] = dataclasses.field(default_factory=dict)


# What the FCOS compare reports: the COCO six, AP90 and the score-IoU correlations.
FCOS_METRICS = CompareMetrics(
    keys=COMPARE_KEYS,
    table=_TABLE_KEYS,
    bars=(*METRIC_KEYS, "AP90"),
    axis="COCO val (%)",
    delta_units="APs in percentage points, correlations in their own units",
    json_units=(
        "runs, mean, std: APs as fractions in [0, 1] (-1: no ground truth of that size), correlations in "
        "[-1, 1]; delta_vs_baseline: loss minus baseline per seed, APs in percentage points, correlations in "
        "their own units, 95 % Student-t interval"
    ),
    headings=_HEADINGS,
)


def _fmt(values: list[float], key: str = "AP") -> str:
    v = np.asarray(values, dtype=float)
    if not np.isfinite(v).all():  # an undefined correlation (too few detections on objects)
        return "n/a"
    if is_percent_metric(key):
        if (v < 0).any():  # pycocotools' -1: no ground truth of that size
            return "n/a"
        v = v * 100
        k = 1
    else:
        k = 2
    if len(v) == 1:
        return f"{v[0]:.{k}f}"
    return f"{v.mean():.{k}f} ± {v.std(ddof=1):.{k}f}"


def _as_float(value) -> float:
    return math.nan if value is None else float(value)


def format_table(
    summary: dict[str, dict[str, list[float]]],
    seconds: dict[str, list[float]] | None = None,
    *,
    keys: Sequence[str] = _TABLE_KEYS,
    label: str = "loss",
    headings: dict[str, str] | None = None,
) -> str:
    """A markdown table: one row per loss, ``mean ± std`` over seeds (sample std) of each metric of ``keys`` that
    ``summary`` has: fractions (APs, mAPs) in percent, the others (the score-IoU Spearman correlation) as they are.

    ``keys`` default to the FCOS compare's (the COCO six, AP90, score-IoU ρ); ``label`` heads the first column;
    ``headings`` titles columns whose metric name is not one (default: the FCOS compare's).
    """
    headings = _HEADINGS if headings is None else headings
    keys = [k for k in keys if all(k in vals for vals in summary.values())]
    cols = [headings.get(k, k) for k in keys] + (["train s/run"] if seconds else [])
    lines = [f"| {label} | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for loss, vals in summary.items():
        cells = [_fmt(vals[k], k) for k in keys]
        if seconds:
            timed = [t for t in seconds[loss] if math.isfinite(t)]  # reused runs of unknown time: nan
            cells.append(f"{np.mean(timed):.0f}" if timed else "-")
        n = len(vals[keys[0]]) if keys else 0
        lines.append(f"| {loss} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_delta(d: dict, key: str) -> str:
    if d["n"] == 0:
        return "n/a"
    k = 1 if is_percent_metric(key) else 3
    text = f"{d['mean']:+.{k}f}"
    if d["n"] >= 2:
        text += f" [{d['ci95_low']:+.{k}f}, {d['ci95_high']:+.{k}f}]"
    return text


def format_deltas(
    deltas: dict[str, dict[str, dict]],
    baseline: str,
    *,
    label: str = "loss",
    headings: dict[str, str] | None = None,
) -> str:
    """A markdown table of :func:`qfocal_lab.detection.stats.paired_deltas` (one row per loss: ``mean [95 % CI]`` of
    each metric, APs and mAPs in percentage points), then one line per loss saying which intervals exclude 0.
    ``label`` and ``headings`` as in :func:`format_table`."""
    if not deltas:
        return ""
    headings = _HEADINGS if headings is None else headings
    keys = list(next(iter(deltas.values())))
    cols = [headings.get(k, k) for k in keys]
    lines = [f"| {label} − {baseline} | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for loss, d in deltas.items():
        n = max((v["n"] for v in d.values()), default=0)
        lines.append(f"| {loss} | {n} | " + " | ".join(_fmt_delta(d[k], k) for k in keys) + " |")
    lines.append("")
    lines += [f"- {significance_line(loss, baseline, d)}" for loss, d in deltas.items()]
    headline = next((k for k in ("AP", "mAP50-95") if k in keys), None)
    if headline is not None:
        lines += [
            "",
            f"Noise of the paired {headings.get(headline, headline)} differences (seeds for a ± 1.0-point 95 % "
            "interval at the measured sd):",
            "",
        ]
        lines += [
            f"- {noise_line(loss, d[headline], headings.get(headline, headline))}"
            for loss, d in deltas.items()
        ]
    return "\n".join(lines)


def _collect(
    plan: Sequence[tuple[int, str]],
    finished: Mapping[tuple[int, str], tuple[dict, float]],
    losses: Sequence[str],
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[float]], list[dict]]:
    """The finished runs in plan order (seed, then loss), whatever order they finished in."""
    summary: dict[str, dict[str, list[float]]] = {loss: {k: [] for k in COMPARE_KEYS} for loss in losses}
    seconds: dict[str, list[float]] = {loss: [] for loss in losses}
    runs: list[dict] = []
    for seed, loss in plan:
        if (seed, loss) not in finished:
            continue
        metrics, dt = finished[(seed, loss)]
        values = {k: _as_float(metrics.get(k)) for k in COMPARE_KEYS}
        for k in COMPARE_KEYS:
            summary[loss][k].append(values[k])
        seconds[loss].append(dt)
        n_pairs = metrics.get("score_iou_n")
        runs.append(
            {
                "loss": loss,
                "seed": seed,
                "seconds": dt,
                **values,
                "score_iou_n": None if n_pairs is None else int(n_pairs),
            }
        )
    return summary, seconds, runs


def _pooled_score_iou(
    out: Path, runs: list[dict], losses: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each loss's (score, IoU) pairs pooled over its finished runs' ``score_iou.npz`` (runs without one skipped)."""
    pooled: dict[str, tuple[list, list]] = {loss: ([], []) for loss in losses}
    for run in runs:
        path = out / f"{run['loss']}-s{run['seed']}" / "score_iou.npz"
        if run["loss"] in pooled and path.is_file():
            with np.load(path) as z:
                pooled[run["loss"]][0].append(z["scores"])
                pooled[run["loss"]][1].append(z["ious"])
    return {
        loss: (np.concatenate(s) if s else np.zeros(0), np.concatenate(i) if i else np.zeros(0))
        for loss, (s, i) in pooled.items()
    }


def _write_summary(out, base, losses, seeds, threads, jobs, summary, seconds, runs, wall) -> dict:
    """Write compare.md / .json / .png (:func:`write_compare`) and compare_score_iou.png for the runs finished so
    far; return the JSON content."""
    at_once = f"{jobs} runs at a time x " if jobs > 1 else ""
    dev = resolve_device(base.device, 0)
    facts = run_facts(autocast=autocast_name(amp_dtype(base.amp, dev)), device=str(dev), threads=threads)
    machine = (
        f"{platform.machine()} {facts['cpu']}, {at_once}{threads} threads per run, autocast {facts['autocast']}, "
        f"torch {torch.__version__}"
    )
    finished = f"{len(runs)} of {len(losses) * len(seeds)} runs"
    header = (
        f"COCO val metrics in percent (score-IoU ρ: Spearman correlation of score and IoU of the detections on an "
        f"object), mean ± sample std over seeds {list(seeds)} ({finished}); data {base.data}; "
        f"{base.epochs} epochs, imgsz {base.imgsz}, batch {base.batch}, model {base.model_size}; "
        f"{machine}; wall {wall:.0f} s."
    )
    title = (
        f"data {Path(str(base.data)).name}, {base.epochs} epochs, imgsz {base.imgsz}, seeds {list(seeds)} "
        f"({finished}); differences vs {losses[0]}"
    )
    result = write_compare(
        out,
        FCOS_METRICS,
        names=losses,
        seeds=seeds,
        runs=runs,
        summary=summary,
        seconds=seconds,
        config=dataclasses.asdict(base),
        threads=threads,
        wall=wall,
        header=header,
        title=title,
        extra={"jobs": jobs, "facts": facts},
    )
    from .plots import plot_compare_score_iou

    done = [loss for loss in losses if summary[loss][FCOS_METRICS.keys[0]]]
    plot_compare_score_iou(
        _pooled_score_iou(out, runs, done),
        out / "compare_score_iou.png",
        title=f"val detections on an object, pooled over seeds ({finished})",
    )
    return result


def write_compare(
    out: Path,
    metrics: CompareMetrics,
    *,
    names: Sequence[str],
    seeds: Sequence[int],
    runs: list[dict],
    summary: dict[str, dict[str, list[float]]],
    seconds: dict[str, list[float]],
    config: dict,
    threads: int,
    wall: float,
    header: str,
    title: str,
    label: str = "loss",
    extra: dict | None = None,
) -> dict:
    """Write ``out/compare.md``, ``out/compare.json`` and ``out/compare.png`` for the runs finished so far.

    The one writer of every compare (the FCOS harness's and the frameworks'). The first of ``names`` is the
    baseline: the other names' per-seed differences of ``metrics.keys`` from it are averaged with a Student-t
    95 % interval (:func:`qfocal_lab.detection.stats.paired_deltas`).

    Args:
        out: the compare's folder.
        metrics: what to report (:class:`CompareMetrics`).
        names: the compared losses (or variants) in order, the baseline first.
        seeds: the seeds of the compare.
        runs: one mapping per finished run: ``loss`` (its name), ``seed``, each metric of ``metrics.keys`` and
            anything else to keep in ``compare.json``.
        summary: ``{name: {metric: [value per finished run]}}``.
        seconds: ``{name: [seconds per finished run]}``.
        config, threads, wall: recorded in ``compare.json`` (``config``, ``threads``, ``wall_s``).
        header: the first paragraph of ``compare.md``; title: the title of ``compare.png``.
        label: the title of the first column (``loss``; a variant's meaning for the frameworks).
        extra: more top-level keys of ``compare.json``.

    Returns:
        the content of ``compare.json`` (with nan where the file has ``null``): ``config``, ``losses``,
        ``baseline``, ``seeds``, ``threads``, ``units``, ``runs``, ``summary`` (per name ``runs``, ``mean``,
        ``std`` and, for all but the baseline, ``delta_vs_baseline``: ``{metric: {"mean", "ci95_low",
        "ci95_high", "n"}}``), ``wall_s``, ``table``, then ``extra``.
    """
    first = metrics.keys[0]
    done = {k: v for k, v in summary.items() if v[first]}
    table = format_table(
        done, {k: seconds[k] for k in done}, keys=metrics.table, label=label, headings=metrics.headings
    )
    baseline = names[0]
    deltas = paired_deltas(runs, baseline, metrics.keys) if baseline in done else {}
    text = header + "\n\n" + table + "\n"
    if deltas:
        text += (
            f"\nPaired differences from {baseline} (same seed): mean [95 % CI, Student t] over the seeds both "
            f"finished; {metrics.delta_units}.\n\n"
            + format_deltas(deltas, baseline, label=label, headings=metrics.headings)
            + "\n"
        )
    (out / "compare.md").write_text(text)
    per_name: dict[str, dict] = {}
    for name in names:
        vals = summary[name]
        entry: dict = {
            "runs": len(vals[first]),
            "mean": {k: float(np.mean(vals[k])) if vals[k] else math.nan for k in metrics.keys},
            "std": {
                k: float(np.std(vals[k], ddof=1)) if len(vals[k]) > 1 else math.nan for k in metrics.keys
            },
        }
        if name in deltas:
            entry["delta_vs_baseline"] = deltas[name]
        per_name[name] = entry
    result = {
        "config": config,
        "losses": list(names),
        "baseline": baseline,
        "seeds": [int(s) for s in seeds],
        "threads": threads,
        "units": metrics.json_units,
        "runs": runs,
        "summary": per_name,
        "wall_s": wall,
        "table": table,
        **(extra or {}),
    }
    (out / "compare.json").write_text(json.dumps(json_ready(result), indent=2) + "\n")
    from .plots import plot_compare

    plot_compare(
        done, out / "compare.png", title=title, deltas=deltas, keys=metrics.bars, ylabel=metrics.axis
    )
    return result
