"""qfocal's checkpoints on disk: the error for a missing, damaged or foreign one, and the safe loader
(``weights_only=True``: nothing in the file is executed)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["CHECKPOINT_KEYS", "CheckpointError", "load_checkpoint"]

# The keys every checkpoint of qfocal.detection.train.train holds.
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "history", "rng", "config", "class_names")


class CheckpointError(RuntimeError):
    """A checkpoint or backbone file that is missing, damaged, or not one that qfocal wrote."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`qfocal.detection.train.train` without executing code (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, holds objects other than tensors and
            primitives (never unpickled), or lacks a key of qfocal's checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, or a pickle that weights_only refuses to run
        raise CheckpointError(
            f"{path}: damaged, or not a checkpoint written by qfocal train ({type(exc).__name__})"
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint written by qfocal train (no {', '.join(missing)})")
    return ckpt
