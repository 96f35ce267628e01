"""qfocal: exact, fast quality-aware focal losses for dense object detection.

Functions (torch style: tensors positional, hyper-parameters keyword-only):
:func:`quality_focal_loss`, :func:`sigmoid_focal_loss`, :func:`varifocal_loss`, :func:`distribution_focal_loss`,
and on probabilities (mmdetection's ``activated=True``) :func:`quality_focal_loss_with_prob`,
:func:`py_focal_loss_with_prob`.
Modules: :class:`QualityFocalLoss`, :class:`SigmoidFocalLoss`, :class:`VarifocalLoss`,
:class:`DistributionFocalLoss`, and the YOLOv5 drop-ins :class:`QFocalLoss`, :class:`FocalLoss`.
"""

from ._backend import backend, get_backend, set_backend
from ._checks import check_target, set_value_checks, value_checks, value_checks_enabled
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

__version__ = "0.1.0"

__all__ = [
    "DistributionFocalLoss",
    "FocalLoss",
    "QFocalLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "VarifocalLoss",
    "__version__",
    "backend",
    "build_loss",
    "check_target",
    "distribution_focal_loss",
    "get_backend",
    "loss_function",
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
