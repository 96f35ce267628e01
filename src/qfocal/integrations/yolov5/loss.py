"""The YOLOv5 criteria and ``ComputeLoss``: qfocal's objectness / classification losses chosen by hyp keys, with
YOLOv5's target assignment and CIoU restated (see :mod:`qfocal.integrations.yolov5`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..._checks import _check_real
from ..._names import loss_entry, loss_name
from ...modules import FocalLoss, QFocalLoss, VarifocalLoss
from .._cli_args import YOLOV5_LOSSES
from .._gain import AUTO, check_gain, loss_and_gain

__all__ = ["LOSSES", "LOSS_KEYS", "ComputeLoss", "build_criterion", "criterion_options"]


LOSSES = YOLOV5_LOSSES
LOSS_KEYS = (
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
_OPTION_KEYS = LOSS_KEYS[4:]
# Each criterion's defaults at this entry point, from the loss table (focal: YOLOv5's FocalLoss, gamma 1.5).
_DEFAULTS = {name: loss_entry(name).defaults_at("yolov5") for name in LOSSES}
# Exponent used when fl_gamma is 0 (the stock hyps): YOLOv5's FocalLoss default, the papers' beta / gamma.
_DEFAULT_EXPONENT = {
    "focal": _DEFAULTS["focal"]["gamma"],
    "qfl": _DEFAULTS["qfl"]["beta"],
    "vfl": _DEFAULTS["vfl"]["gamma"],
}
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

    def __init__(self, alpha: float | None, gamma: float) -> None:
        super().__init__()
        # alpha None (hyp vfl_alpha: null) reaches VarifocalLoss's own check, which names it
        self.loss = VarifocalLoss(alpha=alpha, gamma=gamma, reduction="mean")  # type: ignore[arg-type]

    def forward(self, pred: Tensor, true: Tensor) -> Tensor:
        loss: Tensor = self.loss(pred, true)
        return loss


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
    exponent_key, alpha_key = _KEYS_OF[kind]
    exponent, alpha = _exponent_and_alpha(kind, hyp)
    return {exponent_key: exponent, alpha_key: alpha}


def _exponent_and_alpha(kind: str, hyp: Mapping[str, Any]) -> tuple[float, float | None]:
    """The options of criterion ``kind`` (a canonical name other than ``"bce"``), see :func:`criterion_options`."""
    shared: float = _number(hyp, "fl_gamma", 0.0) or _DEFAULT_EXPONENT[kind]
    if kind == "focal":
        return shared, _number(hyp, "fl_alpha", _DEFAULTS["focal"]["alpha"])
    exponent = _number(hyp, _KEYS_OF[kind][0], None)
    if kind == "qfl":  # no alpha unless one is given: the paper's QFL
        alpha = _number(hyp, "qfl_alpha", None) if "qfl_alpha" in hyp else _number(hyp, "fl_alpha", None)
    else:
        alpha = _number(hyp, "vfl_alpha", _DEFAULTS["vfl"]["alpha"])
    return shared if exponent is None else exponent, alpha


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
    exponent, alpha = _exponent_and_alpha(kind, hyp)
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
class _DetectLayer(Protocol):
    """What ComputeLoss reads of YOLOv5's ``Detect`` layer (YOLOv5 ships no type information)."""

    na: int
    nc: int
    nl: int
    anchors: Tensor
    stride: Tensor


def _detect_layer(model: nn.Module) -> _DetectLayer:
    inner = (
        model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    )
    layers: Any = getattr(inner, "model", None)  # the DetectionModel's nn.Sequential, or anything
    m: _DetectLayer | None
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


def _model_hyp(model: nn.Module) -> dict[str, Any]:
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
        gain: float | None,
        criterion: Callable[[Tensor, Tensor], Tensor],
        reference: Callable[[Tensor, Tensor], Tensor],
        pred: Tensor,
        true: Tensor,
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
        tcls: list[Tensor] = []
        tbox: list[Tensor] = []
        indices: list[tuple[Tensor, ...]] = []
        anch: list[Tensor] = []
        gain = torch.ones(7, device=self.device)
        ai = torch.arange(na, device=self.device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): + anchor index

        g = 0.5  # neighbour cells whose centre is within half a cell
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=self.device).float() * g

        for i in range(self.nl):
            anchors, shape = self.anchors[i], p[i].shape
            gain[2:6] = torch.tensor(shape)[[3, 2, 3, 2]]  # normalised xywh -> grid units
            t = targets * gain
            offsets: Tensor | int
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
