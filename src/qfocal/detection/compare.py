"""``qfocal compare``: train one detector per (loss, seed) on the same data; tabulate mean +- std of the APs, AP90
and the score-IoU correlation, and the paired per-seed differences from the first loss with 95 % intervals."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .._names import loss_name
from ..data.synth import prepare_synthetic
from .config import HARNESS_LOSSES, ConfigError, TrainConfig
from .evaluate import METRIC_KEYS, QUALITY_KEYS, json_ready
from .stats import is_percent_metric, paired_deltas, significance_line
from .train import pick_threads, run_lock, train

__all__ = ["COMPARE_KEYS", "compare", "format_deltas", "format_table"]

# Every metric compare tabulates and tests between losses: the COCO six, AP90, the score-IoU correlations.
COMPARE_KEYS = (*METRIC_KEYS, *QUALITY_KEYS)
# Columns of the first table: the APs, AP90 and the Spearman correlation (Pearson is in compare.json).
_TABLE_KEYS = (*METRIC_KEYS, "AP90", "score_iou_spearman")
_HEADINGS = {"score_iou_spearman": "score-IoU ρ", "score_iou_pearson": "score-IoU r"}


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
    summary: dict[str, dict[str, list[float]]], seconds: dict[str, list[float]] | None = None
) -> str:
    """A markdown table: one row per loss, ``mean ± std`` over seeds (sample std) of each COCO metric in percent,
    of AP90 and of the score-IoU Spearman correlation (when ``summary`` has them)."""
    keys = [k for k in _TABLE_KEYS if all(k in vals for vals in summary.values())]
    cols = [_HEADINGS.get(k, k) for k in keys] + (["train s/run"] if seconds else [])
    lines = ["| loss | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for loss, vals in summary.items():
        cells = [_fmt(vals[k], k) for k in keys]
        if seconds:
            cells.append(f"{np.mean(seconds[loss]):.0f}")
        lines.append(f"| {loss} | {len(vals['AP'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_delta(d: dict, key: str) -> str:
    if d["n"] == 0:
        return "n/a"
    k = 1 if is_percent_metric(key) else 3
    text = f"{d['mean']:+.{k}f}"
    if d["n"] >= 2:
        text += f" [{d['ci95_low']:+.{k}f}, {d['ci95_high']:+.{k}f}]"
    return text


def format_deltas(deltas: dict[str, dict[str, dict]], baseline: str) -> str:
    """A markdown table of :func:`qfocal.detection.stats.paired_deltas` (one row per loss: ``mean [95 % CI]`` of
    each metric, APs in percentage points), then one line per loss saying which intervals exclude 0."""
    if not deltas:
        return ""
    keys = list(next(iter(deltas.values())))
    cols = [_HEADINGS.get(k, k) for k in keys]
    lines = [f"| loss − {baseline} | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for loss, d in deltas.items():
        n = max((v["n"] for v in d.values()), default=0)
        lines.append(f"| {loss} | {n} | " + " | ".join(_fmt_delta(d[k], k) for k in keys) + " |")
    lines.append("")
    lines += [f"- {significance_line(loss, baseline, d)}" for loss, d in deltas.items()]
    return "\n".join(lines)


def compare(
    base: TrainConfig,
    *,
    losses: Sequence[str] = ("focal", "qfl", "vfl"),
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path = "runs/compare",
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train ``base`` once per loss and seed under ``out/{loss}-s{seed}`` and summarise.

    With ``base.data == "synthetic"`` the dataset is generated once in ``out/data`` and shared. ``base.threads``
    is resolved once (:func:`~qfocal.detection.train.pick_threads`; 0 = auto) and every run gets that count, so
    runs are not timed or computed with different thread counts. ``resume=True`` reuses finished runs (their
    ``metrics.json``) and resumes unfinished ones.

    The first loss is the baseline: for every other loss the per-seed differences of :data:`COMPARE_KEYS` (the
    COCO APs, AP90, the score-IoU Spearman and Pearson correlations) are averaged over the seeds both finished,
    with a Student-t 95 % interval (:func:`qfocal.detection.stats.paired_deltas`).

    Writes, after every run: ``out/compare.md`` (mean ± std table; paired-difference table and one line per loss
    saying which intervals exclude 0), ``out/compare.json`` (config, thread count, every run's metrics, and per
    loss ``delta_vs_baseline``: ``{metric: {"mean", "ci95_low", "ci95_high", "n"}}``; non-finite values as
    ``null``), ``out/compare.png`` (bars with seed std, paired differences with intervals) and
    ``out/compare_score_iou.png`` (score vs IoU per loss, pooled over seeds, from each run's ``score_iou.npz``).
    Returns the JSON content (with nan where the file has ``null``).
    """
    try:
        losses = [loss_name(loss, HARNESS_LOSSES, what="losses") for loss in losses]
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if not seeds:
        raise ConfigError("seeds: expected at least one seed")
    for what, items in (("losses", losses), ("seeds", [int(s) for s in seeds])):
        if len(set(items)) != len(items):
            raise ConfigError(
                f"{what}: expected each once (repeats are not independent runs), got {list(items)}"
            )
    if log is None:
        log = lambda msg: print(msg, flush=True)  # noqa: E731
    out = Path(out)
    with run_lock(out):
        return _compare(base, losses, seeds, out, resume, log)


def _compare(base, losses, seeds, out, resume, log) -> dict:
    t_start = time.perf_counter()
    data = base.data
    if data == "synthetic":
        data = str(
            prepare_synthetic(
                out / "data",
                images=base.synth_images,
                seed=base.synth_seed,
                difficulty=base.synth_difficulty,
                log=log,
            )
        )
    threads = pick_threads(base.threads)
    log(f"compare: {len(losses)} losses x {len(seeds)} seeds, {threads} thread(s) per run")
    summary: dict[str, dict[str, list[float]]] = {loss: {k: [] for k in COMPARE_KEYS} for loss in losses}
    seconds: dict[str, list[float]] = {loss: [] for loss in losses}
    runs: list[dict] = []
    result: dict = {}
    # Seeds outside, losses inside: an interrupted compare has balanced results, written after every run.
    for seed in seeds:
        for loss in losses:
            run_dir = out / f"{loss}-s{seed}"
            cfg = dataclasses.replace(
                base, data=data, loss=loss, seed=int(seed), out=str(run_dir), threads=threads
            )
            done = run_dir / "metrics.json"
            t0 = time.perf_counter()
            if resume and done.is_file() and (run_dir / "history.csv").is_file():
                metrics = json.loads(done.read_text())
                log(f"{loss} seed {seed}: reusing {done}")
            else:
                metrics = train(cfg, resume=resume, log=log)
            dt = time.perf_counter() - t0
            values = {k: _as_float(metrics.get(k)) for k in COMPARE_KEYS}
            log(
                f"{loss} seed {seed}: AP {values['AP']:.4f} AP50 {values['AP50']:.4f} AP90 {values['AP90']:.4f} "
                f"score-IoU Spearman {values['score_iou_spearman']:.3f} ({dt:.0f} s)"
            )
            for k in COMPARE_KEYS:
                summary[loss][k].append(values[k])
            seconds[loss].append(dt)
            n_pairs = metrics.get("score_iou_n")
            runs.append(
                {
                    "loss": loss,
                    "seed": int(seed),
                    "seconds": dt,
                    **values,
                    "score_iou_n": None if n_pairs is None else int(n_pairs),
                }
            )
            result = _write_summary(
                out, base, losses, seeds, threads, summary, seconds, runs, time.perf_counter() - t_start
            )
    return result


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


def _write_summary(out, base, losses, seeds, threads, summary, seconds, runs, wall) -> dict:
    """Write compare.md / .json / .png and compare_score_iou.png for the runs finished so far; return the JSON
    content."""
    done = {k: v for k, v in summary.items() if v["AP"]}
    table = format_table(done, {k: seconds[k] for k in done})
    baseline = losses[0]
    deltas = paired_deltas(runs, baseline, COMPARE_KEYS) if baseline in done else {}
    machine = f"{platform.machine()}, {threads} threads per run, torch {torch.__version__}"
    finished = f"{len(runs)} of {len(losses) * len(seeds)} runs"
    header = (
        f"COCO val metrics in percent (score-IoU ρ: Spearman correlation of score and IoU of the detections on an "
        f"object), mean ± sample std over seeds {list(seeds)} ({finished}); data {base.data}; "
        f"{base.epochs} epochs, imgsz {base.imgsz}, batch {base.batch}, model {base.model_size}; "
        f"{machine}; wall {wall:.0f} s."
    )
    text = header + "\n\n" + table + "\n"
    if deltas:
        text += (
            f"\nPaired differences from {baseline} (same seed): mean [95 % CI, Student t] over the seeds both "
            "finished; APs in percentage points, correlations in their own units.\n\n"
            + format_deltas(deltas, baseline)
            + "\n"
        )
    (out / "compare.md").write_text(text)
    per_loss: dict[str, dict] = {}
    for loss in losses:
        vals = summary[loss]
        entry: dict = {
            "runs": len(vals["AP"]),
            "mean": {k: float(np.mean(vals[k])) if vals[k] else math.nan for k in COMPARE_KEYS},
            "std": {
                k: float(np.std(vals[k], ddof=1)) if len(vals[k]) > 1 else math.nan for k in COMPARE_KEYS
            },
        }
        if loss in deltas:
            entry["delta_vs_baseline"] = deltas[loss]
        per_loss[loss] = entry
    result = {
        "config": dataclasses.asdict(base),
        "losses": list(losses),
        "baseline": baseline,
        "seeds": [int(s) for s in seeds],
        "threads": threads,
        "units": (
            "runs, mean, std: APs as fractions in [0, 1] (-1: no ground truth of that size), correlations in "
            "[-1, 1]; delta_vs_baseline: loss minus baseline per seed, APs in percentage points, correlations in "
            "their own units, 95 % Student-t interval"
        ),
        "runs": runs,
        "summary": per_loss,
        "wall_s": wall,
        "table": table,
    }
    (out / "compare.json").write_text(json.dumps(json_ready(result), indent=2) + "\n")
    from .plots import plot_compare, plot_compare_score_iou

    title = (
        f"data {Path(str(base.data)).name}, {base.epochs} epochs, imgsz {base.imgsz}, seeds {list(seeds)} "
        f"({finished}); differences vs {baseline}"
    )
    plot_compare(done, out / "compare.png", title=title, deltas=deltas)
    plot_compare_score_iou(
        _pooled_score_iou(out, runs, list(done)),
        out / "compare_score_iou.png",
        title=f"val detections on an object, pooled over seeds ({finished})",
    )
    return result
