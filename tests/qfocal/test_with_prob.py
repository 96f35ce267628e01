"""qfocal._with_prob: quality focal and focal loss on probabilities (mmdetection's activated=True).

Their comparison with mmdetection's own functions is in test_integration_mmdet.py; here the properties that need
no mmdetection: equal to the logit versions through the sigmoid, finite at p = 0 and p = 1, gradcheck, the
target forms, weights and reductions, dtypes and the errors.
"""

from __future__ import annotations

import pytest
import torch

import qfocal
from qfocal._with_prob import py_focal_loss_with_prob, quality_focal_loss_with_prob
from tests.conftest import assert_close

FNS = {"qfl": quality_focal_loss_with_prob, "focal": py_focal_loss_with_prob}


def _inputs(n=23, c=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 2).to(dtype)
    t = torch.rand(n, c, generator=g, dtype=torch.float64) * (torch.rand(n, c, generator=g) > 0.6)
    return x, t.to(dtype)


def _grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    out.sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_equal_to_the_logit_versions_through_the_sigmoid(reduction):
    x, t = _inputs(seed=1)
    weight = torch.rand(x.shape[0], dtype=torch.float64)
    cases = [
        (quality_focal_loss_with_prob, qfocal.quality_focal_loss, {"beta": 2.0}),
        (quality_focal_loss_with_prob, qfocal.quality_focal_loss, {"beta": 1.5, "alpha": 0.25}),
        (py_focal_loss_with_prob, qfocal.sigmoid_focal_loss, {"alpha": 0.25, "gamma": 2.0}),
        (py_focal_loss_with_prob, qfocal.sigmoid_focal_loss, {"alpha": None, "gamma": 1.0}),
    ]
    with qfocal.backend("reference"):
        for with_prob, with_logits, kw in cases:
            kw = {**kw, "weight": weight, "reduction": reduction}
            v1, g1 = _grad(lambda a, kw=kw, f=with_prob: f(a.sigmoid(), t, **kw), x)
            v2, g2 = _grad(lambda a, kw=kw, f=with_logits: f(a, t, **kw), x)
            assert_close(v1, v2, f"{with_prob.__name__} {kw} value", rtol=1e-9, atol=1e-12)
            assert_close(g1, g2, f"{with_prob.__name__} {kw} d/dx", rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["qfl", "focal"])
def test_p_zero_and_one_stay_finite_with_logs_clamped_at_minus_100(kind):
    p = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    kw = {"beta": 2.0} if kind == "qfl" else {"alpha": None, "gamma": 2.0}
    value, grad = _grad(FNS[kind], p, t, reduction="none", **kw)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    # a wrong certainty costs the clamp (100) times a modulating factor of 1; a right one costs 0
    assert value[:4].tolist() == [100.0, 100.0, 0.0, 0.0]


@pytest.mark.parametrize("kind", ["qfl", "focal"])
def test_gradcheck_float64(kind):
    g = torch.Generator().manual_seed(2)
    p = (torch.rand(6, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    t = torch.rand(6, 4, generator=g, dtype=torch.float64) * (torch.rand(6, 4, generator=g) > 0.5)
    assert torch.autograd.gradcheck(lambda a: FNS[kind](a, t, reduction="none"), (p,))
    assert torch.autograd.gradcheck(lambda a: FNS[kind](a, t, reduction="mean", avg_factor=3.0), (p,))


def test_fractional_exponent_has_a_finite_gradient_where_target_equals_prediction():
    p = torch.tensor([[0.3, 0.0, 0.7]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.3, 0.0, 0.2]], dtype=torch.float64)
    quality_focal_loss_with_prob(p, t, beta=0.5, reduction="sum").backward()
    assert torch.isfinite(p.grad).all()
    p.grad = None
    py_focal_loss_with_prob(p, t.round(), gamma=0.5, reduction="sum").backward()
    assert torch.isfinite(p.grad).all()


def test_target_forms_agree():
    x, _ = _inputs(seed=3)
    p = x.sigmoid()
    n, c = p.shape
    labels = torch.randint(0, c + 1, (n,), generator=torch.Generator().manual_seed(3))  # c = background
    scores = torch.rand(n, dtype=torch.float64) * (labels < c)
    dense = torch.zeros(n, c, dtype=torch.float64)
    dense[labels < c, labels[labels < c]] = scores[labels < c]
    for reduction in ("none", "mean", "sum"):
        assert_close(
            quality_focal_loss_with_prob(p, (labels, scores), reduction=reduction),
            quality_focal_loss_with_prob(p, dense, reduction=reduction),
            f"QFL (labels, scores) vs dense, {reduction}",
        )
        one_hot = torch.nn.functional.one_hot(labels, c + 1)[:, :c].double()
        assert_close(
            py_focal_loss_with_prob(p, labels, reduction=reduction),
            py_focal_loss_with_prob(p, one_hot, reduction=reduction),
            f"focal labels vs one-hot, {reduction}",
        )


@pytest.mark.parametrize("kind", ["qfl", "focal"])
def test_weights_reductions_and_avg_factor(kind):
    fn = FNS[kind]
    x, t = _inputs(seed=4)
    p = x.sigmoid()
    elem = fn(p, t, reduction="none")
    assert elem.shape == p.shape and elem.dtype == torch.float64
    per_anchor = torch.rand(p.shape[0], dtype=torch.float64)
    weighted = elem * per_anchor[:, None]
    assert_close(fn(p, t, weight=per_anchor, reduction="none"), weighted, "per-anchor weight")
    assert_close(fn(p, t, weight=per_anchor, reduction="sum"), weighted.sum(), "sum")
    assert_close(fn(p, t, weight=per_anchor), weighted.mean(), "mean")
    eps = torch.finfo(torch.float32).eps
    assert_close(fn(p, t, weight=per_anchor, avg_factor=7.0), weighted.sum() / (7.0 + eps), "avg_factor")
    empty = torch.zeros(0, 5, dtype=torch.float64, requires_grad=True)
    out = fn(empty, torch.zeros(0, 5, dtype=torch.float64))
    out.backward()
    assert out.item() == 0.0 and empty.grad.shape == (0, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["qfl", "focal"])
def test_low_precision_is_computed_in_fp32_and_returned_in_its_dtype(kind, dtype):
    x, t = _inputs(seed=5, dtype=torch.float32)
    p = x.sigmoid().to(dtype)
    out = FNS[kind](p, t.to(dtype), reduction="none")
    assert out.dtype == dtype
    expected = FNS[kind](p.float(), t.to(dtype).float(), reduction="none").to(dtype)
    assert torch.equal(out, expected)


def test_errors_say_what_was_expected():
    x, t = _inputs(seed=6)
    p = x.sigmoid()
    with pytest.raises(ValueError, match=r"probs: expected values in \[0, 1\].*not logits"):
        quality_focal_loss_with_prob(x, t)
    with pytest.raises(TypeError, match="probs: expected a floating-point tensor"):
        py_focal_loss_with_prob(torch.ones(3, 2, dtype=torch.long), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="reduction: expected one of"):
        py_focal_loss_with_prob(p, t, reduction="avg")
    with pytest.raises(ValueError, match="avg_factor: expected None"):
        quality_focal_loss_with_prob(p, t, reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 5\]"):
        py_focal_loss_with_prob(p, torch.full((p.shape[0],), 6))
    with pytest.raises(ValueError, match=r"target: expected class indices of shape \(23,\)"):
        py_focal_loss_with_prob(p, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"probs: expected shape \(N, C\) with a \(labels, scores\)"):
        quality_focal_loss_with_prob(p[0], (torch.zeros(1, dtype=torch.long), torch.zeros(1)))
    with pytest.raises(ValueError, match=r"beta: expected a finite value >= 0"):
        quality_focal_loss_with_prob(p, t, beta=-1.0)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0, 1\]"):
        py_focal_loss_with_prob(p, t, alpha=-0.5)
