"""``qfocal bench``: the side-by-side loss benchmark of :mod:`qfocal.ops.bench` as a subcommand."""

from __future__ import annotations

import argparse
import sys
import warnings


def register(subparsers) -> None:
    """Add ``bench`` to the ``qfocal`` command (see :mod:`qfocal.cli`)."""
    from .bench import build_parser

    parser = subparsers.add_parser(
        "bench",
        help="time and measure the fused losses against YOLOv5, torchvision, Ultralytics, kornia and BCE",
        description="Side-by-side loss benchmark: every provider in one process on the same inputs; writes "
        "NAME.md, NAME.csv and NAME.png into --out-dir.",
    )
    build_parser(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .bench import run

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        rows = run(args, prog="qfocal bench")
    out = args.out_dir / args.name
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.csv')}, {out.with_suffix('.png')}")
    for r in rows:
        if r.status.startswith("error"):
            print(f"  {r.provider} {r.shape} {r.dtype} {r.mode}: {r.status}", file=sys.stderr)
    return 0
