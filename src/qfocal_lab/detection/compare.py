"""``qfocal compare``: train one detector per (loss, seed) on the same data; tabulate mean +- std of the APs, AP90
and the score-IoU correlation, and the paired per-seed differences from the first loss with 95 % intervals.

Here: the plan of runs, resuming, and collecting each run's metrics as it finishes. The writer of the outputs
(:func:`write_compare`: ``compare.md``, ``compare.json``, ``compare.png``) is :mod:`.compare_report`'s; it takes
the metrics to report as a :class:`CompareMetrics`; the FCOS harness passes :data:`FCOS_METRICS`, the compare
through YOLOv5's and Ultralytics' trainers (:mod:`qfocal_lab.detection.frameworks`) its mAP50 and mAP50-95. Where
the runs train (a local pool of processes, or a cluster through submitit) is :mod:`.executors`'. The names of both
stay importable from here."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import as_completed
from pathlib import Path

from qfocal import loss_name

from .compare_report import (
    COMPARE_KEYS,
    FCOS_METRICS,
    CompareMetrics,
    _as_float,
    _collect,
    _write_summary,
    format_deltas,
    format_table,
    write_compare,
)
from .config import HARNESS_LOSSES, ConfigError, TrainConfig
from .executors import (  # noqa: F401  (moved to executors; importable from here)
    CLUSTER_FOLDER,
    EXECUTORS,
    _train_run,
    cluster_seconds,
    exit_with_parent,
    parse_slurm,
    require_submitit,
    run_on_cluster,
    worker_pool,
)
from .train import (
    check_finished_run,
    check_output_dir,
    data_fingerprint,
    pick_threads,
    prepare_data,
    prepare_synthetic_data,
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
    executor: str = "local",
    cluster_folder: str | Path | None = None,
    slurm: Sequence[str] | Mapping[str, object] | None = None,
    cluster: str | None = None,
) -> dict:
    """Train ``base`` once per loss and seed under ``out/{loss}-s{seed}`` and summarise.

    With ``base.data == "synthetic"`` the dataset is generated once in ``out/data`` and shared. ``base.threads``
    is resolved once (:func:`~qfocal_lab.detection.train.pick_threads`; 0 = auto) and every run gets that count, so
    runs are not timed or computed with different thread counts. ``jobs > 1`` trains that many runs at once, each
    in its own process with ``threads`` threads (0 = the CPU's cores divided among the jobs): on a 2-core CPU two
    1-thread runs do about 1.5x the work of one 2-thread run. ``resume=True`` reuses finished runs (their
    ``metrics.json``, and the seconds they took) and resumes unfinished ones; ``wall_s`` then adds the wall time
    of the earlier sessions (each up to its last finished run) to this one's.

    ``executor="submitit"`` hands the runs to a cluster instead of this machine's processes
    (:func:`qfocal_lab.detection.executors.run_on_cluster`): every run not finished is submitted at once through
    ``submitit.AutoExecutor(folder=cluster_folder)`` (default ``out/submitit``; SLURM where it exists, else
    submitit's local executor; ``cluster`` names one, e.g. ``"local"``), each job asking for ``threads`` CPUs;
    ``slurm`` (``["key=value", ...]`` or a mapping) is passed as ``slurm_<key>`` parameters. The job ids are kept
    in ``cluster_folder/jobs.json``; the results are collected as the jobs finish, like the pool's. A failed job
    does not stop the others (a :class:`~qfocal_lab.detection.executors.ClusterJobError` names it once all have
    ended); ``resume=True`` then reuses what the cluster finished, with the settings and data checks of any
    resumed compare, waits for SLURM jobs still queued or running, and submits only the rest. Pretraining
    (``pretrain_epochs``) runs here, before the jobs are submitted.

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
    if executor not in EXECUTORS:
        raise ConfigError(f"executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    on_cluster = None
    if executor == "submitit":
        require_submitit()
        folder = Path(out) / CLUSTER_FOLDER if cluster_folder is None else Path(cluster_folder)
        on_cluster = {"folder": folder, "cluster": cluster, "slurm": parse_slurm(slurm)}
    if log is None:
        log = lambda msg: print(msg, flush=True)  # noqa: E731
    out = check_output_dir(out, ("compare.json", "compare.md", "compare.png", ".lock"))
    with run_lock(out):
        return _compare(base, losses, seeds, out, resume, jobs, pretrain_epochs, log, on_cluster)


def threads_per_job(requested: int, jobs: int) -> int:
    """Threads each run of a compare gets: ``requested`` if positive; else, with one job, :func:`pick_threads`'s
    choice, and with several, the CPU's cores divided among them (at least 1)."""
    if requested > 0:
        return int(requested)
    if jobs == 1:
        return pick_threads(0)
    return max(1, (os.cpu_count() or 1) // jobs)


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


def _compare(base, losses, seeds, out, resume, jobs, pretrain_epochs, log, on_cluster=None) -> dict:
    t_start = time.perf_counter()
    # Resumed: the runs reused keep the seconds they took, and the wall clock counts the earlier sessions too.
    before, spent = _previous_seconds(out / "compare.json") if resume else ({}, 0.0)
    if resume and on_cluster is not None:  # runs the cluster finished while no compare was collecting them
        before = {**cluster_seconds(on_cluster["folder"]), **before}
    data = base.data
    if data == "synthetic":
        data = str(prepare_synthetic_data(base, out / "data", log=log))
    threads = threads_per_job(base.threads, jobs)
    if pretrain_epochs and not base.init:
        # Pretrained with the runs' thread count, not the machine's load: the same backbone every time.
        pre = dataclasses.replace(base, threads=threads)
        base = dataclasses.replace(base, init=pretrain_backbone(pre, pretrain_epochs, out, resume, log))
    at_once = f"{jobs} runs at a time, " if jobs > 1 else ""
    if on_cluster is not None:
        at_once = "submitted through submitit, "
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
        if jobs > 1 or on_cluster is not None:
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
    if on_cluster is not None:
        if todo:
            run_on_cluster(todo, resume=resume, threads=threads, record=record, log=log, **on_cluster)
        return result
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
