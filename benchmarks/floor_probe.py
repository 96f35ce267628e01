"""How far the fused QFL forward+backward is from the floor: a compiled, fused BCE loss and gradient.

The floor is the cheapest thing a focal-family loss could cost: ``torch.compile`` of one function that returns
BCE-with-logits (mean, stable form, the same ``pos_weight``) and its gradient ``d loss / d logits`` from one
read of the logits and targets. The fused provider is the user's call: ``qfocal.quality_focal_loss`` in its
YOLOv5 form (``beta=1.5, alpha=0.25, pos_weight``, backend ``inductor``) and ``.backward()``, with the value checks
on (the default) and off, and with the gradient norms of the ``"auto"`` gain (:func:`qfocal.ops.capture_grad_norms`,
checks on). Inputs are those of ``benchmarks/bench_losses.py`` (normal logits, 1 % positives with an IoU target).
All providers run in this one process, round by round in a shuffled order, so that a load that comes and goes
hits each alike; each call is timed from its inputs to its gradient (freeing the gradient, the same for all and
of a cost that varies with what ran before, is left out); the report gives each provider's median and the ratio
of the medians to the floor. Then, unless ``--no-memory``, each
provider's extra peak memory over one call (resident-set high-water mark, as ``benchmarks/bench_losses.py``
measures it; the gradient itself included).

    python benchmarks/floor_probe.py                            # both shapes, 2 threads, 15 rounds
    python benchmarks/floor_probe.py --shapes 134400x80 --rounds 31 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import statistics
import sys
import time

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch

import qfocal
from qfocal.ops import capture_grad_norms
from qfocal_lab._machine import cpu_model
from qfocal_lab.bench.losses import _CpuPeak

SHAPES = ((134400, 80), (40000, 1203))


def _bce_and_grad(x: torch.Tensor, t: torch.Tensor, pos_weight: torch.Tensor):
    """Mean BCE with logits (stable form) and its gradient in one pass: the floor's compiled body."""
    e = torch.exp(-x.abs())
    log1p_e = torch.log1p(e)
    w_pos = pos_weight * t
    loss = w_pos * (torch.clamp(-x, min=0.0) + log1p_e) + (1.0 - t) * (torch.clamp(x, min=0.0) + log1p_e)
    p = torch.sigmoid(x)
    grad = ((1.0 - t) * p - w_pos * (1.0 - p)) / x.numel()
    return loss.mean(), grad


def _inputs(shape: tuple[int, int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    pos = torch.rand(shape, generator=gen) < 0.01
    t = torch.rand(shape, generator=gen).clamp_min(0.05) * pos
    return x, t, torch.ones(1)


def _providers(x, t, pos_weight):
    """name -> a call that returns what holds its gradient. The caller frees it after the clock stops: freeing a
    buffer this size (unmapping it) costs the same for all, and its time varies with what ran before."""
    floor = torch.compile(_bce_and_grad, dynamic=False, fullgraph=True)

    def fused(checks: bool, norms: bool = False):
        def run():
            with (
                qfocal.value_checks(checks),
                qfocal.backend("inductor"),
                capture_grad_norms() if norms else contextlib.nullcontext() as records,
            ):
                loss = qfocal.quality_focal_loss(x, t, beta=1.5, alpha=0.25, pos_weight=pos_weight)
            loss.backward()
            if norms:
                records[0].own_sq.item()  # the norms as the gain reads them
            return x.grad

        return run

    return {
        "floor": lambda: floor(x, t, pos_weight),
        "fused-checks-on": fused(True),
        "fused-checks-off": fused(False),
        "fused-norms-checks-on": fused(True, norms=True),
    }


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        n, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxC (e.g. 134400x80), got {text!r}") from None
    if n <= 0 or c <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return n, c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", type=_parse_shape, nargs="+", default=list(SHAPES), help="NxC shapes (default: both)"
    )
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per provider (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads: expected values >= 1")
    torch.set_num_threads(args.threads)
    print(
        f"# {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}, fp32, medians of {args.rounds} interleaved rounds"
    )
    print(
        f"# {' '.join(['python', 'benchmarks/floor_probe.py', *(argv if argv is not None else sys.argv[1:])])}"
    )
    rng = random.Random(0)
    inputs = {shape: _inputs(shape) for shape in args.shapes}
    rows = []
    for shape, (x, t, pos_weight) in inputs.items():
        x.requires_grad_(True)
        runs = _providers(x, t, pos_weight)
        for run in runs.values():  # compile and warm up (twice: the first call may compile)
            for _ in range(2):
                x.grad = None
                run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name in rng.sample(list(runs), len(runs)):
                x.grad = None
                start = time.perf_counter()
                result = runs[name]()
                times[name].append(time.perf_counter() - start)
                del result
        medians = {name: statistics.median(v) for name, v in times.items()}
        rows.append((shape, runs, medians))
    peaks: dict = {}
    peak = None if args.no_memory else _CpuPeak()  # after every timing: it changes malloc's settings
    if peak is not None and peak.available:
        for shape, runs, _ in rows:
            x = inputs[shape][0]
            for name, run in runs.items():
                x.grad = None  # the previous call's gradient is not part of this one
                peaks[shape, name] = peak.measure(run) / 2.0**20
            x.grad = None
    grad_mb = {shape: inputs[shape][0].numel() * 4 / 2.0**20 for shape in args.shapes}
    print("| shape | provider | median ms | ratio to floor | extra peak MB (gradient: MB) |")
    print("|---|---|---:|---:|---:|")
    for shape, _, medians in rows:
        for name, median in medians.items():
            ratio = median / medians["floor"]
            mem = f"{peaks[shape, name]:.1f} ({grad_mb[shape]:.1f})" if (shape, name) in peaks else "-"
            print(f"| {shape[0]}x{shape[1]} | {name} | {median * 1e3:.2f} | {ratio:.2f} | {mem} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
