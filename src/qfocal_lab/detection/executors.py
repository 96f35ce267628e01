"""Where a compare's runs train: the local pool of worker processes (:func:`worker_pool`), each ending itself once
the compare is gone (:func:`exit_with_parent`), and the job one worker runs (one training run).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from .config import TrainConfig
from .train import (
    train,
)


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
