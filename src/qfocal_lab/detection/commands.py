"""The harness's subcommands of ``qfocal`` as the user sees them: ``data synth``, ``train``, ``evaluate``,
``compare``, ``pretrain`` and ``demo``, with their descriptions, examples and options (the commands themselves
are in :mod:`.cli`, the shared option definitions in :mod:`.cli_args`)."""

from __future__ import annotations

import argparse

from qfocal.cli import add_command, device_arg, float_arg, int_arg, seed_arg

from .cli import _cmd_compare, _cmd_demo, _cmd_evaluate, _cmd_pretrain, _cmd_synth, _cmd_train
from .cli_args import (
    MAX_IMAGES,
    _add_train_args,
    _imgsz,
    _jobs,
    _names,
    _parse_seeds,
    _pretrain_epochs,
    _pretrain_images,
)
from .presets import _FCOS_ONLY, PRESETS

__all__ = ["register"]


# compare's options that only the framework compares take (the FCOS-only ones: presets._FCOS_ONLY)
_FRAMEWORK_ONLY = ("model", "term", "weights", "train_arg", "pretrain_images")


def _group_compare_options(parser: argparse.ArgumentParser) -> None:
    """``compare --help`` in three groups: common, FCOS harness only, frameworks only."""
    groups = {
        "common": parser.add_argument_group("common options"),
        "fcos": parser.add_argument_group("FCOS harness options (--framework fcos, the default)"),
        "framework": parser.add_argument_group("framework options (--framework yolov5 / ultralytics)"),
    }
    optionals = parser._optionals
    for action in list(optionals._group_actions):
        if action.dest == "help":
            continue
        kind = (
            "fcos"
            if action.dest in _FCOS_ONLY
            else "framework"
            if action.dest in _FRAMEWORK_ONLY
            else "common"
        )
        optionals._group_actions.remove(action)
        groups[kind]._group_actions.append(action)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data``, ``train``, ``evaluate``, ``compare`` and ``demo`` to the ``qfocal`` command."""
    p = add_command(
        subparsers,
        "data",
        lambda a: (p.print_help(), 2)[1],
        help="dataset tools (synth: write the embedded synthetic dataset)",
        description="Dataset tools. synth writes the embedded synthetic dataset (shapes on textured backgrounds) "
        "as PNG images with COCO and YOLO annotations.",
        example="qfocal data synth --out toy --images 40 --imgsz 128",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    s = add_command(
        dsub,
        "synth",
        _cmd_synth,
        help="write the synthetic dataset: PNG images, COCO JSON and YOLO labels",
        description="Write the embedded synthetic dataset into a new folder (or one it wrote before): PNG images, "
        "COCO JSON and YOLO labels, split into train and val.",
        example=["qfocal data synth --out toy --images 40 --imgsz 128", "qfocal train --data toy --epochs 2"],
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument(
        "--images", type=int_arg(2, MAX_IMAGES), default=400, help="total images (a quarter go to val)"
    )
    s.add_argument(
        "--seed", type=seed_arg, default=0, help="seed of the generator: the same seed, the same set"
    )
    s.add_argument("--imgsz", type=_imgsz, default=256, help="image side in pixels")
    s.add_argument(
        "--val-fraction",
        type=float_arg(0.0, 1.0, low_open=True, high_open=True),
        default=0.25,
        help="the share of the images that go to validation",
    )
    s.add_argument("--difficulty", default="hard", choices=("hard", "easy"), help="see qfocal_lab.data.synth")

    t = add_command(
        subparsers,
        "train",
        _cmd_train,
        help="train an FCOS detector with focal, QFL or VFL and COCO-evaluate it",
        description="Train the harness's small FCOS detector with one classification loss, evaluate it with COCO "
        "metrics (AP, AP50, AP90, the score-IoU correlation), and write a checkpoint, history.csv, metrics.json and "
        "plots into --out. Interrupted runs continue with --resume.",
        example=[
            "qfocal train --loss qfl --epochs 12            # the embedded synthetic dataset",
            "qfocal train --data coco/ --loss gfl --imgsz 512  # your COCO or YOLO dataset",
        ],
    )
    _add_train_args(t, with_loss=True)
    t.add_argument(
        "--out", default="runs/train", help="run folder (checkpoint, history.csv, metrics.json, plots)"
    )

    e = add_command(
        subparsers,
        "evaluate",
        _cmd_evaluate,
        help="COCO-evaluate a checkpoint written by qfocal train",
        description="COCO-evaluate a checkpoint written by qfocal train, on the data it was trained on or on "
        "another dataset with the same classes.",
        example="qfocal evaluate --weights runs/train/last.pt",
    )
    e.add_argument("--weights", required=True, help="a last.pt written by qfocal train")
    e.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    e.add_argument(
        "--skip-bad", action="store_true", help="skip and count bad annotations instead of stopping"
    )
    e.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N")

    c = add_command(
        subparsers,
        "compare",
        _cmd_compare,
        help="train each loss with several seeds (FCOS, YOLOv5 or Ultralytics); table of mean ± std and a plot",
        description="Train every loss with the same seeds and settings, then print a table of mean ± std per "
        "loss, each loss's difference to the first with its 95 % interval, and a verdict; write compare.json and "
        "a plot into --out. The FCOS harness by default; YOLOv5 or Ultralytics with --framework. Interrupted "
        "compares continue with --resume.",
        example=[
            "qfocal compare --losses focal,qfl,gfl --seeds 4 --epochs 6 --jobs 2",
            "qfocal compare --preset ultralytics-finetune --seeds 2",
        ],
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
    c.add_argument("--out", default="runs/compare", help="folder of the compare: runs, compare.json, plots")
    c.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        help="runs trained at once, each in its own process with --threads threads (default 0 = the cores "
        "shared among them); on 2 cores, --jobs 2 does about 1.5x the runs per hour",
    )
    c.add_argument(
        "--executor",
        choices=("local", "submitit"),
        default="local",
        help="where the runs train: local (default: this machine, --jobs processes) or submitit (every "
        "unfinished run submitted as a job: SLURM where it exists, else submitit's local executor; needs "
        'pip install "qfocal[cluster]"); --resume collects the jobs that finished and submits the rest',
    )
    c.add_argument(
        "--cluster-folder",
        default=None,
        metavar="DIR",
        help="with --executor submitit: submitit's folder for job logs and results, and jobs.json with the job "
        "ids (default: OUT/submitit)",
    )
    c.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --executor submitit: a SLURM parameter, passed as slurm_KEY (e.g. --slurm partition=gpu "
        "--slurm time=600); repeat for several (default: none; each job asks for --threads CPUs and 3 days)",
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

    _group_compare_options(c)

    r = add_command(
        subparsers,
        "pretrain",
        _cmd_pretrain,
        help="make the demo's pretrained backbone (a focal FCOS trained 9 epochs on a synthetic set of its own, "
        "fp32, one thread; about 4 min on one core): OUT/backbone.pt and its digest",
        description="Make the backbone the demo starts from: a focal-loss FCOS trained 9 epochs on a synthetic set "
        "of its own (fp32, one thread, about 4 minutes on one core). Writes OUT/backbone.pt and its digest, equal "
        "to the shipped one.",
        example="qfocal pretrain --out runs/pretrain",
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
        description="Does QFL help? Fine-tune focal loss, QFL and GFL heads from the shipped pretrained backbone "
        "on the embedded dataset (4 seeds each, two one-thread runs at a time, fp32), then print the table and "
        "the verdict. Under 10 minutes on 2 CPU cores; the same as qfocal compare --preset demo.",
        example="qfocal demo",
    )
    d.add_argument("--out", default="runs/demo", help="folder of the demo's runs, compare.json and plots")
    d.add_argument("--resume", action="store_true", help="reuse finished runs of an interrupted demo")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
