"""The trainer behind ``qfocal train``: deterministic, resumable, DDP-aware training of an FCOS with one loss.

One run writes to ``out``: ``last.pt`` (atomic, every epoch; loads with ``torch.load(..., weights_only=True)``),
``history.csv`` (one row per epoch), ``metrics.json`` (COCO APs, AP90 and the score-IoU correlations of the
final epoch), ``score_iou.npz`` (score and IoU of each validation detection on an object, for compare's plot)
and the plots of :mod:`qfocal_lab.detection.plots`. Launch under ``torchrun --nproc-per-node N -m qfocal train ...``
for DDP (gloo on CPU, nccl on GPU); each process takes ``batch`` images of every global batch of ``batch * N``.

Here: the model, the data, one epoch and the loop (with DDP). The run folder's files (lock, atomic writes,
output checks, data fingerprint) are :mod:`qfocal_lab.detection.runfiles`'; the run state, EMA, saving and
resuming checkpoints :mod:`qfocal_lab.detection.runstate`'; device, threads and autocast
:mod:`qfocal_lab.detection.device`'. Their names stay importable from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
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
    CheckpointError,
    checkpoint_checksum,
    load_checkpoint,
    load_state,
)
from .config import AMP_CHOICES, MODEL_SIZES, ConfigError, TrainConfig
from .device import (
    _barrier,
    _dist_info,
    amp_dtype,
    pick_threads,
    resolve_device,
)
from .evaluate import METRIC_KEYS, QUALITY_KEYS, evaluate, json_ready
from .quality import score_iou_pairs
from .runfiles import (  # noqa: F401  (moved to runfiles; importable from here)
    RUN_FILES,
    RunLockedError,
    RunOutputError,
    _write_atomic,
    _write_history,
    _write_text,
    check_output_dir,
    data_fingerprint,
    os_error_text,
    run_lock,
)
from .runstate import (  # noqa: F401  (moved to runstate; importable from here)
    ModelEMA,
    RunState,
    check_finished_run,
    fingerprint_diff,
    resume_checkpoint,
    save_checkpoint,
    settings_diff,
)

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
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def prepare_synthetic_data(
    cfg: TrainConfig, root: str | os.PathLike, log: Callable[[str], None] = print
) -> Path:
    """Generate the embedded dataset ``cfg`` asks for (``synth_images``, ``synth_seed``, ``synth_difficulty``,
    ``synth_val``) in ``root`` unless it is there already; return ``root``."""
    options: dict[str, str | int] = {"difficulty": cfg.synth_difficulty}
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


class DistributedError(RuntimeError):
    """A process of a DDP run stopped answering; the last checkpoint on disk is the last good one."""


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
    steps: Iterable[int] = range(steps_per_epoch)
    bar = None
    if show_progress:
        from tqdm import tqdm

        steps = bar = tqdm(
            steps, desc=f"{cfg.loss} seed {cfg.seed} epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1
        )
    lr = cfg.lr
    for it in steps:
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
        if bar is not None:
            bar.set_postfix(loss=f"{float(total.detach()):.3f}", lr=f"{lr:.2e}")
    if bar is not None:
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
        held = [name for name in ("last.pt", "metrics.json") if (Path(cfg.out) / name).exists()]
        if held and not resume:  # a finished or interrupted run: never overwritten without a word
            raise ConfigError(
                f"--out: {cfg.out} already holds a run ({', '.join(held)}); continue it with --resume, or choose "
                "another --out"
            )
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
    last_preds: list[dict] | None = None
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
        if not metrics or last_preds is None:  # resumed after the final epoch: evaluate the saved weights
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
