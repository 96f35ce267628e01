"""``qfocal compare --framework yolov5|ultralytics``: each loss variant x seed trained by YOLOv5's or Ultralytics'
own trainer on the same data, scored by the framework's own validation (mAP50, mAP50-95, precision, recall), with
qfocal's diagnostics per run, and reported by the FCOS compare's writer
(:func:`qfocal_lab.detection.compare.write_compare`): mean ± std and the paired per-seed differences from the first
variant with 95 % intervals. Orchestration (resume, pretraining, the runs in a pool) lives here; the variants
and the plan are :mod:`qfocal_lab.detection.framework_plan`'s, the checks of trainer arguments and weights
:mod:`qfocal_lab.detection.framework_checks`', what is reported :mod:`qfocal_lab.detection.framework_report`'s,
one run :mod:`qfocal_lab.detection.framework_runs`'. Their public names stay importable from here.

A variant is a loss name of the integration (``bce``, ``focal``, ``qfl``, ``vfl`` or an alias) with an optional
gain (:mod:`qfocal.integrations.balance`): ``qfl`` is balanced to BCE's gradient norm (the integrations'
default, gain ``auto``), ``qfl@1`` or ``qfl-unbalanced`` the plain loss, ``qfl@0.5`` a fixed multiplier; and an
optional BCE warm-up (TOOD's recipe): ``qfl-warmup3`` (or ``qfl@1-warmup3``) trains the term with BCE for 3
epochs, then with the variant's loss.

Which term a variant sets (``term``):

* YOLOv5, ``term="obj"`` (the default): the objectness criterion (hyp ``obj_loss`` / ``obj_gain``), where YOLOv5's
  soft IoU targets are; classification stays BCE. ``term="cls"``: the classification criterion (``cls_loss`` /
  ``cls_gain``), objectness BCE; with ``train_args={"label_smoothing": 0.1}`` (a train.py option) its targets are
  smoothed.
* Ultralytics: the classification criterion (``cls_loss`` / ``cls_gain``), trained on the task-aligned
  assigner's IoU-aware soft targets (Ultralytics has no objectness term).

Where the runs start: from scratch (the model yaml); from a checkpoint pretrained by the compare itself
(``pretrain_epochs=N``: one BCE model, seed :data:`PRETRAIN_SEED`, trained N epochs by the framework's own
trainer under ``OUT/pretrain`` on a second synthetic set, ``synth_seed + 1``, under ``OUT/pretrain-data``; or on
the user's training data); or from the user's checkpoint (``weights``). Fine-tuning loads the weights as each
framework does: YOLOv5's ``train.py --weights`` (with ``cfg=""``: the checkpoint's own architecture and
anchors), Ultralytics' trainer given the ``.pt`` as its model (``get_model`` builds the model and loads them).

Every run is offline (the integrations' offline mode), writes into ``OUT/<variant>-s<seed>/`` and, when it has
finished, ``OUT/<variant>-s<seed>/metrics.json``; ``resume=True`` reuses the runs that have one (and a finished
pretraining) when their settings match. The metrics are those of the framework's own validation of the final
epoch's weights, not of the epoch that scored best on the same validation images (a choice that favours noisy
runs): YOLOv5's ``results.csv``, last row; Ultralytics trained with ``val=False`` (validation of the final epoch
only), ``trainer.metrics``. Each run also records the score-IoU Spearman correlation of those validation
predictions, the participation ratio of the varied term's gradient at the start and end, which criterion trained
each epoch, and the run facts (autocast dtype, CPU, threads, versions): :mod:`~qfocal_lab.detection.framework_runs`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from ..data.synth import prepare_synthetic
from .compare import PRETRAIN_SEED, threads_per_job, worker_pool
from .config import ConfigError
from .evaluate import json_ready
from .framework_checks import (  # noqa: F401  (parse_train_arg, check_train_args: part of this module's API)
    _check_model,
    check_train_args,
    check_weights,
    file_sha256,
    final_weights,
    parse_train_arg,
)
from .framework_plan import (  # noqa: F401  (moved to framework_plan; importable from here)
    _LABEL,
    _TERM,
    FRAMEWORK_LOSSES,
    FRAMEWORKS,
    FrameworkPlan,
    Variant,
    parse_variant,
    parse_variants,
    plan_framework_compare,
)
from .framework_report import (
    _TITLE,
    FRAMEWORK_METRICS,
    _collect,
    _write,
)
from .framework_runs import run_one
from .train import check_output_dir, run_lock

__all__ = [
    "FRAMEWORKS",
    "FRAMEWORK_LOSSES",
    "FRAMEWORK_METRICS",
    "PRETRAIN_SEED",
    "FrameworkPlan",
    "Variant",
    "compare_framework",
    "parse_variant",
    "parse_variants",
    "plan_framework_compare",
    "run_framework_compare",
]


# Settings a finished run must share with the compare to be reused by resume (and those of the synthetic set).
_RESUME_KEYS = (
    "framework",
    "model",
    "data",
    "epochs",
    "imgsz",
    "batch",
    "train_args",
    "seed",
    "loss",
    "gain",
    "term",
    "warmup",
    "pretrain_epochs",
    "init_sha256",
)
# What a run recorded before these settings existed trained with: the default term is added per framework.
_RESUME_DEFAULTS = {"train_args": {}, "warmup": 0, "pretrain_epochs": 0, "init_sha256": None}
_SYNTH_KEYS = ("synth_images", "synth_seed", "synth_difficulty")


def run_framework_compare(
    plan: FrameworkPlan, *, resume: bool = False, log: Callable[[str], None] | None = None
) -> dict:
    """Run a :class:`FrameworkPlan` (:func:`compare_framework`), holding the lock on its folder."""
    if log is None:
        log = lambda msg: print(msg, flush=True)  # noqa: E731
    check_output_dir(plan.out, ("compare.json", "compare.md", "compare.png", ".lock"))
    with run_lock(plan.out):
        return _compare(plan, plan.out.resolve(), resume, log)


def compare_framework(
    framework: str,
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> dict:
    """Train each loss variant once per seed with ``framework``'s own trainer; write the compare's outputs.

    Args:
        framework: ``"yolov5"`` (:func:`qfocal.integrations.yolov5.train`) or ``"ultralytics"``
            (:func:`qfocal.integrations.ultralytics.train`).
        losses: variants (see the module docstring: ``"qfl"``, ``"qfl@1"``, ``"qfl-unbalanced"``,
            ``"qfl-warmup3"``...); the first is the baseline.
        seeds: distinct seeds; every variant trains once per seed (the framework's ``seed``).
        data: ``"synthetic"`` (the embedded dataset, generated once under ``out/data`` with ``synth_images``,
            ``synth_seed``, ``synth_difficulty``) or a YOLO data yaml (or a folder holding ``data.yaml``).
        model: the model yaml; default ``yolov5n.yaml`` / ``yolov8n.yaml`` (not with ``weights``).
        term: the term a variant sets: YOLOv5 ``"obj"`` (default; classification BCE) or ``"cls"`` (objectness
            BCE). Ultralytics takes none (its variants always set the classification term).
        epochs, imgsz, batch: the frameworks' ``epochs``, ``imgsz``, ``batch_size`` / ``batch``.
        device: ``auto`` (the first GPU if any, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads of every run (0 = auto: :func:`qfocal_lab.detection.compare.threads_per_job`, the cores
            divided among ``jobs``), picked once. On the CPU the data loaders run in the training process
            (``workers=0``).
        jobs: runs trained at once, each in its own spawned process with ``threads`` threads; results are
            recorded in plan order whatever order they finish in.
        pretrain_epochs: 0 (from the model yaml) or N: first train one BCE model N epochs (seed
            :data:`PRETRAIN_SEED`, alone, with the runs' thread count) under ``out/pretrain`` on a second
            synthetic set (``synth_seed + 1``, same difficulty, under ``out/pretrain-data``; the training data
            itself for user data), and fine-tune every run from its final weights.
        pretrain_images: the size of that second synthetic set (default 0: ``synth_images``); a pretraining set
            larger than the fine-tuning one is the usual case (COCO, then the user's data).
        weights: fine-tune every run from this checkpoint of the framework (checked before any training; not with
            ``pretrain_epochs``).
        plots: let the framework draw its own plots (``compare.png`` is always written).
        train_args: more training settings for every run, a mapping or ``KEY=VALUE`` strings: YOLOv5 hyp keys go
            into the hyp (``lr0=0.001``), other keys are ``train.py`` options (``optimizer=AdamW``,
            ``label_smoothing=0.1``); Ultralytics takes them as its overrides (``optimizer=SGD``, ``lr0=0.01``).
            Keys the compare sets itself, and keys the trainer does not know, are refused.
        out: the compare's folder; run ``<variant>-s<seed>`` trains in ``out/<variant>-s<seed>``.
        resume: reuse every run with a ``metrics.json``, and a finished pretraining, whose settings match (others
            are an error naming the settings that differ); an unfinished run's folder is cleared and the run
            trained again.
        log: progress lines (default: print).
        train_fn: the integration's ``train`` (default); a stand-in with the same signature for tests.

    All but ``resume`` and ``log`` are :func:`plan_framework_compare`'s, with its defaults (losses
    ``bce,qfl,vfl``, seeds 0-2, the synthetic data, 12 epochs, imgsz 128, batch 16, device ``auto``).
    Every argument is checked before any training (:class:`~qfocal_lab.detection.config.ConfigError`, one line).

    Returns:
        the content of ``compare.json`` (:func:`qfocal_lab.detection.compare.write_compare`), with ``framework``,
        ``term`` (``obj_loss`` or ``cls_loss``), ``variants`` (each name's loss, gain and warm-up), ``start``
        (from scratch, or the checkpoint's path, sha256 and pretraining epochs) and ``jobs`` added; its runs hold
        ``mAP50``, ``mAP50-95``, ``precision``, ``recall``, ``score_iou_spearman``, ``pr_start``, ``pr_end``,
        ``switch_epoch``, ``run_facts`` and the run folder.
    """
    plan = plan_framework_compare(framework, **options)
    return run_framework_compare(plan, resume=resume, log=log)


def _finished(done: Path, expected: dict) -> dict | None:
    """A finished run's metrics.json, or None when there is none; an error when its settings differ."""
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    recorded = record.get("settings") or {}
    framework = recorded.get("framework", expected.get("framework"))
    # runs recorded before a setting existed trained with its default
    term = None if framework is None else _TERM.get(framework)
    recorded = {**_RESUME_DEFAULTS, "term": term, **recorded}
    differ = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in differ.items())
        raise ConfigError(
            f"{done} was trained with other settings: {detail}; choose another --out or drop --resume"
        )
    return record


def _expected(s: dict, keys: Sequence[str], seed: int, variant: Variant) -> dict:
    """The settings a run records, and that resume compares."""
    run = {**s, "seed": seed, "loss": variant.loss, "gain": variant.gain_label, "warmup": variant.warmup}
    return {k: v for k, v in run.items() if k in keys}


def _write_record(done: Path, record: dict) -> None:
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_name(f".{done.name}.tmp")
    tmp.write_text(json.dumps(json_ready(record), indent=2) + "\n")
    tmp.replace(done)  # written last and whole: its presence means the run finished


def _pretrain(plan: FrameworkPlan, s: dict, keys, out: Path, threads: int, resume: bool, log) -> Path:
    """Train (or, with ``resume``, reuse) the BCE model every run fine-tunes from; return its final weights."""
    framework, epochs = plan.framework, s["pretrain_epochs"]
    pre = {**s, "epochs": epochs, "pretrain_epochs": 0, "init": None, "init_sha256": None, "plots": False}
    if plan.settings["data"] == "synthetic":  # a second set of the same difficulty, pretrain_images large
        root = prepare_synthetic(
            out / "pretrain-data",
            images=s["pretrain_images"],
            seed=s["synth_seed"] + 1,
            difficulty=s["synth_difficulty"],
            log=log,
        )
        pre.update(
            data=str(root / "data.yaml"), synth_seed=s["synth_seed"] + 1, synth_images=s["pretrain_images"]
        )
    variant, run_dir = Variant("bce"), out / "pretrain"
    expected = {**_expected(pre, keys, PRETRAIN_SEED, variant), "term": s["term"]}
    done = run_dir / "metrics.json"
    record = _finished(done, expected) if resume else None
    if record is not None and final_weights(run_dir).is_file():
        log(f"pretraining: reusing {done}")
        return final_weights(run_dir)
    if run_dir.exists():
        log(f"pretraining: clearing {run_dir}")
        shutil.rmtree(run_dir)
    log(f"pretraining: bce, {epochs} epochs, seed {PRETRAIN_SEED}, {threads} thread(s), in {run_dir}")
    metrics, dt = run_one(
        framework, plan.train_fn, variant, PRETRAIN_SEED, run_dir, pre, threads, diagnostics=False
    )
    weights = final_weights(run_dir)
    if not weights.is_file():
        raise RuntimeError(f"the pretraining finished without its final weights ({weights})")
    _write_record(
        done, {"framework": framework, "variant": "bce", **metrics, "seconds": dt, "settings": expected}
    )
    log(f"pretraining: mAP50 {metrics['mAP50']:.4f} on its own validation ({dt:.0f} s)")
    return weights


def _compare(plan: FrameworkPlan, out: Path, resume: bool, log) -> dict:
    t_start = time.perf_counter()
    framework, variants, seeds = plan.framework, list(plan.variants), list(plan.seeds)
    s = dict(plan.settings)
    keys = _RESUME_KEYS + (_SYNTH_KEYS if s["data"] == "synthetic" else ())
    if s["data"] == "synthetic":
        root = prepare_synthetic(
            out / "data",
            images=s["synth_images"],
            seed=s["synth_seed"],
            difficulty=s["synth_difficulty"],
            log=log,
        )
        s["data"] = str(root / "data.yaml")
    jobs = s["jobs"]
    threads = threads_per_job(s["threads"], jobs)
    s["workers"] = 0 if s["device"] == "cpu" else 8  # CPU: no loader processes beside the pinned threads
    s["init"], s["init_sha256"] = None, None
    if s["weights"]:
        s["init"] = s["weights"]
    elif s["pretrain_epochs"]:
        # alone, with the runs' thread count rather than the machine's load: the same weights every time
        s["init"] = str(_pretrain(plan, s, keys, out, threads, resume, log))
    if s["init"]:
        s["init_sha256"] = file_sha256(s["init"])
    names = [v.name for v in variants]
    at_once = f"{jobs} runs at a time, " if jobs > 1 else ""
    log(
        f"compare ({_TITLE[framework]}, {s['model']}): {len(variants)} variants of {s['term']}_loss x "
        f"{len(seeds)} seeds, {at_once}{threads} thread(s) per run"
    )
    # Seeds outside, variants inside: an interrupted compare has balanced results, written after every run.
    order = [(seed, variant) for seed in seeds for variant in variants]
    finished: dict[tuple[int, str], tuple[dict, float]] = {}
    result: dict = {}

    def record(seed: int, variant: Variant, rec: dict, dt: float, write: bool = True) -> None:
        nonlocal result
        finished[(seed, variant.name)] = (rec, dt)
        log(
            f"{variant.name} seed {seed}: mAP50 {float(rec['mAP50']):.4f} mAP50-95 {float(rec['mAP50-95']):.4f} "
            f"({dt:.0f} s)"
        )
        if write:
            wall = time.perf_counter() - t_start
            result = _write(out, plan, s, threads, _collect(out, order, finished, names), wall)

    todo = []
    for seed, variant in order:
        run_dir = out / f"{variant.name}-s{seed}"
        expected = _expected(s, keys, seed, variant)
        done = run_dir / "metrics.json"
        rec = _finished(done, expected) if resume else None
        if rec is not None:
            log(f"{variant.name} seed {seed}: reusing {done}")
            record(seed, variant, rec, float(rec.get("seconds", math.nan)), write=False)
            continue
        if run_dir.exists():  # an unfinished (or, without resume, an earlier) run: start it afresh
            log(f"{variant.name} seed {seed}: clearing {run_dir}")
            shutil.rmtree(run_dir)
        todo.append((seed, variant, run_dir, expected))
    if finished or not todo:
        result = _write(
            out, plan, s, threads, _collect(out, order, finished, names), time.perf_counter() - t_start
        )

    def finish(seed, variant, run_dir, expected, metrics, dt) -> None:
        rec = {"framework": framework, "variant": variant.name, "seed": seed, **metrics, "seconds": dt}
        rec["settings"] = expected
        _write_record(run_dir / "metrics.json", rec)
        record(seed, variant, rec, dt)

    if jobs == 1:
        for seed, variant, run_dir, expected in todo:
            metrics, dt = run_one(framework, plan.train_fn, variant, seed, run_dir, s, threads)
            finish(seed, variant, run_dir, expected, metrics, dt)
        return result
    pool = worker_pool(jobs)
    try:
        started = {
            pool.submit(
                run_one,
                framework,
                plan.train_fn,
                variant,
                seed,
                run_dir,
                s,
                threads,
                tag=f"{variant.name} s{seed}",
            ): (seed, variant, run_dir, expected)
            for seed, variant, run_dir, expected in todo
        }
        for future in as_completed(started):
            metrics, dt = future.result()
            finish(*started[future], metrics, dt)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return result
