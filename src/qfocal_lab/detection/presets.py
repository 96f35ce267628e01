"""The presets of ``qfocal compare --preset`` and ``qfocal demo``: their settings (:data:`PRESETS`, :data:`DEMO`),
the shipped demo backbone they start from, and how a preset is laid under the options given on the command line
(an option given explicitly wins; a framework's preset sets ``--framework``).
"""

from __future__ import annotations

import argparse
from typing import Any

from qfocal.cli import (
    CommandError,
    require,
)

# A preset's init: the backbone shipped for the demo (resolved and hash-checked when the preset is applied).
DEMO_INIT = "<demo backbone>"
# The demo: the benchmark's regime (easy data, a pretrained backbone under every run, box sides started at 1)
# sized to finish within 10 minutes on 2 CPU cores. The backbone ships with the package (`qfocal pretrain` makes
# it); every run is pinned to fp32 and one thread, two at a time, so the numbers do not depend on the machine's
# load or on whether its CPU has bf16.
DEMO: dict[str, Any] = {
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
    "executor",
    "cluster_folder",
    "slurm",
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
