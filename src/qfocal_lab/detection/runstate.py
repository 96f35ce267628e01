"""What a run carries from epoch to epoch and saves: :class:`RunState`, the weights' moving average
(:class:`ModelEMA`), writing a checkpoint (:func:`save_checkpoint`) and resuming from one
(:func:`resume_checkpoint`), with the settings and data checks that refuse a checkpoint of another run
(:func:`settings_diff`, :func:`fingerprint_diff`, :func:`check_finished_run`).

Reading and verifying checkpoint files is :mod:`qfocal_lab.detection.checkpoint`'s; the run folder's files are
:mod:`qfocal_lab.detection.runfiles`'.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from .checkpoint import (
    CHECKSUM_FORMAT,
    CheckpointError,
    checkpoint_checksum,
    load_checkpoint,
    load_state,
)
from .config import RESUME_KEYS, ConfigError, TrainConfig
from .runfiles import (
    _write_atomic,
)


@dataclasses.dataclass
class RunState:
    """What a run carries from epoch to epoch, and what its checkpoint holds."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    epoch: int = 0  # last finished epoch
    history: list[dict] = dataclasses.field(default_factory=list)
    ema: ModelEMA | None = None  # the averaged weights that are evaluated, when the run keeps them

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights a run evaluates: the EMA's if it keeps one, else the model's."""
        return self.ema.module if self.ema is not None else self.model


class ModelEMA:
    """An exponential moving average of a model's weights, updated after every optimizer step.

    ``ema = d * ema + (1 - d) * weights`` over every floating-point parameter and buffer (others are copied),
    with ``d = min(decay, (1 + updates) / (10 + updates))`` so the first steps' random weights fade fast. Averaging
    the last few hundred steps' weights smooths the step-to-step noise of the final weights, which is what makes
    two seeds of one run disagree at evaluation (as in YOLOv5 and Ultralytics, which evaluate an EMA too).
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay: expected a value in (0, 1), got {decay!r}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.updates = int(updates)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights by one step."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = current[name].detach()
            if avg.dtype.is_floating_point:
                avg.lerp_(new.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(new)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def save_checkpoint(
    path: Path, state: RunState, cfg: TrainConfig, data, steps_per_epoch: int, fingerprint: dict | None = None
) -> None:
    """Write ``state`` to ``path`` atomically (a crash mid-write leaves the previous checkpoint intact), with the
    content checksum :func:`load_checkpoint` verifies (:func:`checkpoint_checksum`)."""
    obj = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else {},
        "ema": state.ema.state_dict() if state.ema is not None else {},
        "epoch": state.epoch,
        "step": state.epoch * steps_per_epoch,
        "history": state.history,
        "rng": torch.get_rng_state(),
        "config": dataclasses.asdict(cfg),
        "class_names": list(data.class_names),
        "category_ids": list(data.category_ids),
        "data_fingerprint": fingerprint or {},
    }
    obj["checksum"] = {"format": CHECKSUM_FORMAT, "sha256": checkpoint_checksum(obj)}
    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


def settings_diff(ckpt: dict, cfg: TrainConfig) -> list[str]:
    """The settings of :data:`RESUME_KEYS` in which the checkpoint ``ckpt`` differs from ``cfg``, as
    ``key=saved (now value)``; a setting added after the checkpoint was written had its default then."""
    defaults, now = dataclasses.asdict(TrainConfig()), dataclasses.asdict(cfg)
    saved = {k: ckpt["config"].get(k, defaults.get(k)) for k in RESUME_KEYS}
    return [f"{k}={saved[k]!r} (now {now.get(k)!r})" for k in RESUME_KEYS if saved[k] != now.get(k)]


def fingerprint_diff(ckpt: dict, fingerprint: dict | None) -> list[str]:
    """How the data a checkpoint was trained on (its :func:`data_fingerprint`) differs from ``fingerprint``."""
    diff = []
    for split, was in (ckpt.get("data_fingerprint") or {}).items():
        is_now = (fingerprint or {}).get(split, {})
        for key in ("images", "classes", "sha256"):
            if was.get(key) != is_now.get(key):
                what = "annotations/images hash" if key == "sha256" else key
                diff.append(f"{split} {what} {was.get(key)!r} (now {is_now.get(key)!r})")
    return diff


def check_finished_run(run_dir: Path, cfg: TrainConfig, fingerprint: Callable[[], dict]) -> None:
    """Before a compare reuses the finished run in ``run_dir``: its checkpoint must record ``cfg``'s settings
    (:func:`settings_diff`), its final epoch, and the same data (``fingerprint()``, computed only when the
    settings agree); otherwise a one-line :class:`ConfigError` naming every difference."""
    path = run_dir / "last.pt"
    if not path.is_file():
        raise ConfigError(
            f"--resume: {run_dir} has results but no last.pt recording its settings; choose another --out or "
            "drop --resume"
        )
    ckpt = load_checkpoint(path)
    diff = settings_diff(ckpt, cfg)
    if not diff and int(ckpt["epoch"]) != cfg.epochs:
        diff.append(f"finished epoch {ckpt['epoch']} (now {cfg.epochs})")
    if not diff:
        diff = fingerprint_diff(ckpt, fingerprint())
    if diff:
        raise ConfigError(
            f"--resume: {path} was trained with other settings: {', '.join(diff)}; choose another --out or drop "
            "--resume"
        )


def resume_checkpoint(path: Path, state: RunState, cfg: TrainConfig, fingerprint: dict | None = None) -> bool:
    """Load ``path`` into ``state`` if it exists; False if there is none. Refuses a checkpoint written with other
    settings (:data:`RESUME_KEYS`) or on other data (``fingerprint``, see :func:`data_fingerprint`), listing
    every difference."""
    if not path.is_file():
        return False
    ckpt = load_checkpoint(path)
    diff = settings_diff(ckpt, cfg) + fingerprint_diff(ckpt, fingerprint)
    if diff:
        raise ConfigError(f"--resume: {path} was written with different settings: " + ", ".join(diff))
    load_state(state.model, ckpt["model"], path)
    if state.ema is not None:
        if not ckpt.get("ema"):
            raise CheckpointError(f"{path}: no EMA weights in it, but the run keeps an EMA (--ema)")
        load_state(state.ema.module, ckpt["ema"]["module"], path, "EMA")
        state.ema.updates = int(ckpt["ema"]["updates"])
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if state.scaler is not None and ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: its optimizer or RNG state does not fit this run ({first:.200})"
        ) from None
    state.epoch, state.history = int(ckpt["epoch"]), list(ckpt["history"])
    return True
