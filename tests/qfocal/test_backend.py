"""Backend selection of the fused kernels, compile-failure fallback, and torch.compile(fullgraph=True) of a
model that calls a qfocal loss (the custom op must not break the graph)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

import qfocal
from qfocal import _backend
from qfocal.ops import _inductor, select
from tests.conftest import assert_close


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    monkeypatch.delenv("QFOCAL_BACKEND", raising=False)
    monkeypatch.delenv("QFOCAL_INDUCTOR_MIN_NUMEL", raising=False)
    monkeypatch.delenv("QFOCAL_INDUCTOR_WARMUP", raising=False)
    previous = qfocal.set_backend("auto")
    yield
    qfocal.set_backend(previous)


def _impl(fn):
    assert isinstance(fn, functools.partial), f"expected the fused callable, got {fn!r}"
    return fn.keywords["impl"]


def test_auto_uses_reference_for_small_cpu_inputs_and_inductor_for_large(monkeypatch):
    import qfocal.ops as ops

    small = torch.zeros(8, 4)
    assert select("auto", small) is None
    assert _backend.fused_impl(small) is None
    monkeypatch.setenv("QFOCAL_INDUCTOR_MIN_NUMEL", "32")
    monkeypatch.setenv("QFOCAL_INDUCTOR_WARMUP", "2")
    monkeypatch.setattr(ops, "_large_calls", 0)
    if _inductor.inductor_failed() is None:
        # the first large calls run on the reference (a short script never pays a compilation)
        assert select("auto", small) is None
        assert select("auto", small) is None
        assert _impl(select("auto", small)) == "inductor"
    assert select("auto", torch.zeros(2, 4)) is None
    monkeypatch.setenv("QFOCAL_INDUCTOR_WARMUP", "-1")
    with pytest.raises(ValueError, match="QFOCAL_INDUCTOR_WARMUP: expected a value >= 0"):
        select("auto", small)


def test_explicit_names_pick_that_implementation():
    x = torch.zeros(3, 5)
    assert _impl(select("eager", x)) == "eager"
    assert _impl(select("inductor", x)) == "inductor"
    assert _impl(select("fused", x)) == "inductor"  # the CPU's fused implementation
    with qfocal.backend("eager"):
        assert _impl(_backend.fused_impl(x)) == "eager"
    with qfocal.backend("reference"):
        assert _backend.fused_impl(x) is None


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("QFOCAL_BACKEND", "eager")
    assert qfocal.get_backend() == "eager"
    assert _impl(_backend.fused_impl(torch.zeros(2, 2))) == "eager"
    monkeypatch.setenv("QFOCAL_BACKEND", "warp-speed")
    with pytest.raises(ValueError, match="expected one of"):
        qfocal.get_backend()


def test_unknown_names_and_unavailable_triton_are_errors(monkeypatch):
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="expected one of"):
        select("fastest", x)
    with pytest.raises(ValueError, match="expected one of"):
        qfocal.set_backend("fastest")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend 'triton': expected CUDA"):
        select("triton", x)
    with qfocal.backend("triton"), pytest.raises(ValueError, match="backend 'triton'"):
        qfocal.quality_focal_loss(x, x)
    with pytest.raises(ValueError, match="QFOCAL_INDUCTOR_MIN_NUMEL"):
        monkeypatch.setenv("QFOCAL_INDUCTOR_MIN_NUMEL", "lots")
        select("auto", x)


def test_compile_failure_falls_back_with_one_warning(monkeypatch):
    def broken():
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(_inductor, "_get_compiled", broken)
    monkeypatch.setattr(_inductor, "_broken", None)
    x = torch.randn(4, 6, requires_grad=True)
    t = torch.rand(4, 6)
    with (
        qfocal.backend("inductor"),
        pytest.warns(RuntimeWarning, match="torch.compile of the fused loss failed"),
    ):
        loss = qfocal.quality_focal_loss(x, t)
    assert _inductor.inductor_failed() is not None
    with qfocal.backend("inductor"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        loss2 = qfocal.quality_focal_loss(x, t)
    monkeypatch.setenv("QFOCAL_INDUCTOR_MIN_NUMEL", "1")
    monkeypatch.setenv("QFOCAL_INDUCTOR_WARMUP", "0")
    assert select("auto", x) is None, "after a compile failure 'auto' must use the reference on the CPU"
    with qfocal.backend("reference"):
        expected = qfocal.quality_focal_loss(x, t)
    assert_close(loss.detach(), expected.detach(), "fallback loss")
    assert_close(loss2.detach(), expected.detach(), "fallback loss, second call")


class _Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 5)

    def forward(self, features, target, weight):
        return qfocal.quality_focal_loss(self.linear(features), target, beta=1.5, alpha=0.25, weight=weight)


def test_torch_compile_fullgraph_keeps_the_op_in_one_graph():
    gen = torch.Generator().manual_seed(0)
    features, target, weight = (
        torch.randn(16, 8, generator=gen),
        torch.rand(16, 5, generator=gen),
        torch.rand(16),
    )
    model = _Head()
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append([str(node.target) for node in gm.graph.nodes if node.op == "call_function"])
        return gm.forward

    grads = {}
    # value checks stay on: they skip themselves while dynamo traces (no data-dependent graph break)
    assert qfocal.value_checks_enabled()
    for name in ("eager", "reference"):
        with qfocal.backend(name):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=recording_backend, fullgraph=True)
            loss = compiled(features, target, weight)
            loss.backward()
        grads[name] = (loss.detach(), model.linear.weight.grad.clone())
        model.zero_grad()
    torch._dynamo.reset()
    assert len(graphs) == 2, f"expected one graph per backend, got {len(graphs)}"
    assert any("qfocal.fused_loss" in target for target in graphs[0]), graphs[0]
    assert_close(grads["eager"][0], grads["reference"][0], "compiled loss")
    assert_close(grads["eager"][1], grads["reference"][1], "compiled weight grad")


def test_torch_compile_with_inductor_end_to_end():
    gen = torch.Generator().manual_seed(1)
    features, target, weight = (
        torch.randn(16, 8, generator=gen),
        torch.rand(16, 5, generator=gen),
        torch.rand(16),
    )
    model = _Head()
    with qfocal.backend("inductor"):
        torch._dynamo.reset()
        loss = torch.compile(model, fullgraph=True)(features, target, weight)
        loss.backward()
    torch._dynamo.reset()
    got = model.linear.weight.grad.clone()
    model.zero_grad()
    with qfocal.backend("reference"):
        expected = model(features, target, weight)
        expected.backward()
    assert_close(loss.detach(), expected.detach(), "inductor-compiled loss")
    assert_close(got, model.linear.weight.grad, "inductor-compiled weight grad")


@pytest.mark.parametrize("loss", ["qfl", "focal", "vfl"])
def test_the_target_check_runs_in_the_kernel_on_inductor(loss, monkeypatch):
    """On Inductor the dense target's value check is a reduction of the kernel's own loop: the separate check
    runs only on the error path (for its message), which is the reference backend's message word for word."""
    import qfocal._backend as backend_module

    fn = {"qfl": qfocal.quality_focal_loss, "focal": qfocal.sigmoid_focal_loss, "vfl": qfocal.varifocal_loss}[
        loss
    ]
    calls = []
    real = backend_module._check_in_unit_interval

    def counting(name, x):
        calls.append(name)
        return real(name, x)

    monkeypatch.setattr(backend_module, "_check_in_unit_interval", counting)
    x = torch.randn(300, 7, requires_grad=True)
    t = torch.rand(300, 7)
    with qfocal.backend("inductor"):
        fn(x, t).backward()
    assert calls == []  # a good target: no pass of its own
    bad = t.clone()
    bad[123, 4] = 1.25
    with qfocal.backend("reference"), pytest.raises(ValueError) as expected:
        fn(x, bad)
    assert calls == ["target"]
    with qfocal.backend("inductor"), pytest.raises(ValueError) as got:
        fn(x, bad)
    assert str(got.value) == str(expected.value)
    assert "got 1 outside (first: 1.25)" in str(got.value)
    with qfocal.backend("inductor"), qfocal.value_checks(False):
        assert torch.isfinite(fn(x, bad))  # checks off: not checked, as before
