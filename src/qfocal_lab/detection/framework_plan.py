"""What a framework compare trains, checked before anything runs: the frameworks and their loss variants
(:class:`Variant`, :func:`parse_variant`: a loss, a gain, a BCE warm-up), and the plan of a compare
(:func:`plan_framework_compare` -> :class:`FrameworkPlan`: framework, model, data, variants, seeds, trainer
arguments), every setting checked with a one-line :class:`~qfocal_lab.detection.config.ConfigError`.

The runner is :mod:`qfocal_lab.detection.frameworks`; one run is :mod:`qfocal_lab.detection.framework_runs`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qfocal import describe_losses, loss_name, losses_for

from .config import ConfigError
from .framework_checks import _check_model, check_train_args, check_weights
from .framework_runs import _device, default_train_fn

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
