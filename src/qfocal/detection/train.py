"""The trainer behind ``qfocal train``: deterministic, resumable, DDP-aware training of an FCOS with one loss.

One run writes to ``out``: ``last.pt`` (atomic, every epoch; loads with ``torch.load(..., weights_only=True)``),
``history.csv`` (one row per epoch), ``metrics.json`` (COCO APs of the final epoch) and the plots of
:mod:`qfocal.detection.plots`. Launch under ``torchrun --nproc-per-node N -m qfocal train ...`` for DDP (gloo on
CPU, nccl on GPU); each process takes ``batch`` images of every global batch of ``batch * N``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.dataset import DetectionDataset, load_split
from ..data.synth import generate_dataset
from ..integrations.torchvision import LOSSES, fcos_tiny
from .evaluate import METRIC_KEYS, coco_metrics, predict, to_coco_results

__all__ = ["NonFiniteLossError", "TrainConfig", "build_model", "load_checkpoint", "train", "training_step"]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# Keys of the config that must match for --resume to continue the same run.
_RESUME_KEYS = (
    "data",
    "loss",
    "imgsz",
    "batch",
    "seed",
    "lr",
    "weight_decay",
    "epochs",
    "world_size",
    "model_size",
)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the last checkpoint on disk is the last good one."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (all primitives, so it goes into the checkpoint as is)."""

    data: str = "synthetic"
    loss: str = "focal"
    epochs: int = 12
    imgsz: int = 128
    batch: int = 16
    seed: int = 0
    out: str = "runs/train"
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_iters: int = 50
    clip_grad: float = 10.0
    amp: str = "auto"
    device: str = "auto"
    skip_bad: bool = False
    eval_every: int = 1
    synth_images: int = 400
    synth_seed: int = 0
    model_size: str = "tiny"
    progress: bool = True
    plots: bool = True
    world_size: int = 1
    threads: int = 0

    def validate(self) -> TrainConfig:
        if self.loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp: expected one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.model_size not in _MODEL_SIZES:
            raise ValueError(
                f"model_size: expected one of {', '.join(_MODEL_SIZES)}, got {self.model_size!r}"
            )
        if self.threads < 0:
            raise ValueError(f"threads: expected >= 0 (0 = auto), got {self.threads!r}")
        for name in ("epochs", "imgsz", "batch", "eval_every", "synth_images"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.imgsz % 32:
            raise ValueError(
                f"imgsz: expected a multiple of 32 (the stride of the coarsest level), got {self.imgsz}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        return self


_MODEL_SIZES = {
    "tiny": {"widths": (16, 32, 64, 96, 128), "fpn_channels": 64, "head_convs": 2},
    "small": {"widths": (24, 48, 96, 160, 256), "fpn_channels": 96, "head_convs": 3},
}


def build_model(num_classes: int, cfg: TrainConfig) -> torch.nn.Module:
    """The detector of a run: :func:`qfocal.integrations.torchvision.fcos_tiny` with the run's loss and size."""
    return fcos_tiny(num_classes, loss=cfg.loss, imgsz=cfg.imgsz, **_MODEL_SIZES[cfg.model_size])


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
            raise ValueError("amp: fp16 autocast is for CUDA; use bf16 or off on the CPU")
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


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`train` without executing code (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def prepare_data(cfg: TrainConfig, *, is_main: bool = True, log: Callable[[str], None] = print):
    """Resolve ``cfg.data`` (generating the synthetic set under ``out/data`` if asked) and read both splits."""
    path = Path(cfg.data)
    if cfg.data == "synthetic":
        path = Path(cfg.out) / "data"
        marker = path / ".complete"
        if is_main and not marker.is_file():
            log(
                f"generating the synthetic dataset ({cfg.synth_images} images, seed {cfg.synth_seed}) in {path}"
            )
            generate_dataset(path, images=cfg.synth_images, seed=cfg.synth_seed)
            marker.write_text(f"{cfg.synth_images} {cfg.synth_seed}\n")
        _barrier()
    train_data = load_split(path, "train", skip_bad=cfg.skip_bad)
    val_data = load_split(path, "val", skip_bad=cfg.skip_bad)
    if val_data.class_names != train_data.class_names:
        raise ValueError(f"{path}: train and val splits have different classes")
    for name, d in (("train", train_data), ("val", val_data)):
        if d.skipped.total and is_main:
            log(f"{name} ({d.source}): {d.skipped.summary()}")
            for msg in d.skipped.messages:
                log(f"  skipped: {msg}")
        if not d.records:
            raise ValueError(f"{d.source}: the {name} split has no usable images")
    return train_data, val_data


def _write_history(history: list[dict], path: Path) -> None:
    if not history:
        return
    keys = list(history[0])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train one detector as ``cfg`` says; return the final COCO metrics (also in ``out/metrics.json``).

    ``resume=True`` continues from ``out/last.pt`` (if present) to the same weights and metrics as an
    uninterrupted run. A NaN or infinite loss raises :class:`NonFiniteLossError` before the optimizer step, so
    ``last.pt`` keeps the last good epoch. ``on_epoch_end(epoch, row)`` is called after each saved epoch.
    """
    world, rank, local_rank = _dist_info()
    cfg = dataclasses.replace(cfg, world_size=world).validate()
    is_main = rank == 0
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not is_main:
        log = lambda msg: None  # noqa: E731
    device = _resolve_device(cfg.device, local_rank)
    own_group = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    threads_before = torch.get_num_threads()
    try:
        return _train(cfg, resume, on_epoch_end, log, device, world, rank, is_main)
    finally:
        torch.set_num_threads(threads_before)
        if own_group:
            dist.destroy_process_group()


def _train(cfg, resume, on_epoch_end, log, device, world, rank, is_main) -> dict[str, float]:
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    train_data, val_data = prepare_data(cfg, is_main=is_main, log=log)
    dtype = amp_dtype(cfg.amp, device)
    threads = pick_threads(cfg.threads)
    torch.set_num_threads(threads)

    torch.manual_seed(cfg.seed)
    model = build_model(train_data.num_classes, cfg).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    global_batch = cfg.batch * world
    steps_per_epoch = len(train_data.records) // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch: {len(train_data.records)} training images are fewer than one global batch "
            f"({cfg.batch} x {world} processes)"
        )
    total_steps = steps_per_epoch * cfg.epochs
    config_dict = dataclasses.asdict(cfg)
    start_epoch, history = 1, []
    ckpt_path = out / "last.pt"
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        saved = ckpt["config"]
        diff = [k for k in _RESUME_KEYS if saved.get(k) != config_dict.get(k)]
        if diff:
            raise ValueError(
                f"--resume: {ckpt_path} was written with different settings: "
                + ", ".join(f"{k}={saved.get(k)!r} (now {config_dict.get(k)!r})" for k in diff)
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, history = int(ckpt["epoch"]) + 1, list(ckpt["history"])
        log(f"resuming {ckpt_path} after epoch {ckpt['epoch']}")
    elif resume:
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
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        dataset.set_epoch(epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        sums: dict[str, float] = {}
        bar = range(steps_per_epoch)
        if is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(
                bar, desc=f"{cfg.loss} seed {cfg.seed} epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1
            )
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
            if finite.item() < 1:
                values = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
                good = f"{ckpt_path} (epoch {epoch - 1})" if epoch > 1 else "none (failed in the first epoch)"
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {it + 1}/{steps_per_epoch} ({values}) on some process; "
                    f"stopped before the optimizer step. Last good checkpoint: {good}. "
                    "Try a lower --lr, --amp off, or check the data."
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
                good = f"{ckpt_path} (epoch {epoch - 1})" if epoch > 1 else "none (failed in the first epoch)"
                raise NonFiniteLossError(
                    f"non-finite gradient at epoch {epoch}, step {it + 1}/{steps_per_epoch} (loss {float(total):.4g}, "
                    f"gradient norm {float(grad_norm)}); stopped before the optimizer step. Last good checkpoint: "
                    f"{good}. Try a lower --lr or --amp off."
                )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
            if is_main and cfg.progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(total.detach()):.3f}", lr=f"{lr:.2e}")
        if is_main and cfg.progress and hasattr(bar, "close"):
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
        if is_main:
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                preds = predict(model, val_data, imgsz=cfg.imgsz, batch=max(cfg.batch, 16), device=device)
                metrics = coco_metrics(val_data.to_coco(), to_coco_results(val_data, preds))
                last_preds = preds
            else:
                metrics = {}
            row.update({k: metrics.get(k, float("nan")) for k in METRIC_KEYS})
            history.append(row)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch,
                "step": epoch * steps_per_epoch,
                "history": history,
                "rng": torch.get_rng_state(),
                "config": config_dict,
                "class_names": list(train_data.class_names),
                "category_ids": list(train_data.category_ids),
            }
            _save_atomic(state, ckpt_path)
            _write_history(history, out / "history.csv")
            ap = f", AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}" if metrics else ""
            log(f"epoch {epoch}/{cfg.epochs}: loss {row['loss']:.4f}{ap} ({row['train_s']:.1f} s)")
        _barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if is_main:
        if not metrics:  # resumed after the final epoch: evaluate the saved weights
            last_preds = predict(model, val_data, imgsz=cfg.imgsz, batch=max(cfg.batch, 16), device=device)
            metrics = coco_metrics(val_data.to_coco(), to_coco_results(val_data, last_preds))
        (out / "metrics.json").write_text(json.dumps({k: metrics[k] for k in METRIC_KEYS}, indent=2) + "\n")
        if cfg.plots:
            from .plots import plot_history, plot_predictions

            plot_history(history, out / "curves.png", title=f"{cfg.loss}, seed {cfg.seed}")
            plot_predictions(val_data, last_preds, out / "predictions.png", imgsz=cfg.imgsz)
    _barrier()
    return {k: metrics.get(k, float("nan")) for k in METRIC_KEYS}


def evaluate_checkpoint(
    weights: str | os.PathLike, data: str | None = None, *, skip_bad: bool = False, device: str = "auto"
) -> dict[str, float]:
    """COCO metrics of a saved run on the val split of ``data`` (default: the dataset it was trained on)."""
    ckpt = load_checkpoint(weights)
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
    if data is not None:
        cfg = dataclasses.replace(cfg, data=data)
    cfg = dataclasses.replace(cfg, skip_bad=skip_bad)
    _, val_data = prepare_data(cfg)
    if val_data.class_names != list(ckpt["class_names"]):
        raise ValueError(
            f"{weights}: trained on classes {ckpt['class_names']}, the data has {val_data.class_names}"
        )
    dev = _resolve_device(device, 0)
    model = build_model(len(ckpt["class_names"]), cfg).to(dev)
    model.load_state_dict(ckpt["model"])
    preds = predict(model, val_data, imgsz=cfg.imgsz, device=dev)
    return coco_metrics(val_data.to_coco(), to_coco_results(val_data, preds))
