"""The one vocabulary of qfocal: loss names and backend names, with their accepted aliases.

Every entry point (the functions' ``kind``, ``qfocal train/compare --loss``, the YOLOv5 hyp keys ``obj_loss`` /
``cls_loss``, Ultralytics' ``cls_loss``, the CLI choices and the docs) resolves names here, case-insensitively.
An unknown name is an error that lists the valid names. This module imports nothing from qfocal.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BACKENDS",
    "FUSED_IMPLS",
    "LOSSES",
    "LOSS_ALIASES",
    "backend_name",
    "describe_losses",
    "loss_name",
]

# Canonical loss names, with what each means.
LOSSES: dict[str, str] = {
    "bce": "binary cross-entropy (the frameworks' own criterion)",
    "focal": "sigmoid focal loss (arXiv:1708.02002)",
    "qfl": "quality focal loss (GFL, arXiv:2006.04388)",
    "vfl": "varifocal loss (VarifocalNet, arXiv:2008.13367)",
    "gfl": "QFL plus GFL's box distribution trained with DFL (the FCOS harness)",
    "focal_noctr": "focal loss on hard targets without FCOS's centerness branch (an ablation in the harness)",
    "dfl": "distribution focal loss (GFL, arXiv:2006.04388)",
}

# Accepted spellings of each canonical name (the canonical name itself is always accepted).
LOSS_ALIASES: dict[str, tuple[str, ...]] = {
    "bce": ("binary_cross_entropy", "bcewithlogits"),
    "focal": ("sigmoid_focal", "focal_loss", "sigmoid_focal_loss", "fl"),
    "qfl": ("qfocal", "quality_focal", "quality_focal_loss", "qfocalloss"),
    "vfl": ("varifocal", "varifocal_loss", "varifocalloss"),
    "gfl": ("generalized_focal",),
    "focal_noctr": ("focal_no_centerness", "focal_nc"),
    "dfl": ("distribution_focal", "distribution_focal_loss"),
}

_LOOKUP = {alias: name for name, aliases in LOSS_ALIASES.items() for alias in (name, *aliases)}

# Backends of the public losses; FUSED_IMPLS are the fused implementations the custom op runs.
BACKENDS = ("auto", "reference", "fused", "triton", "inductor", "eager")
FUSED_IMPLS = ("eager", "inductor", "triton")


def describe_losses(allowed: Iterable[str]) -> str:
    """``"qfl (qfocal), vfl (varifocal), ..."``: the names of ``allowed`` with their commonest alias."""
    parts = []
    for name in allowed:
        alias = LOSS_ALIASES[name][0] if name in ("qfl", "vfl") else None
        parts.append(f"{name} (= {alias})" if alias else name)
    return ", ".join(parts)


def loss_name(name: object, allowed: Iterable[str] = tuple(LOSSES), *, what: str = "loss") -> str:
    """The canonical name of loss ``name`` (an alias, any case), checked against ``allowed``.

    Raises:
        ValueError: ``name`` is no loss this entry point takes (or not a string); the message lists the valid
            names.

    Example:
        >>> loss_name("QFocal")
        'qfl'
        >>> loss_name("varifocal", ("bce", "qfl", "vfl"))
        'vfl'
    """
    allowed = tuple(allowed)
    canonical = _LOOKUP.get(name.strip().lower().replace("-", "_")) if isinstance(name, str) else None
    if canonical is None or canonical not in allowed:
        raise ValueError(f"{what}: expected one of {describe_losses(allowed)}, got {name!r}")
    return canonical


def backend_name(name: object, allowed: Iterable[str] = BACKENDS, *, what: str = "backend") -> str:
    """The backend ``name`` (any case), checked against ``allowed``; errors list the valid names."""
    allowed = tuple(allowed)
    if not isinstance(name, str) or name.strip().lower() not in allowed:
        raise ValueError(f"{what}: expected one of {allowed}, got {name!r}")
    return name.strip().lower()
