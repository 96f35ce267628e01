"""What the loss benchmark writes: one :class:`Row` per provider, shape, dtype and mode, their ratios to
``qfocal-fused`` (:func:`_finish_rows`), and the CSV (:func:`write_csv`), markdown report (:func:`write_markdown`)
and bar chart (:func:`write_chart`). The measurement is :mod:`qfocal_lab.bench.losses`'.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .providers import (
    FUSED,
    PROVIDERS,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------------------
# Rows, tables, chart
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    provider: str
    shape: str
    dtype: str
    mode: str  # "fwd" | "fwd+bwd"
    median_ms: float | None = None
    min_ms: float | None = None
    repeats: int = 0
    ratio_to_fused: float | None = None
    extra_peak_mb: float | None = None
    gb_per_s: float | None = None
    status: str = "ok"
    extra: dict = field(default_factory=dict, repr=False)


def _finish_rows(rows: list[Row]) -> None:
    fused = {(r.shape, r.dtype, r.mode): r.median_ms for r in rows if r.provider == FUSED and r.median_ms}
    for r in rows:
        ref = fused.get((r.shape, r.dtype, r.mode))
        if r.median_ms and ref:
            r.ratio_to_fused = r.median_ms / ref
        if r.median_ms and r.provider in (FUSED, "copy"):
            n, c = (int(v) for v in r.shape.split("x"))
            size = torch.empty((), dtype=_DTYPES[r.dtype]).element_size()
            # copy: read + write the logits; fused: read logits and targets (+ write the gradient with bwd)
            n_tensors = 2 if r.provider == "copy" or r.mode == "fwd" else 3
            r.gb_per_s = n * c * size * n_tensors / (r.median_ms * 1e-3) / 1e9


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_csv(rows: list[Row], path: Path) -> None:
    names = [k for k in asdict(rows[0]) if k != "extra"] if rows else list(Row.__dataclass_fields__)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[n for n in names if n != "extra"])
        writer.writeheader()
        for r in rows:
            d = asdict(r)
            d.pop("extra", None)
            writer.writerow(d)


def write_markdown(rows: list[Row], meta: dict, path: Path) -> None:
    lines = [
        "# qfocal loss benchmark",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- device: {meta['device']}; torch {meta['torch']}; python {meta['python']}",
        f"- command: `{meta['command']}`",
        f"- time: median of up to {meta['repeats']} calls after one warm-up (fewer for slow cases, at least 3 or --repeats); "
        "fwd+bwd resets `logits.grad` before every call",
        f"- extra peak memory: {meta['memory']}, one call, above the inputs; includes the gradient",
        "- ratio: time / time of `qfocal-fused` for the same shape, dtype and mode (> 1: slower than fused)",
        "- GB/s: bytes read and written (logits, targets, gradient) / time, for `qfocal-fused` and `copy`",
        "- qfocal providers run with `qfocal.set_value_checks(False)` except `qfocal-fused-checked`",
        "",
    ]
    cases = sorted({(r.shape, r.dtype) for r in rows if r.shape != "-"}, key=lambda c: (-_numel(c[0]), c[1]))
    for shape, dtype in cases:
        lines += [
            f"## {shape} {dtype}",
            "",
            "| provider | fwd ms | fwd+bwd ms | fwd+bwd ratio | fwd peak MB | fwd+bwd peak MB | GB/s | note |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        by_provider: dict[str, dict[str, Row]] = {}
        for r in rows:
            if r.shape == shape and r.dtype == dtype:
                by_provider.setdefault(r.provider, {})[r.mode] = r
        for provider, modes in by_provider.items():
            fwd, both = modes.get("fwd"), modes.get("fwd+bwd")
            notes = "; ".join(sorted({m.status for m in modes.values() if m.status != "ok"}))
            shown = both or fwd
            gbps = shown.gb_per_s if shown else None
            fwd_ms, fwd_mb = (fwd.median_ms, fwd.extra_peak_mb) if fwd else (None, None)
            both_ms, ratio, both_mb = (
                (both.median_ms, both.ratio_to_fused, both.extra_peak_mb) if both else (None, None, None)
            )
            lines.append(
                f"| {provider} | {_fmt(fwd_ms, 2)} | {_fmt(both_ms, 2)} | "
                f"{_fmt(ratio, 2)} | {_fmt(fwd_mb)} | "
                f"{_fmt(both_mb)} | {_fmt(gbps)} | {notes} |"
            )
        lines.append("")
    skipped = [r for r in rows if r.shape == "-"]
    if skipped:
        lines += ["Skipped: " + "; ".join(f"{r.provider} ({r.status})" for r in skipped), ""]
    lines += ["Providers:", ""]
    lines += [f"- `{name}`: {PROVIDERS[name][0]}" for name in dict.fromkeys(r.provider for r in rows)]
    path.write_text("\n".join(lines) + "\n")


def _numel(shape: str) -> int:
    n, c = (int(v) for v in shape.split("x"))
    return n * c


def write_chart(rows: list[Row], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cases = sorted({(r.shape, r.dtype) for r in rows if r.shape != "-"}, key=lambda c: (-_numel(c[0]), c[1]))
    n = max(1, len(cases))
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n + 0.6), squeeze=False)
    for ax, (shape, dtype) in zip(axes[:, 0], cases, strict=False):
        data = [
            (r.provider, r.median_ms)
            for r in rows
            if r.shape == shape and r.dtype == dtype and r.mode == "fwd+bwd" and r.median_ms is not None
        ]
        data.sort(key=lambda d: d[1])
        names = [d[0] for d in data]
        values = [d[1] for d in data]
        colors = ["tab:red" if nm.startswith("qfocal-fused") else "tab:gray" for nm in names]
        ax.barh(names, values, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{shape} {dtype}, forward+backward (median ms, log scale)", fontsize=9)
        ax.tick_params(labelsize=8)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
    fig.suptitle(f"qfocal bench: {meta['device']}, torch {meta['torch']}, {meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
