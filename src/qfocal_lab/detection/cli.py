"""Subcommands of the training harness: ``data synth``, ``train``, ``evaluate``, ``compare`` and ``demo``: the
command functions and their parsers (:func:`register`).

The options the commands share and their checks are :mod:`qfocal_lab.detection.cli_args`'; the presets
(``--preset``, the demo) :mod:`qfocal_lab.detection.presets`'. Their names stay importable from here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from qfocal.cli import (
    CommandError,
    loss_list_arg,
    missing_extras,
    require,
)

from .cli_args import (  # noqa: F401  (moved to cli_args; importable from here)
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_IMGSZ,
    MAX_SEEDS,
    _add_train_args,
    _check_out,
    _config,
    _imgsz,
    _jobs,
    _names,
    _parse_seeds,
    _pretrain_epochs,
    _pretrain_images,
)
from .config import HARNESS_LOSSES, ConfigError, TrainConfig
from .presets import (  # noqa: F401  (moved to presets; importable from here)
    _FCOS_ONLY,
    DEMO,
    DEMO_INIT,
    FCOS_LOSSES,
    PRESETS,
    _apply_preset,
    _preset_for_framework,
    _shipped_backbone,
)

_NEEDS = ("numpy", "PIL", "torchvision", "pycocotools", "yaml", "tqdm", "matplotlib")


def _os_error(exc: OSError) -> str:
    """One line for an OSError: the file it names and its reason."""
    reason = exc.strerror or str(exc).strip() or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename and exc.strerror else reason.splitlines()[0]


def _running(what: str, fn, *args, **kwargs):
    """Run the harness; the failures a user can fix become one-line errors (exit 1): bad data, settings or
    checkpoints, a locked or unwritable output folder, and any OSError (a full disk, an unreadable folder)."""
    require(*_NEEDS, what=what)
    from ..data.records import AnnotationError
    from .executors import ClusterJobError
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
        ClusterJobError,
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
    if args.executor == "submitit":
        message = missing_extras("submitit")
        if message:  # qfocal's table of extras does not know submitit: the cluster extra brings it
            raise CommandError(
                'qfocal compare --executor submitit needs submitit: pip install "qfocal[cluster]"'
            )
    elif args.cluster_folder is not None or args.slurm:
        raise CommandError("--cluster-folder and --slurm: for --executor submitit", usage=True)
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
        executor=args.executor,
        cluster_folder=args.cluster_folder,
        slurm=args.slurm,
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


def demo_config(out: str, *, progress: bool = False) -> TrainConfig:
    """The :data:`DEMO` training settings as a config (its backbone resolved and hash-checked)."""
    keys = set(TrainConfig.__dataclass_fields__)
    settings: dict[str, Any] = {k: v for k, v in DEMO.items() if k in keys}
    settings["init"] = _shipped_backbone("qfocal demo")
    return TrainConfig(data="synthetic", out=out, progress=progress, **settings).validate()


def _cmd_pretrain(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    require(*_NEEDS, what="qfocal pretrain")
    from .backbone import DEMO_BACKBONE_DIGEST, DEMO_PRETRAIN, export_backbone
    from .compare import pretrain_backbone

    settings: dict[str, Any] = {k: v for k, v in DEMO_PRETRAIN.items() if k != "epochs"}
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
    """Add ``data``, ``train``, ``evaluate``, ``compare``, ``pretrain`` and ``demo`` to the ``qfocal`` command
    (:mod:`.commands` defines them)."""
    from .commands import register as register_commands

    register_commands(subparsers)
