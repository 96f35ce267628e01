"""``qfocal bench``: the side-by-side loss benchmark of :mod:`qfocal_lab.bench.losses` as a subcommand."""

from __future__ import annotations

import argparse
import sys
import warnings

from qfocal.cli import CommandError, add_command, require


def register(subparsers) -> None:
    """Add ``bench`` to the ``qfocal`` command (see :mod:`qfocal.cli`)."""
    from .losses import build_parser

    parser = add_command(
        subparsers,
        "bench",
        _run,
        help="time and measure the fused losses against YOLOv5, torchvision, Ultralytics, kornia and BCE",
        description="Side-by-side loss benchmark: every provider in one process on the same inputs, medians of "
        "forward and forward+backward, peak memory, ratios to qfocal's fused op; writes NAME.md, NAME.csv and "
        "NAME.png into --out-dir (a scratch folder unless told otherwise).",
        example=[
            "qfocal bench --quick                                  # seconds, into runs/bench",
            "qfocal bench --providers qfocal-fused,yolov5-qfocal,bce --shapes 134400x80",
            "qfocal bench --out-dir benchmarks                     # the published tables",
        ],
    )
    build_parser(parser)


def _run(args: argparse.Namespace) -> int:
    require("tqdm", "matplotlib", what="qfocal bench")
    from .losses import run

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        try:
            rows = run(args, prog="qfocal bench")
        except OSError as exc:  # --out-dir not writable, a file in its way
            raise CommandError(f"cannot write the results: {exc}") from None
    out = args.out_dir / args.name
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.csv')}, {out.with_suffix('.png')}")
    for r in rows:
        if r.status.startswith("error"):
            print(f"  {r.provider} {r.shape} {r.dtype} {r.mode}: {r.status}", file=sys.stderr)
    return 0
