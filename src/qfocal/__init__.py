"""qfocal: exact, fast quality-aware focal losses for dense object detection.

Functions (torch style: tensors positional, hyper-parameters keyword-only):
:func:`quality_focal_loss`, :func:`sigmoid_focal_loss`, :func:`varifocal_loss`, :func:`distribution_focal_loss`,
and on probabilities (mmdetection's ``activated=True``) :func:`quality_focal_loss_with_prob`,
:func:`py_focal_loss_with_prob`.
Modules: :class:`QualityFocalLoss`, :class:`SigmoidFocalLoss`, :class:`VarifocalLoss`,
:class:`DistributionFocalLoss`, and the YOLOv5 drop-ins :class:`QFocalLoss`, :class:`FocalLoss`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names and the module each lives in. They load on first use (PEP 562), so ``import qfocal`` and the
# ``qfocal`` command start without torch: the command's entry point can then turn a Ctrl-C during the heavy
# imports into one line ("interrupted", exit 130) instead of a traceback.
_EXPORTS = {
    "backend": "._backend",
    "get_backend": "._backend",
    "set_backend": "._backend",
    "check_target": "._checks",
    "LOSS_TABLE": "._names",
    "LossEntry": "._names",
    "describe_losses": "._names",
    "loss_entry": "._names",
    "loss_name": "._names",
    "losses_for": "._names",
    "set_value_checks": "._checks",
    "value_checks": "._checks",
    "value_checks_enabled": "._checks",
    "distribution_focal_loss": ".functional",
    "loss_function": ".functional",
    "py_focal_loss_with_prob": ".functional",
    "quality_focal_loss": ".functional",
    "quality_focal_loss_with_prob": ".functional",
    "sigmoid_focal_loss": ".functional",
    "varifocal_loss": ".functional",
    "DistributionFocalLoss": ".modules",
    "FocalLoss": ".modules",
    "QFocalLoss": ".modules",
    "QualityFocalLoss": ".modules",
    "SigmoidFocalLoss": ".modules",
    "VarifocalLoss": ".modules",
    "build_loss": ".modules",
}

if TYPE_CHECKING:
    from ._backend import backend, get_backend, set_backend
    from ._checks import check_target, set_value_checks, value_checks, value_checks_enabled
    from ._names import LOSS_TABLE, LossEntry, describe_losses, loss_entry, loss_name, losses_for
    from .functional import (
        distribution_focal_loss,
        loss_function,
        py_focal_loss_with_prob,
        quality_focal_loss,
        quality_focal_loss_with_prob,
        sigmoid_focal_loss,
        varifocal_loss,
    )
    from .modules import (
        DistributionFocalLoss,
        FocalLoss,
        QFocalLoss,
        QualityFocalLoss,
        SigmoidFocalLoss,
        VarifocalLoss,
        build_loss,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    else:  # a submodule used as an attribute (qfocal.functional after import qfocal)
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "LOSS_TABLE",
    "DistributionFocalLoss",
    "FocalLoss",
    "LossEntry",
    "QFocalLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "VarifocalLoss",
    "__version__",
    "backend",
    "build_loss",
    "check_target",
    "describe_losses",
    "distribution_focal_loss",
    "get_backend",
    "loss_entry",
    "loss_function",
    "loss_name",
    "losses_for",
    "py_focal_loss_with_prob",
    "quality_focal_loss",
    "quality_focal_loss_with_prob",
    "set_backend",
    "set_value_checks",
    "sigmoid_focal_loss",
    "value_checks",
    "value_checks_enabled",
    "varifocal_loss",
]
