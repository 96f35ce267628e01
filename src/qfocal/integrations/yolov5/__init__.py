"""YOLOv5 with qfocal's losses: a drop-in ``ComputeLoss``, a reversible patch of YOLOv5's trainer, and a command.

:class:`ComputeLoss` takes a YOLOv5 ``DetectionModel`` (from the ``yolov5`` pip package or a checkout of the
ultralytics/yolov5 repository: it only reads ``model.hyp`` and the ``Detect`` layer) and is called like YOLOv5's
own: ``loss, items = compute_loss(predictions, targets)``. The objectness and classification criteria are chosen
by optional hyp keys; without them every number, loss item and gradient equals YOLOv5's ``ComputeLoss``.

Hyp keys (all optional; ``fl_gamma`` is in every stock hyp file):

==============  =================================================================================================
key             meaning
==============  =================================================================================================
``obj_loss``    objectness criterion: ``bce`` | ``focal`` | ``qfl`` (= ``qfocal``) | ``vfl`` (= ``varifocal``).
                Objectness targets are the IoU of the predicted box with its ground truth, so ``qfl`` and ``vfl``
                fit them.
``cls_loss``    classification criterion, same choices (targets: one-hot, or ``cp``/``cn`` with label
                smoothing). A term not named follows YOLOv5's rule: ``focal`` if ``fl_gamma > 0`` else ``bce``.
``obj_gain``    ``auto`` (default; ``null`` too) or a number: the balance of the objectness term. ``auto`` scales
                ``qfl`` / ``vfl`` / ``focal`` so that their gradient has BCE's norm, on every batch and level
                (:mod:`qfocal.integrations.balance`); a number is a fixed multiplier, ``1.0`` the unbalanced loss.
                ``bce``, and YOLOv5's own ``fl_gamma`` focal loss of a term not named, keep 1.
``cls_gain``    the same for the classification term.
``fl_gamma``    YOLOv5's key: the exponent of ``focal``, and of ``qfl`` / ``vfl`` unless ``qfl_beta`` /
                ``vfl_gamma`` is given. 0, as in the stock hyps, means each loss's own default: 1.5 for ``focal``
                (YOLOv5's ``FocalLoss``), 2.0 for ``qfl`` (the paper's beta) and ``vfl`` (the paper's gamma).
``fl_alpha``    alpha of ``focal``, 0.25 when absent (YOLOv5's); also of ``qfl`` when ``qfl_alpha`` is absent.
``qfl_beta``    exponent of ``qfl`` only, over ``fl_gamma``.
``qfl_alpha``   alpha of ``qfl`` only, ``null`` (none) when neither it nor ``fl_alpha`` is given: the paper's QFL
                (arXiv:2006.04388) weighs positives and negatives alike.
``vfl_gamma``   exponent of ``vfl``'s negatives only, over ``fl_gamma``.
``vfl_alpha``   weight of ``vfl``'s negatives, default 0.75 (arXiv:2008.13367).
==============  =================================================================================================

So by default ``qfl`` is the paper's (beta 2, no alpha), ``vfl`` the paper's (alpha 0.75, gamma 2) and ``focal``
YOLOv5's ``FocalLoss`` (gamma 1.5, alpha 0.25), each balanced against BCE. :class:`ComputeLoss` logs one line
with the criteria, options and gains it built. :func:`train` and the command write the effective values of all
of these keys into the hyp they give YOLOv5, so the run's ``hyp.yaml`` and ``opt.yaml`` record them
(:func:`effective_hyp`).

``bce``, ``focal`` and ``qfl`` keep the BCE's ``cls_pw`` / ``obj_pw``; ``vfl`` has no ``pos_weight`` and asks
for ``1.0``. Every criterion is the mean over its elements, as in YOLOv5.

To train through YOLOv5's own ``train.py``: :func:`patch_train` (a context manager), :func:`train` (one call), or
``qfocal yolov5-train`` / ``python -m qfocal.integrations.yolov5`` with YOLOv5's usual arguments.

The target assignment and CIoU below restate YOLOv5's (``utils/loss.py``, ``utils/metrics.py``, AGPL-3.0) so that
no YOLOv5 module has to be imported; the tests compare both against the installed package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import run_command
from .loss import LOSS_KEYS, LOSSES, ComputeLoss, build_criterion, criterion_options
from .train import check_loss_keys, effective_hyp, load_train_module, patch_train, stock_hyp, train

__all__ = [
    "LOSSES",
    "LOSS_KEYS",
    "ComputeLoss",
    "build_criterion",
    "check_loss_keys",
    "criterion_options",
    "effective_hyp",
    "load_train_module",
    "main",
    "patch_train",
    "run_command",
    "stock_hyp",
    "train",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qfocal.integrations.yolov5 ...``: the same as ``qfocal yolov5-train ...``."""
    from ...cli import main as qfocal_main

    return qfocal_main(["yolov5-train", *(sys.argv[1:] if argv is None else argv)])
