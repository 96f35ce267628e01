"""The Triton kernel of the fused losses: one program per block of elements reads logits and targets once,
writes ``d loss / d logits`` and either the elementwise loss or one partial sum (and, on request, partial sums
of the squared gradients of the loss and of BCE, in float64).

The math mirrors :mod:`qfocal.ops._math` line for line (computed in fp32). Set ``TRITON_INTERPRET=1`` before
this module is imported to run the kernel on CPU tensors through Triton's interpreter (how the tests run it).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._reference import KINDS
from ._math import GENERAL, power_form

_KIND_IDS = {kind: i for i, kind in enumerate(KINDS)}  # KIND == 0: qfl, 1: focal, 2: vfl
_BLOCK = 1024
_FP32_TINY = 1.1754943508222875e-38


def interpreter_enabled() -> bool:
    """Whether Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


if interpreter_enabled():  # numpy underneath: tl.exp and tl.log are correctly rounded

    @triton.jit
    def _exp(x):
        return tl.exp(x)

    @triton.jit
    def _log1p(e):
        # log1p(e) to full precision from log(1 + e) (Goldberg's correction)
        one_plus_e = 1.0 + e
        return tl.where(
            one_plus_e == 1.0, e, tl.log(one_plus_e) * e / tl.where(one_plus_e == 1.0, 1.0, one_plus_e - 1.0)
        )

else:  # compiled: tl.exp and tl.log are fast approximations (ex2.approx); libdevice is accurate to an ulp or two
    from triton.language.extra import libdevice

    @triton.jit
    def _exp(x):
        return libdevice.exp(x)

    @triton.jit
    def _log1p(e):
        return libdevice.log1p(e)


@triton.jit
def _pow_and_slope(base, gamma):
    # base ** gamma with the reference's slope (see _math._safe_pow_and_slope)
    safe = tl.where(base > 0.0, base, 1.0)
    value = tl.where(base > 0.0, tl.exp2(gamma * tl.log2(safe)), tl.where(gamma == 0.0, 1.0, 0.0))
    ok = base > 1.1754943508222875e-38
    slope = tl.where(ok, gamma * value / tl.where(ok, base, 1.0), tl.where(gamma == 1.0, 1.0, 0.0))
    return value, slope


@triton.jit
def _closed_pow_and_slope(d, POWER: tl.constexpr):
    # |d| ** (POWER / 2) and its slope in d, sign(d) included, by products and one sqrt (see
    # _math._closed_pow_and_slope); d >= 0 (focal loss's base) gives the plain slope
    base = tl.abs(d)
    K: tl.constexpr = POWER // 2
    if POWER % 2 == 1:
        root = tl.sqrt_rn(base)
        low = root
        signed = tl.where(d < 0.0, -root, root)
        for _ in tl.static_range(K - 1):
            low = low * base
            signed = signed * base
    else:
        low = base
        signed = d
        for _ in tl.static_range(K - 2):
            low = low * base
            signed = signed * base
    return low * base, (POWER * 0.5) * signed


@triton.jit
def _fused_loss_kernel(
    x_ptr, sxr, sxc,
    t_ptr, str_, stc,
    lab_ptr, slab,
    sco_ptr, ssco,
    pw_ptr, spwr, spwc,
    w_ptr, swr, swc,
    scale_ptr,
    loss_ptr, grad_ptr, norms_ptr,
    n_elements, n_cols, n_blocks,
    gamma, alpha, alpha_offset, alpha_slope,
    KIND: tl.constexpr, SPARSE: tl.constexpr, HAS_PW: tl.constexpr, HAS_W: tl.constexpr,
    REDUCE: tl.constexpr, NEED_GRAD: tl.constexpr, IOU_WEIGHTED: tl.constexpr, FLAT: tl.constexpr,
    POWER: tl.constexpr, NEED_NORMS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    row = offs // n_cols
    col = offs % n_cols
    if FLAT:  # logits and dense target contiguous: plain offsets let the compiler vectorise
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.load(x_ptr + row * sxr + col * sxc, mask=mask, other=0.0).to(tl.float32)
    if SPARSE:
        lab = tl.load(lab_ptr + row * slab, mask=mask, other=-1).to(tl.int64)
        sco = tl.load(sco_ptr + row * ssco, mask=mask, other=0.0).to(tl.float32)
        t = tl.where(lab == col, sco, 0.0)
    elif FLAT:
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        t = tl.load(t_ptr + row * str_ + col * stc, mask=mask, other=0.0).to(tl.float32)

    # BCE and its derivative without cancellation, as _math._bce_parts (_bce_parts_one_exp for 1.5)
    if POWER == 3:  # 1.5: p rounds as a sigmoid, and BCE comes from the same exp(-x)
        e_neg = _exp(-x)
        p = 1.0 / (1.0 + e_neg)
        q = 1.0 - p
        log1p_abs = _log1p(tl.where(x >= 0.0, e_neg, -p))
        log1p_e = tl.where(x >= 0.0, log1p_abs, -log1p_abs)
        sigmoid_pos = p
        sigmoid_neg = tl.where(x >= 0.0, e_neg * p, q)
    else:
        e = _exp(-tl.abs(x))
        log1p_e = _log1p(e)
        if POWER == 0:  # general exponent: p by torch.sigmoid's formula (see _math: it must round alike)
            p = 1.0 / (1.0 + tl.exp(-x))
            q = 1.0 - p
            sigmoid_pos = tl.where(x >= 0.0, p, e * q)
            sigmoid_neg = tl.where(x >= 0.0, e * p, q)
        else:  # closed form from 2 on: p from the shared exp(-|x|)
            inv = 1.0 / (1.0 + e)
            sigmoid_pos = tl.where(x >= 0.0, inv, e * inv)
            sigmoid_neg = tl.where(x >= 0.0, e * inv, inv)
            p = sigmoid_pos
            q = sigmoid_neg
    softplus_pos = tl.maximum(x, 0.0) + log1p_e  # -log sigmoid(-x)
    softplus_neg = tl.maximum(-x, 0.0) + log1p_e  # -log sigmoid(x)
    if HAS_PW:
        pw = tl.load(pw_ptr + row * spwr + col * spwc, mask=mask, other=1.0).to(tl.float32)
        w_pos = pw * t
    else:
        w_pos = t
    w_neg = 1.0 - t
    bce = w_pos * softplus_neg + w_neg * softplus_pos
    dbce = w_neg * sigmoid_pos - w_pos * sigmoid_neg
    dp = p * q

    if KIND == 0:  # quality focal loss
        diff = p - t  # |t - p|, with the slope in p (no negation)
        if POWER == 0:
            power, slope = _pow_and_slope(tl.abs(diff), gamma)
            slope = slope * tl.where(diff > 0.0, 1.0, tl.where(diff < 0.0, -1.0, 0.0))
        else:
            power, slope = _closed_pow_and_slope(diff, POWER)  # slope in diff, sign included
        a_t = alpha_offset + alpha_slope * t
        m = a_t * power
        dm = a_t * slope * dp
    elif KIND == 1:  # sigmoid focal loss
        if POWER == 0:  # 1 - p_t, as the reference
            power, slope = _pow_and_slope(p * (1.0 - t) + q * t, gamma)
        else:
            power, slope = _closed_pow_and_slope(p * (1.0 - t) + q * t, POWER)
        a_t = alpha_offset + alpha_slope * t
        m = a_t * power
        dm = a_t * slope * (1.0 - 2.0 * t) * dp
    else:  # varifocal loss
        diff = p - t
        if POWER == 0:
            power, slope = _pow_and_slope(tl.abs(diff), gamma)
            slope = slope * tl.where(diff > 0.0, 1.0, tl.where(diff < 0.0, -1.0, 0.0))
        else:
            power, slope = _closed_pow_and_slope(diff, POWER)
        pos = t > 0.0
        if IOU_WEIGHTED:  # noqa: SIM108 (constexpr branch)
            pos_factor = t
        else:
            pos_factor = tl.full(t.shape, 1.0, tl.float32)
        m = tl.where(pos, pos_factor, alpha * power)
        dm = tl.where(pos, 0.0, alpha * slope * dp)

    loss = bce * m
    grad = dbce * m + bce * dm
    if HAS_W:
        w = tl.load(w_ptr + row * swr + col * swc, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
        dbce = dbce * w
    if REDUCE:
        scale = tl.load(scale_ptr).to(tl.float32)
        tl.store(loss_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
        grad = grad * scale
        dbce = dbce * scale
    else:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=mask)
    if NEED_GRAD:
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    if NEED_NORMS:  # squares summed in float64: a gradient of 1e-25 must not vanish from the norm
        g64 = tl.where(mask, grad, 0.0).to(tl.float64)
        b64 = tl.where(mask, dbce, 0.0).to(tl.float64)
        tl.store(norms_ptr + pid, tl.sum(g64 * g64, axis=0))
        tl.store(norms_ptr + n_blocks + pid, tl.sum(b64 * b64, axis=0))


def _as_2d(x: Tensor | None, shape: torch.Size, n_cols: int) -> tuple[Tensor | None, int, int]:
    """``x`` broadcast to ``shape`` and viewed as (rows, n_cols), with its two strides (0 where broadcast)."""
    if x is None:
        return None, 0, 0
    full = x.expand(shape)
    try:
        flat = full.view(-1, n_cols)
    except RuntimeError:  # a broadcast that no 2-D view can express: materialise it
        flat = full.reshape(-1, n_cols)
    return flat, flat.stride(0), flat.stride(1)


def triton_loss_and_grad(
    x: Tensor,
    target: Tensor | None,
    labels: Tensor | None,
    scores: Tensor | None,
    pos_weight: Tensor | None,
    weight: Tensor | None,
    scale: Tensor,
    *,
    kind: str,
    exponent: float,
    alpha: float,
    alpha_offset: float,
    alpha_slope: float,
    iou_weighted: bool,
    reduce: bool,
    need_grad: bool,
    need_norms: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Same contract as :func:`qfocal.ops._math.fused_loss_and_grad` (fp16/bf16/fp32 logits, non-empty)."""
    shape = x.shape
    n_cols = shape[-1] if x.dim() else 1
    n = x.numel()
    x2, sxr, sxc = _as_2d(x, shape, n_cols)
    t2, str_, stc = _as_2d(target, shape, n_cols)
    pw2, spwr, spwc = _as_2d(pos_weight, shape, n_cols)
    w2, swr, swc = _as_2d(weight, shape, n_cols)
    flat = x.is_contiguous() and (target is None or target.is_contiguous())
    n_blocks = triton.cdiv(n, _BLOCK)
    loss = torch.empty(n_blocks if reduce else n, dtype=torch.float32 if reduce else x.dtype, device=x.device)
    grad = torch.empty(shape, dtype=x.dtype, device=x.device) if need_grad else loss
    norms = torch.empty((2, n_blocks), dtype=torch.float64, device=x.device) if need_norms else loss
    form = power_form(exponent)
    dummy = x2
    scale = scale.to(device=x.device, dtype=torch.float32).reshape(1)
    _fused_loss_kernel[(n_blocks,)](
        x2, sxr, sxc,
        dummy if t2 is None else t2, str_, stc,
        dummy if labels is None else labels, 0 if labels is None else labels.stride(0),
        dummy if scores is None else scores, 0 if scores is None else scores.stride(0),
        dummy if pw2 is None else pw2, spwr, spwc,
        dummy if w2 is None else w2, swr, swc,
        scale,
        loss, grad, norms,
        n, n_cols, n_blocks,
        float(exponent), float(alpha), float(alpha_offset), float(alpha_slope),
        KIND=_KIND_IDS[kind], SPARSE=labels is not None, HAS_PW=pos_weight is not None, HAS_W=weight is not None,
        REDUCE=reduce, NEED_GRAD=need_grad, IOU_WEIGHTED=bool(iou_weighted), FLAT=flat,
        POWER=0 if form == GENERAL else int(2 * float(form)), NEED_NORMS=need_norms, BLOCK=_BLOCK, num_warps=4,
    )  # fmt: skip
    out = (loss.sum() * scale.reshape(())).to(x.dtype) if reduce else loss.view(shape)
    return out, (grad if need_grad else None), (norms.sum(dim=1) if need_norms else None)


@triton.jit
def _scale_inplace_kernel(grad_ptr, s_ptr, n_elements, BLOCK: tl.constexpr):
    s = tl.load(s_ptr).to(tl.float32)
    if s != 1.0:  # loss.backward() passes 1: then no memory traffic at all, and no host sync to find out
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_ptr + offs, (g * s).to(grad_ptr.dtype.element_ty), mask=mask)


def scale_inplace(grad: Tensor, s: Tensor) -> Tensor:
    """``grad *= s`` for a contiguous ``grad`` and a one-element ``s`` on the same device, skipped if ``s == 1``."""
    n = grad.numel()
    _scale_inplace_kernel[(triton.cdiv(n, _BLOCK),)](grad, s.reshape(1), n, BLOCK=_BLOCK, num_warps=4)
    return grad
