"""``qfocal compare --framework yolov5|ultralytics``: each loss variant x seed trained by YOLOv5's or Ultralytics'
own trainer on the same data, scored by the framework's own validation (mAP50, mAP50-95), and reported by the
FCOS compare's writer (:func:`qfocal.detection.compare.write_compare`): mean ± std and the paired per-seed
differences from the first variant with 95 % intervals.

A variant is a loss name of the integration (``bce``, ``focal``, ``qfl``, ``vfl`` or an alias) with an optional
gain (:mod:`qfocal.integrations.balance`): ``qfl`` is balanced to BCE's gradient norm (the integrations'
default, gain ``auto``), ``qfl@1`` or ``qfl-unbalanced`` the plain loss, ``qfl@0.5`` a fixed multiplier.

Which term a variant sets:

* YOLOv5: the objectness criterion (hyp ``obj_loss`` / ``obj_gain``), where YOLOv5's soft IoU targets are; the
  classification term stays BCE (``cls_loss: bce``) for every variant.
* Ultralytics: the classification criterion (``cls_loss`` / ``cls_gain``), trained on the task-aligned
  assigner's IoU-aware soft targets (Ultralytics has no objectness term).

Every run is offline (the integrations' offline mode), trains from scratch from the model yaml, writes into
``OUT/<variant>-s<seed>/`` and, when it has finished, ``OUT/<variant>-s<seed>/metrics.json``; ``resume=True``
reuses the runs that have one. The metrics are those of the framework's own validation of the final epoch's
weights, not of the epoch that scored best on the same validation images (a choice that favours noisy runs):
YOLOv5's ``results.csv``, last row; Ultralytics trained with ``val=False`` (validation of the final epoch only, so
``best.pt`` is the last epoch), ``trainer.metrics`` (``metrics/mAP50(B)``, ``metrics/mAP50-95(B)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._names import describe_losses, loss_name
from ..data.synth import prepare_synthetic
from .compare import CompareMetrics, write_compare
from .config import ConfigError
from .evaluate import json_ready
from .train import pick_threads, run_lock

__all__ = [
    "FRAMEWORKS",
    "FRAMEWORK_LOSSES",
    "FRAMEWORK_METRICS",
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
_LOSSES = ("bce", "focal", "qfl", "vfl")  # what both integrations take (YOLOV5_LOSSES, ULTRALYTICS_LOSSES)
_DEFAULT_MODEL = {"yolov5": "yolov5n.yaml", "ultralytics": "yolov8n.yaml"}
_PACKAGE = {"yolov5": "yolov5", "ultralytics": "ultralytics"}
# The term a variant sets, and the first column of the tables (which says so).
_TERM = {"yolov5": "obj", "ultralytics": "cls"}
_LABEL = {"yolov5": "obj loss (cls: bce)", "ultralytics": "cls loss"}
_TITLE = {"yolov5": "YOLOv5", "ultralytics": "Ultralytics"}

FRAMEWORK_METRICS = CompareMetrics(
    keys=("mAP50", "mAP50-95"),
    table=("mAP50", "mAP50-95"),
    bars=("mAP50", "mAP50-95"),
    axis="val mAP (%)",
    delta_units="mAPs in percentage points",
    json_units=(
        "runs, mean, std: mAP50 and mAP50-95 as fractions in [0, 1], from the framework's validation of the "
        "final epoch; delta_vs_baseline: variant minus baseline per seed, in percentage points, 95 % Student-t "
        "interval"
    ),
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
)
# What the compare sets itself in each framework's trainer: train_args may not set these (they have options).
_SET_BY_COMPARE = {
    "yolov5": (
        "data", "cfg", "hyp", "weights", "epochs", "imgsz", "img", "batch_size", "seed", "device", "workers",
        "project", "name", "exist_ok", "noplots", "noval", "resume", "obj_loss", "obj_gain", "cls_loss", "cls_gain",
    ),
    "ultralytics": (
        "model", "data", "epochs", "imgsz", "batch", "seed", "device", "workers", "project", "name", "exist_ok",
        "plots", "val", "resume", "cls_loss", "cls_gain", "mode", "task",
    ),
}  # fmt: skip
_SYNTH_KEYS = ("synth_images", "synth_seed", "synth_difficulty")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A loss of the integrations and its gain: ``None`` for ``auto`` (balanced to BCE), else the number."""

    loss: str
    gain: float | None = None

    @property
    def name(self) -> str:
        """``qfl`` (balanced), ``qfl@1`` (unbalanced), ``qfl@0.5``; ``bce`` (its ``auto`` is exactly 1)."""
        if self.gain is None or (self.loss == "bce" and self.gain == 1.0):
            return self.loss
        return f"{self.loss}@{self.gain:g}"

    @property
    def gain_label(self) -> str | float:
        """What the integrations take as the gain: ``"auto"`` or the number."""
        return "auto" if self.gain is None else self.gain


def _variant_help() -> str:
    return (
        f"{describe_losses(_LOSSES)}, each optionally with @GAIN (auto, the default: balanced to BCE's gradient "
        "norm; a number >= 0: a fixed multiplier, @1 = unbalanced) or -unbalanced"
    )


def parse_variant(text: object) -> Variant:
    """The :class:`Variant` of ``"qfl"``, ``"qfocal@auto"``, ``"qfl@1"``, ``"qfl-unbalanced"``, ``"vfl@0.5"``...

    Raises:
        ValueError: not a loss of the integrations, or a gain that is not ``auto`` or a finite number >= 0; the
            message lists the valid names.
    """
    if not isinstance(text, str):
        raise ValueError(f"losses: expected {_variant_help()}, got {text!r}")
    name, sep, gain_text = text.strip().partition("@")
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
    return Variant(loss, gain)


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


def parse_train_arg(text: object) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as ``(key, value)``; the value as YAML would read a scalar: ``1`` an int, ``0.001`` a float,
    ``true`` / ``false`` a bool, ``none`` / ``null`` None, anything else the string (``AdamW``)."""
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"train_args: expected KEY=VALUE (e.g. optimizer=AdamW, lr0=0.001), got {text!r}")
    raw = raw.strip()
    low = raw.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low in ("none", "null", "~"):
        return key, None
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def _yolov5_hyp_keys() -> set[str]:
    """The keys of YOLOv5's stock hyp file and qfocal's hyp keys: what ``train_args`` sends to the hyp."""
    from ..integrations import yolov5 as integration

    stock = integration._load_yaml(integration._resolve_hyp(integration._train_module(None), None))
    return set(stock) | set(integration._LOSS_KEYS)


def _known_train_keys(framework: str) -> set[str]:
    """Every key the framework's trainer takes (YOLOv5: hyp keys and ``train.py`` options; Ultralytics: its
    config keys)."""
    if framework == "yolov5":
        from ..integrations import yolov5 as integration

        module = integration._train_module(None)
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            options = set(vars(module.parse_opt(True)))
        finally:
            sys.argv = argv
        return _yolov5_hyp_keys() | options
    from ..integrations._offline import offline

    with offline(yolov5_package=None):
        from ultralytics.cfg import DEFAULT_CFG_DICT
    return set(DEFAULT_CFG_DICT)


def check_train_args(
    framework: str, train_args: Mapping[str, Any] | Sequence[str], *, known: bool = True
) -> dict:
    """``train_args`` (a mapping, or ``KEY=VALUE`` strings) checked for ``framework``: keys the compare sets itself
    are refused (they have their own options), and, with ``known``, keys the trainer does not take.

    Raises:
        ConfigError: one line naming the key and what was expected.
    """
    try:
        pairs = (
            dict(train_args)
            if isinstance(train_args, Mapping)
            else dict(parse_train_arg(t) for t in train_args)
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key in pairs:
        if key in _SET_BY_COMPARE[framework]:
            raise ConfigError(
                f"train_args: {key} is set by the compare itself (--epochs, --imgsz, --batch, --losses, --seeds, "
                f"--device, --out ...), got {key}={pairs[key]!r}"
            )
    if known and pairs:
        valid = _known_train_keys(framework)
        unknown = sorted(k for k in pairs if k not in valid)
        if unknown:
            raise ConfigError(
                f"train_args: expected {_TITLE[framework]} training keys (hyp keys or train options), got unknown "
                f"{', '.join(unknown)}"
            )
    return pairs


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


def _check_model(framework: str, model: str) -> None:
    """The model must be found before any run: a yaml of the framework (by name) or a local file."""
    path = Path(model)
    if framework == "yolov5":
        if path.suffix not in (".yaml", ".yml"):
            raise ConfigError(
                f"model: expected a YOLOv5 model yaml (yolov5n.yaml, yolov5s.yaml ...), got {model!r}"
            )
        root = Path(importlib.util.find_spec("yolov5").origin).parent
        if not (path.is_file() or any(root.glob(f"**/{path.name}"))):
            found = sorted(p.name for p in (root / "models").glob("*.yaml"))
            raise ConfigError(
                f"model: expected a YOLOv5 model yaml ({', '.join(found)}) or a path, got {model!r}"
            )
        return
    if path.suffix == ".pt":
        if not path.is_file():
            raise ConfigError(
                f"model: {model!r} is not on disk (no downloads); build from a .yaml or pass a local .pt"
            )
        return
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(
            f"model: expected an Ultralytics model yaml (yolov8n.yaml, yolo11n.yaml ...), got {model!r}"
        )
    from ..integrations._offline import offline

    with offline(yolov5_package=None):
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(model)
        except FileNotFoundError:
            raise ConfigError(
                f"model: expected an Ultralytics model yaml (yolov8n.yaml, yolo11n.yaml ...) or a path, got {model!r}"
            ) from None


def _device(spec: str) -> str:
    """qfocal's ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` as both frameworks' device string (``cpu`` / ``N``)."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec in ("cuda", "cuda:0") or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} asked for, but this machine has no CUDA GPU")
        return spec[5:] if ":" in spec else "0"
    raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}")


@contextlib.contextmanager
def _pinned_threads(n: int, framework: str) -> Iterator[None]:
    """torch uses ``n`` CPU threads in the block, also through Ultralytics' ``select_device`` (which resets them to
    its own ``NUM_THREADS``: patched for the block only); both are restored on exit."""
    old = torch.get_num_threads()
    torch_utils = None
    if framework == "ultralytics" and importlib.util.find_spec("ultralytics") is not None:
        from ..integrations._offline import offline_import

        with offline_import():
            torch_utils = importlib.import_module("ultralytics.utils.torch_utils")
    had = torch_utils is not None and hasattr(torch_utils, "NUM_THREADS")
    if had:
        old_ultralytics, torch_utils.NUM_THREADS = torch_utils.NUM_THREADS, n
    torch.set_num_threads(n)
    try:
        yield
    finally:
        if had:
            torch_utils.NUM_THREADS = old_ultralytics
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------------------
# One run per framework: train, return the final validation's metrics
# ----------------------------------------------------------------------------------------------------------
def _yolov5_metrics(save_dir: Path) -> dict[str, Any]:
    """The final epoch's validation (YOLOv5 validates the EMA weights after every epoch): the trained model, not the
    epoch that scored best on the very images it is reported on."""
    csv = save_dir / "results.csv"
    if not csv.is_file():
        raise RuntimeError(f"YOLOv5 finished without validation results (no {csv})")
    lines = [line for line in csv.read_text().splitlines() if line.strip()]
    row = dict(zip((k.strip() for k in lines[0].split(",")), lines[-1].split(","), strict=False))
    p, r, map50, map5095 = (
        row[k] for k in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
    )
    return {
        "mAP50": float(map50),
        "mAP50-95": float(map5095),
        "precision": float(p),
        "recall": float(r),
        "source": "final epoch's validation (results.csv, last row)",
    }


def _train_yolov5(train_fn, variant: Variant, seed: int, run_dir: Path, s: dict) -> dict[str, Any]:
    # YOLOv5 7.0's noval crashes on non-final epochs, so it validates every epoch; the last one is reported.
    extra = s["train_args"]
    hyp_keys = _yolov5_hyp_keys() if extra else set()
    opts = {k: v for k, v in extra.items() if k not in hyp_keys}
    hyp = {k: v for k, v in extra.items() if k in hyp_keys}
    opt = train_fn(
        data=str(s["data"]),
        cfg=s["model"],
        hyp={**hyp, "obj_loss": variant.loss, "obj_gain": variant.gain_label, "cls_loss": "bce"},
        **opts,
        epochs=s["epochs"],
        imgsz=s["imgsz"],
        batch_size=s["batch"],
        seed=seed,
        device=s["device"],
        workers=s["workers"],
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
        noplots=not s["plots"],
    )
    return _yolov5_metrics(Path(getattr(opt, "save_dir", run_dir)))


def _train_ultralytics(train_fn, variant: Variant, seed: int, run_dir: Path, s: dict) -> dict[str, Any]:
    trainer = train_fn(
        s["model"],
        **s["train_args"],
        data=str(s["data"]),
        cls_loss=variant.loss,
        cls_gain=variant.gain_label,
        epochs=s["epochs"],
        imgsz=s["imgsz"],
        batch=s["batch"],
        seed=seed,
        device=s["device"],
        workers=s["workers"],
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
        plots=s["plots"],
        val=False,  # validate the final epoch only: faster, and the trained model is what gets reported
    )
    m = dict(getattr(trainer, "metrics", None) or {})
    missing = [k for k in ("metrics/mAP50(B)", "metrics/mAP50-95(B)") if k not in m]
    if missing:
        raise RuntimeError(
            f"Ultralytics finished without validation metrics: trainer.metrics lacks {missing}"
        )
    return {
        "mAP50": float(m["metrics/mAP50(B)"]),
        "mAP50-95": float(m["metrics/mAP50-95(B)"]),
        "precision": float(m.get("metrics/precision(B)", math.nan)),
        "recall": float(m.get("metrics/recall(B)", math.nan)),
        "source": "final epoch's validation (val=False: best.pt is the last epoch; trainer.metrics)",
    }


_RUN = {"yolov5": _train_yolov5, "ultralytics": _train_ultralytics}


def _default_train_fn(framework: str) -> Callable[..., Any]:
    if framework == "yolov5":
        from ..integrations.yolov5 import train
    else:
        from ..integrations.ultralytics import train
    return train


def _version(framework: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_PACKAGE[framework])
    except PackageNotFoundError:
        return "unknown"


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


def plan_framework_compare(
    framework: str,
    *,
    losses: Sequence[str] = FRAMEWORK_LOSSES,
    seeds: Sequence[int] = (0, 1, 2),
    data: str | Path = "synthetic",
    model: str | None = None,
    epochs: int = 12,
    imgsz: int = 128,
    batch: int = 16,
    device: str = "auto",
    threads: int = 0,
    synth_images: int = 400,
    synth_seed: int = 0,
    synth_difficulty: str = "hard",
    plots: bool = True,
    train_args: Mapping[str, Any] | Sequence[str] = (),
    out: str | Path = "runs/compare",
    train_fn: Callable[..., Any] | None = None,
) -> FrameworkPlan:
    """Check every argument of :func:`compare_framework` (which see), and find the framework, the model and the
    data, before anything is trained or written.

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
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"threads: expected an integer >= 0 (0 = auto), got {threads!r}")
    if synth_difficulty not in ("hard", "easy"):
        raise ConfigError(f"synth_difficulty: expected 'hard' or 'easy', got {synth_difficulty!r}")
    data = _resolve_data(data)
    model = model or _DEFAULT_MODEL[framework]
    dev = _device(device)
    if train_fn is None:
        if importlib.util.find_spec(_PACKAGE[framework]) is None:
            raise ConfigError(
                f'framework {framework}: needs the {_PACKAGE[framework]} package: pip install "qfocal[integrations]"'
            )
        _check_model(framework, model)
        train_args = check_train_args(framework, train_args)
        train_fn = _default_train_fn(framework)
    else:  # a stand-in trainer: the keys it takes are its own
        train_args = check_train_args(framework, train_args, known=False)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: expected a folder, got the existing file {out}")
    settings = {
        "framework": framework,
        "model": model,
        "data": str(data),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": dev,
        "threads": threads,
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
    with run_lock(plan.out):
        return _compare(
            plan.framework,
            list(plan.variants),
            list(plan.seeds),
            plan.settings,
            plan.out.resolve(),
            resume,
            log,
            plan.train_fn,
        )


def compare_framework(
    framework: str,
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> dict:
    """Train each loss variant once per seed with ``framework``'s own trainer; write the compare's outputs.

    Args:
        framework: ``"yolov5"`` (:func:`qfocal.integrations.yolov5.train`, the variant sets ``obj_loss`` /
            ``obj_gain``, classification stays BCE) or ``"ultralytics"``
            (:func:`qfocal.integrations.ultralytics.train`, the variant sets ``cls_loss`` / ``cls_gain``).
        losses: variants (see the module docstring: ``"qfl"``, ``"qfl@1"``, ``"qfl-unbalanced"``...); the first
            is the baseline.
        seeds: distinct seeds; every variant trains once per seed (the framework's ``seed``).
        data: ``"synthetic"`` (the embedded dataset, generated once under ``out/data`` with ``synth_images``,
            ``synth_seed``, ``synth_difficulty``) or a YOLO data yaml (or a folder holding ``data.yaml``).
        model: the model yaml trained from scratch; default ``yolov5n.yaml`` / ``yolov8n.yaml``.
        epochs, imgsz, batch: the frameworks' ``epochs``, ``imgsz``, ``batch_size`` / ``batch``.
        device: ``auto`` (the first GPU if any, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads of every run (0 = auto, :func:`qfocal.detection.train.pick_threads`), picked once.
            On the CPU the data loaders run in the training process (``workers=0``).
        plots: let the framework draw its own plots (``compare.png`` is always written).
        train_args: more training settings for every run, a mapping or ``KEY=VALUE`` strings: YOLOv5 hyp keys go
            into the hyp (``lr0=0.001``), other keys are ``train.py`` options (``optimizer=AdamW``); Ultralytics
            takes them as its overrides (``optimizer=SGD``, ``lr0=0.01``). Keys the compare sets itself, and keys
            the trainer does not know, are refused.
        out: the compare's folder; run ``<variant>-s<seed>`` trains in ``out/<variant>-s<seed>``.
        resume: reuse every run with a ``metrics.json`` (its settings must match); an unfinished run's folder is
            cleared and the run trained again.
        log: progress lines (default: print).
        train_fn: the integration's ``train`` (default); a stand-in with the same signature for tests.

    All but ``resume`` and ``log`` are :func:`plan_framework_compare`'s, with its defaults (losses
    ``bce,qfl,vfl``, seeds 0-2, the synthetic data, 12 epochs, imgsz 128, batch 16, device ``auto``).
    Every argument is checked before any training (:class:`~qfocal.detection.config.ConfigError`, one line).

    Returns:
        the content of ``compare.json`` (:func:`qfocal.detection.compare.write_compare`), with ``framework``,
        ``term`` (``obj_loss`` or ``cls_loss``) and ``variants`` (each name's loss and gain) added; its runs hold
        ``mAP50``, ``mAP50-95``, ``precision``, ``recall`` and the run folder.
    """
    plan = plan_framework_compare(framework, **options)
    return run_framework_compare(plan, resume=resume, log=log)


def _finished(done: Path, expected: dict) -> dict | None:
    """A finished run's metrics.json, or None when there is none; an error when its settings differ."""
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    recorded = record.get("settings") or {}
    recorded = {"train_args": {}, **recorded}  # runs recorded before train_args existed trained with none
    differ = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in differ.items())
        raise ConfigError(
            f"{done} was trained with other settings: {detail}; choose another --out or drop --resume"
        )
    return record


def _compare(framework, variants, seeds, settings, out, resume, log, train_fn) -> dict:
    t_start = time.perf_counter()
    s = dict(settings)
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
    threads = pick_threads(s["threads"])
    s["workers"] = 0 if s["device"] == "cpu" else 8  # CPU: no loader processes beside the pinned threads
    names = [v.name for v in variants]
    term = _TERM[framework]
    log(
        f"compare ({_TITLE[framework]}, {s['model']}): {len(variants)} variants of {term}_loss x {len(seeds)} "
        f"seeds, {threads} thread(s) per run"
    )
    summary = {n: {k: [] for k in FRAMEWORK_METRICS.keys} for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    runs: list[dict] = []
    result: dict = {}
    run = _RUN[framework]
    # Seeds outside, variants inside: an interrupted compare has balanced results, written after every run.
    for seed in seeds:
        for variant in variants:
            run_dir = out / f"{variant.name}-s{seed}"
            expected = {
                k: v
                for k, v in {**s, "seed": seed, "loss": variant.loss, "gain": variant.gain_label}.items()
                if k in keys
            }
            done = run_dir / "metrics.json"
            t0 = time.perf_counter()
            record = _finished(done, expected) if resume else None
            if record is not None:
                log(f"{variant.name} seed {seed}: reusing {done}")
                dt = float(record.get("seconds", math.nan))
            else:
                if run_dir.exists():  # an unfinished (or, without resume, an earlier) run: start it afresh
                    log(f"{variant.name} seed {seed}: clearing {run_dir}")
                    shutil.rmtree(run_dir)
                with _pinned_threads(threads, framework):
                    metrics = run(train_fn, variant, seed, run_dir, s)
                dt = time.perf_counter() - t0
                record = {
                    "framework": framework,
                    "variant": variant.name,
                    "seed": seed,
                    **metrics,
                    "seconds": dt,
                    "settings": expected,
                }
                run_dir.mkdir(parents=True, exist_ok=True)
                tmp = done.with_name(f".{done.name}.tmp")
                tmp.write_text(json.dumps(json_ready(record), indent=2) + "\n")
                tmp.replace(done)  # written last and whole: its presence means the run finished
            values = {k: float(record[k]) for k in FRAMEWORK_METRICS.keys}
            log(
                f"{variant.name} seed {seed}: mAP50 {values['mAP50']:.4f} mAP50-95 {values['mAP50-95']:.4f} ({dt:.0f} s)"
            )
            for k in FRAMEWORK_METRICS.keys:
                summary[variant.name][k].append(values[k])
            seconds[variant.name].append(dt)
            runs.append(
                {
                    "loss": variant.name,
                    "seed": seed,
                    "seconds": dt,
                    **values,
                    "precision": record.get("precision"),
                    "recall": record.get("recall"),
                    "dir": str(run_dir),
                }
            )
            result = _write(
                out,
                framework,
                variants,
                seeds,
                threads,
                s,
                summary,
                seconds,
                runs,
                time.perf_counter() - t_start,
            )
    return result


def _extra(s: dict) -> str:
    """The training settings a compare added, as the header names them: ``, optimizer=AdamW lr0=0.001``."""
    if not s["train_args"]:
        return ", the framework's default training settings"
    return ", " + " ".join(f"{k}={v}" for k, v in s["train_args"].items())


def _write(out, framework, variants, seeds, threads, s, summary, seconds, runs, wall) -> dict:
    term = _TERM[framework]
    other = (
        "cls_loss: bce for every variant" if framework == "yolov5" else "Ultralytics has no objectness term"
    )
    word = {"obj": "objectness", "cls": "classification"}[term]
    scratch = ", from scratch" if Path(s["model"]).suffix in (".yaml", ".yml") else ""
    finished = f"{len(runs)} of {len(variants) * len(seeds)} runs"
    machine = (
        f"{platform.machine()}, device {s['device']}, {threads} threads per run, torch {torch.__version__}"
    )
    header = (
        f"{_TITLE[framework]} {_version(framework)}: mAP50 and mAP50-95 in percent from its own validation of the "
        f"final epoch, mean ± sample std over seeds {list(seeds)} ({finished}). Each variant sets the {word} criterion "
        f"({term}_loss, {term}_gain; {other}): a name alone is balanced to BCE's gradient norm (gain auto), @1 is "
        f"the unbalanced loss. Data {s['data']}; model {s['model']}{scratch}; {s['epochs']} epochs, imgsz "
        f"{s['imgsz']}, batch {s['batch']}{_extra(s)}; {machine}; wall {wall:.0f} s."
    )
    data = "synthetic" if Path(s["data"]).parent == out / "data" else Path(s["data"]).parent.name
    title = (
        f"{_TITLE[framework]} {s['model']}, {term} loss; data {data}, {s['epochs']} epochs, "
        f"imgsz {s['imgsz']}, seeds {list(seeds)} ({finished}); differences vs {variants[0].name}"
    )
    config = {k: v for k, v in s.items() if k != "workers"}
    config["version"] = _version(framework)
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
        label=_LABEL[framework],
        extra={
            "framework": framework,
            "term": f"{term}_loss",
            "variants": {v.name: {"loss": v.loss, "gain": v.gain_label} for v in variants},
        },
    )
