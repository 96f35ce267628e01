"""Properties, numerics and validation of the qfocal losses (reference backend and whatever "auto" picks)."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import qfocal
import qfocal.functional
import qfocal.modules
from tests.conftest import DTYPE_PRECISIONS, assert_close

LOSSES = ["qfl", "focal", "vfl"]
ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _call(kind, x, t, **kw):
    if kind == "qfl":
        return qfocal.quality_focal_loss(x, t, **kw)
    if kind == "focal":
        return qfocal.sigmoid_focal_loss(x, t, **kw)
    return qfocal.varifocal_loss(x, t, **kw)


def _soft(shape, dtype=torch.float64, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    t = torch.rand(shape, generator=g, dtype=torch.float64) * (torch.rand(shape, generator=g) > 0.5)
    return x.to(dtype), t.to(dtype)


# ------------------------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("kind", ["qfl", "focal"])
def test_exponent_zero_is_bce_values_and_gradients(kind):
    x, t = _soft((20, 6))
    pw = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    kw = {"beta": 0.0} if kind == "qfl" else {"gamma": 0.0}
    for reduction in ("none", "mean", "sum"):
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        ours = _call(kind, xa, t, alpha=None, pos_weight=pw, reduction=reduction, **kw)
        bce = F.binary_cross_entropy_with_logits(xb, t, pos_weight=pw, reduction=reduction)
        assert_close(ours, bce, f"{kind} gamma=0 value")
        ours.sum().backward()
        bce.sum().backward()
        assert_close(xa.grad, xb.grad, f"{kind} gamma=0 grad")


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.0])
def test_focal_family_never_exceeds_bce(kind, gamma):
    x, t = _soft((50, 9), seed=1)
    key = "beta" if kind == "qfl" else "gamma"
    kw = {key: gamma}
    if kind != "vfl":
        kw["alpha"] = None
    loss = _call(kind, x, t, reduction="none", **kw)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert bool((loss <= bce + 1e-12).all()), f"{kind} exceeds BCE by {(loss - bce).max().item():.3e}"
    assert bool((loss >= 0).all())


@pytest.mark.parametrize("alpha", [None, 0.25, 0.6])
@pytest.mark.parametrize("gamma", [0.5, 1.5, 2.0])
def test_qfl_with_hard_targets_equals_focal(alpha, gamma):
    x, _ = _soft((40, 5), seed=2)
    t = (torch.rand(40, 5, generator=torch.Generator().manual_seed(3)) > 0.6).double()
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    q = qfocal.quality_focal_loss(xa, t, beta=gamma, alpha=alpha, reduction="sum")
    f = qfocal.sigmoid_focal_loss(xb, t, gamma=gamma, alpha=alpha, reduction="sum")
    assert_close(q, f, "QFL vs focal on hard targets")
    q.backward()
    f.backward()
    assert_close(xa.grad, xb.grad, "QFL vs focal grad on hard targets")


def test_qfl_is_zero_where_prediction_equals_soft_target_focal_is_not():
    t = torch.tensor([0.1, 0.3, 0.7, 0.9], dtype=torch.float64)
    x = torch.logit(t)
    assert float(qfocal.quality_focal_loss(x, t, reduction="sum")) < 1e-20
    assert bool((qfocal.sigmoid_focal_loss(x, t, alpha=None, reduction="none") > 1e-2).all())


def test_vfl_does_not_down_weight_positives():
    """VFL's positives are weighted by their IoU target, not by a focal factor: the positive term is t * BCE."""
    x = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.8, 0.6, 0.0], dtype=torch.float64)
    loss = qfocal.varifocal_loss(x, t, reduction="none")
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert_close(loss[:2], t[:2] * bce[:2], "VFL positive term")
    assert_close(loss[2], 0.75 * torch.sigmoid(x[2]) ** 2 * bce[2], "VFL negative term")
    unweighted = qfocal.varifocal_loss(x, t, reduction="none", iou_weighted=False)
    assert_close(unweighted[:2], bce[:2], "VFL iou_weighted=False")


def test_dfl_target_on_a_bin_is_cross_entropy():
    logits = torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 2.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    dfl = qfocal.distribution_focal_loss(logits, target, reduction="none")
    ce = F.cross_entropy(logits, target.long(), reduction="none")
    assert_close(dfl, ce, "DFL on integer targets")


def test_dfl_nd_shapes_and_weight():
    logits = torch.randn(2, 7, 4, 17, dtype=torch.float64)
    target = torch.rand(2, 7, 4, dtype=torch.float64) * 15.9
    w = torch.rand(2, 7, 1, dtype=torch.float64)
    none = qfocal.distribution_focal_loss(logits, target, weight=w, reduction="none")
    assert none.shape == (2, 7, 4)
    flat = qfocal.distribution_focal_loss(logits.reshape(-1, 17), target.reshape(-1), reduction="none")
    assert_close(none, flat.view(2, 7, 4) * w, "DFL N-d")
    assert_close(
        qfocal.distribution_focal_loss(logits, target, weight=w, avg_factor=10.0),
        none.sum() / (10.0 + torch.finfo(torch.float32).eps),
        "DFL avg_factor",
    )


@pytest.mark.parametrize("kind", ["qfl", "focal", "vfl", "dfl"])
def test_gradcheck_float64(kind):
    g = torch.Generator().manual_seed(4)
    if kind == "dfl":
        x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.rand(6, generator=g, dtype=torch.float64) * 3.9
        assert torch.autograd.gradcheck(lambda a: qfocal.distribution_focal_loss(a, y, reduction="sum"), (x,))
        return
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.rand(5, 4, generator=g, dtype=torch.float64) * (torch.rand(5, 4, generator=g) > 0.3)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    kw = {"weight": w}
    if kind != "vfl":
        kw["pos_weight"] = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: _call(kind, a, t, reduction="none", **kw), (x,))
    assert torch.autograd.gradgradcheck(lambda a: _call(kind, a, t, reduction="mean", **kw), (x,))


def test_sparse_target_equals_dense():
    g = torch.Generator().manual_seed(5)
    n, c = 30, 7
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c + 1, (n,), generator=g)
    scores = torch.rand(n, generator=g, dtype=torch.float64) * (labels < c)
    dense = torch.zeros(n, c, dtype=torch.float64)
    pos = labels < c
    dense[pos, labels[pos]] = scores[pos]
    for kw in ({}, {"alpha": 0.25, "beta": 1.5}, {"reduction": "none"}, {"avg_factor": 3.0}):
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        sparse_loss = qfocal.quality_focal_loss(xa, (labels, scores), **kw)
        dense_loss = qfocal.quality_focal_loss(xb, dense, **kw)
        assert_close(sparse_loss, dense_loss, f"sparse vs dense {kw}")
        sparse_loss.sum().backward()
        dense_loss.sum().backward()
        assert_close(xa.grad, xb.grad, f"sparse vs dense grad {kw}")
    # int32 labels and a list instead of a tuple are accepted too
    assert_close(
        qfocal.quality_focal_loss(x, [labels.int(), scores]),
        qfocal.quality_focal_loss(x, dense),
        "int32 labels",
    )


def test_avg_factor_and_weight_semantics():
    x, t = _soft((10, 3), seed=6)
    elem = qfocal.quality_focal_loss(x, t, reduction="none")
    w = torch.rand(10, 3, dtype=torch.float64)
    assert_close(qfocal.quality_focal_loss(x, t, weight=w, reduction="sum"), (elem * w).sum(), "weighted sum")
    assert_close(qfocal.quality_focal_loss(x, t, weight=w), (elem * w).mean(), "weighted mean")
    eps = torch.finfo(torch.float32).eps
    assert_close(qfocal.quality_focal_loss(x, t, avg_factor=4), elem.sum() / (4 + eps), "avg_factor")
    assert_close(
        qfocal.quality_focal_loss(x, t, avg_factor=torch.tensor(4.0, dtype=torch.float64)),
        elem.sum() / (4 + eps),
        "tensor avg_factor",
    )
    # per-anchor (N,) weight, and (1, C) per-class weight by broadcasting
    wa = torch.rand(10, dtype=torch.float64)
    assert_close(
        qfocal.quality_focal_loss(x, t, weight=wa, reduction="none"), elem * wa[:, None], "per-anchor"
    )
    wc = torch.rand(1, 3, dtype=torch.float64)
    assert_close(qfocal.quality_focal_loss(x, t, weight=wc, reduction="none"), elem * wc, "per-class")
    assert_close(
        qfocal.quality_focal_loss(x, t, avg_factor=2.0, reduction="none"), elem, "none ignores avg_factor"
    )


# ------------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", LOSSES)
def test_half_inputs_are_computed_in_float32(kind, dtype):
    x, t = _soft((64, 11), dtype=torch.float32, seed=7)
    xh, th = x.to(dtype), t.to(dtype)
    xh.requires_grad_(True)
    xf = xh.detach().float().requires_grad_(True)
    for reduction in ("none", "mean", "sum"):
        out = _call(kind, xh, th, reduction=reduction)
        ref = _call(kind, xf, th.float(), reduction=reduction)
        assert out.dtype == dtype
        assert_close(
            out, ref.to(dtype), f"{kind} {dtype} {reduction}", rtol=0, atol=0
        )  # one rounding of fp32
    out = _call(kind, xh, th, reduction="sum")
    out.backward()
    _call(kind, xf, th.float(), reduction="sum").backward()
    assert xh.grad.dtype == dtype
    assert_close(xh.grad, xf.grad.to(dtype), f"{kind} {dtype} grad", rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.1])
def test_saturated_logits_are_finite(kind, gamma, dtype):
    x = torch.tensor([[-100.0, 100.0, -100.0, 100.0, 30.0, -30.0]], dtype=dtype).repeat(3, 1)
    t = torch.tensor([[0.0], [1.0], [0.5]], dtype=dtype).expand(3, 6).contiguous()
    x.requires_grad_(True)
    key = "beta" if kind == "qfl" else "gamma"
    loss = _call(kind, x, t, reduction="sum", **{key: gamma})
    loss.backward()
    assert torch.isfinite(loss), f"{kind} loss {loss}"
    assert bool(torch.isfinite(x.grad).all()), f"{kind} grad {x.grad}"
    # A confident wrong prediction is penalised: logit +100 on target 0 costs about 100 * a_t.
    assert float(loss.detach()) > 10


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("beta", [0.5, 0.25, 0.01])
def test_qfl_gradient_finite_where_target_equals_prediction(beta, dtype):
    """|t - p| ** beta with beta < 1 has an infinite slope at t == p: its gradient is defined there."""
    x = torch.tensor([0.0, 2.0, -3.0, 0.0, -100.0, 100.0], dtype=dtype, requires_grad=True)
    t = torch.sigmoid(x.detach().float()).to(dtype)
    t[3] = 0.5
    loss = qfocal.quality_focal_loss(x, t, beta=beta, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss)
    assert bool(torch.isfinite(x.grad).all()), f"grad {x.grad}"
    # at exact equality the factor's sub-gradient is 0, leaving BCE's slope (sigmoid(x) - t = 0) times 0
    assert float(x.grad[0]) == 0.0


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_focal_gamma_below_one_is_finite_on_hard_targets(gamma):
    """YOLOv5 users see non-finite losses with fl_gamma < 1: (1 - p_t) ** gamma at p_t = 1."""
    x = torch.tensor([40.0, -40.0, 17.0, -17.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = qfocal.sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("kind", [*LOSSES, "dfl"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty_input_gives_zero_connected_to_graph(kind, reduction):
    if kind == "dfl":
        x = torch.zeros(0, 17, requires_grad=True)
        loss = qfocal.distribution_focal_loss(x, torch.zeros(0), reduction=reduction)
    else:
        x = torch.zeros(0, 80, requires_grad=True)
        loss = _call(kind, x, torch.zeros(0, 80), reduction=reduction)
    if reduction == "none":
        assert loss.numel() == 0
    else:
        assert loss.shape == () and float(loss.detach()) == 0.0
    assert loss.requires_grad
    loss.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_empty_sparse_target():
    x = torch.zeros(0, 5, requires_grad=True)
    loss = qfocal.quality_focal_loss(x, (torch.zeros(0, dtype=torch.long), torch.zeros(0)), avg_factor=1.0)
    loss.backward()
    assert float(loss) == 0.0 and x.grad.shape == (0, 5)


@pytest.mark.parametrize("kind", LOSSES)
def test_non_contiguous_and_odd_shapes(kind):
    x, t = _soft((423, 3), dtype=torch.float32, seed=8)
    xt, tt = x.t(), t.t()  # 3 x 423, non-contiguous
    assert not xt.is_contiguous()
    assert_close(
        _call(kind, xt, tt, reduction="none"),
        _call(kind, xt.contiguous(), tt.contiguous(), reduction="none").t().t(),
        kind,
    )
    assert_close(_call(kind, xt, tt), _call(kind, x, t), f"{kind} mean")


# ----------------------------------------------------------------------------------------------- validation
def _x():
    return torch.zeros(4, 3)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: qfocal.quality_focal_loss(_x(), torch.zeros(4, 4)), ValueError, r"expected shape \(4, 3\)"),
        (
            lambda: qfocal.quality_focal_loss(_x(), torch.full((4, 3), 1.5)),
            ValueError,
            r"expected values in \[0, 1\]",
        ),
        (lambda: qfocal.quality_focal_loss(_x(), torch.full((4, 3), float("nan"))), ValueError, r"\[0, 1\]"),
        (lambda: qfocal.sigmoid_focal_loss(_x(), -torch.ones(4, 3)), ValueError, r"got 12 outside"),
        (
            lambda: qfocal.quality_focal_loss(torch.zeros(4, 3, dtype=torch.long), _x()),
            TypeError,
            "floating-point",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), torch.zeros(4, 3, dtype=torch.long)),
            TypeError,
            "target: expected a floating",
        ),
        (lambda: qfocal.quality_focal_loss([[0.0]], _x()), TypeError, "expected a torch.Tensor"),
        (
            lambda: qfocal.quality_focal_loss(_x(), _x(), reduction="avg"),
            ValueError,
            r"reduction: expected one of",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), _x(), reduction="sum", avg_factor=2),
            ValueError,
            "avg_factor",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), _x(), avg_factor=-1),
            ValueError,
            "avg_factor: expected a value >= 0",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), _x(), beta=-1),
            ValueError,
            "beta: expected a finite value >= 0",
        ),
        (lambda: qfocal.sigmoid_focal_loss(_x(), _x(), gamma=-0.5), ValueError, "gamma"),
        (lambda: qfocal.quality_focal_loss(_x(), _x(), beta="2"), TypeError, "beta: expected a real number"),
        (
            lambda: qfocal.quality_focal_loss(_x(), _x(), alpha=1.5),
            ValueError,
            r"alpha: expected a value in \[0, 1\]",
        ),
        (lambda: qfocal.quality_focal_loss(_x(), _x(), alpha=-0.5), ValueError, "alpha"),
        (lambda: qfocal.sigmoid_focal_loss(_x(), _x(), alpha=2.0), ValueError, "alpha"),
        (lambda: qfocal.varifocal_loss(_x(), _x(), alpha=None), ValueError, "alpha"),
        (lambda: qfocal.varifocal_loss(_x(), _x(), iou_weighted="yes"), TypeError, "iou_weighted"),
        (
            lambda: qfocal.quality_focal_loss(_x(), _x(), weight=torch.ones(5)),
            ValueError,
            "weight: expected a shape",
        ),
        (lambda: qfocal.quality_focal_loss(_x(), _x(), pos_weight=torch.ones(2)), ValueError, "pos_weight"),
        (
            lambda: qfocal.quality_focal_loss(_x(), (torch.tensor([0, 1, 2, 4]), torch.ones(4))),
            ValueError,
            r"labels: expected class indices in \[0, 3\]",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), (torch.tensor([0, 1, 2, -1]), torch.ones(4))),
            ValueError,
            "labels",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), (torch.zeros(4), torch.ones(4))),
            TypeError,
            "labels: expected an integer",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), (torch.zeros(3, dtype=torch.long), torch.ones(4))),
            ValueError,
            r"labels: expected shape \(4,\)",
        ),
        (
            lambda: qfocal.quality_focal_loss(_x(), (torch.zeros(4, dtype=torch.long), torch.ones(3))),
            ValueError,
            "scores: expected shape",
        ),
        (
            lambda: qfocal.quality_focal_loss(
                _x(), (torch.zeros(4, dtype=torch.long), torch.full((4,), 2.0))
            ),
            ValueError,
            "scores",
        ),
        (lambda: qfocal.quality_focal_loss(_x(), (torch.zeros(4, dtype=torch.long),)), ValueError, "pair"),
        (
            lambda: qfocal.quality_focal_loss(
                torch.zeros(2, 4, 3), (torch.zeros(2, dtype=torch.long), torch.ones(2))
            ),
            ValueError,
            r"\(N, C\)",
        ),
        (
            lambda: qfocal.sigmoid_focal_loss(_x(), (torch.zeros(4, dtype=torch.long), torch.ones(4))),
            ValueError,
            "quality_focal_loss only",
        ),
        (
            lambda: qfocal.distribution_focal_loss(torch.zeros(4, 9), torch.full((4,), 8.0)),
            ValueError,
            r"\[0, 8\)",
        ),
        (
            lambda: qfocal.distribution_focal_loss(torch.zeros(4, 9), torch.full((4,), -0.1)),
            ValueError,
            "target",
        ),
        (
            lambda: qfocal.distribution_focal_loss(torch.zeros(4, 9), torch.zeros(5)),
            ValueError,
            r"expected shape \(4,\)",
        ),
        (
            lambda: qfocal.distribution_focal_loss(torch.zeros(4, 9), torch.zeros(4, dtype=torch.long)),
            TypeError,
            "target",
        ),
        (lambda: qfocal.QualityFocalLoss(reduction="mena"), ValueError, "reduction"),
        (lambda: qfocal.VarifocalLoss(alpha=None), ValueError, "alpha"),
        (lambda: qfocal.SigmoidFocalLoss(gamma=-1), ValueError, "gamma"),
        (lambda: qfocal.set_backend("cuda-magic"), ValueError, "backend: expected one of"),
        (lambda: qfocal.set_value_checks(0), TypeError, "bool"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_device_mismatch_is_a_value_error():
    meta = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match="device"):
        qfocal.quality_focal_loss(_x(), meta)
    with pytest.raises(ValueError, match="device"):
        qfocal.quality_focal_loss(_x(), _x(), weight=torch.ones(3, device="meta"))


def test_value_checks_can_be_switched_off_for_hot_loops():
    bad = torch.full((4, 3), 1.5)
    with qfocal.value_checks(False):
        assert not qfocal.value_checks_enabled()
        qfocal.quality_focal_loss(_x(), bad)  # no pass over the data, no error
        with pytest.raises(ValueError, match="shape"):  # structural checks still run
            qfocal.quality_focal_loss(_x(), torch.zeros(2))
    assert qfocal.value_checks_enabled()
    with pytest.raises(ValueError):
        qfocal.quality_focal_loss(_x(), bad)


# ------------------------------------------------------------------------------------------------- modules
def test_modules_store_hyper_parameters_and_call_functions():
    x, t = _soft((9, 4), seed=9)
    w = torch.rand(9, dtype=torch.float64)
    m = qfocal.QualityFocalLoss(beta=1.5, alpha=0.25, reduction="sum", loss_weight=2.0)
    assert "beta=1.5" in repr(m) and "loss_weight=2.0" in repr(m)
    assert_close(
        m(x, t, weight=w),
        2 * qfocal.quality_focal_loss(x, t, beta=1.5, alpha=0.25, weight=w, reduction="sum"),
        "QFL module",
    )
    m = qfocal.SigmoidFocalLoss(gamma=1.0, pos_weight=torch.full((4,), 2.0, dtype=torch.float64))
    assert_close(
        m(x, t, avg_factor=3),
        qfocal.sigmoid_focal_loss(x, t, gamma=1.0, pos_weight=m.pos_weight, avg_factor=3),
        "FL module",
    )
    assert "pos_weight" in dict(m.named_buffers())
    m = qfocal.VarifocalLoss(iou_weighted=False)
    assert_close(m(x, t), qfocal.varifocal_loss(x, t, iou_weighted=False), "VFL module")
    m = qfocal.DistributionFocalLoss(reduction="none")
    logits, y = torch.randn(5, 9, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 7
    assert_close(m(logits, y), qfocal.distribution_focal_loss(logits, y, reduction="none"), "DFL module")


@pytest.mark.parametrize("module", [qfocal.functional, qfocal.modules, qfocal._checks, qfocal._backend])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


def test_dtype_precisions_table_covers_every_dtype_tested():
    assert set(ALL_DTYPES) <= set(DTYPE_PRECISIONS)
