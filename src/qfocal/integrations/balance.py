"""Loss balance in YOLOv5 and Ultralytics: the rule that keeps a criterion from re-weighting the loss, and the tools
that measure each loss term and the gradient it sends to the head.

Why a rule is needed. YOLO's gains (``box``, ``obj``, ``cls``, ``dfl``) were tuned for BCE. Quality focal loss,
varifocal loss and focal loss multiply BCE by a modulating factor below 1 (``|t - p| ** beta``, ``alpha * p **
gamma`` on negatives, ``(1 - p_t) ** gamma``), so swapping the criterion also shrinks the term's gradient, and
with it the weight of classification (or objectness) against the box, DFL and objectness terms. The shrinkage is
large and it moves during training. Measured on the synthetic dataset (``benchmarks/loss_balance.py``,
docs/balance.md), the norm of the gradient that the classification term sends to YOLOv8n's class logits is
0.02-0.09x BCE's at initialisation for QFL. Ultralytics' soft targets start tiny (alignment times the IoU of an
untrained box), and QFL's factor ``|t - p| ** 2`` is about ``t ** 2`` there. From about the 18th optimizer step
it stays between 0.44x and 0.77x. No fixed gain can match both: one calibrated at initialisation (36 for QFL)
over-weights classification 16-28x for the rest of training (VFL about 4x, focal loss 5-14x), and one calibrated
later leaves the start 10-50x under-weighted.

The rule (``cls_gain`` / ``obj_gain`` = ``"auto"``, the default): each call of the criterion multiplies its term
by the detached gain

    gain = || d BCE / d logits || / || d L / d logits ||

where both gradients are taken on the same logits and targets of this batch (and, in YOLOv5, this level), and
BCE is the framework's own criterion for the term (YOLOv5's carries ``cls_pw`` / ``obj_pw``). The term's gradient
with respect to the logits then has exactly BCE's norm, and only its direction is the loss's own. QFL, VFL or
focal loss still decide which anchors and classes the gradient goes to (the focusing, the IoU-aware ranking). The
size of the step is BCE's, the one the framework's gains were tuned for, at every step and not only at
initialisation. The gain is detached (a loss scale like ``hyp['cls']``, not part of the loss's gradient). It is
computed on the device without a host synchronisation. It is capped at :data:`MAX_GAIN` for batches where the
loss's gradient underflows. Where the loss runs on the fused op, its own pass returns both gradient norms (no second
evaluation, no copy: :func:`loss_and_gain`); elsewhere the gain costs one more elementwise
evaluation of BCE and of the loss, with their gradients (:func:`matched_gain`, the definition).

Overrides: a number is a fixed multiplier of the term. ``1.0`` is the unbalanced criterion, as before this rule.
``bce`` is never touched: with ``"auto"`` its gain is exactly 1 and no multiply is done, so the numbers stay
bit-identical to the framework's. YOLOv5's own ``fl_gamma > 0`` focal loss (a term not named by ``obj_loss`` /
``cls_loss``) also keeps gain 1: it is YOLOv5's criterion, tuned with YOLOv5's numbers.

Measuring it: the lab's :mod:`qfocal_lab.studies.balance` measures each term and its gradient, logs them along a
run and plots them (``benchmarks/loss_balance.py``, docs/balance.md).
"""

from __future__ import annotations

from ._gain import AUTO, MAX_GAIN, check_gain, gain_label, loss_and_gain, matched_gain

__all__ = ["AUTO", "MAX_GAIN", "check_gain", "gain_label", "loss_and_gain", "matched_gain"]
