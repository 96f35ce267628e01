"""Reading qfocal's training checkpoints safely: the one error type, the tensor digest, the content checksum and
the schema check that :func:`load_checkpoint` applies, and loading a state dict with a one-line error.

:mod:`qfocal_lab.detection.train` writes the checkpoints; :mod:`qfocal_lab.detection.backbone` reads their backbones.
Both import from here, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch

from .config import TrainConfig

__all__ = [
    "CHECKSUM_FORMAT",
    "CheckpointError",
    "backbone_digest",
    "checkpoint_checksum",
    "load_checkpoint",
    "load_state",
]

_CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "history", "rng", "config", "class_names")


class CheckpointError(RuntimeError):
    """A checkpoint or backbone file that is missing, damaged, or not one that qfocal wrote."""


def backbone_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors``, in name order (hex)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d: as 1-d
    return h.hexdigest()


# The content checksum of a checkpoint: SHA-256 (backbone_digest) over every tensor it holds, named by its place.
CHECKSUM_FORMAT = "sha256-tensors-v1"


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts and lists, keyed by its path (``model.head.weight``, ``optimizer.state.
    3.exp_avg``)."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found: dict[str, torch.Tensor] = {}
    for k, v in items:
        found.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    return found


def checkpoint_checksum(ckpt: dict) -> str:
    """The content checksum :func:`save_checkpoint` records: :func:`~qfocal_lab.detection.backbone.backbone_digest`
    (names, dtypes, shapes and bytes) over the tensors of the model, EMA, optimizer, scaler and RNG state."""
    parts = {k: ckpt.get(k) for k in ("model", "ema", "optimizer", "scaler", "rng")}
    return backbone_digest(_tensors(parts))


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _config_errors(config: dict) -> list[str]:
    """What in a checkpoint's ``config`` does not fit :class:`TrainConfig`'s types (keys it does not know are
    ignored: a newer qfocal's settings)."""
    errors = []
    for f in dataclasses.fields(TrainConfig):
        if f.name not in config:
            continue
        value, kind = config[f.name], type(f.default)
        ok = (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, kind) and not isinstance(value, bool)
        )
        if not ok:
            errors.append(
                f"config {f.name}: expected {kind.__name__}, got {type(value).__name__} {value!r:.40}"
            )
    return errors


def _schema_errors(ckpt: dict) -> list[str]:
    """The keys of a loaded checkpoint that are missing or of the wrong type."""
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return [f"no {', '.join(missing)}"]
    checks = {
        "model": _is_tensor_dict(ckpt["model"]) and bool(ckpt["model"]),
        "optimizer": isinstance(ckpt["optimizer"], dict)
        and isinstance(ckpt["optimizer"].get("state"), dict)
        and isinstance(ckpt["optimizer"].get("param_groups"), list),
        "epoch": isinstance(ckpt["epoch"], int)
        and not isinstance(ckpt["epoch"], bool)
        and ckpt["epoch"] >= 0,
        "history": isinstance(ckpt["history"], list) and all(isinstance(r, dict) for r in ckpt["history"]),
        "rng": isinstance(ckpt["rng"], torch.Tensor) and ckpt["rng"].dtype == torch.uint8,
        "config": isinstance(ckpt["config"], dict),
        "class_names": isinstance(ckpt["class_names"], (list, tuple))
        and bool(ckpt["class_names"])
        and all(isinstance(n, str) for n in ckpt["class_names"]),
        "ema": not ckpt.get("ema")
        or (
            isinstance(ckpt["ema"], dict)
            and _is_tensor_dict(ckpt["ema"].get("module"))
            and isinstance(ckpt["ema"].get("updates"), int)
        ),
        "scaler": isinstance(ckpt.get("scaler", {}), dict),
        "data_fingerprint": isinstance(ckpt.get("data_fingerprint", {}), dict),
    }
    errors = [f"{k} of the wrong type or form" for k, ok in checks.items() if not ok]
    if not errors:
        errors = _config_errors(ckpt["config"])
    return errors


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`train` without executing code (``weights_only=True``), and check it.

    The checks: every key of qfocal's checkpoints there with its type (model and EMA weights as tensors, the
    config's values of :class:`TrainConfig`'s types; keys of a newer qfocal are ignored), and the content
    checksum :func:`save_checkpoint` records (:func:`checkpoint_checksum`), so flipped bytes in the tensor data
    are found. Checkpoints written before checksums existed (no ``checksum`` key) still load, unchecked.

    Raises:
        CheckpointError: one line: the file is missing, truncated, not a torch file, holds objects other than
            tensors and primitives (never unpickled), lacks a key or holds one of the wrong type, or its tensors
            no longer match their checksum (damaged on disk).
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no checkpoint file"
        raise CheckpointError(f"{path}: expected a checkpoint file, got {what} there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, or a pickle that weights_only refuses to run
        raise CheckpointError(
            f"{path}: damaged, or not a checkpoint written by qfocal train ({type(exc).__name__})"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint written by qfocal train (not a dict)")
    errors = _schema_errors(ckpt)
    if errors:
        raise CheckpointError(f"{path}: not a checkpoint written by qfocal train ({'; '.join(errors[:3])})")
    recorded = ckpt.get("checksum")
    if recorded is not None:
        if not isinstance(recorded, dict) or recorded.get("format") != CHECKSUM_FORMAT:
            raise CheckpointError(
                f"{path}: expected a checksum of format {CHECKSUM_FORMAT}, got {recorded!r:.80}"
            )
        digest = checkpoint_checksum(ckpt)
        if digest != recorded.get("sha256"):
            raise CheckpointError(
                f"{path}: damaged: its tensors' checksum is {digest[:12]}..., the file records "
                f"{str(recorded.get('sha256'))[:12]}... (bit rot or an edit; use an intact copy)"
            )
    return ckpt


def load_state(module: torch.nn.Module, state: dict, path: str | os.PathLike, what: str = "model") -> None:
    """``module.load_state_dict(state)``; a checkpoint that does not fit (another model size, classes, or
    version) is a one-line :class:`CheckpointError` naming the first difference instead of torch's list."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        first = (
            f"{shapes[0]} is {tuple(state[shapes[0]].shape)}, the model's {tuple(own[shapes[0]].shape)}"
            if shapes
            else f"first missing {missing[0]}"
            if missing
            else f"first unexpected {extra[0]}"
        )
        raise CheckpointError(
            f"{path}: its {what} does not fit this model ({len(missing)} missing, {len(extra)} unexpected, "
            f"{len(shapes)} of other shapes; {first}); another --model-size, class list or qfocal version?"
        )
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: its {what} does not load into this model ({first})") from None
