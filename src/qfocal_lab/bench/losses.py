"""Side-by-side benchmark of the fused losses against the focal-family losses of other libraries.

Every provider runs in this one process on the same inputs: logits ``(N, C)`` from a normal distribution and
YOLO-like soft targets (about 1 % positives carrying an IoU in (0, 1], 0 elsewhere). For each shape, dtype and
provider it times the forward pass (logits not requiring grad) and forward+backward (``logits.grad`` reset to
None before every call), reports the median, the ratio to ``qfocal-fused`` and the extra peak memory of one
call, and writes a CSV, a markdown report and a bar chart.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation before the call. On the CPU
(Linux), the kernel's resident-set high-water mark: ``/proc/self/clear_refs`` resets ``VmHWM`` to the current
RSS before the call, and glibc is told (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``, set only for the memory pass,
after all timings) to map every buffer of 64 KiB or more fresh and unmap it on free, and ``malloc_trim`` runs
before each call, so each tensor's pages count while it lives and no longer (resolution: about 1 MB). The figure includes the gradient itself (``N x C`` for fwd+bwd).

Here: the options, the inputs, timing and peak memory, and the run over every case. The providers are
:mod:`qfocal_lab.bench.providers`', the rows and what is written from them :mod:`qfocal_lab.bench.report`'s
(their names stay importable from here).

Used by ``benchmarks/bench_losses.py`` and ``qfocal bench``; both take the options of :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from qfocal.cli import device_arg, file_stem_arg, float_arg, int_arg, threads_arg

from .._machine import cpu_model
from .providers import (
    _CUDA_ONLY,
    _FORWARD_ONLY,
    FUSED,
    PROVIDERS,
)
from .report import (
    _DTYPES,
    Row,
    _finish_rows,
    write_chart,
    write_csv,
    write_markdown,
)

DEFAULT_SHAPES = ((134400, 80), (40000, 1203), (4096, 20))
QUICK_SHAPES = ((4096, 20),)
DEFAULT_DTYPES = ("float32", "bfloat16")
_POS_FRACTION = 0.01
_MB = 2.0**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_inputs(shape: tuple[int, int], dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    pos = torch.rand(shape, generator=gen) < _POS_FRACTION
    t = (torch.rand(shape, generator=gen).clamp_min(0.05) * pos).to(device=device, dtype=dtype)
    label = pos.to(device=device, dtype=dtype)
    pos_weight = torch.ones(1, device=device)
    return x, t, label, pos_weight


def _call(fn: Callable, x: Tensor, t: Tensor, label: Tensor, backward: bool) -> None:
    if backward:
        x.grad = None
        fn(x, t, label).backward()
    else:
        with torch.no_grad():
            fn(x, t, label)


def _time(fn: Callable, x, t, label, backward: bool, repeats: int, budget_s: float, device) -> list[float]:
    """Per-call seconds; fewer repeats (at least 3) where one call is slow, so the default run stays short."""
    _sync(device)
    start = time.perf_counter()
    _call(fn, x, t, label, backward)  # warm-up (compiles, caches)
    _sync(device)
    first = time.perf_counter() - start
    inner = 1
    if device.type == "cuda":  # amortise launch latency as a training loop would, sized on a warm call
        start = time.perf_counter()
        _call(fn, x, t, label, backward)
        _sync(device)
        first = time.perf_counter() - start
        inner = max(1, min(50, int(0.02 / max(first, 1e-6))))
    n = max(min(repeats, 3), min(repeats, int(budget_s / max(first, 1e-6))))
    # A call slower than half the budget (big eager cases) warms nothing up that a later call would not also pay
    # (its buffers are mapped afresh each time): count it, and keep the median robust to a compile inside it.
    times = [first] if first > budget_s / 2 and n >= 3 else []
    for _ in range(n - len(times)):
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            _call(fn, x, t, label, backward)
        _sync(device)
        times.append((time.perf_counter() - start) / inner)
    return times


def _read_status() -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024.0
    return values


class _CpuPeak:
    """Resident-set high-water mark of this process around one call (Linux; see the module docstring)."""

    def __init__(self) -> None:
        self.available = False
        self.reason = "needs Linux /proc/self/clear_refs and glibc mallopt"
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL("libc.so.6")
            if (
                libc.mallopt(-3, 64 * 1024) != 1 or libc.mallopt(-1, 128 * 1024) != 1
            ):  # M_MMAP_/M_TRIM_THRESHOLD
                return
            self._trim = libc.malloc_trim
            self._reset()
            _read_status()
        except (OSError, AttributeError, ValueError):
            return
        self.available = True
        self.reason = ""

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    def measure(self, run: Callable[[], None]) -> float:
        # Free heap chunks from before mallopt (the timed calls) would be reused without a page fault: give
        # their pages back first, so a reused chunk counts as it is touched again.
        self._trim(0)
        self._reset()
        base = _read_status()["VmRSS"]
        run()
        return max(0.0, _read_status()["VmHWM"] - base)


def _cuda_peak(run: Callable[[], None], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return max(0.0, torch.cuda.max_memory_allocated(device) - base)


# The largest logits tensor a case may ask for (N x C elements): 2**28 is 1 GiB in fp32, and a case holds
# several such tensors (logits, targets, gradients) per provider.
MAX_ELEMENTS = 2**28


def _parse_shape(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"shape: expected NxC with positive integers (e.g. 134400x80), got {text!r}"
        )
    n, c = int(parts[0]), int(parts[1])
    if n * c > MAX_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"shape: expected at most {MAX_ELEMENTS} elements (N x C), got {text!r} ({n * c} elements)"
        )
    return n, c


def _parse_list(text: str, valid: Sequence[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in valid]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: expected a comma-separated subset of {list(valid)}, got {text!r}"
        )
    return items


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="bench_losses", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--providers",
        type=lambda s: _parse_list(s, list(PROVIDERS), "providers"),
        default=None,
        help=f"comma-separated, by exact name (default: all; qfocal-inductor on CUDA only): {','.join(PROVIDERS)}",
    )
    parser.add_argument(
        "--shapes",
        type=_parse_shape,
        nargs="+",
        default=None,
        metavar="NxC",
        help="logits shapes (default: 134400x80 40000x1203 4096x20; --quick: 4096x20)",
    )
    parser.add_argument(
        "--dtypes",
        type=lambda s: _parse_list(s, list(_DTYPES), "dtypes"),
        default=None,
        help="comma-separated from float32,bfloat16,float16 (default: float32,bfloat16; --quick: float32)",
    )
    parser.add_argument(
        "--repeats",
        type=int_arg(1, 100_000),
        default=None,
        help="timed calls per case (default 7, --quick 3)",
    )
    parser.add_argument(
        "--budget",
        type=float_arg(0.0, 86400.0, low_open=True),
        default=None,
        help="seconds per case before repeats are cut (>= 3 kept)",
    )
    parser.add_argument(
        "--device", type=device_arg, default=None, help="cpu or cuda (default: cuda if available)"
    )
    parser.add_argument(
        "--threads",
        type=threads_arg(1),
        default=None,
        help="torch.set_num_threads for the run (default: torch's)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: small shape, fp32, 3 repeats")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/bench"),
        help="where the files go (default: runs/bench, a scratch folder; --out-dir benchmarks writes the published "
        "tables)",
    )
    parser.add_argument(
        "--name",
        type=file_stem_arg,
        default="RESULTS",
        help="file stem: NAME.md, NAME.csv, NAME.png (default RESULTS)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def command_line(args: argparse.Namespace, prog: str) -> str:
    """The command that reproduces ``args`` (every option spelt out, so it reads the same however it was run)."""
    parts = [prog]
    if args.quick:
        parts.append("--quick")
    if args.providers is not None:
        parts += ["--providers", ",".join(args.providers)]
    if args.shapes:
        parts += ["--shapes", *(f"{n}x{c}" for n, c in args.shapes)]
    if args.dtypes:
        parts += ["--dtypes", ",".join(args.dtypes)]
    for option in ("repeats", "budget", "device", "threads"):
        if getattr(args, option) is not None:
            parts += [f"--{option}", str(getattr(args, option))]
    if args.no_memory:
        parts.append("--no-memory")
    parts += ["--out-dir", str(args.out_dir), "--name", args.name]
    return " ".join([prog, *(shlex.quote(p) for p in parts[1:])])


def _machine(device: torch.device) -> str:
    text = f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def run(args: argparse.Namespace, prog: str = "python benchmarks/bench_losses.py") -> list[Row]:
    """Run the benchmark described by ``args`` (from :func:`build_parser`); write the files; return the rows."""
    from tqdm import tqdm

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected a value >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    dtypes = args.dtypes or (["float32"] if args.quick else list(DEFAULT_DTYPES))
    repeats = args.repeats or (3 if args.quick else 7)
    if repeats < 1:
        raise ValueError(f"--repeats: expected a value >= 1, got {repeats}")
    budget = args.budget if args.budget is not None else (1.0 if args.quick else 4.0)
    command = command_line(args, prog)  # as given, before defaults are filled in
    providers = args.providers or [p for p in PROVIDERS if device.type == "cuda" or p not in _CUDA_ONLY]
    providers = list(providers)
    if FUSED not in providers:
        providers.insert(0, FUSED)  # ratios are to the fused op

    made: dict[str, Callable] = {}
    skipped: dict[str, str] = {}
    for name in providers:
        try:
            made[name] = PROVIDERS[name][1](torch.ones(1, device=device))
        except ImportError as exc:
            skipped[name] = f"not installed ({exc.name or exc})"

    rows: list[Row] = []
    cases = [(s, d) for s in shapes for d in dtypes]
    # Compile every qfocal graph first, so that no timing runs beside Inductor's compile workers
    for shape, dtype_name in cases:
        x, t, label, pos_weight = _make_inputs(shape, _DTYPES[dtype_name], device)
        for name in made:
            if name.startswith("qfocal-") and name != "qfocal-reference":
                fn = PROVIDERS[name][1](pos_weight)
                for backward in (False, True):
                    with contextlib.suppress(Exception):  # reported by the timed pass
                        _call(fn, x.detach().requires_grad_(backward), t, label, backward)
        del x, t, label
    total = sum(1 if p in _FORWARD_ONLY else 2 for p in made) * len(cases)
    bar = tqdm(
        total=total * (1 if args.no_memory else 2), desc="bench", unit="case", disable=args.no_progress
    )
    for shape, dtype_name in cases:
        dtype = _DTYPES[dtype_name]
        x, t, label, pos_weight = _make_inputs(shape, dtype, device)
        for name in made:
            fn = PROVIDERS[name][1](pos_weight)
            for backward in (False,) if name in _FORWARD_ONLY else (False, True):
                row = Row(name, f"{shape[0]}x{shape[1]}", dtype_name, "fwd+bwd" if backward else "fwd")
                bar.set_postfix_str(f"{name} {row.shape} {dtype_name} {row.mode}")
                xin = x.detach().requires_grad_(backward)
                try:
                    times = _time(fn, xin, t, label, backward, repeats, budget, device)
                    row.median_ms = statistics.median(times) * 1e3
                    row.min_ms = min(times) * 1e3
                    row.repeats = len(times)
                except Exception as exc:  # a provider that cannot run this case is reported, not fatal
                    row.status = (
                        f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                    )
                rows.append(row)
                bar.update(1)
        del x, t, label

    if not args.no_memory:
        peak = _CpuPeak() if device.type == "cpu" else None
        for shape, dtype_name in cases:
            x, t, label, pos_weight = _make_inputs(shape, _DTYPES[dtype_name], device)
            for row in rows:
                if row.shape != f"{shape[0]}x{shape[1]}" or row.dtype != dtype_name:
                    continue
                bar.set_postfix_str(f"memory {row.provider} {row.shape} {row.dtype} {row.mode}")
                if row.status == "ok":
                    fn = PROVIDERS[row.provider][1](pos_weight)
                    backward = row.mode == "fwd+bwd"
                    xin = x.detach().requires_grad_(backward)

                    def once(fn=fn, xin=xin, t=t, label=label, backward=backward) -> None:
                        _call(fn, xin, t, label, backward)
                        _sync(device)

                    if device.type == "cuda":
                        xin.grad = None
                        row.extra_peak_mb = _cuda_peak(once, device) / _MB
                    elif peak is not None and peak.available:
                        xin.grad = None
                        row.extra_peak_mb = peak.measure(once) / _MB
                    del xin
                bar.update(1)
            del x, t, label
    bar.close()

    _finish_rows(rows)
    for name, reason in skipped.items():
        rows.append(Row(name, "-", "-", "-", status=f"skipped: {reason}"))
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(device),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": command,
        "repeats": repeats,
        "memory": "off"
        if args.no_memory
        else (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "RSS high-water (clear_refs + VmHWM)"
        ),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / args.name
    write_csv(rows, stem.with_suffix(".csv"))
    write_markdown(rows, meta, stem.with_suffix(".md"))
    write_chart(rows, meta, stem.with_suffix(".png"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/bench_losses.py ...``: the same as ``qfocal bench ...``."""
    from qfocal.cli import main as qfocal_main

    return qfocal_main(["bench", *(sys.argv[1:] if argv is None else argv)])
