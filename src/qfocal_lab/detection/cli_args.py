"""The options the harness's commands share: their bounds (:data:`MAX_EPOCHS` ...), the training options of
``qfocal train`` and ``qfocal compare`` (:func:`_add_train_args`) and their reading into a
:class:`~qfocal_lab.detection.config.TrainConfig`, ``--out`` and ``--seeds`` checks, loss-name lists.

The commands themselves and their parsers are :mod:`qfocal_lab.detection.cli`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qfocal.cli import (
    MAX_SEED,
    CommandError,
    device_arg,
    float_arg,
    int_arg,
    loss_arg,
    seed_arg,
    threads_arg,
)

from .config import AMP_CHOICES, HARNESS_LOSSES, MODEL_SIZES, ConfigError, TrainConfig

# Bounds of the numeric options (shared argparse types of qfocal.cli): generous for real use, and refusing the
# values that would run for ever, allocate without end, or overflow a generator.
MAX_EPOCHS = 10_000
MAX_IMGSZ = 4096
MAX_BATCH = 4096
MAX_IMAGES = 10_000_000
MAX_SEEDS = 1000  # runs of one compare
_epochs = int_arg(1, MAX_EPOCHS)
_imgsz = int_arg(32, MAX_IMGSZ)
_batch = int_arg(1, MAX_BATCH)
_images = int_arg(1, MAX_IMAGES)
_val_images = int_arg(0, MAX_IMAGES)
_jobs = int_arg(1, 64)
_pretrain_epochs = int_arg(0, MAX_EPOCHS)
_pretrain_images = int_arg(0, MAX_IMAGES)
_decay = float_arg(0.0, 1.0, high_open=True)


def _add_train_args(p: argparse.ArgumentParser, *, with_loss: bool) -> None:
    d = TrainConfig()
    p.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (the embedded dataset, generated under OUT/data), a YOLO data yaml, or a folder in COCO "
        "(annotations/instances_{train,val}.json) or YOLO (data.yaml) layout",
    )
    if with_loss:
        p.add_argument(
            "--loss",
            default=d.loss,
            type=loss_arg(HARNESS_LOSSES),
            help="classification loss: focal, qfl (= qfocal), vfl (= varifocal), or gfl (QFL plus GFL's box "
            "distribution trained with DFL)",
        )
        p.add_argument("--seed", type=seed_arg, default=d.seed, help="seed of initialisation and data order")
    p.add_argument("--epochs", type=_epochs, default=d.epochs, help="passes over the training images")
    p.add_argument("--imgsz", type=_imgsz, default=d.imgsz, help="square training size, a multiple of 32")
    p.add_argument("--batch", type=_batch, default=d.batch, help="images per process per step")
    p.add_argument(
        "--lr", type=float_arg(0.0, 10.0, low_open=True), default=d.lr, help="AdamW peak learning rate"
    )
    p.add_argument(
        "--weight-decay", type=float_arg(0.0, 10.0), default=d.weight_decay, help="AdamW weight decay"
    )
    p.add_argument(
        "--amp",
        default=d.amp,
        choices=AMP_CHOICES,
        help="autocast: auto = bf16 on GPUs (fp16 without bf16) and on CPUs with AMX/AVX512-BF16, else off",
    )
    p.add_argument("--device", type=device_arg, default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--threads",
        type=threads_arg(0),
        default=d.threads,
        help="CPU threads (0 = auto: torch's default, 1 when other processes already load every core)",
    )
    p.add_argument(
        "--model-size",
        default=d.model_size,
        choices=tuple(MODEL_SIZES),
        help="the FCOS's width: tiny (backbone 16-128 channels, 2 head convs) or small (24-256, 3 head convs)",
    )
    p.add_argument(
        "--ddp-timeout",
        type=float_arg(0.0, 7 * 86400.0, low_open=True),
        default=d.ddp_timeout,
        help="seconds a DDP process waits for the others before the run stops with an error naming it",
    )
    p.add_argument(
        "--eval-every",
        type=_epochs,
        default=d.eval_every,
        help="COCO-evaluate every N epochs (and the last)",
    )
    p.add_argument("--synth-images", type=_images, default=d.synth_images, help="images of the synthetic set")
    p.add_argument(
        "--synth-val",
        type=_val_images,
        default=d.synth_val,
        help="of the synthetic set's images, how many go to validation (default 0: a quarter); a larger split "
        "measures AP with less noise",
    )
    p.add_argument(
        "--ema",
        type=_decay,
        default=d.ema_decay,
        metavar="DECAY",
        help="evaluate an exponential moving average of the weights with this decay per step, e.g. 0.99 "
        "(default 0: the weights themselves)",
    )
    p.add_argument(
        "--box-bias",
        type=float_arg(-100.0, 100.0),
        default=d.box_bias,
        help="initial bias of the box-side outputs (default 0, torchvision's; 1 starts them at one anchor size, "
        "away from the dead side of their ReLU; no effect on gfl)",
    )
    p.add_argument(
        "--init",
        default=d.init,
        metavar="CHECKPOINT",
        help="start the backbone from this qfocal checkpoint's (a pretrained backbone; FPN and head from "
        "scratch); default: all from scratch",
    )
    p.add_argument(
        "--synth-difficulty",
        default=d.synth_difficulty,
        choices=("hard", "easy"),
        help="the synthetic set: hard (small objects, clutter, blur) or easy (larger objects, little clutter)",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip and count bad annotations instead of stopping"
    )
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read image paths that leave the dataset folder (absolute, or through ..); refused by default",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/last.pt (compare: reuse finished runs)"
    )


def _config(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The run's config from the command line, validated before any expensive work (usage errors: exit 2)."""
    if args.amp == "fp16" and (args.device == "cpu" or not _cuda_available()):
        raise CommandError("--amp fp16: fp16 autocast is for CUDA; use bf16 or off on the CPU", usage=True)
    if args.init and not Path(args.init).is_file():
        raise CommandError(
            f"--init: expected a qfocal checkpoint file, got {args.init!r} (no such file)", usage=True
        )
    _check_out(args.out)
    cfg = TrainConfig(
        data=args.data,
        loss=getattr(args, "loss", "focal"),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        seed=getattr(args, "seed", 0),
        out=args.out,
        lr=args.lr,
        weight_decay=args.weight_decay,
        amp=args.amp,
        device=args.device,
        model_size=args.model_size,
        threads=args.threads,
        eval_every=args.eval_every,
        synth_images=args.synth_images,
        synth_difficulty=args.synth_difficulty,
        synth_val=args.synth_val,
        ema_decay=args.ema,
        box_bias=args.box_bias,
        init=args.init,
        ddp_timeout=args.ddp_timeout,
        allow_outside_root=args.allow_outside_root,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
        plots=not args.no_plots,
        **overrides,
    )
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise CommandError(str(exc), usage=True) from None


def _check_out(text: str) -> Path:
    """``--out`` as a path, refused at once (exit 2) when it is an existing file or a name the file system cannot
    hold (too long); whether it can be written is checked before training (``check_output_dir``, exit 1)."""
    out = Path(text)
    try:
        is_file = out.exists() and not out.is_dir()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CommandError(
            f"--out: cannot use {text[:80]!r}{'...' if len(text) > 80 else ''} ({reason})", usage=True
        ) from None
    if is_file:
        raise CommandError(f"--out: expected a folder, got the existing file {out}", usage=True)
    return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _parse_seeds(text: str) -> list[int]:
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            n = int(text)
            if not 1 <= n <= MAX_SEEDS:
                raise argparse.ArgumentTypeError(
                    f"expected a count of seeds in [1, {MAX_SEEDS}], got {text!r}"
                )
            seeds = list(range(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or a list (0,4,7), got {text!r}") from None
    if len(seeds) > MAX_SEEDS or any(not 0 <= s <= MAX_SEED for s in seeds):
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_SEEDS} seeds, each in [0, {MAX_SEED}], got {text!r}"
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct seeds (repeats are not independent runs), got {text!r}"
        )
    return seeds


def _names(text: str) -> list[str]:
    """``--losses``: a comma list of names, checked once ``--framework`` is known."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated loss names, got {text!r}")
    return names
