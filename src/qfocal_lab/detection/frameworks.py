"""``qfocal compare --framework yolov5|ultralytics``: each loss variant x seed trained by YOLOv5's or Ultralytics'
own trainer on the same data, scored by the framework's own validation (mAP50, mAP50-95, precision, recall), with
qfocal's diagnostics per run, and reported by the FCOS compare's writer
(:func:`qfocal_lab.detection.compare.write_compare`): mean ± std and the paired per-seed differences from the first
variant with 95 % intervals. Planning and orchestration live here; one run is
:mod:`qfocal_lab.detection.framework_runs`.

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

import dataclasses
import importlib.util
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import torch

from qfocal import describe_losses, loss_name, losses_for

from .._machine import cpu_model
from ..data.synth import prepare_synthetic
from .compare import PRETRAIN_SEED, CompareMetrics, threads_per_job, worker_pool, write_compare
from .config import ConfigError
from .evaluate import json_ready
from .framework_runs import (  # noqa: F401  (parse_train_arg, check_train_args: part of this module's API)
    _check_model,
    _device,
    check_train_args,
    check_weights,
    default_train_fn,
    file_sha256,
    final_weights,
    parse_train_arg,
    run_one,
    version,
)
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

FRAMEWORKS = ("yolov5", "ultralytics")
FRAMEWORK_LOSSES = ("bce", "qfl", "vfl")  # the default variants
# what both integrations take, from the loss table
_LOSSES = tuple(n for n in losses_for("yolov5") if n in losses_for("ultralytics"))
_DEFAULT_MODEL = {"yolov5": "yolov5n.yaml", "ultralytics": "yolov8n.yaml"}
_PACKAGE = {"yolov5": "yolov5", "ultralytics": "ultralytics"}
# The term a variant sets by default, those it may set, and the first column of the tables (which says so).
_TERM = {"yolov5": "obj", "ultralytics": "cls"}
_TERMS = {"yolov5": ("obj", "cls")}
_LABEL = {
    ("yolov5", "obj"): "obj loss (cls: bce)",
    ("yolov5", "cls"): "cls loss (obj: bce)",
    ("ultralytics", "cls"): "cls loss",
}
_TITLE = {"yolov5": "YOLOv5", "ultralytics": "Ultralytics"}

FRAMEWORK_METRICS = CompareMetrics(
    keys=("mAP50", "mAP50-95", "precision", "recall", "score_iou_spearman", "pr_start", "pr_end"),
    table=("mAP50", "mAP50-95", "precision", "recall", "score_iou_spearman", "pr_start", "pr_end"),
    bars=("mAP50", "mAP50-95"),
    axis="val mAP (%)",
    delta_units="mAPs in percentage points, the others in their own units",
    json_units=(
        "runs, mean, std: mAP50 and mAP50-95, precision and recall as fractions in [0, 1], from the framework's "
        "validation of the final epoch; score_iou_spearman in [-1, 1] (the same validation's predictions); "
        "pr_start, pr_end: participation ratio of the varied term's gradient w.r.t. its logits (effective number "
        "of elements, >= 1) on a fixed training batch at the starting and final weights; delta_vs_baseline: "
        "variant minus baseline per seed, mAPs in percentage points, 95 % Student-t interval"
    ),
    headings={
        "precision": "P",
        "recall": "R",
        "score_iou_spearman": "score-IoU ρ",
        "pr_start": "PR start",
        "pr_end": "PR end",
    },
)
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


@dataclasses.dataclass(frozen=True)
class Variant:
    """A loss of the integrations, its gain (``None`` for ``auto``: balanced to BCE, else the number) and the
    epochs of BCE warm-up before it takes over (0: none)."""

    loss: str
    gain: float | None = None
    warmup: int = 0

    @property
    def name(self) -> str:
        """``qfl`` (balanced), ``qfl@1`` (unbalanced), ``qfl@0.5``, ``qfl-warmup3``, ``qfl@1-warmup3``; ``bce`` (its
        ``auto`` is exactly 1)."""
        if self.gain is None or (self.loss == "bce" and self.gain == 1.0):
            name = self.loss
        else:
            name = f"{self.loss}@{self.gain:g}"
        return f"{name}-warmup{self.warmup}" if self.warmup else name

    @property
    def gain_label(self) -> str | float:
        """What the integrations take as the gain: ``"auto"`` or the number."""
        return "auto" if self.gain is None else self.gain


def _variant_help() -> str:
    return (
        f"{describe_losses(_LOSSES)}, each optionally with @GAIN (auto, the default: balanced to BCE's gradient "
        "norm; a number >= 0: a fixed multiplier, @1 = unbalanced) or -unbalanced, then optionally -warmupK (K "
        "epochs of BCE first)"
    )


_WARMUP = re.compile(r"^(?P<rest>.*?)[-_]warmup(?P<k>[^-_@]*)$", re.IGNORECASE)


def parse_variant(text: object) -> Variant:
    """The :class:`Variant` of ``"qfl"``, ``"qfocal@auto"``, ``"qfl@1"``, ``"qfl-unbalanced"``, ``"vfl@0.5"``,
    ``"qfl-warmup3"``, ``"qfl@1-warmup3"``...

    Raises:
        ValueError: not a loss of the integrations, a gain that is not ``auto`` or a finite number >= 0, or a
            warm-up that is not a whole number >= 1 (or of ``bce``, which is BCE throughout); the message lists the
            valid names.
    """
    if not isinstance(text, str):
        raise ValueError(f"losses: expected {_variant_help()}, got {text!r}")
    body, warmup = text.strip(), 0
    match = _WARMUP.match(body)
    if match:
        if not match["k"].isdigit() or int(match["k"]) < 1:
            raise ValueError(f"losses: expected -warmupK with a whole number K >= 1 of epochs, got {text!r}")
        body, warmup = match["rest"], int(match["k"])
    name, sep, gain_text = body.partition("@")
    gain: float | None = None
    for suffix in ("-unbalanced", "_unbalanced"):
        if not sep and name.lower().endswith(suffix):
            name, gain = name[: -len(suffix)], 1.0
    try:
        loss = loss_name(name, _LOSSES, what="losses")
    except ValueError:
        raise ValueError(f"losses: expected {_variant_help()}, got {text!r}") from None
    if sep and gain_text.strip().lower() != "auto":
        try:
            gain = float(gain_text)
        except ValueError:
            gain = math.nan
        if not (math.isfinite(gain) and gain >= 0):
            raise ValueError(f"losses: expected a gain 'auto' or a finite number >= 0 after @, got {text!r}")
    if warmup and loss == "bce":
        raise ValueError(
            f"losses: expected a warm-up on a loss other than bce (BCE warms up into BCE), got {text!r}"
        )
    return Variant(loss, gain, warmup)


def parse_variants(texts: Sequence[object]) -> list[Variant]:
    """Each of ``texts`` as a :class:`Variant`; refuses none and repeats (``qfl@1`` and ``qfl-unbalanced`` are
    one variant: not independent runs)."""
    variants = [parse_variant(t) for t in texts]
    if not variants:
        raise ValueError(f"losses: expected at least one of {_variant_help()}")
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"losses: expected each variant once, got {', '.join(repeated)} repeated in {list(texts)}"
        )
    return variants


def _check_framework(framework: object) -> str:
    if not isinstance(framework, str) or framework.strip().lower() not in FRAMEWORKS:
        raise ConfigError(f"framework: expected one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    return framework.strip().lower()


def _resolve_data(data: str | Path) -> str | Path:
    """``"synthetic"``, or the path of a YOLO data yaml (a folder holding ``data.yaml`` gives that file)."""
    if str(data) == "synthetic":
        return "synthetic"
    path = Path(data)
    if path.is_dir() and (path / "data.yaml").is_file():
        path = path / "data.yaml"
    if not (path.is_file() and path.suffix in (".yaml", ".yml")):
        raise ConfigError(
            f"data: expected 'synthetic', a YOLO data yaml or a folder holding data.yaml, got {str(data)!r}"
        )
    return path.resolve()


# ----------------------------------------------------------------------------------------------------------
# The compare
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FrameworkPlan:
    """A checked framework compare (:func:`plan_framework_compare`), run by :func:`run_framework_compare`."""

    framework: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any]
    out: Path
    train_fn: Callable[..., Any]


def _whole(name: str, value: object, low: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: expected an integer >= {low} ({meaning}), got {value!r}")
    return value


def plan_framework_compare(
    framework: str,
    *,
    losses: Sequence[str] = FRAMEWORK_LOSSES,
    seeds: Sequence[int] = (0, 1, 2),
    data: str | Path = "synthetic",
    model: str | None = None,
    term: str | None = None,
    epochs: int = 12,
    imgsz: int = 128,
    batch: int = 16,
    device: str = "auto",
    threads: int = 0,
    jobs: int = 1,
    pretrain_epochs: int = 0,
    pretrain_images: int = 0,
    weights: str | Path | None = None,
    synth_images: int = 400,
    synth_seed: int = 0,
    synth_difficulty: str = "hard",
    plots: bool = True,
    train_args: Mapping[str, Any] | Sequence[str] = (),
    out: str | Path = "runs/compare",
    train_fn: Callable[..., Any] | None = None,
) -> FrameworkPlan:
    """Check every argument of :func:`compare_framework` (which see), and find the framework, the model, the data
    and the starting checkpoint, before anything is trained or written.

    Raises:
        ConfigError: the first bad argument, in one line (an unknown variant lists the valid names).
    """
    framework = _check_framework(framework)
    try:
        variants = parse_variants(losses)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ConfigError(f"seeds: expected integers, got {seeds!r}") from None
    if not seeds:
        raise ConfigError("seeds: expected at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: expected each once (repeats are not independent runs), got {seeds}")
    for name, value in (
        ("epochs", epochs),
        ("imgsz", imgsz),
        ("batch", batch),
        ("synth_images", synth_images),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    if imgsz % 32:
        raise ConfigError(f"imgsz: expected a multiple of 32 (the coarsest stride), got {imgsz}")
    _whole("threads", threads, 0, "0 = auto")
    _whole("jobs", jobs, 1, "runs trained at once")
    _whole("pretrain_epochs", pretrain_epochs, 0, "0: no pretraining")
    _whole("pretrain_images", pretrain_images, 0, "0: as many as synth_images")
    if pretrain_images and not pretrain_epochs:
        raise ConfigError(
            f"pretrain_images: expected pretrain_epochs > 0 with it, got pretrain_images={pretrain_images}"
        )
    if framework == "ultralytics" and term is not None:  # one term only: a term given is a YOLOv5 setting
        raise ConfigError(
            f"term: expected none for ultralytics (its variants always set cls_loss; it has no objectness term), "
            f"got {term!r}"
        )
    term = _TERM[framework] if term is None else str(term).strip().lower()
    if term not in _TERMS.get(framework, (term,)):
        raise ConfigError(f"term: expected obj or cls for {framework}, got {term!r}")
    too_long = [v.name for v in variants if v.warmup >= epochs]
    if too_long:
        raise ConfigError(
            f"losses: expected warm-ups shorter than the {epochs} epochs (the loss must train after it), got "
            f"{', '.join(too_long)}"
        )
    if synth_difficulty not in ("hard", "easy"):
        raise ConfigError(f"synth_difficulty: expected 'hard' or 'easy', got {synth_difficulty!r}")
    if weights is not None and pretrain_epochs:
        raise ConfigError(
            f"weights: expected either weights or pretrain_epochs (both say where the runs start), got {weights} "
            f"and pretrain_epochs={pretrain_epochs}"
        )
    if weights is not None and model is not None:
        raise ConfigError(
            f"model: the architecture comes from weights ({weights}); expected no model, got {model!r}"
        )
    data = _resolve_data(data)
    model = model or _DEFAULT_MODEL[framework]
    dev = _device(device)
    if train_fn is None:
        if importlib.util.find_spec(_PACKAGE[framework]) is None:
            raise ConfigError(
                f'framework {framework}: needs the {_PACKAGE[framework]} package: pip install "qfocal[integrations]"'
            )
        if weights is None:
            _check_model(framework, model)
        train_args = check_train_args(framework, train_args)
        train_fn = default_train_fn(framework)
    else:  # a stand-in trainer: the keys it takes are its own
        train_args = check_train_args(framework, train_args, known=False)
    if weights is not None:
        weights = check_weights(weights, framework)
        model = str(weights)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: expected a folder, got the existing file {out}")
    settings = {
        "framework": framework,
        "model": model,
        "data": str(data),
        "term": term,
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": dev,
        "threads": threads,
        "jobs": jobs,
        "pretrain_epochs": pretrain_epochs,
        "pretrain_images": pretrain_images or synth_images,
        "weights": None if weights is None else str(weights),
        "synth_images": synth_images,
        "synth_seed": synth_seed,
        "synth_difficulty": synth_difficulty,
        "plots": plots,
        "train_args": train_args,
    }
    return FrameworkPlan(framework, tuple(variants), tuple(seeds), settings, out, train_fn)


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
    recorded = {**_RESUME_DEFAULTS, "term": _TERM.get(framework), **recorded}
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


def _number(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _collect(out: Path, order, finished, names) -> tuple[dict, dict, list]:
    """The finished runs in plan order (seed, then variant), whatever order they finished in."""
    summary = {n: {k: [] for k in FRAMEWORK_METRICS.keys} for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    runs: list[dict] = []
    for seed, variant in order:
        if (seed, variant.name) not in finished:
            continue
        rec, dt = finished[(seed, variant.name)]
        values = {k: _number(rec.get(k)) for k in FRAMEWORK_METRICS.keys}
        for k in FRAMEWORK_METRICS.keys:
            summary[variant.name][k].append(values[k])
        seconds[variant.name].append(dt)
        runs.append(
            {
                "loss": variant.name,
                "seed": seed,
                "seconds": dt,
                **values,
                "score_iou_n": rec.get("score_iou_n"),
                "switch_epoch": rec.get("switch_epoch"),
                "run_facts": rec.get("run_facts"),
                "dir": str(out / f"{variant.name}-s{seed}"),
            }
        )
    return summary, seconds, runs


def _extra(s: dict) -> str:
    """The training settings a compare added, as the header names them: ``, optimizer=AdamW lr0=0.001``."""
    if not s["train_args"]:
        return ", the framework's default training settings"
    return ", " + " ".join(f"{k}={v}" for k, v in s["train_args"].items())


def _start(s: dict) -> tuple[str, dict]:
    """Where the runs started, in words (``from scratch``, ``fine-tuned from ...``) and as compare.json says."""
    if not s["init"]:
        return "from scratch", {"from": "scratch"}
    sha = s["init_sha256"]
    if s["pretrain_epochs"]:
        words = (
            f"fine-tuned from a BCE model pretrained {s['pretrain_epochs']} epochs on a second set of "
            f"{s['pretrain_images']} images (sha256 {sha[:12]})"
        )
    else:
        words = f"fine-tuned from {s['init']} (sha256 {sha[:12]})"
    return words, {"from": s["init"], "sha256": sha, "pretrain_epochs": s["pretrain_epochs"]}


def _facts(runs: list[dict], s: dict, threads: int) -> dict:
    """compare.json's run facts: the machine's, and the autocast dtypes the runs resolved."""
    autocast = sorted({str((r.get("run_facts") or {}).get("autocast", "unknown")) for r in runs})
    return {
        "autocast": autocast,
        "cpu": cpu_model(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "framework": s["framework"],
        "framework_version": version(s["framework"]),
        "device": s["device"],
    }


def _write(out: Path, plan: FrameworkPlan, s: dict, threads: int, collected, wall: float) -> dict:
    summary, seconds, runs = collected
    framework, variants, seeds, term = plan.framework, plan.variants, plan.seeds, s["term"]
    other = {
        ("yolov5", "obj"): "cls_loss: bce for every variant",
        ("yolov5", "cls"): "obj_loss: bce for every variant",
        ("ultralytics", "cls"): "Ultralytics has no objectness term",
    }[(framework, term)]
    word = {"obj": "objectness", "cls": "classification"}[term]
    start, start_json = _start(s)
    if not s["init"] and Path(s["model"]).suffix not in (".yaml", ".yml"):
        start = f"from {s['model']}"
    finished = f"{len(runs)} of {len(variants) * len(seeds)} runs"
    facts = _facts(runs, s, threads)
    at_once = f"{s['jobs']} runs at a time x " if s["jobs"] > 1 else ""
    machine = (
        f"{facts['cpu']}, device {s['device']}, {at_once}{threads} threads per run, autocast "
        f"{'/'.join(facts['autocast'])}, torch {torch.__version__}"
    )
    header = (
        f"{_TITLE[framework]} {facts['framework_version']}: mAP50 and mAP50-95 in percent, precision P and recall R "
        f"from its own validation of the final epoch; score-IoU ρ: Spearman correlation of the score and the IoU of "
        f"those validation predictions; PR start / end: participation ratio of the {term} term's gradient on a fixed "
        f"training batch at the starting and final weights. Mean ± sample std over seeds {list(seeds)} "
        f"({finished}). Each variant sets the {word} criterion ({term}_loss, {term}_gain; {other}): a name alone is "
        f"balanced to BCE's gradient norm (gain auto), @1 is the unbalanced loss, -warmupK trains K epochs with BCE "
        f"first. Data {s['data']}; model {s['model']}, {start}; {s['epochs']} epochs, imgsz {s['imgsz']}, batch "
        f"{s['batch']}{_extra(s)}; {machine}; wall {wall:.0f} s."
    )
    data = "synthetic" if Path(s["data"]).parent == out / "data" else Path(s["data"]).parent.name
    tuned = "fine-tuned" if s["init"] else "from scratch"
    title = (
        f"{_TITLE[framework]} {Path(s['model']).name}, {term} loss, {tuned}; data {data}, {s['epochs']} epochs, "
        f"imgsz {s['imgsz']}, seeds {list(seeds)} ({finished}); differences vs {variants[0].name}"
    )
    config = {k: v for k, v in s.items() if k != "workers"}
    config["version"] = facts["framework_version"]
    config["run_facts"] = facts
    return write_compare(
        out,
        FRAMEWORK_METRICS,
        names=[v.name for v in variants],
        seeds=seeds,
        runs=runs,
        summary=summary,
        seconds=seconds,
        config=config,
        threads=threads,
        wall=wall,
        header=header,
        title=title,
        label=_LABEL[(framework, term)],
        extra={
            "framework": framework,
            "term": f"{term}_loss",
            "variants": {
                v.name: {"loss": v.loss, "gain": v.gain_label, "warmup": v.warmup} for v in variants
            },
            "start": start_json,
            "jobs": s["jobs"],
        },
    )
