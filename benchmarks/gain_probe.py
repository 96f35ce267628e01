"""What the "auto" gain costs per call: a criterion with a fixed gain against the same with gain "auto".

The criterion is the one Ultralytics' classification term runs with ``cls_loss="qfl"``
(:class:`qfocal.integrations.ultralytics`'s elementwise criterion): ``QualityFocalLoss(reduction="none")`` on
``(B, anchors, classes)`` fp32 logits, summed, forward and backward, matched to ``BCEWithLogitsLoss(reduction="none")``.
Providers, all in this one process, interleaved round by round, medians:

- ``fixed``: ``loss(pred, target) * 1.0`` (gain 1);
- ``auto``: :func:`qfocal.integrations.balance.loss_and_gain`, the norms from the fused op's own pass;
- ``auto-matched``: ``loss * matched_gain(loss, bce, pred, target)``, the rule evaluated again on a copy (the
  integrations' path before issue 23, and still the fallback).

Backend ``inductor`` (what ``"auto"`` runs at this size once its warm-up is over; ``--backend reference`` shows
the fallback's cost everywhere).

    python benchmarks/gain_probe.py                          # 16x8400x80, 1 thread, 7 rounds
    python benchmarks/gain_probe.py --shape 16x8400x80 --threads 1 --rounds 7 --backend inductor
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from torch import nn

import qfocal
from qfocal.integrations.balance import loss_and_gain, matched_gain
from qfocal_lab._machine import cpu_model


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxAxC (e.g. 16x8400x80), got {text!r}") from None
    if not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", type=_shape, default=(16, 8400, 80), help="logits shape (default 16x8400x80)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per provider (default 7)")
    parser.add_argument("--backend", default="inductor", help="qfocal backend (default inductor)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads: expected values >= 1")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(args.shape, generator=gen)
    target = torch.rand(args.shape, generator=gen) * (torch.rand(args.shape, generator=gen) < 0.01)
    loss, bce = qfocal.QualityFocalLoss(reduction="none"), nn.BCEWithLogitsLoss(reduction="none")

    def run(kind: str):
        def once() -> float:
            leaf = pred.clone().requires_grad_()  # a fresh leaf each call, as a training step's head output
            start = time.perf_counter()
            with qfocal.backend(args.backend):
                if kind == "fixed":
                    value, gain = loss(leaf, target), 1.0
                elif kind == "auto":
                    value, gain = loss_and_gain(loss, bce, leaf, target)
                else:
                    value = loss(leaf, target)
                    gain = matched_gain(loss, bce, leaf, target)
                (value * gain).sum().backward()
            return time.perf_counter() - start

        return once

    runs = {name: run(name) for name in ("fixed", "auto", "auto-matched")}
    for once in runs.values():  # compile and warm up
        once()
        once()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, once in runs.items():
            times[name].append(once())
    medians = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"# {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"fp32 {'x'.join(map(str, args.shape))}, backend {args.backend}, medians of {args.rounds} interleaved rounds"
    )
    print(
        f"# {' '.join(['python', 'benchmarks/gain_probe.py', *(argv if argv is not None else sys.argv[1:])])}"
    )
    print("| provider | median s per call (fwd+bwd) | ratio to fixed |")
    print("|---|---:|---:|")
    for name, median in medians.items():
        print(f"| {name} | {median:.3f} | {median / medians['fixed']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
