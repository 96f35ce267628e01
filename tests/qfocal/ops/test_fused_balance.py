"""The fused op's gradient norms and the "auto" gain they give (issue 23), the closed-form exponents, and shapes
that vary without leaving the compiled path.

1. ``qfocal::fused_loss_norms`` returns ``||d loss / d logits||^2`` and ``||d BCE / d logits||^2`` from the loss's
   own pass; :func:`qfocal.integrations._gain.loss_and_gain` turns them into the gain of
   :func:`~qfocal.integrations._gain.matched_gain` (the definition, kept as the fallback), with the loss's own
   gradient unchanged bit for bit.
2. Exponents 1.5, 2, 2.5, 3, 3.5 and 4 compile to products and a sqrt (no pow) and share BCE's exp: still the
   reference's values and gradients, and BCE still exact at any logit.
3. Two hundred distinct shapes in one process keep the Inductor path (a handful of dynamic graphs).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

import qfocal
from qfocal.integrations import _gain
from qfocal.modules import FocalLoss, QFocalLoss
from qfocal.ops import _inductor, capture_grad_norms, eager_fallbacks, fused_loss_norms_op, select
from tests.conftest import assert_close
from tests.qfocal.ops.test_op import _check, _inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    monkeypatch.delenv("QFOCAL_BACKEND", raising=False)
    previous = qfocal.set_backend("auto")
    yield
    qfocal.set_backend(previous)


@pytest.fixture
def matched_calls(monkeypatch) -> list:
    """Every call of the fallback (matched_gain) from loss_and_gain, recorded."""
    calls: list = []
    original = _gain.matched_gain

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(_gain, "matched_gain", counting)
    return calls


def _data(shape=(37, 23), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    t = torch.rand(shape, generator=gen) * (torch.rand(shape, generator=gen) < 0.3)
    return x, t


def _criterion(kind: str, reduction: str, pos_weight=None, weight=None):
    """A qfocal criterion called as criterion(pred, target) and the BCE it is matched to (YOLOv5's pairing)."""
    bce = nn.BCEWithLogitsLoss(reduction=reduction, pos_weight=pos_weight, weight=weight)
    if kind == "qfl":
        return QFocalLoss(bce, gamma=1.5, alpha=0.25), bce
    if kind == "focal":
        return FocalLoss(bce, gamma=2.0, alpha=0.25), bce
    return qfocal.VarifocalLoss(reduction=reduction, gamma=2.0, alpha=0.75), bce


# ----------------------------------------------------------------------------------------------------------
# 1. The auto gain from the op's own pass
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("weights", ["none", "pos_weight", "pos_weight+weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["qfl", "focal", "vfl"])
def test_fused_gain_equals_matched_gain(kind, reduction, weights, dtype, matched_calls):
    x, t = _data()
    gen = torch.Generator().manual_seed(1)
    pos_weight = torch.rand(23, generator=gen) + 0.5 if weights != "none" and kind != "vfl" else None
    weight = torch.rand(1, 23, generator=gen) if weights == "pos_weight+weight" else None
    if (
        kind == "vfl" and weights != "none"
    ):  # YOLOv5's obj_pw of 1: varifocal has none, and BCE's 1 is the same
        pos_weight = torch.ones(1)
    criterion, bce = _criterion(kind, reduction, pos_weight, weight if kind != "vfl" else None)
    pred = x.to(dtype).requires_grad_()
    with qfocal.backend("eager"):
        value, gain = _gain.loss_and_gain(criterion, bce, pred, t)
        assert not matched_calls, "the fused path fell back to matched_gain"
        expected = _gain.matched_gain(criterion, bce, pred, t)
    assert gain.dtype == torch.float32 and gain.ndim == 0 and not gain.requires_grad
    assert value.requires_grad and value.dtype == dtype
    assert_close(gain, expected, f"{kind} {reduction} {weights} gain", rtol=1e-5, atol=0.0)
    assert gain.item() != 1.0  # a real ratio, not the fallback's 1


@pytest.mark.parametrize("kind", ["qfl", "focal", "vfl"])
def test_fused_gain_on_inductor_and_the_loss_gradient_is_unchanged(kind, matched_calls):
    """The norms come from the compiled pass; the loss, its gradient (and a second backward) keep their bits."""
    x, t = _data(shape=(64, 80), seed=2)
    criterion, bce = _criterion(kind, "mean", torch.full((80,), 1.5) if kind != "vfl" else None)
    with qfocal.backend("inductor"):
        plain_leaf = x.clone().requires_grad_()
        plain = criterion(plain_leaf, t)
        plain.backward(retain_graph=True)
        first = plain_leaf.grad.clone()
        plain_leaf.grad = None
        plain.backward()
        leaf = x.clone().requires_grad_()
        value, gain = _gain.loss_and_gain(criterion, bce, leaf, t)
        value.backward(retain_graph=True)
        fused_first = leaf.grad.clone()
        leaf.grad = None
        value.backward()
        expected = _gain.matched_gain(criterion, bce, x, t)
    assert not matched_calls[:0] and len(matched_calls) == 1, "only the explicit matched_gain call may run"
    assert torch.equal(value, plain), "the loss value changed"
    assert torch.equal(fused_first, first), "the loss gradient changed"
    assert torch.equal(leaf.grad, plain_leaf.grad), "the retained-graph gradient changed"
    assert_close(gain, expected, f"inductor {kind} gain", rtol=1e-5, atol=0.0)


def test_norms_op_reports_its_own_gradient_and_bce():
    """own_sq is the squared norm of the very gradient backward returns; bce_sq that of BCE's, with pos_weight."""
    x, t = _data(shape=(16, 9), dtype=torch.float64, seed=3)
    pw = torch.rand(9, dtype=torch.float64) + 0.5
    w = torch.rand(16, 1, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    with qfocal.backend("eager"), capture_grad_norms() as records:
        qfocal.quality_focal_loss(leaf, t, beta=2.0, pos_weight=pw, weight=w, reduction="sum").backward()
    (record,) = records
    assert record.own_sq.dtype == record.bce_sq.dtype == torch.float64 and not record.own_sq.requires_grad
    assert_close(record.own_sq, leaf.grad.square().sum(), "own_sq")
    ref = x.clone().requires_grad_()
    nn.functional.binary_cross_entropy_with_logits(
        ref, t, weight=w, pos_weight=pw, reduction="sum"
    ).backward()
    assert_close(record.bce_sq, ref.grad.square().sum(), "bce_sq")


def test_norms_op_passes_opcheck():
    x, t = _data(shape=(6, 7), seed=4)
    for need_grad in (True, False):
        kwargs = dict(
            target=t, labels=None, scores=None, pos_weight=None, weight=None, avg_factor=None,
            kind="qfl", exponent=1.5, alpha=0.25, iou_weighted=True, reduction="mean", avg_value=-1.0,
            need_grad=need_grad, impl="eager",
        )  # fmt: skip
        torch.library.opcheck(fused_loss_norms_op, (x.clone().requires_grad_(need_grad),), kwargs)
        loss, grad, norms = fused_loss_norms_op(x, **kwargs)
        assert loss.shape == () and grad.shape == ((6, 7) if need_grad else (0,))
        assert norms.shape == (2,) and norms.dtype == torch.float64 and (norms > 0).all()


def test_empty_and_zero_gradients_give_gain_one_and_underflow_the_cap(matched_calls):
    criterion, bce = _criterion("qfl", "mean")
    with qfocal.backend("eager"):
        # empty input: the op routes to the reference (no norms), the fallback gives 1
        empty = torch.zeros(0, 4, requires_grad=True)
        value, gain = _gain.loss_and_gain(criterion, bce, empty, torch.zeros(0, 4))
        assert gain.item() == 1.0 and value.item() == 0.0 and len(matched_calls) == 1
        # both gradients exactly 0 (t = sigmoid(x) = 0.5): gain 1, fused
        x = torch.zeros(5, 3, requires_grad=True)
        _, gain = _gain.loss_and_gain(criterion, bce, x, torch.full((5, 3), 0.5))
        assert gain.item() == 1.0 and len(matched_calls) == 1
        # the loss's gradient 0 where BCE's is not (varifocal with alpha 0, no positives): gain 1
        vfl = qfocal.VarifocalLoss(alpha=0.0)
        _, gain = _gain.loss_and_gain(vfl, nn.BCEWithLogitsLoss(), torch.randn(5, 3), torch.zeros(5, 3))
        assert gain.item() == 1.0 and len(matched_calls) == 1
        # a gradient 1e-13 against BCE's 1e-5: the cap, as matched_gain
        x = torch.full((5, 3), -10.0)
        _, gain = _gain.loss_and_gain(criterion, bce, x, torch.zeros(5, 3), max_gain=50.0)
        assert gain.item() == 50.0 == _gain.matched_gain(criterion, bce, x, torch.zeros(5, 3), max_gain=50.0)
    assert len(matched_calls) == 2  # the explicit comparison only


def test_gain_in_any_grad_mode(matched_calls):
    x, t = _data(shape=(20, 5), seed=5)
    criterion, bce = _criterion("qfl", "sum")
    expected = _gain.matched_gain(criterion, bce, x, t).item()
    with qfocal.backend("eager"):
        for mode in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with mode():
                _, gain = _gain.loss_and_gain(criterion, bce, x, t)
                got = gain.item()
            assert got == pytest.approx(expected, rel=1e-6), mode.__name__
    assert len(matched_calls) == 1


def test_fallback_where_the_op_cannot_give_the_norms(matched_calls):
    """Reference backend, forward-mode AD, other criteria, another BCE: matched_gain, the same numbers."""
    x, t = _data(shape=(12, 7), seed=6)
    criterion, bce = _criterion("qfl", "mean", torch.full((7,), 2.0))
    with qfocal.backend("eager"):
        fused = _gain.loss_and_gain(criterion, bce, x, t)[1]
    assert not matched_calls
    with qfocal.backend("reference"):
        assert_close(
            _gain.loss_and_gain(criterion, bce, x, t)[1], fused, "reference backend", rtol=1e-5, atol=0
        )
    assert len(matched_calls) == 1
    with qfocal.backend("eager"), fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        assert_close(_gain.loss_and_gain(criterion, bce, dual, t)[1], fused, "forward AD", rtol=1e-5, atol=0)
        assert len(matched_calls) == 2
        # a criterion that is not the op's output, and BCEs that are not the loss's
        scaled = lambda p, q: criterion(p, q) * 2.0  # noqa: E731
        _gain.loss_and_gain(scaled, bce, x, t)
        _gain.loss_and_gain(criterion, nn.BCEWithLogitsLoss(pos_weight=torch.full((7,), 3.0)), x, t)
        _gain.loss_and_gain(criterion, nn.BCEWithLogitsLoss(reduction="sum", pos_weight=bce.pos_weight), x, t)
        assert len(matched_calls) == 5
        # an equal pos_weight that is another tensor, and None against ones: still fused
        _gain.loss_and_gain(criterion, nn.BCEWithLogitsLoss(pos_weight=torch.full((1, 7), 2.0)), x, t)
        vfl = qfocal.VarifocalLoss()
        _gain.loss_and_gain(vfl, nn.BCEWithLogitsLoss(pos_weight=torch.ones(1)), x, t)
        assert len(matched_calls) == 5


def test_capture_reports_nothing_under_compile_or_reference():
    x, t = _data(shape=(8, 4), seed=7)
    with qfocal.backend("reference"), capture_grad_norms() as records:
        qfocal.quality_focal_loss(x, t)
    assert records == []
    compiled = torch.compile(lambda a, b: qfocal.quality_focal_loss(a, b), fullgraph=True)
    with qfocal.backend("eager"), capture_grad_norms() as records:
        compiled(x, t)
    assert records == []


def test_integrations_use_the_fused_gain(matched_calls):
    """YOLOv5's term (label-smoothed targets, its BCE's pos_weight) and Ultralytics' elementwise criterion."""
    yolov5 = pytest.importorskip("qfocal.integrations.yolov5")
    gen = torch.Generator().manual_seed(8)
    pcls = torch.randn(50, 7, generator=gen, requires_grad=True)
    t = torch.full((50, 7), 0.05)  # label smoothing 0.1: cn = 0.05, cp = 0.95
    t[range(50), torch.randint(0, 7, (50,), generator=gen)] = 0.95
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.3]))
    criterion = yolov5.build_criterion("qfl", bce, {"fl_gamma": 0.0})
    with qfocal.backend("eager"):
        balanced, value = yolov5.ComputeLoss._balanced(None, criterion, bce, pcls, t)
        expected = _gain.matched_gain(criterion, bce, pcls, t)
    assert len(matched_calls) == 1
    assert_close(balanced, value * expected, "YOLOv5 balanced cls term", rtol=1e-5, atol=0)
    ultralytics = pytest.importorskip("qfocal.integrations.ultralytics")
    cls = ultralytics._ElementwiseCls("qfl", {"beta": 2.0, "alpha": None}, gain=None)
    pred = torch.randn(2, 30, 7, generator=gen)
    target = torch.rand(2, 30, 7, generator=gen) * (torch.rand(2, 30, 7, generator=gen) < 0.1)
    with qfocal.backend("eager"):
        out = cls(pred, target)
        expected = _gain.matched_gain(cls.loss, cls.reference, pred, target)
    assert len(matched_calls) == 2
    with qfocal.backend("eager"):
        assert_close(out, cls.loss(pred, target) * expected, "Ultralytics balanced cls", rtol=1e-5, atol=0)


_TRITON_NORMS_SCRIPT = textwrap.dedent(
    """
    import torch, qfocal
    from qfocal.ops import capture_grad_norms
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 301, generator=gen) * 4
    t = torch.rand(5, 301, generator=gen) * (torch.rand(5, 301, generator=gen) < 0.3)
    pw, w = torch.rand(301, generator=gen) + 0.5, torch.rand(5, 1, generator=gen)
    for kind, kw in (("qfl", dict(beta=1.5, alpha=0.25, pos_weight=pw, weight=w)), ("qfl", dict(beta=0.7)),
                     ("focal", dict(gamma=2.0, reduction="sum")), ("vfl", dict(gamma=3.0, reduction="none"))):
        fn = {"qfl": qfocal.quality_focal_loss, "focal": qfocal.sigmoid_focal_loss, "vfl": qfocal.varifocal_loss}[kind]
        got = []
        for backend in ("eager", "triton"):
            leaf = x.clone().requires_grad_()
            with qfocal.backend(backend), capture_grad_norms() as records:
                fn(leaf, t, **kw).sum().backward()
            got.append((records[0].own_sq.item(), records[0].bce_sq.item(), leaf.grad))
        (o0, b0, g0), (o1, b1, g1) = got
        assert abs(o1 - o0) <= 1e-5 * o0 and abs(b1 - b0) <= 1e-5 * b0, (kind, kw, o0, o1, b0, b1)
        assert (g1 - g0).abs().max() <= 1e-5 * g0.abs().max(), (kind, kw)
        print(kind, o0, o1, b0, b1)
    print("TRITON-NORMS-OK")
    """
)


@pytest.mark.triton
def test_triton_norms_and_closed_forms_under_interpreter():
    pytest.importorskip("triton")
    env = dict(
        os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT])
    )
    proc = subprocess.run(
        [sys.executable, "-c", _TRITON_NORMS_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "TRITON-NORMS-OK" in proc.stdout, f"{proc.stdout}\n{proc.stderr[-3000:]}"


_PEAK_SCRIPT = textwrap.dedent(
    """
    import contextlib, torch, qfocal
    from qfocal_lab.bench.losses import _CpuPeak
    from qfocal.ops import capture_grad_norms
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 2048, generator=gen).requires_grad_()  # 8 MiB of logits, and of gradient
    t = torch.rand(1024, 2048, generator=gen) * (torch.rand(1024, 2048, generator=gen) < 0.01)
    pw = torch.ones(1)

    def call(norms):
        def once():
            with qfocal.backend("inductor"), qfocal.value_checks(True):
                with capture_grad_norms() if norms else contextlib.nullcontext():
                    qfocal.quality_focal_loss(x, t, beta=1.5, alpha=0.25, pos_weight=pw).backward()
        return once

    for norms in (False, True):  # compile and warm up
        for _ in range(2):
            x.grad = None
            call(norms)()
    peak = _CpuPeak()
    assert peak.available, peak.reason
    for norms in (False, True):
        x.grad = None
        print(f"PEAK norms={norms} {peak.measure(call(norms)) / 2**20:.2f} MiB")
    """
)


def test_extra_peak_memory_is_the_gradient_with_checks_and_norms():
    """Value checks on, with and without the norms: the one call's extra resident memory is its gradient."""
    if not sys.platform.startswith("linux"):
        pytest.skip("measures the resident set through /proc (Linux)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    peaks = [float(line.split()[-2]) for line in proc.stdout.splitlines() if line.startswith("PEAK")]
    assert len(peaks) == 2, proc.stdout
    for norms, mib in zip((False, True), peaks, strict=True):
        assert mib <= 8.0 + 1.5, f"norms={norms}: {mib:.2f} MiB above the inputs for an 8 MiB gradient"


# ----------------------------------------------------------------------------------------------------------
# 2. Closed-form exponents: no pow, p from BCE's exp, the reference's numbers
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kind", ["qfl", "focal", "vfl"])
def test_closed_form_exponents_match_reference(kind, dtype, gamma):
    x, t = _inputs(dtype=dtype)
    x[0, :6] = torch.tensor([-100.0, -30.0, -1e-3, 0.0, 30.0, 100.0], dtype=dtype)
    t[1, :6] = torch.sigmoid(x[1, :6])  # t == p (up to an ulp): the slope 0 there
    options = (
        {"alpha": 0.25, "pos_weight": torch.linspace(0.5, 2.0, 423, dtype=dtype)} if kind != "vfl" else {}
    )
    _check("eager", kind, x, t, gamma=gamma, reduction="none", **options)
    _check("eager", kind, x, t, gamma=gamma, reduction="mean", weight=torch.rand(3, dtype=dtype), **options)


@pytest.mark.parametrize("gamma", [1.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_bce_stays_exact_in_the_closed_form_graph(dtype, gamma):
    """Varifocal positives without IoU weighting are BCE itself (m = 1, dm = 0), in the closed-form graphs (1.5:
    one exponential, torch.sigmoid's; 2: p from BCE's)."""
    from tests.cross.test_loss_faults import _bce_errors, _logit_grid

    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6}[dtype]
    x = _logit_grid(dtype)
    for backend in ("eager", "inductor"):
        for tv in (0.3, 0.7, 1.0):
            t = torch.full_like(x, tv)
            leaf = x.clone().requires_grad_()
            with qfocal.backend(backend):
                value = qfocal.varifocal_loss(leaf, t, gamma=gamma, iou_weighted=False, reduction="none")
            value.backward(torch.ones_like(value))
            err_value, err_grad = _bce_errors(x, t, value.detach(), leaf.grad)
            assert err_value <= tolerance, f"{backend} {dtype} t={tv}: BCE relative error {err_value:.2e}"
            assert err_grad <= tolerance, f"{backend} {dtype} t={tv}: d BCE relative error {err_grad:.2e}"


def test_closed_forms_on_inductor_match_reference():
    """Also the elementwise loss through the flattened graph: its outputs are no views (scaled in place)."""
    x, t = _inputs(shape=(19, 23))
    for kind, gamma, reduction in (("qfl", 1.5, "mean"), ("focal", 2.0, "none"), ("vfl", 3.0, "sum")):
        kw = {"pos_weight": torch.rand(23) + 0.5, "alpha": 0.25} if kind != "vfl" else {}
        _check("inductor", kind, x, t, gamma=gamma, reduction=reduction, **kw)
        _check("inductor", kind, x.reshape(19, 1, 23), t.reshape(19, 1, 23), gamma=gamma, reduction=reduction)


# ----------------------------------------------------------------------------------------------------------
# 3. Shapes that vary stay fused
# ----------------------------------------------------------------------------------------------------------
def _distinct_shapes(count: int, seed: int) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    shapes: set[tuple[int, ...]] = set()
    while len(shapes) < count:
        shapes.add(tuple(rng.randint(1, 48) for _ in range(rng.choice((1, 2, 2, 3, 4)))))
    return sorted(shapes, key=lambda s: rng.random())


def _run_shapes(shapes, monkeypatch, *, layouts: bool = False) -> int:
    """Run QFL on every shape through backend "auto" (Inductor from the first call); the new graphs compiled."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("QFOCAL_INDUCTOR_MIN_NUMEL", "1")
    monkeypatch.setenv("QFOCAL_INDUCTOR_WARMUP", "0")
    if _inductor.inductor_failed() is not None:
        pytest.skip(f"Inductor unavailable here: {_inductor.inductor_failed()}")
    graphs, fallbacks = counters["stats"]["unique_graphs"], eager_fallbacks()
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile failure or recompile-limit warning fails
        for i, shape in enumerate(shapes):
            x = torch.randn(shape, generator=gen)
            t = torch.rand(shape, generator=gen) * (torch.rand(shape, generator=gen) < 0.3)
            kw = {}
            if layouts and x.dim() >= 2:
                if i % 3 == 1:
                    kw["pos_weight"] = torch.rand(shape[-1], generator=gen) + 0.5
                if i % 3 == 2:
                    kw["weight"] = torch.rand(shape[:-1], generator=gen)
            leaf = x.requires_grad_()
            assert select("auto", leaf) is not None
            with capture_grad_norms() as records:
                qfocal.quality_focal_loss(leaf, t, beta=1.5, **kw).backward()
            assert len(records) == 1, f"shape {shape}: the fused op did not run"
    assert _inductor.inductor_failed() is None, _inductor.inductor_failed()
    assert eager_fallbacks() == fallbacks, "some shapes ran eagerly (recompile limit)"
    return counters["stats"]["unique_graphs"] - graphs


def test_two_hundred_shapes_stay_on_inductor(monkeypatch):
    new_graphs = _run_shapes(_distinct_shapes(200, seed=0), monkeypatch)
    # rows == 1, C == 1, rows == C and the general case, forward with the norms: a handful, not one per shape
    assert new_graphs <= 4, f"{new_graphs} graphs for 200 shapes"
    x = torch.randn(50, 40, requires_grad=True)
    fn = select("auto", x)
    assert fn is not None and fn.keywords["impl"] == "inductor", "auto no longer picks Inductor"


@pytest.mark.slow
def test_many_shapes_and_weight_layouts_stay_on_inductor(monkeypatch):
    new_graphs = _run_shapes(_distinct_shapes(600, seed=1), monkeypatch, layouts=True)
    assert new_graphs <= 16, f"{new_graphs} graphs for 600 shapes with three weight layouts"


def test_recompile_limit_runs_that_layout_eagerly_and_keeps_inductor(monkeypatch):
    def full(*args, **kwargs):
        raise torch._dynamo.exc.FailOnRecompileLimitHit("Hard failure due to fullgraph=True")

    monkeypatch.setattr(_inductor, "_compiled_call", full)
    monkeypatch.setattr(_inductor, "_limit_calls", 0)
    x, t = _data(shape=(6, 5), seed=9)
    with qfocal.backend("eager"):
        expected = qfocal.quality_focal_loss(x, t)
    with qfocal.backend("inductor"), pytest.warns(RuntimeWarning, match="recompile limit"):
        got = qfocal.quality_focal_loss(x, t)
    assert_close(got, expected, "eager fallback loss", rtol=0, atol=0)
    with qfocal.backend("inductor"), warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        qfocal.quality_focal_loss(x, t)
    assert eager_fallbacks() == 2 and _inductor.inductor_failed() is None
