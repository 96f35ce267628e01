"""Subcommands of the training harness: ``data synth``, ``train``, ``evaluate``, ``compare`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# The demo: sized to finish (data generation included) within 15 minutes on 2 CPU cores.
DEMO = {
    "synth_images": 450,
    "epochs": 14,
    "imgsz": 128,
    "batch": 16,
    "seeds": (0, 1, 2),
    "losses": ("focal", "qfl", "vfl"),
}


def _add_train_args(p: argparse.ArgumentParser, *, with_loss: bool) -> None:
    from .train import AMP_CHOICES, TrainConfig

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
            choices=("focal", "qfl", "vfl", "gfl"),
            help="classification loss (gfl = QFL plus GFL's box distribution trained with DFL)",
        )
        p.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation and data order")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="square training size, a multiple of 32")
    p.add_argument("--batch", type=int, default=d.batch, help="images per process per step")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--amp",
        default=d.amp,
        choices=AMP_CHOICES,
        help="autocast: auto = bf16 on GPUs (fp16 without bf16) and on CPUs with AMX/AVX512-BF16, else off",
    )
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="CPU threads (0 = auto: torch's default, 1 when other processes already load every core)",
    )
    p.add_argument("--model-size", default=d.model_size, choices=("tiny", "small"))
    p.add_argument(
        "--eval-every", type=int, default=d.eval_every, help="COCO-evaluate every N epochs (and the last)"
    )
    p.add_argument("--synth-images", type=int, default=d.synth_images, help="images of the synthetic set")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip and count bad annotations instead of stopping"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/last.pt (compare: reuse finished runs)"
    )


def _config(args: argparse.Namespace, **overrides):
    from .train import TrainConfig

    return TrainConfig(
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
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
        plots=not args.no_plots,
        **overrides,
    )


def _errors():
    from ..data.records import AnnotationError
    from .train import NonFiniteLossError

    return (AnnotationError, NonFiniteLossError, ValueError)


def _cmd_synth(args: argparse.Namespace) -> int:
    from ..data.synth import generate_dataset

    t = time.perf_counter()
    paths = generate_dataset(
        args.out, images=args.images, seed=args.seed, imgsz=args.imgsz, val_fraction=args.val_fraction
    )
    print(f"wrote {args.images} images to {paths['root']} in {time.perf_counter() - t:.1f} s")
    for key in ("train_json", "val_json", "yaml"):
        print(f"  {key}: {paths[key]}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    try:
        metrics = train(_config(args), resume=args.resume)
    except _errors() as exc:
        print(f"qfocal train: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(args.weights, args.data, skip_bad=args.skip_bad, device=args.device)
    except _errors() as exc:
        print(f"qfocal evaluate: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=2))
    return 0


def _parse_seeds(text: str) -> list[int]:
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or a list (0,4,7), got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least one seed, got {text!r}")
    return list(range(n))


def _parse_losses(text: str) -> list[str]:
    losses = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in losses if s not in ("focal", "qfl", "vfl", "gfl")]
    if bad or not losses:
        raise argparse.ArgumentTypeError(f"expected names from focal, qfl, vfl, gfl, got {text!r}")
    return losses


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    try:
        result = compare(
            _config(args), losses=args.losses, seeds=args.seeds, out=args.out, resume=args.resume
        )
    except _errors() as exc:
        print(f"qfocal compare: error: {exc}", file=sys.stderr)
        return 1
    print(result["table"])
    print(f"\n{args.out}/compare.md, compare.json, compare.png; wall {result['wall_s']:.0f} s")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .compare import compare
    from .train import TrainConfig

    t = time.perf_counter()
    cfg = TrainConfig(
        data="synthetic",
        epochs=DEMO["epochs"],
        imgsz=DEMO["imgsz"],
        batch=DEMO["batch"],
        synth_images=DEMO["synth_images"],
        progress=not args.no_progress,
    )
    print(
        f"qfocal demo: focal vs QFL vs VFL on the embedded synthetic dataset ({DEMO['synth_images']} images), "
        f"{len(DEMO['seeds'])} seeds x {DEMO['epochs']} epochs each, imgsz {DEMO['imgsz']}; output in {args.out}",
        flush=True,
    )
    try:
        compare(cfg, losses=DEMO["losses"], seeds=DEMO["seeds"], out=args.out, resume=args.resume)
    except _errors() as exc:
        print(f"qfocal demo: error: {exc}", file=sys.stderr)
        return 1
    print()
    print((Path(args.out) / "compare.md").read_text())
    print(f"demo finished in {time.perf_counter() - t:.0f} s; plots and per-run results under {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data``, ``train``, ``evaluate``, ``compare`` and ``demo`` to the ``qfocal`` command."""
    p = subparsers.add_parser("data", help="dataset tools (synth: write the embedded synthetic dataset)")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="write the synthetic dataset: PNG images, COCO JSON and YOLO labels")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--images", type=int, default=400, help="total images (a quarter go to val)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--imgsz", type=int, default=256, help="image side in pixels")
    s.add_argument("--val-fraction", type=float, default=0.25)
    s.set_defaults(func=_cmd_synth)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = subparsers.add_parser(
        "train", help="train an FCOS detector with focal, QFL or VFL and COCO-evaluate it"
    )
    _add_train_args(t, with_loss=True)
    t.add_argument(
        "--out", default="runs/train", help="run folder (checkpoint, history.csv, metrics.json, plots)"
    )
    t.set_defaults(func=_cmd_train)

    e = subparsers.add_parser("evaluate", help="COCO-evaluate a checkpoint written by qfocal train")
    e.add_argument("--weights", required=True, help="a last.pt written by qfocal train")
    e.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    e.add_argument("--skip-bad", action="store_true")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_cmd_evaluate)

    c = subparsers.add_parser(
        "compare", help="train each loss with several seeds; table of mean ± std and a plot"
    )
    _add_train_args(c, with_loss=False)
    c.add_argument("--losses", type=_parse_losses, default=["focal", "qfl", "vfl"], help="comma list")
    c.add_argument(
        "--seeds", type=_parse_seeds, default=[0, 1, 2], help="a count (3 = seeds 0,1,2) or a list"
    )
    c.add_argument("--out", default="runs/compare")
    c.set_defaults(func=_cmd_compare)

    d = subparsers.add_parser(
        "demo", help="focal vs QFL vs VFL on the embedded dataset (about 15 min on 2 cores)"
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--resume", action="store_true", help="reuse finished runs of an interrupted demo")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)
