"""The trainer behind ``qfocal train``: deterministic, resumable, DDP-aware training of an FCOS with one loss.

One run writes to ``out``: ``last.pt`` (atomic, every epoch; loads with ``torch.load(..., weights_only=True)``),
``history.csv`` (one row per epoch), ``metrics.json`` (COCO APs, AP90 and the score-IoU correlations of the
final epoch), ``score_iou.npz`` (score and IoU of each validation detection on an object, for compare's plot)
and the plots of :mod:`qfocal_lab.detection.plots`. Launch under ``torchrun --nproc-per-node N -m qfocal train ...``
for DDP (gloo on CPU, nccl on GPU); each process takes ``batch`` images of every global batch of ``batch * N``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .._machine import autocast_name, run_facts
from ..data.dataset import DetectionDataset, load_split
from ..data.synth import prepare_synthetic
from ..models import fcos_tiny
from .backbone import load_backbone
from .checkpoint import (
    CHECKSUM_FORMAT,
    CheckpointError,
    checkpoint_checksum,
    load_checkpoint,
    load_state,
)
from .config import AMP_CHOICES, MODEL_SIZES, RESUME_KEYS, ConfigError, TrainConfig
from .evaluate import METRIC_KEYS, QUALITY_KEYS, evaluate, json_ready
from .quality import score_iou_pairs

__all__ = [
    "AMP_CHOICES",
    "CheckpointError",
    "ConfigError",
    "DistributedError",
    "ModelEMA",
    "NonFiniteLossError",
    "RunLockedError",
    "RunOutputError",
    "TrainConfig",
    "build_model",
    "check_output_dir",
    "checkpoint_checksum",
    "data_fingerprint",
    "load_backbone",
    "load_checkpoint",
    "prepare_synthetic_data",
    "resume_checkpoint",
    "run_lock",
    "save_checkpoint",
    "train",
    "train_one_epoch",
    "training_step",
]


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the last checkpoint on disk is the last good one."""


# What train returns and writes to metrics.json.
_RESULT_KEYS = (*METRIC_KEYS, *QUALITY_KEYS, "score_iou_n")


def build_model(num_classes: int, cfg: TrainConfig) -> torch.nn.Module:
    """The detector of a run: :func:`qfocal_lab.models.fcos_tiny` with the run's loss and size."""
    return fcos_tiny(
        num_classes, loss=cfg.loss, imgsz=cfg.imgsz, box_bias=cfg.box_bias, **MODEL_SIZES[cfg.model_size]
    )


_DEFAULT_THREADS = torch.get_num_threads()


def pick_threads(requested: int = 0) -> int:
    """CPU threads for a run: ``requested`` if positive, else torch's default, except 1 when the 1-minute load
    average already exceeds the core count by more than half a core. OpenMP threads that wait for each other on
    an oversubscribed machine ran a training step 10-25x slower than one thread (0.17 s vs 2-4 s here)."""
    if requested > 0:
        return int(requested)
    n = _DEFAULT_THREADS
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return n
    return 1 if n > 1 and load > (os.cpu_count() or n) + 0.5 else n


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None``: full precision). ``auto`` uses bf16 on GPUs that
    support it (else fp16) and on CPUs with AMX / AVX512-BF16, where it is faster; fp32 elsewhere."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp: fp16 autocast is for CUDA; use bf16 or off on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else None


def training_step(
    model: torch.nn.Module, images: list, targets: list, dtype: torch.dtype | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward one batch in train mode; return ``(total loss, loss parts)`` (call ``backward`` on the total)."""
    device_type = images[0].device.type
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        parts = model(images, targets)
    parts = {k: v.float() for k, v in parts.items()}
    return sum(parts.values()), parts


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of ``lr``."""
    warm = min(cfg.warmup_iters, max(1, total // 5))
    if step < warm:
        return cfg.lr * (0.1 + 0.9 * step / warm)
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def prepare_synthetic_data(
    cfg: TrainConfig, root: str | os.PathLike, log: Callable[[str], None] = print
) -> Path:
    """Generate the embedded dataset ``cfg`` asks for (``synth_images``, ``synth_seed``, ``synth_difficulty``,
    ``synth_val``) in ``root`` unless it is there already; return ``root``."""
    options = {"difficulty": cfg.synth_difficulty}
    if cfg.synth_val:
        options["n_val"] = cfg.synth_val
    return prepare_synthetic(root, images=cfg.synth_images, seed=cfg.synth_seed, log=log, **options)


def prepare_data(cfg: TrainConfig, *, is_main: bool = True, log: Callable[[str], None] = print):
    """Resolve ``cfg.data`` (generating the synthetic set under ``out/data`` if asked) and read both splits."""
    path = Path(cfg.data)
    if cfg.data == "synthetic":
        path = Path(cfg.out) / "data"
        if is_main:
            prepare_synthetic_data(cfg, path, log=log)
        _barrier()
    opts = {"skip_bad": cfg.skip_bad, "allow_outside_root": cfg.allow_outside_root}
    train_data = load_split(path, "train", **opts)
    val_data = load_split(path, "val", **opts)
    if val_data.class_names != train_data.class_names:
        raise ConfigError(f"{path}: train and val splits have different classes")
    for name, d in (("train", train_data), ("val", val_data)):
        if d.skipped.total and is_main:
            log(f"{name} ({d.source}): {d.skipped.summary()}")
            for msg in d.skipped.messages:
                log(f"  skipped: {msg}")
        if not d.records:
            raise ConfigError(f"{d.source}: the {name} split has no usable images")
    return train_data, val_data


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text))


def _write_history(history: list[dict], path: Path) -> None:
    if not history:
        return
    # Every key of every row: a run resumed from an older checkpoint has rows without the newer columns (AP90).
    keys = list(dict.fromkeys(k for row in history for k in row))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, restval="")
            w.writeheader()
            w.writerows(history)

    _write_atomic(path, write)


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


class RunLockedError(RuntimeError):
    """Another process is running in the same ``--out`` folder."""


class DistributedError(RuntimeError):
    """A process of a DDP run stopped answering; the last checkpoint on disk is the last good one."""


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the block: a second run on the same folder fails at once, naming the
    process that holds it (the lock goes with the process, so a killed run leaves nothing to clean up)."""
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / ".lock", "a+")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        raise RunOutputError(f"cannot lock {out / '.lock'}: {os_error_text(exc)}") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunLockedError(
                f"{out} is in use by another qfocal run ({holder}); wait for it or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


class RunOutputError(RuntimeError):
    """The run's output folder or one of its files cannot be written (a path too long, under a regular file,
    read-only, a folder where a file goes, a full disk); the files written before are kept."""


def os_error_text(exc: BaseException) -> str:
    """One line for an OSError (or torch's writer failing): its reason, without the path when it is known."""
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# torch.save reports a failed write (a full disk) as a RuntimeError from its zip writer.
_TORCH_WRITE_FAILED = ("PytorchStreamWriter", "inline_container", "file write failed")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file unique to this process, flush it to disk, then rename it over ``path``.
    A failure (a full disk, a folder in the way) is a one-line :class:`RunOutputError`; ``path`` keeps its
    previous content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(21, "a folder is in the way of the file", str(path))
        os.replace(tmp, path)
    except OSError as exc:
        raise RunOutputError(f"cannot write {path}: {os_error_text(exc)}{_kept(path)}") from None
    except RuntimeError as exc:
        if not any(w in str(exc) for w in _TORCH_WRITE_FAILED):
            raise
        raise RunOutputError(f"cannot write {path}: {os_error_text(exc)} (disk full?){_kept(path)}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the rename itself, where the file system allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _kept(path: Path) -> str:
    return f"; the previous {path.name} is kept" if path.is_file() else ""


# Files of a run folder that must be files (a folder by that name would fail the run after its first epoch).
RUN_FILES = ("last.pt", "metrics.json", "history.csv", "facts.json", "score_iou.npz", ".lock")


def check_output_dir(out: str | os.PathLike, files: Sequence[str] = RUN_FILES) -> Path:
    """Make sure a run can write to ``out`` before it trains: create the folder, write and remove a probe file,
    and find no folder where one of ``files`` goes. Returns ``out``.

    Raises:
        RunOutputError: one line: the path is too long, lies under a regular file, is read-only, or has a folder
            in the way of a file.
    """
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(20, "expected a folder, got a file", str(out))
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".qfocal-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"probe\n")
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as exc:
        raise RunOutputError(f"--out {out}: cannot write there ({os_error_text(exc)})") from None
    for name in files:
        if (out / name).is_dir():
            raise RunOutputError(
                f"--out {out}: expected {name} to be a file, got a folder; remove or rename it"
            )
    return out


def data_fingerprint(*splits) -> dict:
    """What identifies the data a run trained on: per split, the image count, classes, and a hash of every image
    path (relative to the split's source), size, box and label after reading (skips included)."""
    result = {}
    for name, data in splits:
        digest = hashlib.sha256()
        root = Path(data.source).parent
        for rec in data.records:
            path = Path(rec.path)
            rel = path.relative_to(root.parent) if path.is_relative_to(root.parent) else path.name
            digest.update(f"{rel}|{rec.width}|{rec.height}|".encode())
            digest.update(np.ascontiguousarray(rec.boxes, dtype=np.float32).tobytes())
            digest.update(np.ascontiguousarray(rec.labels, dtype=np.int64).tobytes())
            if len(
                rec.crowd_labels
            ):  # only then: the fingerprints of data without crowd regions stay as they were
                digest.update(b"crowd|" + np.ascontiguousarray(rec.crowd_boxes, dtype=np.float32).tobytes())
                digest.update(np.ascontiguousarray(rec.crowd_labels, dtype=np.int64).tobytes())
        result[name] = {
            "images": len(data.records),
            "classes": list(data.class_names),
            "sha256": digest.hexdigest()[:16],
        }
    return result


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


def _last_good(ckpt_path: Path, epoch: int) -> str:
    return f"{ckpt_path} (epoch {epoch - 1})" if epoch > 1 else "none (failed in the first epoch)"


def train_one_epoch(
    ddp: torch.nn.Module,
    state: RunState,
    dataset: DetectionDataset,
    cfg: TrainConfig,
    *,
    epoch: int,
    steps_per_epoch: int,
    device: torch.device,
    dtype: torch.dtype | None,
    world: int,
    rank: int,
    ckpt_path: Path,
    show_progress: bool,
) -> dict:
    """One epoch of optimizer steps; returns the history row (epoch, lr, mean loss parts, train seconds).

    A NaN or infinite loss or gradient raises :class:`NonFiniteLossError` before the optimizer step, naming the
    last good checkpoint.
    """
    t0 = time.perf_counter()
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    dataset.set_epoch(epoch)
    global_batch = cfg.batch * world
    total_steps = steps_per_epoch * cfg.epochs
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
    sums: dict[str, float] = {}
    bar = range(steps_per_epoch)
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(
            bar, desc=f"{cfg.loss} seed {cfg.seed} epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1
        )
    lr = cfg.lr
    for it in bar:
        step = (epoch - 1) * steps_per_epoch + it
        lr = _lr_at(step, total_steps, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        idx = order[it * global_batch + rank * cfg.batch : it * global_batch + (rank + 1) * cfg.batch]
        items = [dataset[int(i)] for i in idx]
        images = [x[0].to(device) for x in items]
        targets = [{k: v.to(device) for k, v in x[1].items()} for x in items]
        total, parts = training_step(ddp, images, targets, dtype)
        finite = torch.isfinite(total.detach()).to(torch.float32).reshape(1)
        if world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        where = f"at epoch {epoch}, step {it + 1}/{steps_per_epoch}"
        if finite.item() < 1:
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise NonFiniteLossError(
                f"non-finite loss {where} ({values}) on some process; stopped before the optimizer step. "
                f"Last good checkpoint: {_last_good(ckpt_path, epoch)}. Try a lower --lr, --amp off, or check the data."
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        max_norm = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        # Gradients are all-reduced, so every process sees the same norm; fp16 leaves inf steps to the scaler.
        if scaler is None and not torch.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"non-finite gradient {where} (loss {float(total):.4g}, gradient norm {float(grad_norm)}); stopped "
                f"before the optimizer step. Last good checkpoint: {_last_good(ckpt_path, epoch)}. "
                "Try a lower --lr or --amp off."
            )
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if state.ema is not None:
            state.ema.update(model)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
        if show_progress:
            bar.set_postfix(loss=f"{float(total.detach()):.3f}", lr=f"{lr:.2e}")
    if show_progress:
        bar.close()
    keys = sorted(sums)
    avg = torch.tensor([sums[k] / steps_per_epoch for k in keys], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(avg)
        avg /= world
    row: dict = {
        "epoch": epoch,
        "lr": lr,
        **{f"loss_{k}" if k != "loss" else k: float(v) for k, v in zip(keys, avg, strict=True)},
    }
    row["train_s"] = round(time.perf_counter() - t0, 3)
    return row


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train one detector as ``cfg`` says; return the final metrics (also in ``out/metrics.json``).

    The metrics are :data:`~qfocal_lab.detection.evaluate.METRIC_KEYS` and
    :data:`~qfocal_lab.detection.evaluate.QUALITY_KEYS` (APs as fractions, the score-IoU correlations nan when
    undefined; ``null`` in the JSON file) and ``score_iou_n``, as :func:`~qfocal_lab.detection.evaluate.evaluate` gives.

    ``resume=True`` continues from ``out/last.pt`` (if present) to the same weights and metrics as an
    uninterrupted run. A NaN or infinite loss raises :class:`NonFiniteLossError` before the optimizer step, so
    ``last.pt`` keeps the last good epoch. ``on_epoch_end(epoch, row)`` is called after each saved epoch.
    """
    world, rank, local_rank = _dist_info()
    cfg = dataclasses.replace(cfg, world_size=world).validate()
    is_main = rank == 0
    if is_main:
        check_output_dir(cfg.out)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not is_main:
        log = lambda msg: None  # noqa: E731
    device = resolve_device(cfg.device, local_rank)
    own_group = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=cfg.ddp_timeout)
        )
        own_group = True
    threads_before = torch.get_num_threads()
    try:
        with run_lock(Path(cfg.out)) if is_main else contextlib.nullcontext():
            return _run(cfg, resume, on_epoch_end, log, device, world, rank, is_main)
    except RuntimeError as exc:
        words = (
            "gloo",
            "nccl",
            "timed out",
            "timeout",
            "connection closed",
            "connection reset",
            "broken pipe",
        )
        lost = isinstance(exc, dist.DistError) or any(w in str(exc).lower() for w in words)
        if (
            world == 1
            or not lost
            or isinstance(exc, (NonFiniteLossError, RunLockedError, CheckpointError, RunOutputError))
        ):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"rank {rank} of {world}: another process stopped answering within --ddp-timeout "
            f"{cfg.ddp_timeout:g} s ({first}); the last good checkpoint is {Path(cfg.out) / 'last.pt'}"
        ) from None
    finally:
        torch.set_num_threads(threads_before)
        if own_group:
            dist.destroy_process_group()


def _run(cfg, resume, on_epoch_end, log, device, world, rank, is_main) -> dict[str, float]:
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    train_data, val_data = prepare_data(cfg, is_main=is_main, log=log)
    fingerprint = data_fingerprint(("train", train_data), ("val", val_data))
    dtype = amp_dtype(cfg.amp, device)
    threads = pick_threads(cfg.threads)
    torch.set_num_threads(threads)

    torch.manual_seed(cfg.seed)
    model = build_model(train_data.num_classes, cfg)
    if cfg.init:
        load_backbone(model, cfg.init)
        log(f"backbone from {cfg.init}")
    model = model.to(device)
    state = RunState(
        model=model,
        optimizer=torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr),
        scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        ema=ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
    )
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    global_batch = cfg.batch * world
    steps_per_epoch = len(train_data.records) // global_batch
    if steps_per_epoch < 1:
        raise ConfigError(
            f"batch: {len(train_data.records)} training images are fewer than one global batch "
            f"({cfg.batch} x {world} processes)"
        )
    ckpt_path = out / "last.pt"
    if resume:
        if resume_checkpoint(ckpt_path, state, cfg, fingerprint):
            log(f"resuming {ckpt_path} after epoch {state.epoch}")
        else:
            log(f"--resume: no checkpoint at {ckpt_path}; starting from scratch")

    dataset = DetectionDataset(train_data, cfg.imgsz, train=True, seed=cfg.seed)
    log(
        f"training {cfg.loss} on {train_data.source}: {len(train_data.records)} train / {len(val_data.records)} val "
        f"images, {train_data.num_classes} classes, {cfg.epochs} epochs x {steps_per_epoch} steps, "
        f"global batch {global_batch}, imgsz {cfg.imgsz}, amp {dtype}, device {device}, {world} process(es) "
        f"x {threads} thread(s)"
    )
    metrics: dict[str, float] = {}
    last_preds = None
    eval_batch = max(cfg.batch, 16)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        row = train_one_epoch(
            ddp, state, dataset, cfg, epoch=epoch, steps_per_epoch=steps_per_epoch, device=device, dtype=dtype,
            world=world, rank=rank, ckpt_path=ckpt_path, show_progress=is_main and cfg.progress,
        )  # fmt: skip
        if is_main:
            metrics = {}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                metrics, last_preds = evaluate(
                    state.eval_model, val_data, imgsz=cfg.imgsz, batch=eval_batch, device=device
                )
            row.update({k: metrics.get(k, float("nan")) for k in (*METRIC_KEYS, "AP90")})
            state.history.append(row)
            state.epoch = epoch
            save_checkpoint(ckpt_path, state, cfg, train_data, steps_per_epoch, fingerprint)
            _write_history(state.history, out / "history.csv")
            ap = f", AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}" if metrics else ""
            log(f"epoch {epoch}/{cfg.epochs}: loss {row['loss']:.4f}{ap} ({row['train_s']:.1f} s)")
        _barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if is_main:
        if not metrics:  # resumed after the final epoch: evaluate the saved weights
            metrics, last_preds = evaluate(
                state.eval_model, val_data, imgsz=cfg.imgsz, batch=eval_batch, device=device
            )
        metrics = {k: metrics[k] for k in _RESULT_KEYS}
        facts = run_facts(autocast=autocast_name(dtype), device=str(device), threads=threads)
        _write_text(out / "facts.json", json.dumps(facts, indent=2) + "\n")
        scores, ious = score_iou_pairs(last_preds, val_data)

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, scores=scores.astype(np.float32), ious=ious.astype(np.float32))

        _write_atomic(out / "score_iou.npz", write_npz)
        # last: its presence means the run finished (compare --resume reuses it)
        _write_text(out / "metrics.json", json.dumps(json_ready(metrics), indent=2) + "\n")
        if cfg.plots:
            from .plots import plot_history, plot_predictions, plot_score_iou

            plot_history(state.history, out / "curves.png", title=f"{cfg.loss}, seed {cfg.seed}")
            plot_predictions(val_data, last_preds, out / "predictions.png", imgsz=cfg.imgsz)
            plot_score_iou(scores, ious, out / "score_iou.png", title=f"{cfg.loss}, seed {cfg.seed}")
    _barrier()
    return {k: metrics.get(k, float("nan")) for k in _RESULT_KEYS}


def _recorded_synthetic(weights: str | os.PathLike, cfg: TrainConfig) -> Path:
    """The synthetic set a run was trained on, as it was generated: beside the checkpoint (a run folder moved
    with its data) or where the run wrote it. Never regenerated: a folder the user moved or removed is not
    re-created behind their back."""
    from ..data.synth import synthetic_stamp

    places = list(dict.fromkeys([Path(weights).parent / "data", Path(cfg.out) / "data"]))
    for place in places:
        if synthetic_stamp(place) is not None or (place / ".complete").is_file():
            return place
    raise ConfigError(
        f"{weights}: trained on the synthetic set, expected in {places[-1]}"
        + (f" or {places[0]}" if len(places) > 1 else "")
        + ", not found there (moved?); pass --data with its folder, or --data synthetic to generate it again "
        "beside the checkpoint"
    )


def evaluate_checkpoint(
    weights: str | os.PathLike,
    data: str | None = None,
    *,
    skip_bad: bool = False,
    device: str = "auto",
    ema: bool = True,
) -> dict[str, float]:
    """The metrics of :func:`~qfocal_lab.detection.evaluate.evaluate` for a saved run on the val split of ``data``
    (default: the dataset it was trained on). A run that kept an EMA of its weights (``--ema``) is evaluated on
    the EMA, as it was during training, unless ``ema=False``."""
    ckpt = load_checkpoint(weights)
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
    if data is not None:
        # --data synthetic: generated beside the checkpoint, never in the folder the run was trained in
        cfg = dataclasses.replace(cfg, data=data, out=str(Path(weights).parent))
    elif cfg.data == "synthetic":
        cfg = dataclasses.replace(cfg, data=str(_recorded_synthetic(weights, cfg)))
    # threads of the machine that trained it do not matter here (and may exceed this one's bound)
    cfg = dataclasses.replace(cfg, skip_bad=skip_bad, threads=0)
    try:
        cfg.validate()
    except ConfigError as exc:
        raise CheckpointError(f"{weights}: its recorded settings are not valid here ({exc})") from None
    _, val_data = prepare_data(cfg)
    if val_data.class_names != list(ckpt["class_names"]):
        raise ConfigError(
            f"{weights}: trained on classes {ckpt['class_names']}, the data has {val_data.class_names}"
        )
    dev = resolve_device(device, 0)
    model = build_model(len(ckpt["class_names"]), cfg).to(dev)
    load_state(model, ckpt["model"], weights)  # checked even when the EMA is evaluated: one schema
    if ckpt.get("ema"):
        load_state(model, ckpt["ema"]["module"], weights, "EMA")
        if not ema:
            load_state(model, ckpt["model"], weights)
    return evaluate(model, val_data, imgsz=cfg.imgsz, device=dev)[0]
