"""Where a compare's runs train: the local pool of worker processes (:func:`worker_pool`), each ending itself once
the compare is gone (:func:`exit_with_parent`); or a cluster through submitit (:func:`run_on_cluster`: SLURM, or
submitit's local executor where there is no SLURM), its job ids kept in ``OUT/submitit/jobs.json`` so that
``--resume`` collects what the cluster finished and resubmits only the rest; and the job either runs (one training
run, :func:`_train_run`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from qfocal.cli import missing_extras

from .config import ConfigError, TrainConfig
from .runfiles import _write_text
from .train import train

EXECUTORS = ("local", "submitit")
# submitit's log folder under a compare's OUT (--cluster-folder), and the file of its job ids there.
CLUSTER_FOLDER = "submitit"
JOBS_FILE = "jobs.json"
# Without a --slurm time or timeout_min, a job may run this long (submitit's own default is 5 minutes).
DEFAULT_TIMEOUT_MIN = 3 * 24 * 60
# SLURM states of a job that is still queued or running: --resume waits for it instead of submitting it again.
_SLURM_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


class ClusterJobError(RuntimeError):
    """Runs of a compare failed on the cluster; the runs that finished are recorded, ``--resume`` resubmits
    the others."""


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


def run_tag(cfg: TrainConfig) -> str:
    """The name of a compare's run: its folder's name, ``{loss}-s{seed}``."""
    return f"{cfg.loss}-s{cfg.seed}"


def parse_slurm(items: Sequence[str] | Mapping[str, object] | None) -> dict[str, object]:
    """``--slurm key=value`` (repeated) as ``{key: value}``: values that read as integers or floats become
    numbers (submitit checks the types of its shared parameters), the others stay text."""
    if items is None:
        return {}
    pairs: list[tuple[str, object]]
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"slurm: expected key=value (e.g. partition=gpu), got {item!r}")
            pairs.append((key.strip(), text.strip()))
    result: dict[str, object] = {}
    for key, value in pairs:
        if isinstance(value, str):
            for number in (int, float):
                with contextlib.suppress(ValueError):
                    value = number(value)
                    break
        result[str(key)] = value
    return result


def require_submitit() -> None:
    """A one-line :class:`ConfigError` naming the extra to install when submitit cannot be imported."""
    message = missing_extras("submitit")  # the library's table of extras names "cluster"
    if message:
        raise ConfigError(f"--executor submitit {message}")


def cluster_executor(folder: Path, *, cluster: str | None, slurm: Mapping[str, object], threads: int):
    """A ``submitit.AutoExecutor`` logging under ``folder``: SLURM where ``srun`` exists, else submitit's local
    executor (``cluster`` names one: ``"local"``, ``"debug"``, ``"slurm"``). Each job asks for ``threads`` CPUs
    and :data:`DEFAULT_TIMEOUT_MIN`; ``slurm`` entries are passed as ``slurm_<key>`` and win over both."""
    require_submitit()
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(
            name="qfocal-compare",
            cpus_per_task=threads,
            timeout_min=DEFAULT_TIMEOUT_MIN,
            **{f"slurm_{k}": v for k, v in slurm.items()},
        )
    except (ValueError, NameError, AssertionError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--executor submitit: {first}") from None
    return executor


def _read_jobs(path: Path) -> dict[str, dict]:
    try:
        jobs = json.loads(path.read_text())["runs"]
        return {str(tag): dict(job) for tag, job in jobs.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_jobs(path: Path, cluster: str, jobs: dict[str, dict]) -> None:
    _write_text(path, json.dumps({"cluster": cluster, "runs": jobs}, indent=2) + "\n")


def cluster_seconds(folder: Path) -> dict[tuple[str, int], float]:
    """From ``folder/jobs.json``: the seconds each run took whose job the cluster finished (its result pickle
    says ``success``), e.g. while the compare that submitted it was gone."""
    seconds: dict[tuple[str, int], float] = {}
    jobs = _read_jobs(folder / JOBS_FILE)
    if not jobs or importlib.util.find_spec("submitit") is None:
        return seconds
    from submitit.core.utils import JobPaths

    for job in jobs.values():
        try:
            with open(JobPaths(folder, str(job["job_id"])).result_pickle, "rb") as fh:
                outcome, result = pickle.load(fh)
            if outcome == "success":
                seconds[(str(job["loss"]), int(job["seed"]))] = float(result[1])
        except Exception:  # unreadable or foreign: the seconds are unknown (nan)
            continue
    return seconds


def run_on_cluster(
    todo: Sequence[TrainConfig],
    *,
    resume: bool,
    folder: Path,
    cluster: str | None,
    slurm: Mapping[str, object],
    threads: int,
    record: Callable[[int, str, dict, float], None],
    log: Callable[[str], None],
    poll_s: float = 2.0,
) -> None:
    """Submit every run of ``todo`` through submitit, record the job ids in ``folder/jobs.json`` and call
    ``record(seed, loss, metrics, seconds)`` for each as it finishes.

    With ``resume``, a run whose recorded SLURM job is still queued or running is waited for rather than
    submitted again. A job that fails does not stop the others; once all have ended, a
    :class:`ClusterJobError` names the failed runs (their logs are in ``folder``). Interrupted, the jobs of a
    local executor are cancelled (they are this machine's processes); SLURM's keep running, and ``--resume``
    collects them.
    """
    executor = cluster_executor(folder, cluster=cluster, slurm=slurm, threads=threads)
    path = folder / JOBS_FILE
    jobs = _read_jobs(path) if resume else {}
    pending = {}
    for cfg in todo:
        tag = run_tag(cfg)
        job = None
        old = jobs.get(tag)
        if resume and old and executor.cluster == "slurm" and old.get("cluster") == "slurm":
            import submitit

            again: submitit.SlurmJob[tuple[dict, float]] = submitit.SlurmJob(
                folder=folder, job_id=str(old["job_id"])
            )
            if again.state in _SLURM_ALIVE:
                job = again
                log(f"{cfg.loss} seed {cfg.seed}: waiting for job {job.job_id} submitted before")
        if job is None:
            job = executor.submit(_train_run, cfg, resume)
            log(f"{cfg.loss} seed {cfg.seed}: submitted job {job.job_id} ({executor.cluster})")
        jobs[tag] = {
            "job_id": str(job.job_id),
            "cluster": executor.cluster,
            "loss": cfg.loss,
            "seed": cfg.seed,
        }
        _write_jobs(path, executor.cluster, jobs)
        pending[tag] = (job, cfg)
    failed = []
    try:
        while pending:
            for tag, (job, cfg) in list(pending.items()):
                if not job.done():
                    continue
                del pending[tag]
                try:
                    metrics, dt = job.result()
                except Exception as exc:  # a failed job: reported once all have ended
                    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                    why = lines[-1] if lines else type(exc).__name__
                    log(f"{cfg.loss} seed {cfg.seed}: job {job.job_id} failed: {why[:300]}")
                    failed.append(f"{tag} (job {job.job_id})")
                    continue
                record(cfg.seed, cfg.loss, metrics, dt)
            if pending:
                time.sleep(poll_s)
    finally:
        if pending and executor.cluster != "slurm":
            for job, _ in pending.values():
                with contextlib.suppress(Exception):
                    job.cancel()
    if failed:
        raise ClusterJobError(
            f"{len(failed)} of {len(todo)} runs failed on the cluster: {', '.join(failed)}; logs in {folder}; "
            "the others are recorded; rerun with --resume to submit the failed ones again"
        )
