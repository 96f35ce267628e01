"""Subcommands of the training harness: ``data synth``, ``train``, ``evaluate``, ``compare`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qfocal.cli import (
    MAX_SEED,
    CommandError,
    add_command,
    device_arg,
    float_arg,
    int_arg,
    loss_arg,
    loss_list_arg,
    require,
    seed_arg,
    threads_arg,
)

from .config import AMP_CHOICES, HARNESS_LOSSES, MODEL_SIZES, ConfigError, TrainConfig

_NEEDS = ("numpy", "PIL", "torchvision", "pycocotools", "yaml", "tqdm", "matplotlib")
# A preset's init: the backbone shipped for the demo (resolved and hash-checked when the preset is applied).
DEMO_INIT = "<demo backbone>"

# The demo: the benchmark's regime (easy data, a pretrained backbone under every run, box sides started at 1)
# sized to finish within 10 minutes on 2 CPU cores. The backbone ships with the package (`qfocal pretrain` makes
# it); every run is pinned to fp32 and one thread, two at a time, so the numbers do not depend on the machine's
# load or on whether its CPU has bf16.
DEMO = {
    "synth_images": 1300,
    "synth_val": 400,
    "synth_difficulty": "easy",
    "epochs": 6,
    "eval_every": 6,
    "imgsz": 128,
    "batch": 16,
    "box_bias": 1.0,
    "amp": "off",
    "threads": 1,
    "jobs": 2,
    "init": DEMO_INIT,
    "seeds": (0, 1, 2, 3),
    "losses": ("focal", "qfl", "gfl"),
}
FCOS_LOSSES = ("focal", "qfl", "vfl")  # qfocal compare's default losses (framework: FRAMEWORK_LOSSES)
# `qfocal compare --preset NAME`: settings laid under the command line (an option given explicitly wins).
# bench: the regime where the detector localises well enough for the losses' difference in localisation quality
# to decide the ranking (focal reaches > 50 % AP50), sized for 90 minutes on 2 CPU cores (benchmarks/DETECT.md):
# a backbone pretrained once (a focal detector, 9 epochs on a second synthetic set) under every run, since
# features learned from scratch moved whole models by +-2 AP per seed; then 1800 training images seen 6 times,
# 800 validation images evaluated once at the end, box sides started at 1 (no dead-ReLU collapse), two 1-thread
# runs at a time (1.5x the runs per hour), 8 seeds (10 would take about 87 min).
# ultralytics-finetune / yolov5-finetune: the framework compares in the regime users train in (benchmarks/
# FRAMEWORKS.md): one BCE model pretrained 30 epochs on a second, larger synthetic set (2000 images), then every
# variant fine-tuned 10 epochs from it on 800 images (600 train / 200 val), 8 seeds, two 1-thread runs at a time;
# threads pinned (and the frameworks train fp32 on the CPU) so that results do not depend on the load.
_FINETUNE = {
    "synth_difficulty": "easy",
    "synth_images": 800,
    "pretrain_images": 2000,
    "pretrain_epochs": 30,
    "epochs": 10,
    "seeds": tuple(range(8)),
    "jobs": 2,
    "threads": 1,
    "no_plots": True,
}
# YOLOv5 from its yaml with the stock hyp (SGD, lr0 0.01) reached 0.05 % mAP50-95 in a 10-epoch pilot: AdamW at
# lr0 0.001 as Ultralytics' optimizer=auto picks for short runs (benchmarks/FRAMEWORKS.md), for the pretraining
# and the fine-tuning alike.
_YOLOV5_ARGS = ("optimizer=AdamW", "lr0=0.001", "warmup_bias_lr=0")
PRESETS = {
    "demo": DEMO,
    "bench": {
        "synth_images": 2600,
        "synth_val": 800,
        "synth_difficulty": "easy",
        "epochs": 6,
        "eval_every": 6,
        "imgsz": 128,
        "batch": 16,
        "seeds": tuple(range(8)),
        "losses": ("focal", "focal_noctr", "qfl", "vfl", "gfl"),
        "jobs": 2,
        "box_bias": 1.0,
        "pretrain_epochs": 9,
    },
    "yolov5-finetune": {
        "framework": "yolov5",
        **_FINETUNE,
        "pretrain_epochs": 60,
        "losses": ("bce", "focal", "qfl", "vfl"),
        "train_arg": _YOLOV5_ARGS,
    },
    # The pull request's second case: classification with label smoothing 0.1 (objectness BCE). Run it with
    # --weights OUT/pretrain/weights/last.pt of the yolov5-finetune compare: --weights takes the place of the
    # preset's pretraining, and both compares start from the same model.
    "yolov5-cls-finetune": {
        "framework": "yolov5",
        **_FINETUNE,
        "pretrain_epochs": 60,
        "term": "cls",
        "losses": ("bce", "qfl"),
        "train_arg": (*_YOLOV5_ARGS, "label_smoothing=0.1"),
    },
    "ultralytics-finetune": {
        "framework": "ultralytics",
        **_FINETUNE,
        "losses": ("bce", "qfl", "vfl", "qfl-warmup3"),
    },
}


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
    p.add_argument("--epochs", type=_epochs, default=d.epochs)
    p.add_argument("--imgsz", type=_imgsz, default=d.imgsz, help="square training size, a multiple of 32")
    p.add_argument("--batch", type=_batch, default=d.batch, help="images per process per step")
    p.add_argument(
        "--lr", type=float_arg(0.0, 10.0, low_open=True), default=d.lr, help="AdamW peak learning rate"
    )
    p.add_argument("--weight-decay", type=float_arg(0.0, 10.0), default=d.weight_decay)
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
    p.add_argument("--model-size", default=d.model_size, choices=tuple(MODEL_SIZES))
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


def _os_error(exc: OSError) -> str:
    """One line for an OSError: the file it names and its reason."""
    reason = exc.strerror or str(exc).strip() or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename and exc.strerror else reason.splitlines()[0]


def _running(what: str, fn, *args, **kwargs):
    """Run the harness; the failures a user can fix become one-line errors (exit 1): bad data, settings or
    checkpoints, a locked or unwritable output folder, and any OSError (a full disk, an unreadable folder)."""
    require(*_NEEDS, what=what)
    from ..data.records import AnnotationError
    from .train import (
        CheckpointError,
        DistributedError,
        NonFiniteLossError,
        RunLockedError,
        RunOutputError,
    )

    try:
        return fn(*args, **kwargs)
    except (
        AnnotationError,
        NonFiniteLossError,
        ConfigError,
        CheckpointError,
        RunLockedError,
        RunOutputError,
        DistributedError,
    ) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(_os_error(exc)) from None


def _cmd_synth(args: argparse.Namespace) -> int:
    _check_out(args.out)
    require("numpy", "PIL", what="qfocal data synth")
    from ..data.synth import NotSyntheticError, generate_dataset

    t = time.perf_counter()
    try:
        paths = generate_dataset(
            args.out,
            images=args.images,
            seed=args.seed,
            imgsz=args.imgsz,
            val_fraction=args.val_fraction,
            difficulty=args.difficulty,
        )
    except NotSyntheticError as exc:
        raise CommandError(f"--out: {exc}", usage=True) from None
    except OSError as exc:
        raise CommandError(f"cannot write the dataset to {args.out}: {_os_error(exc)}") from None
    print(f"wrote {args.images} images to {paths['root']} in {time.perf_counter() - t:.1f} s")
    for key in ("train_json", "val_json", "yaml"):
        print(f"  {key}: {paths[key]}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from .evaluate import json_ready
    from .train import train

    metrics = _running("qfocal train", train, cfg, resume=args.resume)
    print(json.dumps(json_ready(metrics), indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import json_ready
    from .train import evaluate_checkpoint

    metrics = _running(
        "qfocal evaluate",
        evaluate_checkpoint,
        args.weights,
        args.data,
        skip_bad=args.skip_bad,
        device=args.device,
    )
    print(json.dumps(json_ready(metrics), indent=2))
    return 0


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


def _apply_preset(args: argparse.Namespace) -> None:
    """Lay ``--preset``'s settings under the options left at their defaults."""
    if args.preset is None:
        return
    for key, value in PRESETS[args.preset].items():
        if key in ("pretrain_epochs", "pretrain_images") and getattr(args, "weights", None):
            continue  # --weights says where the runs start: it takes the place of the preset's pretraining
        if key == "init" and value == DEMO_INIT:
            value = _shipped_backbone("qfocal compare")
        if getattr(args, key) == args.parser.get_default(key):
            setattr(args, key, list(value) if isinstance(value, tuple) else value)


def _names(text: str) -> list[str]:
    """``--losses``: a comma list of names, checked once ``--framework`` is known."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated loss names, got {text!r}")
    return names


# Options of the FCOS harness that a framework compare does not take (set: a usage error, never ignored).
_FCOS_ONLY = (
    "lr",
    "weight_decay",
    "amp",
    "model_size",
    "eval_every",
    "ddp_timeout",
    "skip_bad",
    "allow_outside_root",
    "no_progress",
    "synth_val",
    "ema",
    "box_bias",
    "init",
)


def _preset_for_framework(args: argparse.Namespace) -> None:
    """``--preset``: a framework's preset sets ``--framework`` (and refuses another one); an FCOS preset refuses
    ``--framework yolov5|ultralytics``."""
    if args.preset is None:
        return
    wanted = PRESETS[args.preset].get("framework", "fcos")
    if args.framework not in ("fcos", wanted) or (wanted == "fcos" and args.framework != "fcos"):
        owner = "the FCOS harness" if wanted == "fcos" else f"--framework {wanted}"
        raise CommandError(
            f"--preset {args.preset}: a preset of {owner}, not taken with --framework {args.framework}",
            usage=True,
        )
    if wanted != "fcos":
        _apply_preset(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    _preset_for_framework(args)
    if args.framework != "fcos":
        return _compare_framework(args)
    for option, value in (
        ("--term", args.term),
        ("--weights", args.weights),
        ("--pretrain-images", args.pretrain_images or None),
    ):
        if value is not None:
            raise CommandError(
                f"{option}: for --framework yolov5 or ultralytics; the FCOS harness takes --init for a backbone",
                usage=True,
            )
    if args.model is not None:
        raise CommandError(
            "--model: for --framework yolov5 or ultralytics; the FCOS harness takes --model-size", usage=True
        )
    if args.train_arg:
        raise CommandError(
            "--train-arg: for --framework yolov5 or ultralytics; the FCOS harness has its own options",
            usage=True,
        )
    _apply_preset(args)
    try:
        losses = loss_list_arg(HARNESS_LOSSES)(",".join(args.losses or FCOS_LOSSES))
    except argparse.ArgumentTypeError as exc:
        raise CommandError(f"argument --losses: {exc}", usage=True) from None
    cfg = _config(args)
    from .compare import compare

    result = _running(
        "qfocal compare",
        compare,
        cfg,
        losses=losses,
        seeds=args.seeds,
        out=args.out,
        resume=args.resume,
        jobs=args.jobs,
        pretrain_epochs=args.pretrain_epochs,
    )
    print(result["table"])
    print(f"\n{args.out}/compare.md, compare.json, compare.png; wall {result['wall_s']:.0f} s")
    return 0


def _compare_framework(args: argparse.Namespace) -> int:
    """``qfocal compare --framework yolov5|ultralytics``: every argument checked before any training."""
    for key in _FCOS_ONLY:
        if getattr(args, key) != args.parser.get_default(key):
            option = "--" + key.replace("_", "-")
            raise CommandError(
                f"{option}: an option of the FCOS harness, not taken with --framework {args.framework}",
                usage=True,
            )
    cfg = _config(args)
    require(*_NEEDS, args.framework, what=f"qfocal compare --framework {args.framework}")
    from .frameworks import FRAMEWORK_LOSSES, plan_framework_compare, run_framework_compare

    try:
        plan = plan_framework_compare(
            args.framework,
            losses=args.losses or FRAMEWORK_LOSSES,
            seeds=args.seeds,
            data=cfg.data,
            model=args.model,
            term=args.term,
            epochs=cfg.epochs,
            imgsz=cfg.imgsz,
            batch=cfg.batch,
            device=cfg.device,
            threads=cfg.threads,
            jobs=args.jobs,
            pretrain_epochs=args.pretrain_epochs,
            pretrain_images=args.pretrain_images,
            weights=args.weights,
            synth_images=cfg.synth_images,
            synth_seed=cfg.synth_seed,
            synth_difficulty=cfg.synth_difficulty,
            plots=cfg.plots,
            train_args=args.train_arg or (),
            out=cfg.out,
        )
    except ConfigError as exc:
        raise CommandError(str(exc), usage=True) from None
    result = _running("qfocal compare", run_framework_compare, plan, resume=args.resume)
    print(result["table"])
    print(f"\n{args.out}/compare.md, compare.json, compare.png; wall {result['wall_s']:.0f} s")
    return 0


def _shipped_backbone(what: str) -> str:
    """The demo's backbone shipped in the package, hash-checked; a missing, damaged or foreign file: one line."""
    require("numpy", what=what)
    from .backbone import CheckpointError, demo_backbone

    try:
        return demo_backbone()
    except CheckpointError as exc:
        raise CommandError(
            f"the shipped demo backbone: {exc}; reinstall qfocal, or remake it with qfocal pretrain"
        ) from None


def demo_config(out: str, *, progress: bool = False) -> TrainConfig:
    """The :data:`DEMO` training settings as a config (its backbone resolved and hash-checked)."""
    keys = set(TrainConfig.__dataclass_fields__)
    settings = {k: v for k, v in DEMO.items() if k in keys}
    settings["init"] = _shipped_backbone("qfocal demo")
    return TrainConfig(data="synthetic", out=out, progress=progress, **settings).validate()


def _cmd_pretrain(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    require(*_NEEDS, what="qfocal pretrain")
    from .backbone import DEMO_BACKBONE_DIGEST, DEMO_PRETRAIN, export_backbone
    from .compare import pretrain_backbone

    settings = {k: v for k, v in DEMO_PRETRAIN.items() if k != "epochs"}
    cfg = TrainConfig(data="synthetic", progress=not args.no_progress, **settings).validate()
    t = time.perf_counter()
    ckpt = _running(
        "qfocal pretrain", pretrain_backbone, cfg, DEMO_PRETRAIN["epochs"], out, args.resume, print
    )
    dest = out / "backbone.pt"
    digest = _running("qfocal pretrain", export_backbone, ckpt, dest, made_by="qfocal pretrain")
    same = "the same tensors as" if digest == DEMO_BACKBONE_DIGEST else "other tensors than"
    print(
        f"wrote {dest} (digest {digest}) in {time.perf_counter() - t:.0f} s: {same} the shipped demo backbone"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _check_out(args.out)
    t = time.perf_counter()
    require(*_NEEDS, what="qfocal demo")
    from .compare import compare
    from .stats import verdict_lines

    cfg = demo_config(args.out)
    losses, seeds = DEMO["losses"], DEMO["seeds"]
    print(
        f"qfocal demo: {', '.join(losses)} on the embedded synthetic dataset (easy, {DEMO['synth_images']} images, "
        f"{DEMO['synth_val']} for validation), {len(seeds)} seeds x {DEMO['epochs']} epochs each from the shipped "
        f"pretrained backbone, imgsz {DEMO['imgsz']}, fp32, {DEMO['jobs']} one-thread runs at a time; output in "
        f"{args.out}",
        flush=True,
    )
    result = _running(
        "qfocal demo",
        compare,
        cfg,
        losses=losses,
        seeds=seeds,
        out=args.out,
        resume=args.resume,
        jobs=DEMO["jobs"],
    )
    print()
    print((Path(args.out) / "compare.md").read_text())
    deltas = {k: v["delta_vs_baseline"] for k, v in result["summary"].items() if "delta_vs_baseline" in v}
    print("Verdict (COCO AP of the final epoch, paired by seed):")
    for line in verdict_lines(deltas, result["baseline"], "AP"):
        print(f"- {line}")
    facts = result["facts"]
    print(
        f"\nRun facts: {facts['cpu']}, {facts['torch_threads']} thread(s) per run, autocast {facts['autocast']}, "
        f"torch {facts['torch']}."
    )
    print(f"demo finished in {time.perf_counter() - t:.0f} s; plots and per-run results under {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data``, ``train``, ``evaluate``, ``compare`` and ``demo`` to the ``qfocal`` command."""
    p = add_command(
        subparsers,
        "data",
        lambda a: (p.print_help(), 2)[1],
        help="dataset tools (synth: write the embedded synthetic dataset)",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    s = add_command(
        dsub, "synth", _cmd_synth, help="write the synthetic dataset: PNG images, COCO JSON and YOLO labels"
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument(
        "--images", type=int_arg(2, MAX_IMAGES), default=400, help="total images (a quarter go to val)"
    )
    s.add_argument("--seed", type=seed_arg, default=0)
    s.add_argument("--imgsz", type=_imgsz, default=256, help="image side in pixels")
    s.add_argument("--val-fraction", type=float_arg(0.0, 1.0, low_open=True, high_open=True), default=0.25)
    s.add_argument("--difficulty", default="hard", choices=("hard", "easy"), help="see qfocal_lab.data.synth")

    t = add_command(
        subparsers,
        "train",
        _cmd_train,
        help="train an FCOS detector with focal, QFL or VFL and COCO-evaluate it",
    )
    _add_train_args(t, with_loss=True)
    t.add_argument(
        "--out", default="runs/train", help="run folder (checkpoint, history.csv, metrics.json, plots)"
    )

    e = add_command(
        subparsers, "evaluate", _cmd_evaluate, help="COCO-evaluate a checkpoint written by qfocal train"
    )
    e.add_argument("--weights", required=True, help="a last.pt written by qfocal train")
    e.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    e.add_argument("--skip-bad", action="store_true")
    e.add_argument("--device", type=device_arg, default="auto")

    c = add_command(
        subparsers,
        "compare",
        _cmd_compare,
        help="train each loss with several seeds (FCOS, YOLOv5 or Ultralytics); table of mean ± std and a plot",
    )
    _add_train_args(c, with_loss=False)
    c.add_argument(
        "--framework",
        default="fcos",
        choices=("fcos", "yolov5", "ultralytics"),
        help="fcos: qfocal's FCOS harness (COCO APs, AP90, score-IoU); yolov5 / ultralytics: their own trainers "
        "and validation (mAP50, mAP50-95), offline, from the model yaml",
    )
    c.add_argument(
        "--model",
        default=None,
        help="with --framework yolov5 / ultralytics: the model yaml (default yolov5n.yaml / yolov8n.yaml)",
    )
    c.add_argument(
        "--losses",
        type=_names,
        default=None,
        help="comma list; the first is the baseline. FCOS: focal, qfl (= qfocal), vfl (= varifocal), gfl, "
        "focal_noctr (default focal,qfl,vfl). YOLOv5 / Ultralytics: bce, focal, qfl, vfl, each balanced to BCE "
        "(gain auto) or with @GAIN, @1 or -unbalanced = unbalanced, and optionally -warmupK (K epochs of BCE "
        "first, e.g. qfl-warmup3) (default bce,qfl,vfl); they set the term of --term",
    )
    c.add_argument(
        "--term",
        choices=("obj", "cls"),
        default=None,
        help="with --framework yolov5: the term the losses set, obj (objectness, the default; classification "
        "BCE) or cls (classification; objectness BCE; e.g. with --train-arg label_smoothing=0.1). Not taken with "
        "ultralytics (its losses always set the classification term)",
    )
    c.add_argument(
        "--weights",
        default=None,
        metavar="CKPT",
        help="with --framework yolov5 / ultralytics: fine-tune every run from this checkpoint of the framework "
        "(checked before any training; not with --pretrain-epochs)",
    )
    c.add_argument(
        "--train-arg",
        action="append",
        metavar="KEY=VALUE",
        default=None,
        help="with --framework yolov5 / ultralytics, repeatable: a training setting for every run; YOLOv5: a hyp "
        "key (lr0=0.001) or a train.py option (optimizer=AdamW); Ultralytics: an override (optimizer=SGD)",
    )
    c.add_argument(
        "--seeds", type=_parse_seeds, default=[0, 1, 2], help="a count (3 = seeds 0,1,2) or a list"
    )
    c.add_argument("--out", default="runs/compare")
    c.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        help="runs trained at once, each in its own process with --threads threads (default 0 = the cores "
        "shared among them); on 2 cores, --jobs 2 does about 1.5x the runs per hour",
    )
    c.add_argument(
        "--pretrain-epochs",
        type=_pretrain_epochs,
        default=0,
        metavar="N",
        help="first train one model N epochs on a second synthetic set (your training data for --data PATH) "
        "under OUT/pretrain: FCOS a focal-loss detector whose backbone starts every run; YOLOv5 / Ultralytics a "
        "BCE model every run fine-tunes from (default 0: from scratch)",
    )
    c.add_argument(
        "--pretrain-images",
        type=_pretrain_images,
        default=0,
        metavar="N",
        help="with --framework yolov5 / ultralytics and --pretrain-epochs: the images of the second synthetic set "
        "(default 0: as many as --synth-images)",
    )
    c.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="a named configuration: demo (the demo's), bench (the benchmark regime: easy data, a pretrained "
        "backbone, 5 heads, 8 seeds, 2 runs at a time, about 80 min on 2 cores), ultralytics-finetune, "
        "yolov5-finetune or yolov5-cls-finetune (the framework compares fine-tuned from a BCE model pretrained on "
        "a second set; they set --framework; --weights replaces their pretraining); options given explicitly "
        "override it",
    )

    r = add_command(
        subparsers,
        "pretrain",
        _cmd_pretrain,
        help="make the demo's pretrained backbone (a focal FCOS trained 9 epochs on a synthetic set of its own, "
        "fp32, one thread; about 4 min on one core): OUT/backbone.pt and its digest",
    )
    r.add_argument("--out", default="runs/pretrain", help="folder of the pretraining run and backbone.pt")
    r.add_argument("--resume", action="store_true", help="continue an interrupted pretraining")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    d = add_command(
        subparsers,
        "demo",
        _cmd_demo,
        help="focal vs QFL vs GFL fine-tuned from the shipped backbone on the embedded dataset, with the verdict "
        "(under 10 min on 2 cores)",
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--resume", action="store_true", help="reuse finished runs of an interrupted demo")
    d.add_argument("--no-progress", action="store_true")
