"""The plot of the loss-balance study: :func:`plot_balance` draws a :class:`~qfocal_lab.studies.balance.BalanceLog`
CSV (each term's value, gradient norm and ratio to BCE's along training; matplotlib, imported on use).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


# ----------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------
def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def plot_balance(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    along: Iterable[Mapping[str, Any]] | None = None,
    title: str = "",
) -> Path:
    """Draw :class:`BalanceLog` rows: at their first epoch, each term's value and its gradient-norm ratio to BCE
    (bars, log scale, the band [1/3, 3] shaded; a loss's unbalanced ``"... (gain 1)"`` hatched in its colour); and
    the ratio along training of the rows ``along`` (by default ``rows``, when they span several epochs).

    Returns:
        ``path`` (PNG or any format matplotlib writes).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("rows: expected measurements, got none")
    first = min(r["epoch"] for r in rows)
    groups = list(dict.fromkeys((r["framework"], r["term"]) for r in rows))
    labels = list(dict.fromkeys(r["loss"] for r in rows))
    if along is None:
        along = rows if len({r["epoch"] for r in rows}) > 1 else []
    along = [dict(r) for r in along]
    fig, axes = plt.subplots(1, 3 if along else 2, figsize=(19 if along else 12, 6.5))
    bases = list(dict.fromkeys(label.split(" (")[0] for label in labels))
    colors = {label: plt.cm.tab10(bases.index(label.split(" (")[0]) % 10) for label in labels}
    width = 0.8 / max(len(labels), 1)
    at_first = {(r["framework"], r["term"], r["loss"]): r for r in rows if r["epoch"] == first}
    for ax, key, ylabel in (
        (axes[0], "value", "term value (gains applied)"),
        (axes[1], "grad_ratio", "grad-norm ratio to BCE"),
    ):
        for j, label in enumerate(labels):
            xs, ys = [], []
            for i, group in enumerate(groups):
                r = at_first.get((*group, label))
                if r is not None and isinstance(r[key], (int, float)) and r[key] > 0:
                    xs.append(i + (j - (len(labels) - 1) / 2) * width)
                    ys.append(r[key])
            hatch = "//" if "(gain" in label else None
            fill = "white" if hatch else colors[label]
            ax.bar(xs, ys, width, label=label, color=fill, edgecolor=colors[label], hatch=hatch)
        ax.set_xticks(range(len(groups)), [f"{f}\n{t}" for f, t in groups])
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{'initialisation' if first == 0 else f'epoch {first}'}: {ylabel.split(' (')[0]}")
    axes[1].axhspan(1 / 3, 3, color="green", alpha=0.08, label="within 3x of BCE")
    axes[1].axhline(1, color="black", lw=0.8)
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    if along:
        ax = axes[2]
        styles = ("-", "--", ":", "-.")
        # only the terms a criterion changes (box and DFL stay at BCE's, ratio 1)
        moving = [
            group
            for group in dict.fromkeys((r["framework"], r["term"]) for r in along)
            if any(
                (r["framework"], r["term"]) == group and _number_or_none(r["grad_ratio"]) not in (None, 1.0)
                for r in along
            )
        ]
        along_labels = list(dict.fromkeys(r["loss"] for r in along if r["loss"] != "bce"))
        along_bases = list(dict.fromkeys([*bases, *(label.split(" (")[0] for label in along_labels)]))
        for k, (framework, term) in enumerate(moving):
            for label in along_labels:
                pts = sorted(
                    (r["epoch"], r["grad_ratio"])
                    for r in along
                    if (r["framework"], r["term"], r["loss"]) == (framework, term, label)
                    and (_number_or_none(r["grad_ratio"]) or 0) > 0
                )
                if pts:
                    color = plt.cm.tab10(along_bases.index(label.split(" (")[0]) % 10)
                    width = 1.6 if "(gain" in label else 0.8
                    ax.plot(
                        *zip(*pts, strict=True),
                        styles[k % len(styles)],
                        color=color,
                        lw=width,
                        label=f"{framework} {term}: {label}",
                    )
        ax.axhspan(1 / 3, 3, color="green", alpha=0.08)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("grad-norm ratio to BCE")
        ax.set_title("along training")
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
