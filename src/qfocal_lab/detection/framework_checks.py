"""The checks a framework compare makes before it trains: the trainer arguments it passes through
(:func:`parse_train_arg`, :func:`check_train_args`: known to YOLOv5's train.py or Ultralytics' config, values in
range, not one the compare sets itself), the model, and the weights a run starts from (:func:`check_weights`,
:func:`file_sha256`, :func:`final_weights`); every failure a one-line
:class:`~qfocal_lab.detection.config.ConfigError`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from .config import ConfigError

_TITLE = {"yolov5": "YOLOv5", "ultralytics": "Ultralytics"}
# ----------------------------------------------------------------------------------------------------------
# What each framework's trainer takes: train_args, models, weights
# ----------------------------------------------------------------------------------------------------------
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
    from qfocal.integrations import yolov5 as integration

    stock = integration.stock_hyp()
    return set(stock) | set(integration.LOSS_KEYS)


def _yolov5_options() -> dict[str, argparse.Action]:
    """The options of YOLOv5's ``train.py`` by destination, as its own parser declares them (type, choices)."""
    from qfocal.integrations import yolov5 as integration

    module = integration.load_train_module(None)
    seen: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_known_args

    def spy(self, *args, **kwargs):
        seen.append(self)
        return real(self, *args, **kwargs)

    with (
        mock.patch.object(sys, "argv", sys.argv[:1]),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", spy),
    ):
        module.parse_opt(True)
    return {a.dest: a for a in seen[0]._actions if a.dest != "help"}


def _known_train_keys(framework: str) -> set[str]:
    """Every key the framework's trainer takes (YOLOv5: hyp keys and ``train.py`` options; Ultralytics: its
    config keys)."""
    if framework == "yolov5":
        return _yolov5_hyp_keys() | set(_yolov5_options())
    from qfocal.integrations import offline

    with offline(yolov5_package=None):
        from ultralytics.utils import DEFAULT_CFG_DICT
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
    for key, value in pairs.items():  # whatever the trainer: a number that is no number never trains
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"train_args: {key}: expected a finite number, got {value!r}")
    if known and pairs:
        valid = _known_train_keys(framework)
        unknown = sorted(k for k in pairs if k not in valid)
        if unknown:
            raise ConfigError(
                f"train_args: expected {_TITLE[framework]} training keys (hyp keys or train options), got unknown "
                f"{', '.join(unknown)}"
            )
        try:
            (_check_yolov5_values if framework == "yolov5" else _check_ultralytics_values)(pairs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train_args: {str(exc).strip().splitlines()[0]}") from None
    return pairs


# YOLOv5's hyp keys that are fractions or probabilities (its hyp files' comments), and train.py's options that are.
_YOLOV5_FRACTIONS = (
    "lrf", "momentum", "warmup_momentum", "iou_t", "hsv_h", "hsv_s", "hsv_v", "translate", "perspective",
    "flipud", "fliplr", "mosaic", "mixup", "copy_paste", "label_smoothing",
)  # fmt: skip


def _check_yolov5_values(pairs: Mapping[str, Any]) -> None:
    """YOLOv5 has no validator of its own: its hyp values are numbers >= 0 (the learning rate > 0), fractions in
    [0, 1] where they are probabilities or fractions, qfocal's loss keys as the integration checks them; a
    ``train.py`` option must convert with the type its argparse declares and be one of its choices."""
    from qfocal.integrations import yolov5 as integration

    hyp_keys, options = _yolov5_hyp_keys(), _yolov5_options()
    loss = {k: v for k, v in pairs.items() if k in integration.LOSS_KEYS}
    if loss:
        integration.check_loss_keys(loss)
    for key, value in pairs.items():
        if key in hyp_keys:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number:
                if key in integration.LOSS_KEYS:  # names, "auto", None: checked by the integration above
                    continue
                raise TypeError(f"{key}: expected a number (a YOLOv5 hyp value), got {value!r}")
            if value < 0 or (key == "lr0" and value == 0):
                raise ValueError(
                    f"{key}: expected a number {'> 0' if key == 'lr0' else '>= 0'}, got {value!r}"
                )
        elif key in options:
            action = options[key]
            if action.nargs == 0:  # store_true / store_false
                if not isinstance(value, bool):
                    raise TypeError(f"{key}: expected true or false (a YOLOv5 train.py flag), got {value!r}")
                continue
            if value is None:
                continue
            if callable(action.type) and not isinstance(value, list):
                try:
                    value = action.type(str(value))
                except (TypeError, ValueError, argparse.ArgumentTypeError):
                    kind = getattr(action.type, "__name__", "its type")
                    raise TypeError(
                        f"{key}: expected {kind} (YOLOv5 train.py --{key}), got {value!r}"
                    ) from None
            if action.choices is not None and value not in action.choices:
                raise ValueError(
                    f"{key}: expected one of {', '.join(map(str, action.choices))}, got {value!r}"
                )
        if key in _YOLOV5_FRACTIONS and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{key}: expected a fraction in [0, 1], got {value!r}")


def _check_ultralytics_values(pairs: Mapping[str, Any]) -> None:
    """Ultralytics' own validator (``ultralytics.cfg.check_cfg``: types, fractions in [0, 1], integer minimums)."""
    from qfocal.integrations import offline

    with offline(yolov5_package=None):
        from ultralytics.cfg import check_cfg
    check_cfg(dict(pairs), hard=True)


def _check_model(framework: str, model: str) -> None:
    """The model must be found before any run: a yaml of the framework (by name) or a local file."""
    path = Path(model)
    if framework == "yolov5":
        if path.suffix not in (".yaml", ".yml"):
            raise ConfigError(
                f"model: expected a YOLOv5 model yaml (yolov5n.yaml, yolov5s.yaml ...), got {model!r}"
            )
        spec = importlib.util.find_spec("yolov5")
        if (
            spec is None or spec.origin is None
        ):  # the plan checks first (framework_plan.plan_framework_compare)
            raise ConfigError(
                'framework yolov5: needs the yolov5 package: pip install "qfocal[integrations]"'
            )
        root = Path(spec.origin).parent
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
    from qfocal.integrations import offline

    with offline(yolov5_package=None):
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(model)
        except FileNotFoundError:
            raise ConfigError(
                f"model: expected an Ultralytics model yaml (yolov8n.yaml, yolo11n.yaml ...) or a path, got {model!r}"
            ) from None


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(path: Path) -> Any:
    """``torch.load`` as both frameworks load their own checkpoints (pickled modules: ``weights_only=False``; load
    only files you trust), with their packages importable offline."""
    from qfocal.integrations import offline_import

    with offline_import():
        if importlib.util.find_spec("yolov5") is not None:
            importlib.import_module(
                "yolov5.models.yolo"
            )  # a YOLOv5 checkpoint pickles yolov5.models.yolo classes
        return torch.load(path, map_location="cpu", weights_only=False)


def _model_of(ckpt: Any) -> nn.Module | None:
    if not isinstance(ckpt, dict):
        return None
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), nn.Module):
            return ckpt[key]
    return None


def _kind_of(ckpt: Any) -> str:
    """What a loaded file is, in words (``"a YOLOv5 checkpoint"``, ``"a qfocal FCOS checkpoint"``...)."""
    model = _model_of(ckpt)
    if model is not None:
        package = type(model).__module__.split(".")[0]
        inner = getattr(model, "model", None)
        head = inner[-1] if isinstance(inner, nn.Sequential) else None
        if package == "ultralytics":
            from ultralytics.nn.tasks import DetectionModel

            return (
                "ultralytics"
                if isinstance(model, DetectionModel)
                else f"an Ultralytics {type(model).__name__}"
            )
        if package in ("yolov5", "models") and hasattr(head, "anchors"):
            return "yolov5"
        return f"a checkpoint of {type(model).__module__}.{type(model).__name__}"
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and "config" in ckpt:
        return "a qfocal FCOS checkpoint"
    if isinstance(ckpt, dict):
        return f"a dict with keys {sorted(map(str, ckpt))[:6]}"
    return f"a {type(ckpt).__name__}"


def check_weights(path: str | Path, framework: str) -> Path:
    """``path`` resolved, once it is known to hold a detection checkpoint of ``framework`` (loaded here).

    Raises:
        ConfigError: one line, ``weights: expected ..., got ...``: no such file, not a torch checkpoint, or a
            checkpoint of another model or framework.
    """
    expected = {
        "yolov5": "a YOLOv5 detection checkpoint (a .pt written by YOLOv5's train.py)",
        "ultralytics": "an Ultralytics detection checkpoint (a .pt written by an Ultralytics trainer)",
    }[framework]
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weights: expected {expected}, got {str(path)!r} (no such file)")
    try:
        ckpt = _load(file)
    except Exception as exc:  # any unpickling failure: not a checkpoint this machine can load
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(
            f"weights: expected {expected}, got {str(path)!r} (not loadable: {first})"
        ) from None
    kind = _kind_of(ckpt)
    if kind != framework:
        words = {"yolov5": "a YOLOv5 checkpoint", "ultralytics": "an Ultralytics checkpoint"}.get(kind, kind)
        raise ConfigError(f"weights: expected {expected}, got {words} in {str(path)!r}")
    return file.resolve()


def final_weights(run_dir: Path) -> Path:
    """The final weights both frameworks write: ``weights/last.pt`` (the EMA of the last epoch)."""
    return run_dir / "weights" / "last.pt"
