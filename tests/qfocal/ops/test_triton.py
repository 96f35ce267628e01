"""The Triton kernel through Triton's CPU interpreter (TRITON_INTERPRET=1), against the reference math.

The interpreter must be chosen before the kernel is decorated, so the checks run in a fresh Python process with
the variable set; this module itself never imports qfocal.ops._triton under the interpreter. On a machine with
a CUDA GPU the last test also runs the compiled kernel (and Inductor's CUDA code) against the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import qfocal
from tests.conftest import DTYPE_PRECISIONS, assert_close

pytest.importorskip("triton")

pytestmark = pytest.mark.triton

_SCRIPT = textwrap.dedent(
    """
    import torch
    import qfocal
    from qfocal.ops import select
    from qfocal.ops._triton import scale_inplace

    def loss(kind, x, t, **kw):
        if kind == "qfl":
            return qfocal.quality_focal_loss(x, t, **kw)
        if kind == "focal":
            return qfocal.sigmoid_focal_loss(x, t, **kw)
        return qfocal.varifocal_loss(x, t, **kw)

    def check(name, kind, x, t, tol, **kw):
        got = []
        for backend in ("reference", "triton"):
            leaf = x.detach().clone().requires_grad_()
            with qfocal.backend(backend):
                value = loss(kind, leaf, t, **kw)
            (value.float() * 1.3).sum().backward()
            got.append((value.detach().double(), leaf.grad.double()))
        (v0, g0), (v1, g1) = got
        assert v1.shape == v0.shape, (name, v1.shape, v0.shape)
        scale = max(g0.abs().max().item(), 1e-30)
        dv = (v1 - v0).abs().max().item()
        dg = (g1 - g0).abs().max().item()
        assert dv <= tol * (1 + v0.abs().max().item()), f"{name}: loss differs by {dv}"
        assert dg <= tol * scale + 1e-7, f"{name}: grad differs by {dg} (scale {scale})"
        print(f"{name}: |dloss| {dv:.2e} |dgrad| {dg:.2e}")

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 423, generator=gen) * 3
    x[0, :4] = torch.tensor([-100.0, 100.0, -30.0, 30.0])
    t = torch.rand(3, 423, generator=gen) * (torch.rand(3, 423, generator=gen) < 0.3)
    pw = torch.rand(423, generator=gen) + 0.5
    w = torch.rand(3, generator=gen)
    check("qfl fp32 mean pw w", "qfl", x, t, 1e-5, beta=1.5, alpha=0.25, pos_weight=pw, weight=w)
    check("focal fp32 sum", "focal", x, t, 1e-5, gamma=2.0, reduction="sum")
    check("vfl fp32 avg_factor tensor", "vfl", x, t, 1e-5, avg_factor=torch.tensor([5.0]))
    check("vfl fp32 none not-iou", "vfl", x, t, 1e-5, reduction="none", iou_weighted=False, gamma=0.5)
    check("qfl bf16 none", "qfl", x.bfloat16(), t.bfloat16(), 2e-2, reduction="none")
    check("focal fp16 mean gamma<1", "focal", x.half(), t.half(), 2e-3, gamma=0.4, weight=w.half())
    # non-contiguous logits (transposed), dense and sparse (labels, scores) targets; label 423 = background
    xt = (torch.randn(423, 5, generator=gen) * 2).t()
    assert not xt.is_contiguous()
    labels = torch.tensor([0, 3, 422, 423, 7])
    scores = torch.rand(5, generator=gen)
    check("qfl sparse non-contiguous", "qfl", xt, (labels, scores), 1e-5, reduction="none")
    check("qfl sparse int32 labels", "qfl", xt, (labels.int(), scores), 1e-5, pos_weight=pw)
    tt = torch.rand(423, 5, generator=gen).t()
    x3 = torch.randn(2, 7, 5, generator=gen) * 2  # 3-D logits, per-anchor weight (2, 7)
    t3 = torch.rand(2, 7, 5, generator=gen) * (torch.rand(2, 7, 5, generator=gen) < 0.3)
    check("vfl 3-D per-anchor weight", "vfl", x3, t3, 1e-5, weight=torch.rand(2, 7, generator=gen), avg_factor=3.0)
    check("focal dense non-contiguous", "focal", xt, tt, 1e-5, weight=torch.rand(1, 423, generator=gen))
    # 0 < gamma < 1 where the target is (within an ulp of) the prediction: |t - p| ** 0.3 is steep there, so
    # only finiteness is comparable across sigmoid implementations (exact ties are tested on eager)
    xe = torch.linspace(-4, 4, 12).reshape(3, 4).requires_grad_()
    with qfocal.backend("triton"):
        value = qfocal.quality_focal_loss(xe, torch.sigmoid(xe.detach()), beta=0.3, reduction="sum")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(xe.grad).all(), (value, xe.grad)
    # fp64 and empty inputs route to the reference inside the triton callable
    check("qfl fp64 (reference route)", "qfl", x.double(), t.double(), 1e-10)
    assert select("triton", x) is not None
    # in-place scaling kernel of the backward: skipped when s == 1
    g = torch.arange(3000, dtype=torch.float32)
    assert torch.equal(scale_inplace(g.clone(), torch.ones(1)), g)
    assert torch.equal(scale_inplace(g.clone(), torch.tensor([2.0])), g * 2)
    assert torch.equal(scale_inplace(g.bfloat16(), torch.tensor([0.5])), (g * 0.5).bfloat16())
    print("TRITON-INTERPRETER-OK")
    """
)


def test_triton_kernel_matches_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", QFOCAL_BACKEND="auto")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "TRITON-INTERPRETER-OK" in proc.stdout, proc.stdout


_CUDA = pytest.mark.skipif(
    not __import__("torch").cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA GPU",
)


@_CUDA
@pytest.mark.parametrize("backend", ["triton", "inductor"])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
def test_cuda_fused_matches_reference(backend, dtype_name):
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1000, 83, generator=gen) * 3).to("cuda", dtype)
    t = (torch.rand(1000, 83, generator=gen) * (torch.rand(1000, 83, generator=gen) < 0.1)).to("cuda", dtype)
    pw = torch.rand(83, generator=gen).cuda() + 0.5
    labels = torch.randint(0, 84, (1000,), generator=gen).cuda()
    scores = torch.rand(1000, generator=gen).cuda().to(dtype)
    cases = [
        ("qfl", t, {"beta": 1.5, "alpha": 0.25, "pos_weight": pw}),
        ("qfl", (labels, scores), {"reduction": "sum"}),
        ("focal", t, {"reduction": "none", "gamma": 0.5}),
        ("vfl", t, {"avg_factor": torch.tensor(7.0, device="cuda")}),
    ]
    functions = {
        "qfl": qfocal.quality_focal_loss,
        "focal": qfocal.sigmoid_focal_loss,
        "vfl": qfocal.varifocal_loss,
    }
    rtol, atol = DTYPE_PRECISIONS[dtype]
    for kind, target, kw in cases:
        results = []
        for name in ("reference", backend):
            leaf = x.detach().clone().requires_grad_()
            with qfocal.backend(name):
                loss = functions[kind](leaf, target, **kw)
            (loss.float() * 1.5).sum().backward()
            results.append((loss.detach(), leaf.grad))
        (ref, ref_grad), (got, grad) = results
        scale = ref_grad.abs().max().item()
        assert_close(got, ref, f"{backend} {kind} {dtype_name} loss", rtol=rtol, atol=atol)
        assert_close(
            grad, ref_grad, f"{backend} {kind} {dtype_name} grad", rtol=rtol, atol=max(atol, rtol * scale)
        )
