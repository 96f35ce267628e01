"""``qfocal table`` and ``qfocal plot``: the comparison in YOLOv5's "Add QFocalLoss()" pull request of BCE, focal, QFL and VFL, in numbers and
in a picture.

The defaults reproduce the two tables of YOLOv5's "Add QFocalLoss()" pull request: the printed probabilities
there are ``sigmoid`` of the logits below, and the losses are YOLOv5's ``FocalLoss`` and ``QFocalLoss`` with
their defaults (gamma = 1.5, alpha = 0.25).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._cli import ArgumentParser, CommandError, add_command, float_arg, require
from .functional import quality_focal_loss, sigmoid_focal_loss, varifocal_loss

# The seed's second table (its first differs only in the last row: targets 1, 0, 0 and logits 1.5, 2, -1.4).
SEED_TARGETS = ((0.6225, 0.0, 0.0), (0.9, 0.0, 0.0), (0.5, 1.0, 0.0))
SEED_LOGITS = ((0.5, -1.0, -2.0), (1.25, 0.0, -1.25), (0.0, 2.0, -1.4))
SEED1_TARGETS = ((0.6225, 0.0, 0.0), (0.9, 0.0, 0.0), (1.0, 0.0, 0.0))
SEED1_LOGITS = ((0.5, -1.0, -2.0), (1.25, 0.0, -1.25), (1.5, 2.0, -1.4))


def _matrix(text: str, name: str) -> Tensor:
    """Parse ``"0.6,0,0;0.9,0,0"`` (rows separated by ``;``) into a float32 matrix."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.strip().split(";") if row.strip()]
    except ValueError:
        raise CommandError(
            f"--{name}: expected numbers like '0.6,0,0;0.9,0,0', got {text!r}", usage=True
        ) from None
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise CommandError(
            f"--{name}: expected rows of equal length separated by ';', got {text!r}", usage=True
        )
    values = torch.tensor(rows, dtype=torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise CommandError(f"--{name}: expected finite numbers, got {text!r}", usage=True)
    return values


def seed_losses(
    logits: Tensor, targets: Tensor, *, gamma: float = 1.5, alpha: float = 0.25
) -> dict[str, Tensor]:
    """The elementwise losses YOLOv5's "Add QFocalLoss()" pull request compares, plus VFL (defaults alpha 0.75, gamma 2)."""
    return {
        "normal_loss (BCE)": F.binary_cross_entropy_with_logits(logits, targets, reduction="none"),
        f"focal_loss (gamma={gamma}, alpha={alpha})": sigmoid_focal_loss(
            logits, targets, gamma=gamma, alpha=alpha, reduction="none"
        ),
        f"qfocal_loss (beta={gamma}, alpha={alpha})": quality_focal_loss(
            logits, targets, beta=gamma, alpha=alpha, reduction="none"
        ),
        "varifocal_loss (alpha=0.75, gamma=2)": varifocal_loss(logits, targets, reduction="none"),
    }


def _format(t: Tensor) -> str:
    """Print like torch does: scientific notation for the whole matrix when its magnitudes span > 1000x."""
    nonzero = t.abs()[t != 0]
    sci = bool(nonzero.numel()) and (nonzero.min() < 1e-4 or nonzero.max() / nonzero.min() > 1e3)
    fmt = "{:.4e}" if sci else "{:.4f}"
    return "\n".join("  [" + ", ".join(f"{fmt.format(v):>10}" for v in row) + "]" for row in t.tolist())


def render_table(logits: Tensor, targets: Tensor, *, gamma: float, alpha: float) -> str:
    out = ["targets:", _format(targets), "pred_prob:", _format(torch.sigmoid(logits))]
    for name, value in seed_losses(logits, targets, gamma=gamma, alpha=alpha).items():
        out += [f"{name}:", _format(value)]
    return "\n".join(out)


def _cmd_table(args: argparse.Namespace) -> int:
    if args.targets is None and args.logits is None and args.probs is None:
        targets, logits = torch.tensor(SEED_TARGETS), torch.tensor(SEED_LOGITS)
    else:
        if args.targets is None:
            raise CommandError("--targets is required with --logits or --probs", usage=True)
        if (args.logits is None) == (args.probs is None):
            raise CommandError("give exactly one of --logits and --probs", usage=True)
        targets = _matrix(args.targets, "targets")
        if not bool(((targets >= 0) & (targets <= 1)).all()):
            raise CommandError(f"--targets: expected values in [0, 1], got {args.targets!r}", usage=True)
        if args.probs is not None:
            probs = _matrix(args.probs, "probs")
            if not bool(((probs > 0) & (probs < 1)).all()):
                raise CommandError(
                    f"--probs: expected values in (0, 1) exclusive, got {args.probs!r}", usage=True
                )
            logits = torch.logit(probs.double()).float()
        else:
            logits = _matrix(args.logits, "logits")
        if logits.shape != targets.shape:
            raise CommandError(
                f"expected --targets and the predictions to have one shape, "
                f"got {tuple(targets.shape)} and {tuple(logits.shape)}",
                usage=True,
            )
    _check_gamma_alpha(args)
    print(render_table(logits, targets, gamma=args.gamma, alpha=args.alpha))
    return 0


def plot_losses(
    out: str,
    *,
    targets: Sequence[float] = (0.0, 0.5, 0.9, 1.0),
    gamma: float = 2.0,
    alpha: float | None = None,
) -> str:
    """Loss against predicted probability, one panel per soft target: BCE, focal, QFL and VFL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = torch.linspace(1e-4, 1 - 1e-4, 999, dtype=torch.float64)
    x = torch.logit(p)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), sharey=True)
    axes = [axes] if len(targets) == 1 else list(axes)
    for ax, t in zip(axes, targets, strict=True):
        tt = torch.full_like(x, t)
        curves = {
            "BCE": F.binary_cross_entropy_with_logits(x, tt, reduction="none"),
            f"focal (gamma={gamma})": sigmoid_focal_loss(x, tt, gamma=gamma, alpha=alpha, reduction="none"),
            f"QFL (beta={gamma})": quality_focal_loss(x, tt, beta=gamma, alpha=alpha, reduction="none"),
            "VFL (alpha=0.75)": varifocal_loss(x, tt, gamma=gamma, reduction="none"),
        }
        # Dashed and dotted styles keep curves visible where two losses coincide (hard targets).
        for (name, y), style in zip(curves.items(), ("-", "--", "-", ":"), strict=True):
            ax.plot(p.numpy(), y.numpy(), style, lw=2 if style == "-" else 1.6, label=name)
        ax.axvline(t, color="grey", ls=":", lw=1)
        ax.set_title(f"target t = {t:g}")
        ax.set_xlabel("predicted probability sigmoid(x)")
        ax.set_ylim(0, 2.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper center", fontsize=8)
    fig.suptitle("Soft targets: only QFL is zero where the prediction equals the target (dotted line)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _check_gamma_alpha(args: argparse.Namespace) -> None:
    if not 0.0 <= args.gamma < float("inf"):
        raise CommandError(f"--gamma: expected a finite value >= 0, got {args.gamma}", usage=True)
    alpha = getattr(args, "alpha", 0.0)
    if not 0.0 <= alpha <= 1.0:
        raise CommandError(f"--alpha: expected a value in [0, 1], got {alpha}", usage=True)


def _cmd_plot(args: argparse.Namespace) -> int:
    try:
        targets = tuple(float(v) for v in args.targets.split(","))
    except ValueError:
        raise CommandError(
            f"--targets: expected numbers like 0,0.5,0.9,1, got {args.targets!r}", usage=True
        ) from None
    if not targets or not all(0.0 <= t <= 1.0 for t in targets):
        raise CommandError(f"--targets: expected values in [0, 1], got {args.targets!r}", usage=True)
    _check_gamma_alpha(args)
    if not args.out.lower().endswith(".png"):
        raise CommandError(f"--out: expected a .png file name, got {args.out!r}", usage=True)
    require("matplotlib", what="qfocal plot")
    try:
        print(plot_losses(args.out, targets=targets, gamma=args.gamma))
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    return 0


def register(sub: argparse._SubParsersAction[ArgumentParser]) -> None:
    p = add_command(
        sub,
        "table",
        _cmd_table,
        help="print BCE, focal, QFL and VFL for given targets and predictions",
        description="Print the elementwise BCE, focal (YOLOv5's FocalLoss), QFL (YOLOv5's QFocalLoss) and "
        "varifocal losses of predictions against soft targets. Matrices are rows separated by ';', values by ','. "
        'Without --targets: the two tables of YOLOv5\'s "Add QFocalLoss()" pull request, reproduced.',
        example=[
            "qfocal table",
            "qfocal table --targets '0.9,0;0.5,1' --probs '0.8,0.1;0.5,0.7' --gamma 2 --alpha 0.25",
        ],
    )
    p.add_argument("--targets", help="soft targets, e.g. '0.6225,0,0;0.9,0,0;0.5,1,0'")
    p.add_argument("--logits", help="raw predictions, same shape as --targets")
    p.add_argument("--probs", help="predicted probabilities in (0, 1), converted to logits")
    p.add_argument(
        "--gamma", type=float_arg(0.0, 100.0), default=1.5, help="focal gamma / QFL beta (YOLOv5 default 1.5)"
    )
    p.add_argument(
        "--alpha", type=float_arg(0.0, 1.0), default=0.25, help="alpha of focal and QFL (YOLOv5 default 0.25)"
    )

    p = add_command(
        sub,
        "plot",
        _cmd_plot,
        help="draw each loss against the predicted probability, one panel per soft target",
        description="Draw BCE, focal loss, QFL and VFL against the predicted probability p, one panel per soft "
        "target t: QFL is 0 at p = t, focal loss is not.",
        example="qfocal plot --targets 0,0.5,0.9,1 --out losses.png",
    )
    p.add_argument("--out", default="qfocal_losses.png", help="PNG file to write")
    p.add_argument("--targets", default="0,0.5,0.9,1", help="comma-separated soft targets, one panel each")
    p.add_argument("--gamma", type=float_arg(0.0, 100.0), default=2.0, help="focal gamma and QFL beta")
