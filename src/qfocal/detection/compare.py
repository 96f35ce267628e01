"""``qfocal compare``: train one detector per (loss, seed) on the same data and tabulate mean +- std of the APs."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .._names import loss_name
from ..data.synth import prepare_synthetic
from .config import HARNESS_LOSSES, ConfigError, TrainConfig
from .evaluate import METRIC_KEYS
from .train import train

__all__ = ["compare", "format_table"]


def _fmt(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if (v < 0).any():  # pycocotools' -1: no ground truth of that size
        return "n/a"
    v = v * 100
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def format_table(
    summary: dict[str, dict[str, list[float]]], seconds: dict[str, list[float]] | None = None
) -> str:
    """A markdown table: one row per loss, ``mean ± std`` over seeds of each COCO metric in percent (sample std)."""
    cols = list(METRIC_KEYS) + (["train s/run"] if seconds else [])
    lines = ["| loss | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for loss, vals in summary.items():
        cells = [_fmt(vals[k]) for k in METRIC_KEYS]
        if seconds:
            cells.append(f"{np.mean(seconds[loss]):.0f}")
        lines.append(f"| {loss} | {len(vals['AP'])} | " + " | ".join(cells) + " |")
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

    With ``base.data == "synthetic"`` the dataset is generated once in ``out/data`` and shared. ``resume=True``
    reuses finished runs (their ``metrics.json``) and resumes unfinished ones. Writes ``out/compare.md`` (the
    table), ``out/compare.json`` (every run's metrics) and ``out/compare.png``; returns the JSON content.
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
    out.mkdir(parents=True, exist_ok=True)
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
    summary: dict[str, dict[str, list[float]]] = {loss: {k: [] for k in METRIC_KEYS} for loss in losses}
    seconds: dict[str, list[float]] = {loss: [] for loss in losses}
    runs: list[dict] = []
    result: dict = {}
    # Seeds outside, losses inside: an interrupted compare has balanced results, written after every run.
    for seed in seeds:
        for loss in losses:
            run_dir = out / f"{loss}-s{seed}"
            cfg = dataclasses.replace(base, data=data, loss=loss, seed=int(seed), out=str(run_dir))
            done = run_dir / "metrics.json"
            t0 = time.perf_counter()
            if resume and done.is_file() and (run_dir / "history.csv").is_file():
                metrics = json.loads(done.read_text())
                log(f"{loss} seed {seed}: reusing {done}")
            else:
                metrics = train(cfg, resume=resume, log=log)
            dt = time.perf_counter() - t0
            log(f"{loss} seed {seed}: AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f} ({dt:.0f} s)")
            for k in METRIC_KEYS:
                summary[loss][k].append(float(metrics[k]))
            seconds[loss].append(dt)
            runs.append(
                {"loss": loss, "seed": int(seed), "seconds": dt, **{k: metrics[k] for k in METRIC_KEYS}}
            )
            result = _write_summary(
                out, base, losses, seeds, summary, seconds, runs, time.perf_counter() - t_start
            )
    return result


def _write_summary(out, base, losses, seeds, summary, seconds, runs, wall) -> dict:
    """Write compare.md / .json / .png for the runs finished so far; return the JSON content."""
    done = {k: v for k, v in summary.items() if v["AP"]}
    table = format_table(done, {k: seconds[k] for k in done})
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    finished = f"{len(runs)} of {len(losses) * len(seeds)} runs"
    header = (
        f"COCO val metrics in percent, mean ± sample std over seeds {list(seeds)} ({finished}); data {base.data}; "
        f"{base.epochs} epochs, imgsz {base.imgsz}, batch {base.batch}, model {base.model_size}; "
        f"{machine}; wall {wall:.0f} s."
    )
    (out / "compare.md").write_text(header + "\n\n" + table + "\n")
    result = {
        "config": dataclasses.asdict(base),
        "losses": list(losses),
        "seeds": [int(s) for s in seeds],
        "runs": runs,
        "wall_s": wall,
        "table": table,
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    from .plots import plot_compare

    plot_compare(done, out / "compare.png", title=header[:120])
    return result
