"""``qfocal compare``: train one detector per (loss, seed) on the same data; tabulate mean +- std of the APs, AP90
and the score-IoU correlation, and the paired per-seed differences from the first loss with 95 % intervals.

The writer of the outputs (:func:`write_compare`: ``compare.md``, ``compare.json``, ``compare.png``) takes the
metrics to report as a :class:`CompareMetrics`; the FCOS harness passes :data:`FCOS_METRICS`, the compare through
YOLOv5's and Ultralytics' trainers (:mod:`qfocal_lab.detection.frameworks`) its mAP50 and mAP50-95."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from qfocal import loss_name

from .._machine import autocast_name, run_facts
from .config import HARNESS_LOSSES, ConfigError, TrainConfig
from .evaluate import METRIC_KEYS, QUALITY_KEYS, json_ready
from .stats import is_percent_metric, noise_line, paired_deltas, significance_line
from .train import (
    amp_dtype,
    check_finished_run,
    check_output_dir,
    data_fingerprint,
    pick_threads,
    prepare_data,
    prepare_synthetic_data,
    resolve_device,
    run_lock,
    train,
)

__all__ = [
    "COMPARE_KEYS",
    "FCOS_METRICS",
    "CompareMetrics",
    "compare",
    "format_deltas",
    "format_table",
    "threads_per_job",
    "write_compare",
]

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


def compare(
    base: TrainConfig,
    *,
    losses: Sequence[str] = ("focal", "qfl", "vfl"),
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path = "runs/compare",
    resume: bool = False,
    jobs: int = 1,
    pretrain_epochs: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train ``base`` once per loss and seed under ``out/{loss}-s{seed}`` and summarise.

    With ``base.data == "synthetic"`` the dataset is generated once in ``out/data`` and shared. ``base.threads``
    is resolved once (:func:`~qfocal_lab.detection.train.pick_threads`; 0 = auto) and every run gets that count, so
    runs are not timed or computed with different thread counts. ``jobs > 1`` trains that many runs at once, each
    in its own process with ``threads`` threads (0 = the CPU's cores divided among the jobs): on a 2-core CPU two
    1-thread runs do about 1.5x the work of one 2-thread run. ``resume=True`` reuses finished runs (their
    ``metrics.json``, and the seconds they took) and resumes unfinished ones; ``wall_s`` then adds the wall time
    of the earlier sessions (each up to its last finished run) to this one's.

    The first loss is the baseline: for every other loss the per-seed differences of :data:`COMPARE_KEYS` (the
    COCO APs, AP90, the score-IoU Spearman and Pearson correlations) are averaged over the seeds both finished,
    with a Student-t 95 % interval (:func:`qfocal_lab.detection.stats.paired_deltas`).

    ``pretrain_epochs > 0`` first trains one focal-loss detector (seed :data:`PRETRAIN_SEED`) for that many
    epochs under ``out/pretrain``, on a second synthetic set (``synth_seed + 1``, same size; the training data
    itself for user data), and starts every run's backbone from it (``TrainConfig.init``), the part ImageNet
    weights play for a real detector: the runs then differ in loss and seed only above the same features. A
    ``base.init`` given takes its place.

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
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs: expected an integer >= 1 (runs trained at once), got {jobs!r}")
    if isinstance(pretrain_epochs, bool) or not isinstance(pretrain_epochs, int) or pretrain_epochs < 0:
        raise ConfigError(
            f"pretrain_epochs: expected an integer >= 0 (0: no pretrained backbone), got {pretrain_epochs!r}"
        )
    if log is None:
        log = lambda msg: print(msg, flush=True)  # noqa: E731
    out = check_output_dir(out, ("compare.json", "compare.md", "compare.png", ".lock"))
    with run_lock(out):
        return _compare(base, losses, seeds, out, resume, jobs, pretrain_epochs, log)


def threads_per_job(requested: int, jobs: int) -> int:
    """Threads each run of a compare gets: ``requested`` if positive; else, with one job, :func:`pick_threads`'s
    choice, and with several, the CPU's cores divided among them (at least 1)."""
    if requested > 0:
        return int(requested)
    if jobs == 1:
        return pick_threads(0)
    return max(1, (os.cpu_count() or 1) // jobs)


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """A worker's initializer: a daemon thread ends the worker process once ``parent`` is gone.

    A compare killed from outside (SIGTERM, SIGKILL, a closed terminal) cannot shut its pool down, and the
    spawned workers would train on as orphans, each holding a core and its memory; a killed run then loses only
    its current epoch (its ``last.pt`` stays), which ``--resume`` continues.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """The pool of a parallel compare: ``jobs`` separate processes (spawned: a forked OpenMP runtime can hang),
    each with its own torch thread pool, each ending itself once this process is gone (:func:`exit_with_parent`)."""
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )


def _train_run(cfg: TrainConfig, resume: bool) -> tuple[dict, float]:
    """One run of a parallel compare, in a worker process: its metrics and seconds; its log lines name the run."""
    tag = f"[{cfg.loss} s{cfg.seed}]"
    t0 = time.perf_counter()
    metrics = train(cfg, resume=resume, log=lambda msg: print(f"{tag} {msg}", file=sys.stderr, flush=True))
    return metrics, time.perf_counter() - t0


def _finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` finished: :func:`train` writes ``metrics.json`` last, beside its history."""
    return (run_dir / "metrics.json").is_file() and (run_dir / "history.csv").is_file()


# The seed of the pretraining run of ``compare(pretrain_epochs=...)``: apart from the seeds a compare is given.
PRETRAIN_SEED = 10_000


def pretrain_backbone(base: TrainConfig, epochs: int, out: Path, resume: bool, log) -> str:
    """Train the focal-loss detector whose backbone starts every run of a compare; return its checkpoint path.

    It trains with ``base.threads`` threads (the compare's count per run, fixed by the compare rather than by
    the machine's load, so the same command gives the same backbone). With ``resume`` a finished one is reused,
    an unfinished one resumed."""
    run_dir = out / "pretrain"
    ckpt = run_dir / "last.pt"
    cfg = _pretrain_config(base, epochs, run_dir)
    if resume and _finished(run_dir):
        check_finished_run(run_dir, cfg, lambda: _fingerprint(cfg))
        log(f"pretrained backbone: reusing {ckpt}")
        return str(ckpt)
    log(f"pretraining the backbone: focal loss, {epochs} epochs, seed {PRETRAIN_SEED}, in {run_dir}")
    t0 = time.perf_counter()
    metrics = train(cfg, resume=resume, log=lambda msg: log(f"[pretrain] {msg}"))
    log(
        f"pretrained backbone: AP {metrics['AP']:.4f} on its own val split ({time.perf_counter() - t0:.0f} s)"
    )
    return str(ckpt)


def _fingerprint(cfg: TrainConfig) -> dict:
    """The :func:`~qfocal_lab.detection.train.data_fingerprint` of the data ``cfg`` trains on."""
    train_data, val_data = prepare_data(cfg, log=lambda msg: None)
    return data_fingerprint(("train", train_data), ("val", val_data))


def _pretrain_config(base: TrainConfig, epochs: int, run_dir: Path) -> TrainConfig:
    return dataclasses.replace(
        base,
        loss="focal",
        seed=PRETRAIN_SEED,
        epochs=epochs,
        eval_every=epochs,
        synth_seed=base.synth_seed + 1,
        out=str(run_dir),
        init="",
        plots=False,
    )


def _compare(base, losses, seeds, out, resume, jobs, pretrain_epochs, log) -> dict:
    t_start = time.perf_counter()
    # Resumed: the runs reused keep the seconds they took, and the wall clock counts the earlier sessions too.
    before, spent = _previous_seconds(out / "compare.json") if resume else ({}, 0.0)
    data = base.data
    if data == "synthetic":
        data = str(prepare_synthetic_data(base, out / "data", log=log))
    threads = threads_per_job(base.threads, jobs)
    if pretrain_epochs and not base.init:
        # Pretrained with the runs' thread count, not the machine's load: the same backbone every time.
        pre = dataclasses.replace(base, threads=threads)
        base = dataclasses.replace(base, init=pretrain_backbone(pre, pretrain_epochs, out, resume, log))
    at_once = f"{jobs} runs at a time, " if jobs > 1 else ""
    log(f"compare: {len(losses)} losses x {len(seeds)} seeds, {at_once}{threads} thread(s) per run")
    # Seeds outside, losses inside: an interrupted compare has balanced results, written after every run.
    plan = [(int(seed), loss) for seed in seeds for loss in losses]
    finished: dict[tuple[int, str], tuple[dict, float]] = {}
    result: dict = {}

    def summarise() -> None:
        nonlocal result
        summary, seconds, runs = _collect(plan, finished, losses)
        wall = spent + time.perf_counter() - t_start
        result = _write_summary(out, base, losses, seeds, threads, jobs, summary, seconds, runs, wall)

    def record(seed: int, loss: str, metrics: dict, dt: float, write: bool = True) -> None:
        finished[(seed, loss)] = (metrics, dt)
        values = {k: _as_float(metrics.get(k)) for k in COMPARE_KEYS}
        log(
            f"{loss} seed {seed}: AP {values['AP']:.4f} AP50 {values['AP50']:.4f} AP90 {values['AP90']:.4f} "
            f"score-IoU Spearman {values['score_iou_spearman']:.3f} ({dt:.0f} s)"
        )
        if write:
            summarise()

    fingerprints: list[dict] = []

    def fingerprint() -> dict:  # read once, and only if a finished run is reused
        if not fingerprints:
            fingerprints.append(_fingerprint(dataclasses.replace(base, data=data)))
        return fingerprints[0]

    todo = []
    for seed, loss in plan:
        run_dir = out / f"{loss}-s{seed}"
        cfg = dataclasses.replace(base, data=data, loss=loss, seed=seed, out=str(run_dir), threads=threads)
        # One progress bar per process would garble the terminal: parallel runs log their epochs instead.
        if jobs > 1:
            cfg = dataclasses.replace(cfg, progress=False)
        if resume and _finished(run_dir):
            check_finished_run(run_dir, cfg, fingerprint)
            done = run_dir / "metrics.json"
            log(f"{loss} seed {seed}: reusing {done}")
            record(seed, loss, json.loads(done.read_text()), before.get((loss, seed), math.nan), write=False)
        else:
            todo.append(cfg)
    if finished:  # the reused runs' summary, written once
        summarise()
    if jobs == 1:
        for cfg in todo:
            t0 = time.perf_counter()
            metrics = train(cfg, resume=resume, log=log)
            record(cfg.seed, cfg.loss, metrics, time.perf_counter() - t0)
        return result
    pool = worker_pool(jobs)
    try:
        started = {pool.submit(_train_run, cfg, resume): cfg for cfg in todo}
        for future in as_completed(started):
            metrics, dt = future.result()
            record(started[future].seed, started[future].loss, metrics, dt)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return result


def _previous_seconds(path: Path) -> tuple[dict[tuple[str, int], float], float]:
    """From the ``compare.json`` of an interrupted compare: the seconds each finished run took, and the wall
    seconds spent so far (nothing if there is none or it cannot be read)."""
    try:
        saved = json.loads(path.read_text())
        runs = {(r["loss"], int(r["seed"])): float(r["seconds"]) for r in saved["runs"] if r.get("seconds")}
        return runs, float(saved.get("wall_s") or 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}, 0.0


def _collect(plan, finished, losses):
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
