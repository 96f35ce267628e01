"""The one loss table of qfocal, and the backend names.

:data:`LOSS_TABLE` has one :class:`LossEntry` per loss: its canonical name and aliases, what it is, the function
and module that compute it (in :mod:`qfocal.functional` and :mod:`qfocal.modules`), their default
hyper-parameters, and the entry points that accept it (:data:`ENTRY_POINTS`). Every entry point (the functions'
``kind``, :func:`qfocal.build_loss`, the YOLOv5 hyp keys ``obj_loss`` / ``cls_loss``, Ultralytics' ``cls_loss``,
the FCOS heads, the lab's ``--loss`` / ``--losses``), its error messages and its ``--help`` read their names
from :func:`losses_for` and resolve spellings with :func:`loss_name`, case-insensitively. An unknown name is an
error that lists the valid names. This module imports nothing from qfocal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "BACKENDS",
    "ENTRY_POINTS",
    "FUSED_IMPLS",
    "LOSSES",
    "LOSS_ALIASES",
    "LOSS_TABLE",
    "LossEntry",
    "backend_name",
    "describe_losses",
    "loss_entry",
    "loss_name",
    "losses_for",
]

# Where a loss name is accepted. Keys are what :func:`losses_for` takes.
ENTRY_POINTS: dict[str, str] = {
    "functional": "qfocal.loss_function / qfocal.build_loss (the functions and modules)",
    "yolov5": "the YOLOv5 integration's hyp keys obj_loss / cls_loss (qfocal yolov5-train)",
    "ultralytics": "the Ultralytics integration's cls_loss (qfocal ultralytics-train)",
    "fcos": "the torchvision FCOS heads and the lab's FCOS runs (qfocal train / compare --loss)",
}


@dataclass(frozen=True)
class LossEntry:
    """One row of the loss table.

    Attributes:
        name: the canonical name. aliases: other accepted spellings (any case, ``-`` for ``_``).
        summary: what it is, in a few words (``--help`` texts and docs).
        function: the name of its function in :mod:`qfocal.functional` (None: not a function of qfocal's, e.g.
            BCE is torch's, ``gfl`` is a head configuration).
        module: the name of its module in :mod:`qfocal.modules` (None likewise).
        defaults: the function's default hyper-parameters.
        accepted_by: the :data:`ENTRY_POINTS` that accept it.
        overrides: defaults that differ at an entry point (YOLOv5's and Ultralytics' focal loss has gamma 1.5):
            ``{entry_point: {name: value}}``; :meth:`defaults_at` merges them.
    """

    name: str
    aliases: tuple[str, ...]
    summary: str
    function: str | None
    module: str | None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    accepted_by: frozenset[str] = frozenset()
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(
            self,
            "overrides",
            MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.overrides.items()}),
        )
        unknown = (set(self.accepted_by) | set(self.overrides)) - set(ENTRY_POINTS)
        if unknown:
            raise ValueError(
                f"accepted_by: expected entry points of {sorted(ENTRY_POINTS)}, got {sorted(unknown)}"
            )

    def defaults_at(self, entry_point: str) -> dict[str, Any]:
        """The default hyper-parameters at ``entry_point``: the function's, with that entry point's overrides.

        Example:
            >>> loss_entry("focal").defaults_at("ultralytics")
            {'alpha': 0.25, 'gamma': 1.5}
        """
        return {**self.defaults, **self.overrides.get(entry_point, {})}


_EVERYWHERE = frozenset(ENTRY_POINTS)
LOSS_TABLE: tuple[LossEntry, ...] = (
    LossEntry(
        "bce",
        ("binary_cross_entropy", "bcewithlogits"),
        "binary cross-entropy (the frameworks' own criterion)",
        None,
        None,
        accepted_by=frozenset({"yolov5", "ultralytics"}),
    ),
    LossEntry(
        "focal",
        ("sigmoid_focal", "focal_loss", "sigmoid_focal_loss", "fl"),
        "sigmoid focal loss (arXiv:1708.02002)",
        "sigmoid_focal_loss",
        "SigmoidFocalLoss",
        {"alpha": 0.25, "gamma": 2.0},
        _EVERYWHERE,
        # YOLOv5's FocalLoss and Ultralytics' FocalLoss default to gamma 1.5
        overrides={"yolov5": {"gamma": 1.5}, "ultralytics": {"gamma": 1.5}},
    ),
    LossEntry(
        "qfl",
        ("qfocal", "quality_focal", "quality_focal_loss", "qfocalloss"),
        "quality focal loss (GFL, arXiv:2006.04388)",
        "quality_focal_loss",
        "QualityFocalLoss",
        {"beta": 2.0, "alpha": None},
        _EVERYWHERE,
    ),
    LossEntry(
        "vfl",
        ("varifocal", "varifocal_loss", "varifocalloss"),
        "varifocal loss (VarifocalNet, arXiv:2008.13367)",
        "varifocal_loss",
        "VarifocalLoss",
        {"alpha": 0.75, "gamma": 2.0, "iou_weighted": True},
        _EVERYWHERE,
    ),
    LossEntry(
        "gfl",
        ("generalized_focal",),
        "QFL plus GFL's box distribution trained with DFL (the FCOS heads)",
        None,
        None,
        accepted_by=frozenset({"fcos"}),
    ),
    LossEntry(
        "focal_noctr",
        ("focal_no_centerness", "focal_nc"),
        "focal loss on hard targets without FCOS's centerness branch (an ablation of the FCOS heads)",
        None,
        None,
        accepted_by=frozenset({"fcos"}),
    ),
    LossEntry(
        "dfl",
        ("distribution_focal", "distribution_focal_loss"),
        "distribution focal loss (GFL, arXiv:2006.04388)",
        "distribution_focal_loss",
        "DistributionFocalLoss",
        {},
        frozenset({"functional"}),
    ),
)

_BY_NAME = {entry.name: entry for entry in LOSS_TABLE}
# Views of the table: canonical name -> what it is; canonical name -> its other spellings.
LOSSES: dict[str, str] = {entry.name: entry.summary for entry in LOSS_TABLE}
LOSS_ALIASES: dict[str, tuple[str, ...]] = {entry.name: entry.aliases for entry in LOSS_TABLE}

_LOOKUP = {alias: name for name, aliases in LOSS_ALIASES.items() for alias in (name, *aliases)}

# Backends of the public losses; FUSED_IMPLS are the fused implementations the custom op runs.
BACKENDS = ("auto", "reference", "fused", "triton", "inductor", "eager")
FUSED_IMPLS = ("eager", "inductor", "triton")


def losses_for(entry_point: str) -> tuple[str, ...]:
    """The canonical names of the losses ``entry_point`` (a key of :data:`ENTRY_POINTS`) accepts, in table order.

    Example:
        >>> losses_for("ultralytics")
        ('bce', 'focal', 'qfl', 'vfl')
    """
    if entry_point not in ENTRY_POINTS:
        raise ValueError(f"entry_point: expected one of {tuple(ENTRY_POINTS)}, got {entry_point!r}")
    return tuple(entry.name for entry in LOSS_TABLE if entry_point in entry.accepted_by)


def loss_entry(name: object, allowed: Iterable[str] = tuple(LOSSES), *, what: str = "loss") -> LossEntry:
    """The table row of loss ``name`` (an alias, any case), checked against ``allowed`` as :func:`loss_name`."""
    return _BY_NAME[loss_name(name, allowed, what=what)]


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
