"""qfocal against the real packages: values and gradients equal YOLOv5, torchvision, Ultralytics, kornia, and
mmdetection's loss functions (its shipped files, loaded by ``mmdet_oracle``), on random soft targets in float64
and float32. The mmdetection module classes are compared in test_integration_mmdet.py."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfocal
from tests.conftest import assert_close

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # yolov5 imports pkg_resources
    from yolov5.utils import loss as y5loss

DTYPES = [torch.float64, torch.float32]


def _inputs(shape, dtype, seed=0, hard=False, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    if hard:
        t = (torch.rand(shape, generator=g, dtype=torch.float64) > 0.7).to(dtype)
    else:
        t = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
        t = t * (torch.rand(shape, generator=g, dtype=torch.float64) > 0.5).to(dtype)  # many exact zeros
    return x, t


def _value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad


def _compare(ours, theirs, x, *args, name="loss", rtol=None, atol=None):
    v1, g1 = _value_and_grad(ours, x, *args)
    v2, g2 = _value_and_grad(theirs, x, *args)
    assert_close(v1, v2, f"{name} value", rtol, atol)
    assert_close(g1, g2, f"{name} d/dlogits", rtol, atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("cls", ["QFocalLoss", "FocalLoss"])
def test_yolov5_qfocal_and_focal_with_pos_weight(cls, reduction, dtype):
    x, t = _inputs((37, 5), dtype, seed=1)
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0], dtype=dtype)
    theirs = getattr(y5loss, cls)(
        nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction=reduction), gamma=1.5, alpha=0.25
    )
    bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction=reduction)
    ours = getattr(qfocal, cls)(bce, gamma=1.5, alpha=0.25)
    _compare(ours, theirs, x, t, name=f"yolov5.{cls}")
    assert bce.reduction == reduction, "qfocal must not mutate the wrapped BCE"
    # The functional form is the same function.
    fn = qfocal.quality_focal_loss if cls == "QFocalLoss" else qfocal.sigmoid_focal_loss
    kw = {"beta": 1.5} if cls == "QFocalLoss" else {"gamma": 1.5}
    _compare(
        lambda a, b: fn(a, b, alpha=0.25, pos_weight=pos_weight, reduction=reduction, **kw), theirs, x, t
    )


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_yolov5_qfocal_other_gammas_float64(gamma):
    x, t = _inputs((64, 3), torch.float64, seed=2, scale=1.0)
    theirs = y5loss.QFocalLoss(nn.BCEWithLogitsLoss(), gamma=gamma, alpha=0.4)
    _compare(qfocal.QFocalLoss(nn.BCEWithLogitsLoss(), gamma=gamma, alpha=0.4), theirs, x, t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.9, 1.3)])
def test_torchvision_sigmoid_focal_loss(alpha, gamma, hard, dtype):
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    x, t = _inputs((31, 7), dtype, seed=3, hard=hard)
    for reduction in ("none", "mean", "sum"):
        _compare(
            lambda a, b, r=reduction: qfocal.sigmoid_focal_loss(a, b, alpha=alpha, gamma=gamma, reduction=r),
            lambda a, b, r=reduction: tv_focal(a, b, alpha=alpha, gamma=gamma, reduction=r),
            x,
            t,
            name=f"torchvision focal {reduction}",
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_ultralytics_varifocal_loss(dtype):
    from ultralytics.utils.loss import VarifocalLoss

    g = torch.Generator().manual_seed(4)
    b, a, c = 2, 50, 6
    x = (torch.randn(b, a, c, generator=g, dtype=torch.float64) * 2).to(dtype)
    label = torch.zeros(b, a, c, dtype=dtype)
    cls = torch.randint(0, c, (b, a), generator=g)
    pos = torch.rand(b, a, generator=g) > 0.6
    label[pos, cls[pos]] = 1.0
    score = (0.05 + 0.95 * torch.rand(b, a, c, generator=g, dtype=torch.float64)).to(dtype) * label

    def theirs(xx, s):
        return VarifocalLoss(gamma=2.0, alpha=0.75)(xx, s, label).to(dtype)

    # Ultralytics computes its BCE in float32 whatever the input dtype.
    _compare(
        lambda xx, s: qfocal.varifocal_loss(xx, s, reduction="sum") / a,
        theirs,
        x,
        score,
        name="ultralytics VFL",
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_ultralytics_dfl(dtype):
    from ultralytics.utils.loss import DFLoss

    g = torch.Generator().manual_seed(5)
    reg_max, m = 16, 23
    logits = torch.randn(m * 4, reg_max, generator=g, dtype=torch.float64).to(dtype)
    target = (torch.rand(m, 4, generator=g, dtype=torch.float64) * (reg_max - 1.01)).to(dtype)

    def ours(x, tt):
        return (
            qfocal.distribution_focal_loss(x, tt.view(-1), reduction="none").view(m, 4).mean(-1, keepdim=True)
        )

    def theirs(x, tt):
        return DFLoss(reg_max)(x, tt.clone())

    _compare(ours, theirs, logits, target, name="ultralytics DFLoss")


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_binary_focal_on_hard_targets(dtype):
    """kornia weights soft targets differently (per log-term), so only {0, 1} targets are comparable."""
    from kornia.losses import binary_focal_loss_with_logits

    x, t = _inputs((40, 4), dtype, seed=6, hard=True)
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=dtype)
    weight = torch.tensor([0.3, 1.0, 2.0, 1.0], dtype=dtype)
    for reduction in ("none", "mean", "sum"):
        _compare(
            lambda a, b, r=reduction: qfocal.sigmoid_focal_loss(  # qfocal's per-class weight is (1, C)
                a, b, alpha=0.25, gamma=2.0, pos_weight=pos_weight, weight=weight[None], reduction=r
            ),
            lambda a, b, r=reduction: binary_focal_loss_with_logits(
                a, b, alpha=0.25, gamma=2.0, pos_weight=pos_weight, weight=weight, reduction=r
            ),
            x,
            t,
            name=f"kornia {reduction}",
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5])
def test_mmdet_qfl_sparse_avg_factor_and_per_anchor_weight(beta, dtype, mmdet_losses):
    g = torch.Generator().manual_seed(7)
    n, c = 45, 8
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, c + 1, (n,), generator=g)  # c = background
    labels[:3] = c
    scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype) * (labels < c)
    weight = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    num_pos = float((labels < c).sum())

    def theirs(x, lab, sc):
        return mmdet_losses.gfocal_loss.quality_focal_loss(
            x, (lab, sc), weight, beta=beta, avg_factor=num_pos
        )

    def ours(x, lab, sc):
        return qfocal.quality_focal_loss(x, (lab, sc), beta=beta, weight=weight, avg_factor=num_pos)

    _compare(ours, theirs, logits, labels, scores, name="mmdet QFL")

    # reduction="none" is elementwise; summing classes gives mmdetection's per-anchor loss.
    def ours_none(x, lab, sc):
        return qfocal.quality_focal_loss(x, (lab, sc), beta=beta, reduction="none").sum(1)

    _compare(
        ours_none,
        lambda x, lab, sc: mmdet_losses.gfocal_loss.quality_focal_loss(
            x, (lab, sc), beta=beta, reduction="none"
        ),
        logits,
        labels,
        scores,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("iou_weighted", [True, False])
def test_mmdet_varifocal(iou_weighted, dtype, mmdet_losses):
    x, t = _inputs((33, 6), dtype, seed=8)
    weight = torch.rand(33, 6, dtype=dtype)
    for reduction, avg in (("mean", None), ("mean", 7.0), ("sum", None), ("none", None)):
        _compare(
            lambda a, b, r=reduction, af=avg: qfocal.varifocal_loss(
                a, b, iou_weighted=iou_weighted, weight=weight, reduction=r, avg_factor=af
            ),
            lambda a, b, r=reduction, af=avg: mmdet_losses.varifocal_loss.varifocal_loss(
                a, b, weight=weight, iou_weighted=iou_weighted, reduction=r, avg_factor=af
            ),
            x,
            t,
            name=f"mmdet VFL {reduction} {avg}",
        )


def test_mmdet_dfl_float32(mmdet_losses):
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(50, 9, generator=g)
    target = torch.rand(50, generator=g) * 7.999
    _compare(
        lambda x, y: qfocal.distribution_focal_loss(x, y, reduction="none"),
        lambda x, y: mmdet_losses.gfocal_loss.distribution_focal_loss(x, y, reduction="none"),
        logits,
        target,
        name="mmdet DFL",
    )


def test_yolov5_drop_in_defaults_and_no_mutation():
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    q = qfocal.QFocalLoss(bce)
    assert (q.gamma, q.alpha, q.reduction) == (1.5, 0.25, "sum")
    assert bce.reduction == "sum"
    assert "gamma=1.5" in repr(q)
    default = qfocal.FocalLoss()
    assert isinstance(default.loss_fcn, nn.BCEWithLogitsLoss) and default.reduction == "mean"
    x, t = _inputs((8, 3), torch.float32)
    theirs = y5loss.FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5, alpha=0.25)
    assert_close(default(x, t), theirs(x, t), "FocalLoss default")
    with pytest.raises(TypeError, match="BCEWithLogitsLoss"):
        qfocal.QFocalLoss(nn.MSELoss())


def test_bce_weight_honoured_like_yolov5():
    x, t = _inputs((10, 4), torch.float64)
    w = torch.rand(10, 4, dtype=torch.float64)
    theirs = y5loss.QFocalLoss(nn.BCEWithLogitsLoss(weight=w), gamma=1.5, alpha=0.25)
    _compare(qfocal.QFocalLoss(nn.BCEWithLogitsLoss(weight=w)), theirs, x, t, name="BCE weight")


def test_bce_gamma_zero_matches_plain_bce_module():
    x, t = _inputs((12, 5), torch.float64)
    _compare(
        lambda a, b: qfocal.quality_focal_loss(a, b, beta=0.0),
        lambda a, b: F.binary_cross_entropy_with_logits(a, b),
        x,
        t,
    )
