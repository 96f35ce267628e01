"""The fused kernels (qfocal.ops) against the reference math: values and gradients, every option.

The wide matrix runs on the ``eager`` implementation (the fused math uncompiled: fast to test); a few cases run
on ``inductor`` (one compiled graph each). The Triton kernel is tested in test_ops_triton.py.
"""

from __future__ import annotations

import pytest
import torch

import qfocal
from tests.conftest import DTYPE_PRECISIONS, assert_close

KINDS = ("qfl", "focal", "vfl")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
REDUCTIONS = ("none", "mean", "sum")


def _loss(kind: str, logits, target, *, gamma: float = 2.0, **kw):
    if kind == "qfl":
        return qfocal.quality_focal_loss(logits, target, beta=gamma, **kw)
    if kind == "focal":
        return qfocal.sigmoid_focal_loss(logits, target, gamma=gamma, **kw)
    kw.pop("pos_weight", None)
    kw.pop("alpha", None)
    return qfocal.varifocal_loss(logits, target, gamma=gamma, **kw)


def _inputs(shape=(3, 423), dtype=torch.float32, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    pos = torch.rand(shape, generator=gen) < 0.3
    t = (torch.rand(shape, generator=gen, dtype=torch.float64) * pos).to(dtype)
    return x, t


def _run_both(backend, kind, x, target, grad_scale=1.7, **kw):
    """(loss, grad) from the reference and from ``backend``, on separate leaves, same upstream gradient."""
    out = []
    for name in ("reference", backend):
        leaf = x.detach().clone().requires_grad_()
        with qfocal.backend(name):
            loss = _loss(kind, leaf, target, **kw)
        (loss * grad_scale).sum().backward()
        out.append((loss.detach(), leaf.grad))
    return out


def _check(backend, kind, x, target, tol_dtype=None, **kw):
    (ref_loss, ref_grad), (loss, grad) = _run_both(backend, kind, x, target, **kw)
    rtol, atol = DTYPE_PRECISIONS[tol_dtype or x.dtype]
    assert loss.dtype == ref_loss.dtype == x.dtype, f"loss dtype {loss.dtype}, expected {x.dtype}"
    assert loss.shape == ref_loss.shape, f"loss shape {tuple(loss.shape)}, expected {tuple(ref_loss.shape)}"
    assert grad.dtype == x.dtype and grad.shape == x.shape
    assert torch.isfinite(grad).all(), "fused gradient has non-finite values"
    assert_close(loss, ref_loss, f"{backend} {kind} loss", rtol=rtol, atol=atol)
    # A gradient is a difference of two terms (d BCE * m + BCE * dm) that cancel where t ~ sigmoid(x), so
    # its error scales with the largest gradient, not with each element: absolute tolerance to match.
    scale = ref_grad.abs().max().item() if ref_grad.numel() else 0.0
    assert_close(grad, ref_grad, f"{backend} {kind} grad", rtol=rtol, atol=max(atol, rtol * scale))


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = qfocal.set_backend("reference")
    qfocal.set_backend(previous)
    yield
    qfocal.set_backend(previous)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_eager_matches_reference_dtypes_reductions(kind, dtype, reduction):
    x, t = _inputs(dtype=dtype)
    pos_weight = torch.linspace(0.5, 2.0, 423, dtype=dtype)
    weight = torch.rand(3, generator=torch.Generator().manual_seed(1)).to(dtype)
    _check("eager", kind, x, t, reduction=reduction, pos_weight=pos_weight, weight=weight, alpha=0.25)


_OPTIONS = [
    {},
    {"alpha": None},
    {"avg_factor": 17.0},
    {"avg_factor": 0.0},
    {"avg_factor": torch.tensor(9.0)},
    {"avg_factor": torch.tensor([9.0])},
    {"weight": "full"},
    {"weight": "per_anchor"},
    {"pos_weight": "per_class"},
    {"gamma": 0.0},
    {"gamma": 1.0},
    {"gamma": 0.4},
]


def _options_id(options):
    return (
        ",".join(
            f"{k}={v if not isinstance(v, torch.Tensor) else tuple(v.shape)}" for k, v in options.items()
        )
        or "defaults"
    )


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        (kind, o) for kind in KINDS for o in _OPTIONS if not (kind == "vfl" and "alpha" in o)
    ],  # varifocal needs an alpha
    ids=lambda v: v if isinstance(v, str) else _options_id(v),
)
def test_eager_matches_reference_options(kind, options):
    x, t = _inputs()
    options = dict(options)
    if options.get("weight") == "full":
        options["weight"] = torch.rand(3, 423, generator=torch.Generator().manual_seed(2))
    elif options.get("weight") == "per_anchor":
        options["weight"] = torch.rand(3, generator=torch.Generator().manual_seed(2))
    if options.get("pos_weight") == "per_class":
        options["pos_weight"] = torch.rand(423, generator=torch.Generator().manual_seed(3)) + 0.5
    _check("eager", kind, x, t, **options)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sparse_target_matches_dense_reference(dtype, reduction):
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(50, 7, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, 8, (50,), generator=gen)  # 7 = background
    scores = torch.rand(50, generator=gen).to(dtype)
    _check(
        "eager",
        "qfl",
        x,
        (labels, scores),
        reduction=reduction,
        weight=torch.rand(50, generator=gen).to(dtype),
    )


def test_sparse_target_int32_labels_and_pos_weight():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 5, generator=gen) * 2
    labels = torch.randint(0, 6, (30,), generator=gen).int()
    _check(
        "eager",
        "qfl",
        x,
        (labels, torch.rand(30, generator=gen)),
        pos_weight=torch.rand(5, generator=gen) + 0.5,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_inputs(kind):
    x, t = _inputs(shape=(423, 3))
    x, t = x.t(), t.t()[:, :]  # (3, 423), both transposed views
    assert not x.is_contiguous() and not t.is_contiguous()
    weight = torch.rand(423, 3, generator=torch.Generator().manual_seed(6)).t()
    _check("eager", kind, x, t, reduction="mean", weight=weight)
    _check("eager", kind, x[:, ::2], t[:, ::2], reduction="none")


@pytest.mark.parametrize("kind", KINDS)
def test_three_dimensional_logits(kind):
    x, t = _inputs(shape=(2, 6, 5))
    _check("eager", kind, x, t, weight=torch.rand(2, 6), avg_factor=3.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_empty_inputs_give_connected_zero(kind, reduction):
    x = torch.zeros(0, 4, requires_grad=True)
    with qfocal.backend("fused"):
        loss = _loss(kind, x, torch.zeros(0, 4), reduction=reduction)
    assert loss.requires_grad, "empty loss must stay connected to the graph"
    expected_shape = (0, 4) if reduction == "none" else ()
    assert tuple(loss.shape) == expected_shape
    if reduction != "none":
        assert loss.item() == 0.0
    loss.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_extreme_logits_finite_and_equal(kind, dtype):
    x = torch.tensor([[-100.0, -30.0, 0.0, 30.0, 100.0]] * 3, dtype=dtype)
    t = torch.tensor([[0.0] * 5, [1.0] * 5, [0.5] * 5], dtype=dtype)
    _check("eager", kind, x, t, reduction="none", gamma=1.5)
    _check("eager", kind, x, t, reduction="sum", gamma=0.5)


@pytest.mark.parametrize("kind", ("qfl", "vfl"))
def test_fractional_gamma_where_target_equals_prediction(kind):
    """|t - p| ** gamma with 0 < gamma < 1: slope 0 where t == p, as the reference defines it."""
    x = torch.linspace(-4, 4, 12, dtype=torch.float64).reshape(3, 4)
    t = torch.sigmoid(x)
    t[0] = 0.0  # negatives too (varifocal's modulated branch)
    (_, ref_grad), (_, grad) = _run_both("eager", kind, x, t, gamma=0.3, reduction="sum")
    assert torch.isfinite(grad).all()
    assert_close(grad, ref_grad, f"{kind} grad at t == p")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_gradcheck_fp64(kind, reduction):
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(4, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    t = torch.rand(4, 5, generator=gen, dtype=torch.float64) * (torch.rand(4, 5, generator=gen) > 0.4)
    weight = torch.rand(4, generator=gen, dtype=torch.float64)
    with qfocal.backend("eager"):
        assert torch.autograd.gradcheck(
            lambda z: _loss(kind, z, t, gamma=1.5, reduction=reduction, weight=weight),
            (x,),
            eps=1e-6,
            atol=1e-6,
        )


def test_double_backward_and_retain_graph_match_reference():
    gen = torch.Generator().manual_seed(8)
    x0 = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    t = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    results = {}
    for name in ("reference", "eager"):
        x = x0.clone().requires_grad_()
        with qfocal.backend(name):
            loss = qfocal.quality_focal_loss(x, t, beta=2.0, reduction="sum")
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        with qfocal.backend(name):
            loss = qfocal.quality_focal_loss(x, t, beta=2.0)
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        x.grad = None
        loss.backward()
        results[name] = (g.detach(), gg, first, x.grad)
    for label, ref, got in zip(
        ("grad", "grad of grad", "1st backward", "2nd backward"),
        results["reference"],
        results["eager"],
        strict=True,
    ):
        assert_close(got, ref, label)


def test_gradient_flows_to_target_through_reference_fallback():
    x, t = _inputs(shape=(4, 6))
    grads = []
    for name in ("reference", "eager"):
        target = t.clone().requires_grad_()
        with qfocal.backend(name):
            qfocal.quality_focal_loss(x, target).backward()
        grads.append(target.grad)
    assert grads[1] is not None, (
        "the fused path must fall back to the reference when the target needs a gradient"
    )
    assert_close(grads[1], grads[0], "target grad")


def test_no_grad_forward_matches_and_builds_no_graph():
    x, t = _inputs()
    with torch.no_grad():
        ref = qfocal.quality_focal_loss(x, t)
        with qfocal.backend("eager"):
            got = qfocal.quality_focal_loss(x.requires_grad_(), t)
    assert not got.requires_grad
    assert_close(got, ref, "no-grad loss")


def test_fused_backward_hands_over_the_saved_buffer():
    """The gradient written in forward becomes logits.grad itself: no second N x C tensor in backward."""
    from qfocal.ops import fused_loss_op

    x, t = _inputs(shape=(64, 32))
    x.requires_grad_()
    args = (t, None, None, None, None, None, "qfl", 2.0, -1.0, True, "mean", -1.0, True, "eager")
    loss, grad = fused_loss_op(x, *args)
    pointer = grad.data_ptr()
    del grad
    loss.backward()
    assert x.grad.data_ptr() == pointer, "backward copied the saved gradient"
    expected = x.grad.clone()
    x.grad = None
    with qfocal.backend("reference"):
        qfocal.quality_focal_loss(x, t).backward()
    assert_close(expected, x.grad, "op gradient")


# ----------------------------------------------------------------------------------------------------------
# Inductor: one compiled graph per structure, so only a few structures here (the rest are marked slow).
# ----------------------------------------------------------------------------------------------------------
_INDUCTOR_CASES = [
    ("qfl", torch.float32, {"pos_weight": torch.ones(1), "alpha": 0.25, "gamma": 1.5}),
    ("qfl", torch.float32, {"sparse": True}),
    ("vfl", torch.bfloat16, {"avg_factor": 7.0, "weight": "per_anchor"}),
]
_INDUCTOR_SLOW = [
    ("focal", torch.float32, {"reduction": "none", "gamma": 0.5}),
    ("focal", torch.float16, {"reduction": "sum", "pos_weight": "per_class"}),
    ("qfl", torch.float64, {"weight": "per_anchor"}),
]


def _inductor_case(kind, dtype, options):
    options = dict(options)
    x, t = _inputs(shape=(19, 23), dtype=dtype)
    if options.pop("sparse", False):
        gen = torch.Generator().manual_seed(9)
        t = (torch.randint(0, 24, (19,), generator=gen), torch.rand(19, generator=gen).to(dtype))
    if options.get("weight") == "per_anchor":
        options["weight"] = torch.rand(19, generator=torch.Generator().manual_seed(10)).to(dtype)
    if options.get("pos_weight") == "per_class":
        options["pos_weight"] = torch.rand(23, generator=torch.Generator().manual_seed(11)).to(dtype) + 0.5
    _check("inductor", kind, x, t, **options)
    # a new batch size and a new gamma reuse the graph (dynamic shapes, hyper-parameters as tensors)
    x2, t2 = _inputs(shape=(7, 23), dtype=dtype, seed=3)
    if isinstance(t, tuple):
        t2 = (t[0][:7], t[1][:7])
    if isinstance(options.get("weight"), torch.Tensor):
        options["weight"] = options["weight"][:7]
    options["gamma"] = 2.5
    _check("inductor", kind, x2, t2, **options)


@pytest.mark.parametrize(("kind", "dtype", "options"), _INDUCTOR_CASES, ids=lambda v: str(v)[:30])
def test_inductor_matches_reference(kind, dtype, options):
    _inductor_case(kind, dtype, options)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "dtype", "options"), _INDUCTOR_SLOW, ids=lambda v: str(v)[:30])
def test_inductor_matches_reference_more_structures(kind, dtype, options):
    _inductor_case(kind, dtype, options)
