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

import argparse
import contextlib
import importlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import _check_real
from .._cli import CommandError, report
from .._names import loss_name
from ..modules import FocalLoss, QFocalLoss, VarifocalLoss
from ._cli_args import YOLOV5_LOSSES, add_yolov5_arguments
from ._gain import AUTO, check_gain, gain_label, loss_and_gain
from ._offline import _Patches, offline, offline_import, preserved_torch_state

__all__ = [
    "LOSSES",
    "ComputeLoss",
    "build_criterion",
    "criterion_options",
    "effective_hyp",
    "main",
    "patch_train",
    "train",
]

LOSSES = YOLOV5_LOSSES
_LOSS_KEYS = (
    "obj_loss",
    "cls_loss",
    "obj_gain",
    "cls_gain",
    "fl_gamma",
    "fl_alpha",
    "qfl_beta",
    "qfl_alpha",
    "vfl_gamma",
    "vfl_alpha",
)
_OPTION_KEYS = _LOSS_KEYS[4:]
# Exponent used when fl_gamma is 0 (the stock hyps): YOLOv5's FocalLoss default, the papers' beta / gamma.
_DEFAULT_EXPONENT = {"focal": 1.5, "qfl": 2.0, "vfl": 2.0}
# The hyp keys that hold each criterion's options, in the order criterion_options returns them.
_KEYS_OF = {
    "focal": ("fl_gamma", "fl_alpha"),
    "qfl": ("qfl_beta", "qfl_alpha"),
    "vfl": ("vfl_gamma", "vfl_alpha"),
}
LOGGER = logging.getLogger(
    "yolov5"
)  # YOLOv5's logger (LOGGING_NAME), in the pip package and a checkout alike


# ----------------------------------------------------------------------------------------------------------
# Criteria
# ----------------------------------------------------------------------------------------------------------
def _check_loss_name(key: str, value: object) -> str:
    return loss_name(value, LOSSES, what=f"hyp[{key!r}]")


def _number(hyp: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = hyp.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"hyp[{key!r}]: expected a number or null, got {type(value).__name__} {value!r}")
    return _check_real(f"hyp[{key!r}]", value)


class _Varifocal(nn.Module):
    """YOLOv5-style call ``criterion(pred, true)`` for :class:`qfocal.VarifocalLoss` (mean over elements)."""

    def __init__(self, alpha: float, gamma: float) -> None:
        super().__init__()
        self.loss = VarifocalLoss(alpha=alpha, gamma=gamma, reduction="mean")

    def forward(self, pred: Tensor, true: Tensor) -> Tensor:
        return self.loss(pred, true)


def criterion_options(kind: str, hyp: Mapping[str, Any]) -> dict[str, float | None]:
    """The options criterion ``kind`` takes from ``hyp`` (see the module docstring), by their hyp keys.

    Example:
        >>> criterion_options("qfocal", {"fl_gamma": 0.0})
        {'qfl_beta': 2.0, 'qfl_alpha': None}
        >>> criterion_options("focal", {"fl_gamma": 0.0})
        {'fl_gamma': 1.5, 'fl_alpha': 0.25}
    """
    kind = _check_loss_name("loss", kind)
    if kind == "bce":
        return {}
    shared = _number(hyp, "fl_gamma", 0.0) or _DEFAULT_EXPONENT[kind]
    exponent_key, alpha_key = _KEYS_OF[kind]
    if kind == "focal":
        return {"fl_gamma": shared, "fl_alpha": _number(hyp, "fl_alpha", 0.25)}
    exponent = _number(hyp, exponent_key, None)
    if kind == "qfl":  # no alpha unless one is given: the paper's QFL
        alpha = _number(hyp, "qfl_alpha", None) if "qfl_alpha" in hyp else _number(hyp, "fl_alpha", None)
    else:
        alpha = _number(hyp, "vfl_alpha", 0.75)
    return {exponent_key: shared if exponent is None else exponent, alpha_key: alpha}


def build_criterion(kind: str, bce: nn.BCEWithLogitsLoss, hyp: Mapping[str, Any]) -> nn.Module:
    """The criterion ``kind`` for one YOLOv5 loss term, reading its hyper-parameters from ``hyp``.

    Args:
        kind: ``"bce"`` | ``"focal"`` | ``"qfl"`` (alias ``"qfocal"``) | ``"vfl"`` (alias ``"varifocal"``).
        bce: the term's ``nn.BCEWithLogitsLoss`` (carrying ``cls_pw`` / ``obj_pw``); returned as is for ``"bce"``,
            wrapped (never modified) otherwise.
        hyp: the hyp dict (``fl_gamma``, ``fl_alpha``, ``qfl_beta``, ``qfl_alpha``, ``vfl_gamma``,
            ``vfl_alpha``; see the module docstring and :func:`criterion_options`).

    Returns:
        A module called as ``criterion(logits, target)`` returning the mean loss (unbalanced: the gains are
        :class:`ComputeLoss`'s).
    """
    kind = _check_loss_name("loss", kind)
    if kind == "bce":
        return bce
    exponent, alpha = criterion_options(kind, hyp).values()
    if kind == "focal":
        return FocalLoss(bce, gamma=exponent, alpha=alpha)
    if kind == "qfl":
        return QFocalLoss(bce, gamma=exponent, alpha=alpha)
    pos_weight = bce.pos_weight
    if pos_weight is not None and not bool((pos_weight == 1).all()):
        raise ValueError(
            f"varifocal has no pos_weight: expected cls_pw / obj_pw of 1.0, got {pos_weight.flatten().tolist()}"
        )
    return _Varifocal(alpha=alpha, gamma=exponent)


def _term_setup(h: Mapping[str, Any], term: str) -> tuple[str, float | None]:
    """The criterion of ``term`` ("obj" or "cls") and its gain: a number, or None for gradient-norm matching."""
    key = f"{term}_loss"
    named = h.get(key) is not None
    # YOLOv5's rule for a term not named: focal loss when fl_gamma > 0
    legacy = "focal" if (_number(h, "fl_gamma", 0.0) or 0.0) > 0 else "bce"
    kind = _check_loss_name(key, h[key] if named else legacy)
    gain = check_gain(h.get(f"{term}_gain", AUTO), what=f"hyp[{term + '_gain'!r}]")
    if gain is None and (kind == "bce" or not named):  # BCE, and YOLOv5's own focal loss, stay YOLOv5's
        gain = 1.0
    return kind, gain


def _describe(kind: str, gain: float | None, hyp: Mapping[str, Any]) -> str:
    options = ", ".join(f"{k.split('_')[1]}={v}" for k, v in criterion_options(kind, hyp).items())
    text = f"{kind}({options})" if options else kind
    if gain is None:
        return f"{text} x auto (BCE's gradient norm)"
    return text if gain == 1.0 else f"{text} x {gain:g}"


# ----------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------
def _ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (arXiv:1911.08287) of matching ``(n, 4)`` xywh boxes, shape ``(n, 1)``; YOLOv5's exact form
    (eps placement, and the trade-off weight ``alpha`` held constant in backward)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
    w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * (
        b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)  # enclosing box
    ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


# ----------------------------------------------------------------------------------------------------------
# ComputeLoss
# ----------------------------------------------------------------------------------------------------------
def _detect_layer(model: nn.Module) -> nn.Module:
    inner = (
        model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    )
    layers = getattr(inner, "model", None)
    try:
        m = layers[-1]
    except (TypeError, IndexError, KeyError):
        m = None
    missing = [k for k in ("na", "nc", "nl", "anchors", "stride") if not hasattr(m, k)]
    if m is None or missing:
        raise TypeError(
            "model: expected a YOLOv5 DetectionModel whose model[-1] is a Detect layer (na, nc, nl, anchors, "
            f"stride), got {type(model).__name__}" + (f" (missing {missing})" if m is not None else "")
        )
    return m


def _model_hyp(model: nn.Module) -> dict:
    hyp = getattr(model, "hyp", None)
    if hyp is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        hyp = getattr(model.module, "hyp", None)
    if not isinstance(hyp, Mapping):
        raise TypeError(
            f"model.hyp: expected the hyperparameter dict YOLOv5's train.py attaches, got {hyp!r}"
        )
    return dict(hyp)


class ComputeLoss:
    """Drop-in for YOLOv5's ``utils.loss.ComputeLoss`` whose objectness and classification criteria are qfocal's.

    Args:
        model: a YOLOv5 ``DetectionModel`` (possibly in DataParallel/DDP) with ``model.hyp`` set, as YOLOv5's
            ``train.py`` does. Read once, here.
        autobalance: YOLOv5's per-level objectness balancing.
        log: log one line (YOLOv5's logger, INFO) naming the criteria, their options and gains.

    Call:
        ``loss, items = compute_loss(p, targets)`` with ``p`` the list of ``(bs, na, ny, nx, 5 + nc)`` training
        outputs and ``targets`` ``(nt, 6)`` rows ``(image, class, x, y, w, h)`` normalised to [0, 1]. Returns
        ``(box + obj + cls) * bs`` of shape ``(1,)`` and the detached ``(3,)`` items ``(box, obj, cls)``.
        :meth:`terms` gives the three terms with their graph.

    Attributes ``BCEcls``, ``BCEobj``, ``balance``, ``gr``, ``sort_obj_iou``, ``hyp``, ``na``, ``nc``, ``nl``,
    ``anchors`` mean what they mean in YOLOv5. ``obj_loss`` / ``cls_loss`` are the canonical names of the
    criteria, ``obj_gain`` / ``cls_gain`` their balance: a number, or ``None`` for gradient-norm matching
    (:mod:`qfocal.integrations.balance`). The balance multiplies each level's term after the criterion (so
    ``BCEobj`` / ``BCEcls`` are the plain criteria) and is part of the loss items, as ``hyp['obj']`` is.

    Example:
        >>> from yolov5.models.yolo import Model  # doctest: +SKIP
        >>> model = Model("yolov5n.yaml", nc=2)  # doctest: +SKIP
        >>> model.hyp = {**yolov5_hyp, "obj_loss": "qfocal"}  # doctest: +SKIP
        >>> loss, items = ComputeLoss(model)(model(images), targets)  # doctest: +SKIP
        >>> loss.backward()  # doctest: +SKIP
    """

    sort_obj_iou = False

    def __init__(self, model: nn.Module, autobalance: bool = False, *, log: bool = True) -> None:
        device = next(model.parameters()).device
        h = _model_hyp(model)
        m = _detect_layer(model)

        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["cls_pw"]], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["obj_pw"]], device=device))
        eps = float(h.get("label_smoothing", 0.0))
        self.cp, self.cn = 1.0 - 0.5 * eps, 0.5 * eps  # label-smoothed positive / negative targets

        obj_kind, self.obj_gain = _term_setup(h, "obj")
        cls_kind, self.cls_gain = _term_setup(h, "cls")
        self.BCEcls = build_criterion(cls_kind, bce_cls, h)
        self.BCEobj = build_criterion(obj_kind, bce_obj, h)
        self.obj_loss, self.cls_loss = obj_kind, cls_kind
        self._bce_obj, self._bce_cls = bce_obj, bce_cls  # the references of gradient-norm matching

        self.balance = {3: [4.0, 1.0, 0.4]}.get(m.nl, [4.0, 1.0, 0.25, 0.06, 0.02])  # P3-P7
        self.ssi = list(m.stride).index(16) if autobalance else 0  # stride-16 level
        self.gr, self.hyp, self.autobalance = 1.0, h, autobalance
        self.na, self.nc, self.nl = m.na, m.nc, m.nl
        self.anchors = m.anchors
        self.device = device
        if log:
            LOGGER.info(f"qfocal ComputeLoss: {self.describe()}")

    def set_criterion(self, term: str, loss: str, gain: float | str | None = AUTO) -> None:
        """Train ``term`` (``"obj"`` or ``"cls"``) with criterion ``loss`` and balance ``gain`` from the next call
        on, its options read from ``self.hyp`` as at construction (``bce``'s ``auto`` is exactly 1). For schedules
        such as a BCE warm-up (TOOD): a callback at an epoch's start switches the criterion of a running
        training.

        Raises:
            ValueError: an unknown term, loss or gain.
        """
        if term not in ("obj", "cls"):
            raise ValueError(f"term: expected 'obj' or 'cls', got {term!r}")
        kind = _check_loss_name(f"{term}_loss", loss)
        value = check_gain(gain, what=f"{term}_gain")
        if value is None and kind == "bce":
            value = 1.0
        reference = self._bce_obj if term == "obj" else self._bce_cls
        criterion = build_criterion(kind, reference, self.hyp)
        if term == "obj":
            self.BCEobj, self.obj_loss, self.obj_gain = criterion, kind, value
        else:
            self.BCEcls, self.cls_loss, self.cls_gain = criterion, kind, value

    def describe(self) -> str:
        """``"obj_loss=qfl(beta=2.0, alpha=None) x auto (BCE's gradient norm), cls_loss=bce"``."""
        return (
            f"obj_loss={_describe(self.obj_loss, self.obj_gain, self.hyp)}, "
            f"cls_loss={_describe(self.cls_loss, self.cls_gain, self.hyp)}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(obj={self.BCEobj!r}, cls={self.BCEcls!r})"

    @staticmethod
    def _balanced(
        gain: float | None, criterion, reference, pred: Tensor, true: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The term times its gain, and the term alone."""
        if gain is None:  # the loss's own pass gives the norms where it can (loss_and_gain)
            value, auto = loss_and_gain(criterion, reference, pred, true)
            return value * auto, value
        value = criterion(pred, true)
        return (value if gain == 1.0 else value * gain), value  # no multiply for 1: BCE stays bit-identical

    def __call__(self, p: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        lbox, lobj, lcls = self.terms(p, targets)
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def terms(self, p: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The box, objectness and classification terms, shape ``(1,)`` each, gains and balance applied, with
        their graph (the loss is their sum times the batch size)."""
        lcls = torch.zeros(1, device=self.device)
        lbox = torch.zeros(1, device=self.device)
        lobj = torch.zeros(1, device=self.device)
        tcls, tbox, indices, anchors = self.build_targets(p, targets)

        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=self.device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchors[i]), 1)
                iou = _ciou(pbox, tbox[i]).squeeze()
                lbox += (1.0 - iou).mean()

                iou = iou.detach().clamp(0).type(tobj.dtype)  # objectness target: the IoU achieved
                if self.sort_obj_iou:
                    j = iou.argsort()
                    b, a, gj, gi, iou = b[j], a[j], gj[j], gi[j], iou[j]
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou

                if self.nc > 1:  # a single class has no classification loss
                    t = torch.full_like(pcls, self.cn, device=self.device)
                    t[range(n), tcls[i]] = self.cp
                    pcls, t = pcls.float(), t.float()  # fp32 under autocast, as BCE is
                    lcls += self._balanced(self.cls_gain, self.BCEcls, self._bce_cls, pcls, t)[0]

            pobj, tobj = pi[..., 4].float(), tobj.float()
            balanced, obji = self._balanced(self.obj_gain, self.BCEobj, self._bce_obj, pobj, tobj)
            lobj += balanced * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()

        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        return lbox, lobj, lcls

    def build_targets(
        self, p: Sequence[Tensor], targets: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, ...]], list[Tensor]]:
        """YOLOv5's assignment: each target goes to every anchor whose width/height ratio is within
        ``anchor_t``, in its own grid cell and the two nearest neighbouring cells (5 candidate offsets).

        Returns per level: classes, boxes (xy offset in the cell, wh in grid units), indices
        ``(image, anchor, gy, gx)`` and the matched anchors.
        """
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=self.device)
        ai = torch.arange(na, device=self.device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): + anchor index

        g = 0.5  # neighbour cells whose centre is within half a cell
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=self.device).float() * g

        for i in range(self.nl):
            anchors, shape = self.anchors[i], p[i].shape
            gain[2:6] = torch.tensor(shape)[[3, 2, 3, 2]]  # normalised xywh -> grid units
            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                keep = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
                t = t[keep]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                left, up = ((gxy % 1 < g) & (gxy > 1)).T
                right, down = ((gxi % 1 < g) & (gxi > 1)).T
                use = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[use]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[use]
            else:
                t = targets[0]
                offsets = 0

            bc, gxy, gwh, a = t.chunk(4, 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            # clamp the cells in place first: YOLOv5's box offsets are taken from the clamped cell
            gij[:, 0].clamp_(0, shape[3] - 1)
            gij[:, 1].clamp_(0, shape[2] - 1)
            gi, gj = gij.T
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)

        return tcls, tbox, indices, anch


# ----------------------------------------------------------------------------------------------------------
# Training through YOLOv5's own train.py
# ----------------------------------------------------------------------------------------------------------
def _train_module(train_module: ModuleType | None) -> ModuleType:
    if train_module is not None:
        if not hasattr(train_module, "ComputeLoss"):
            raise TypeError(
                f"train_module: expected YOLOv5's train module (it imports ComputeLoss), got {train_module!r}"
            )
        return train_module
    with offline_import():  # yolov5 imports Ultralytics, which probes the network on import otherwise
        import yolov5.train as module

    return module


def _package_of(train_module: ModuleType) -> str:
    """``"yolov5"`` for the pip package's ``yolov5.train``, ``""`` for a repository checkout's ``train``."""
    return train_module.__name__.rpartition(".")[0]


class _NumpyWithTrapz(ModuleType):
    """numpy, plus the ``trapz`` that numpy 2.4 removed and YOLOv5 7.0's ``compute_ap`` still calls."""

    def __init__(self, numpy: ModuleType) -> None:
        super().__init__(numpy.__name__)
        self._numpy = numpy
        self.trapz = numpy.trapezoid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._numpy, name)


def _numpy_compat(patches: _Patches, package: str) -> None:
    """Give YOLOv5's metrics module (only) a numpy with ``trapz`` when the installed numpy lacks it."""
    import numpy

    metrics = sys.modules.get(f"{package}.utils.metrics" if package else "utils.metrics")
    if metrics is not None and getattr(metrics, "np", None) is numpy and not hasattr(numpy, "trapz"):
        patches.setattr(metrics, "np", _NumpyWithTrapz(numpy))


def _pillow_compat(patches: _Patches, package: str) -> None:
    """Give the fonts of YOLOv5's plots (only) back ``getsize``, which Pillow 10 removed and YOLOv5 7.0 calls."""
    plots = sys.modules.get(f"{package}.utils.plots" if package else "utils.plots")
    check_pil_font = getattr(plots, "check_pil_font", None)
    if check_pil_font is None:
        return

    def with_getsize(*args, **kwargs):
        font = check_pil_font(*args, **kwargs)
        if font is not None and not hasattr(font, "getsize") and hasattr(font, "getbbox"):
            font.getsize = lambda text: font.getbbox(text)[2:4]  # what Ultralytics' own Annotator does
        return font

    patches.replace_everywhere(check_pil_font, with_getsize)


def _dataset_path_compat(patches: _Patches, package: str) -> None:
    """Read a data yaml without an absolute ``path`` relative to its own folder, as Ultralytics and qfocal do;
    YOLOv5 7.0 resolves it against its own package folder instead, so no relocatable dataset is found."""
    general = sys.modules.get(f"{package}.utils.general" if package else "utils.general")
    check_dataset = getattr(general, "check_dataset", None)
    if check_dataset is None:
        return

    def relative_to_yaml(data, *args, **kwargs):
        path = Path(str(data))
        if isinstance(data, (str, Path)) and path.suffix in (".yaml", ".yml") and path.is_file():
            content = _load_yaml(path)
            root = content.get("path")
            if root is None or not Path(str(root)).is_absolute():
                data = {**content, "path": str((path.parent / str(root or ".")).resolve())}
        return check_dataset(data, *args, **kwargs)

    patches.replace_everywhere(check_dataset, relative_to_yaml)


@contextlib.contextmanager
def patch_train(
    train_module: ModuleType | None = None,
    *,
    offline_mode: bool = True,
    compute_loss: Callable[..., ComputeLoss] | None = None,
) -> Iterator[ModuleType]:
    """Within the block, YOLOv5's ``train.py`` builds qfocal's :class:`ComputeLoss` (or ``compute_loss``: a
    subclass, or a function of ``(model, autobalance=False)`` returning one); restored on exit.

    Only the name ``ComputeLoss`` in the train module is rebound (train.py looks it up there). Also for the
    block: with ``offline_mode``, YOLOv5's downloaders (:func:`qfocal.integrations.offline`); a data yaml without
    an absolute ``path`` is read relative to its own folder (as Ultralytics does); and three fixes
    for YOLOv5 7.0 on current libraries: ``np.trapz`` (gone in numpy 2.4) for its ``utils.metrics`` only,
    ``FreeTypeFont.getsize`` (gone in Pillow 10) for its plots' fonts only, and
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` so that torch >= 2.6 loads the checkpoints YOLOv5 writes and reads
    back (load only ``--weights`` you trust, as always with YOLOv5).

    Args:
        train_module: YOLOv5's train module; default ``yolov5.train`` (the pip package). For a checkout of the
            ultralytics/yolov5 repository, pass its ``train`` module (``import train`` from the repository root).
        offline_mode: also keep YOLOv5 off the network for the block.

    Yields:
        the train module.

    Example:
        >>> import yolov5.train  # doctest: +SKIP
        >>> with patch_train() as t:  # doctest: +SKIP
        ...     t.run(data="data.yaml", cfg="yolov5n.yaml", weights="", hyp="hyp.qfl.yaml", imgsz=320)
    """
    module = _train_module(train_module)
    patches = _Patches()
    with (
        offline(yolov5_package=_package_of(module)) if offline_mode else contextlib.nullcontext(),
        preserved_torch_state(),
    ):
        try:
            patches.setattr(module, "ComputeLoss", compute_loss or ComputeLoss)
            _numpy_compat(patches, _package_of(module))
            _pillow_compat(patches, _package_of(module))
            _dataset_path_compat(patches, _package_of(module))
            if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() not in ("1", "true", "yes", "y"):
                # YOLOv5 7.0 calls torch.load(ckpt) on checkpoints it pickled itself (strip_optimizer,
                # attempt_load): torch >= 2.6 refuses them unless weights_only=False is the default again
                patches.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
            yield module
        finally:
            patches.undo()


def _load_yaml(path: str | Path) -> dict:
    import yaml

    with open(path, errors="ignore") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"hyp: expected a YAML mapping in {path}, got {type(data).__name__}")
    return data


def _write_hyp(hyp: Mapping[str, Any], directory: str) -> str:
    import yaml

    path = Path(directory) / "hyp.qfocal.yaml"
    path.write_text(yaml.safe_dump(dict(hyp), sort_keys=False))
    return str(path)


def _resolve_hyp(module: ModuleType, hyp: str | Path | None) -> Path:
    if hyp is None:
        return Path(module.__file__).parent / "data" / "hyps" / "hyp.scratch-low.yaml"
    path = Path(hyp)
    if path.is_file():
        return path
    found = Path(module.__file__).parent / "data" / "hyps" / path.name
    if found.is_file():
        return found
    raise FileNotFoundError(f"hyp: expected a hyperparameter YAML file, got {hyp!s} (not found)")


def _full_hyp(module: ModuleType, hyp_file: str | Path | None, overrides: Mapping[str, Any]) -> dict:
    """A hyp file laid over YOLOv5's stock ``hyp.scratch-low.yaml`` (so one holding only qfocal's keys works), then
    ``overrides``; qfocal's keys are checked before anything else runs, and filled in (:func:`effective_hyp`)."""
    stock = _load_yaml(_resolve_hyp(module, None))
    return effective_hyp({**stock, **_load_yaml(_resolve_hyp(module, hyp_file)), **overrides})


def _validate_loss_keys(hyp: Mapping[str, Any]) -> None:
    """Check qfocal's hyp keys, names and values, before YOLOv5 scans the dataset: each criterion is built once on
    a stand-in BCE, so a bad value is reported under its hyp key."""
    for key in _OPTION_KEYS:
        _number(hyp, key, None)
    for term in ("obj", "cls"):
        key = f"{term}_loss"
        kind, _ = _term_setup(hyp, term)
        try:
            build_criterion(kind, nn.BCEWithLogitsLoss(), hyp)
        except (TypeError, ValueError) as exc:
            keys = ", ".join(f"{k}={hyp[k]!r}" for k in _OPTION_KEYS if k in hyp)
            raise type(exc)(f"hyp[{key!r}]={hyp.get(key)!r} with {keys or 'the defaults'}: {exc}") from None


def effective_hyp(hyp: Mapping[str, Any]) -> dict:
    """``hyp`` with qfocal's keys checked and filled in with the values :class:`ComputeLoss` will use: both
    criteria by canonical name (a term not named gets YOLOv5's rule's choice), their gains (``"auto"`` or the
    number; YOLOv5's own ``fl_gamma`` focal loss gets ``1.0``), and the options of every criterion in use under
    their own keys. Building :class:`ComputeLoss` from the result gives the same criteria as from ``hyp``; written
    into the run's hyp, it records what the run trained with.

    Raises:
        ValueError, TypeError: a bad name or value, reported under its hyp key.

    Example:
        >>> h = effective_hyp({"obj_loss": "qfocal", "fl_gamma": 0.0})
        >>> {k: h[k] for k in ("obj_loss", "obj_gain", "qfl_beta", "qfl_alpha", "cls_loss", "cls_gain")}
        {'obj_loss': 'qfl', 'obj_gain': 'auto', 'qfl_beta': 2.0, 'qfl_alpha': None, 'cls_loss': 'bce', 'cls_gain': 'auto'}
    """
    _validate_loss_keys(hyp)
    out = dict(hyp)
    for term in ("obj", "cls"):
        kind, gain = _term_setup(hyp, term)
        given = check_gain(hyp.get(f"{term}_gain", AUTO), what=f"hyp[{term + '_gain'!r}]")
        out[f"{term}_loss"] = kind
        # a named loss keeps what was given ("auto" stays "auto"); YOLOv5's own focal loss of a term not named
        # is named in the record, so it records its gain (1 unless one was given)
        out[f"{term}_gain"] = gain_label(
            given if kind == "bce" or hyp.get(f"{term}_loss") is not None else gain
        )
    for term in ("obj", "cls"):
        out.update(criterion_options(out[f"{term}_loss"], hyp))
    return out


def _yolov5_callbacks(module: ModuleType, callbacks: Mapping[str, Any]):
    """A fresh YOLOv5 ``Callbacks`` with ``callbacks`` (event -> function or list of functions) registered."""
    package = _package_of(module)
    with offline_import():
        Callbacks = importlib.import_module(
            f"{package}.utils.callbacks" if package else "utils.callbacks"
        ).Callbacks
    registry = Callbacks()
    for event, functions in callbacks.items():
        for function in functions if isinstance(functions, (list, tuple)) else (functions,):
            registry.register_action(event, name=getattr(function, "__name__", "qfocal"), callback=function)
    return registry


def train(
    *,
    data: str | Path,
    cfg: str | Path = "yolov5n.yaml",
    hyp: str | Path | Mapping[str, Any] | None = None,
    base_hyp: str | Path | None = None,
    weights: str = "",
    train_module: ModuleType | None = None,
    offline_mode: bool = True,
    callbacks: Mapping[str, Any] | None = None,
    compute_loss: Callable[..., ComputeLoss] | None = None,
    **opts: Any,
) -> argparse.Namespace:
    """Train with YOLOv5's own ``train.run`` and qfocal's :class:`ComputeLoss`, offline by default.

    Args:
        data: dataset YAML (YOLOv5 format).
        cfg: model YAML, e.g. ``"yolov5n.yaml"`` (found among YOLOv5's models).
        hyp: a hyp YAML file, or a mapping laid over ``base_hyp``, e.g. ``{"obj_loss": "qfocal"}``.
        base_hyp: the hyp file a mapping ``hyp`` is laid over; default YOLOv5's ``hyp.scratch-low.yaml``.
        weights: initial weights; ``""`` (the default) trains from scratch.
        train_module: YOLOv5's train module (default ``yolov5.train``; a repository checkout's ``train``).
        offline_mode: no downloads or installs during training (:func:`qfocal.integrations.offline`).
        callbacks: YOLOv5 events to functions (or lists of them), e.g.
            :meth:`qfocal.integrations.balance.BalanceLog.yolov5_callbacks`.
        compute_loss: what ``train.py`` builds its loss with (:func:`patch_train`); default :class:`ComputeLoss`.
        **opts: any other ``train.py`` option by its ``opt`` name: ``epochs``, ``imgsz``, ``batch_size``,
            ``device``, ``workers``, ``project``, ``name``, ``exist_ok``, ``noplots``, ``label_smoothing`` ...

    Returns:
        the options YOLOv5 trained with (``opt.save_dir`` is the run folder; ``opt.hyp`` and the run's
        ``hyp.yaml`` hold the effective qfocal keys, :func:`effective_hyp`).

    Example:
        >>> from qfocal.integrations import yolov5
        >>> yolov5.train(data="toy/data.yaml", hyp={"obj_loss": "qfocal"}, epochs=1, imgsz=64)  # doctest: +SKIP
    """
    module = _train_module(train_module)
    with tempfile.TemporaryDirectory(prefix="qfocal-yolov5-") as tmp:
        if isinstance(hyp, Mapping):
            hyp_path = _write_hyp(_full_hyp(module, base_hyp, hyp), tmp)
        else:
            hyp_path = _write_hyp(_full_hyp(module, hyp, {}), tmp)
        patches = _Patches()
        try:
            patches.setattr(sys, "argv", sys.argv[:1])  # train.run parses sys.argv for its defaults
            with patch_train(module, offline_mode=offline_mode, compute_loss=compute_loss):
                if not callbacks:
                    return module.run(data=str(data), cfg=str(cfg), hyp=hyp_path, weights=weights, **opts)
                # train.run with our callbacks: run() passes none to main()
                opt = module.parse_opt(True)
                for key, value in {
                    "data": str(data),
                    "cfg": str(cfg),
                    "hyp": hyp_path,
                    "weights": weights,
                }.items():
                    setattr(opt, key, value)
                for key, value in opts.items():
                    setattr(opt, key, value)
                module.main(opt, callbacks=_yolov5_callbacks(module, callbacks))
                return opt
        finally:
            patches.undo()


# ----------------------------------------------------------------------------------------------------------
# Command line: `qfocal yolov5-train ...` and `python -m qfocal.integrations.yolov5 ...`
# ----------------------------------------------------------------------------------------------------------
def run_command(
    args: argparse.Namespace, yolov5_args: Sequence[str], train_module: ModuleType | None = None
) -> int:
    """Parse ``yolov5_args`` with YOLOv5's own parser, merge qfocal's options into its hyp, and train."""
    module = _train_module(train_module)
    overrides = {key: getattr(args, key) for key in _LOSS_KEYS if hasattr(args, key)}
    patches = _Patches()
    try:
        # train from scratch unless told otherwise: YOLOv5's default --weights yolov5s.pt is a download
        patches.setattr(sys, "argv", [f"{module.__name__}.py", "--weights", "", *yolov5_args])
        opt = module.parse_opt()
    finally:
        patches.undo()
    if not getattr(opt, "cfg", "x") and not getattr(opt, "weights", ""):
        opt.cfg = (
            "yolov5n.yaml"  # YOLOv5 asserts "either --cfg or --weights"; from scratch, the smallest model
        )
    with tempfile.TemporaryDirectory(prefix="qfocal-yolov5-") as tmp:
        try:
            hyp = _full_hyp(module, opt.hyp, overrides)
        except (TypeError, ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc), usage=True) from None
        opt.hyp = _write_hyp(hyp, tmp)
        with patch_train(module, offline_mode=not getattr(args, "online", False)):
            module.main(opt)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qfocal.integrations.yolov5 [qfocal options] [YOLOv5 train.py options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m qfocal.integrations.yolov5",
        description="Train with YOLOv5's train.py and qfocal's losses; all other options are YOLOv5's "
        "(python -m yolov5.train --help). Offline; trains from scratch unless --weights is given.",
        allow_abbrev=False,
    )
    add_yolov5_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        return run_command(args, rest)
    except CommandError as exc:
        return report(parser.prog, exc)


if __name__ == "__main__":
    sys.exit(main())
