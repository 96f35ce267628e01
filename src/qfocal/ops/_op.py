"""The ``qfocal::fused_loss`` custom op: forward returns the loss and saves ``d loss / d logits``; backward
scales that saved gradient by the incoming one.

Registered with :func:`torch.library.custom_op`, :func:`~torch.library.register_autograd` and
:func:`~torch.library.register_fake`, so a model that calls a qfocal loss compiles under
``torch.compile(fullgraph=True)`` with the op as one opaque node. :func:`fused_loss` is the callable that
:func:`qfocal.ops.select` hands to :func:`qfocal.functional._run`; it routes to the reference math whatever the
fused op cannot honour (gradients for targets or weights, empty inputs, unusual dtypes).
"""

# ruff: noqa: UP045  (torch.library infers the op schema from typing.Optional on every supported torch)

from typing import Optional

import torch
from torch import Tensor

from .. import functional as _F
from ._inductor import inductor_loss_and_grad
from ._math import fused_loss_and_grad

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_IMPLS = ("eager", "inductor", "triton")
_N_INPUTS = 15


def _scale(logits: Tensor, reduction: str, avg_factor: Optional[Tensor], avg_value: float) -> Tensor:
    """The factor of the summed loss: 1 for sum/none, 1 / numel for mean, 1 / (avg_factor + eps) with one."""
    cdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if reduction != "mean":
        return torch.ones((), dtype=cdtype, device=logits.device)
    if avg_factor is not None:
        return 1.0 / (avg_factor.to(device=logits.device, dtype=cdtype).reshape(()) + _F._AVG_EPS)
    denominator = avg_value + _F._AVG_EPS if avg_value >= 0 else float(logits.numel())
    return torch.full((), 1.0 / denominator, dtype=cdtype, device=logits.device)


def _forward_impl(
    logits: Tensor,
    target: Optional[Tensor],
    labels: Optional[Tensor],
    scores: Optional[Tensor],
    pos_weight: Optional[Tensor],
    weight: Optional[Tensor],
    avg_factor: Optional[Tensor],
    kind: str,
    gamma: float,
    alpha: float,
    iou_weighted: bool,
    reduction: str,
    avg_value: float,
    need_grad: bool,
    impl: str,
) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits) in ``logits``'s dtype; the second is empty when ``need_grad`` is False.

    ``alpha < 0`` means no alpha (qfl, focal); ``avg_value < 0`` means no float avg_factor.
    """
    reduce = reduction != "none"
    scale = _scale(logits, reduction, avg_factor, avg_value)
    has_alpha = alpha >= 0
    alpha_offset = 1.0 - alpha if has_alpha else 1.0
    alpha_slope = 2.0 * alpha - 1.0 if has_alpha else 0.0
    if impl == "triton":
        from ._triton import triton_loss_and_grad

        loss, grad = triton_loss_and_grad(
            logits, target, labels, scores, pos_weight, weight, scale,
            kind=kind, gamma=gamma, alpha=alpha, alpha_offset=alpha_offset, alpha_slope=alpha_slope,
            iou_weighted=iou_weighted, reduce=reduce, need_grad=need_grad,
        )  # fmt: skip
    else:
        cdtype = scale.dtype

        def as_tensor(value: float) -> Tensor:
            return torch.full((), value, dtype=cdtype, device=logits.device)

        run = inductor_loss_and_grad if impl == "inductor" else fused_loss_and_grad
        loss, grad = run(
            logits, target, labels, scores, pos_weight, weight,
            as_tensor(gamma), as_tensor(alpha), as_tensor(alpha_offset), as_tensor(alpha_slope),
            torch.full((), iou_weighted, dtype=torch.bool, device=logits.device), scale,
            kind, reduce, need_grad,
        )  # fmt: skip
    if grad is None:
        grad = logits.new_empty((0,))
    return loss, grad


fused_loss_op = torch.library.custom_op("qfocal::fused_loss", _forward_impl, mutates_args=())


@fused_loss_op.register_fake
def _(logits, target, labels, scores, pos_weight, weight, avg_factor, kind, gamma, alpha, iou_weighted,
      reduction, avg_value, need_grad, impl):  # fmt: skip
    loss = logits.new_empty(()) if reduction != "none" else logits.new_empty(logits.shape)
    grad = logits.new_empty(logits.shape) if need_grad else logits.new_empty((0,))
    return loss, grad


def _setup_context(ctx, inputs, output) -> None:
    ctx.set_materialize_grads(False)  # else autograd allocates zeros for the unused gradient output
    ctx.save_for_backward(*inputs[:7])
    ctx.params = inputs[7:]
    ctx.grad = output[1]  # not saved_tensors: eager backward scales it in place, see _backward
    ctx.consumed = False


def _reference_grad(ctx, grad_loss: Tensor, create_graph: bool) -> Tensor:
    """d loss / d logits through the reference math, differentiable again (double backward)."""
    logits, target, labels, scores, pos_weight, weight, avg_factor = ctx.saved_tensors
    kind, gamma, alpha, iou_weighted, reduction, avg_value, _, _ = ctx.params
    params = {"gamma": gamma, "alpha": alpha if alpha >= 0 else None, "iou_weighted": iou_weighted}
    if avg_factor is None and avg_value >= 0:
        avg_factor = avg_value
    with torch.enable_grad():
        if labels is not None:
            target = _F._densify(labels, scores, logits.shape, _F._compute_dtype(logits.dtype))
        loss = _F._reference(kind, logits, target, params, pos_weight, weight, reduction, avg_factor)
        (grad,) = torch.autograd.grad(
            loss.reshape(grad_loss.shape), logits, grad_loss, create_graph=create_graph
        )
    return grad


def _backward(ctx, grad_loss: Optional[Tensor], _grad_of_grad: Optional[Tensor]):
    grads: list[Tensor | None] = [None] * _N_INPUTS
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return tuple(grads)
    if torch.compiler.is_compiling():
        grads[0] = ctx.grad * grad_loss  # traced by AOTAutograd: Inductor plans the memory itself
    elif torch.is_grad_enabled():  # create_graph=True: differentiate the reference math instead
        grads[0] = _reference_grad(ctx, grad_loss, create_graph=True)
    else:
        # Hand the saved buffer itself to autograd (no second N x C tensor); a later backward through the same
        # graph (retain_graph=True) recomputes it with the same kernel, so both give the same bits.
        if ctx.consumed:
            params = list(ctx.params)
            params[-2] = True  # need_grad
            _, grad = _forward_impl(*ctx.saved_tensors, *params)
        else:
            grad, ctx.grad, ctx.consumed = ctx.grad, None, True
        if grad_loss.numel() != 1:
            grad.mul_(grad_loss)
        elif grad_loss.device.type == "cpu":
            if grad_loss.item() != 1.0:
                grad.mul_(grad_loss)
        elif ctx.params[-1] == "triton" and grad.is_contiguous():
            from ._triton import scale_inplace

            scale_inplace(grad, grad_loss)
        else:
            grad.mul_(grad_loss)
        grads[0] = grad
    return tuple(grads)


fused_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _needs_reference(impl, logits, target, labels_scores, pos_weight, weight, avg_factor) -> bool:
    if logits.dtype not in _SUPPORTED_DTYPES or logits.numel() == 0:
        return True
    if impl == "triton" and logits.dtype == torch.float64:
        return True
    if torch.is_grad_enabled():
        others = [target, pos_weight, weight, avg_factor]
        if labels_scores is not None:
            others.append(labels_scores[1])
        if any(isinstance(t, Tensor) and t.requires_grad for t in others):
            return True
    return False


def fused_loss(
    kind: str,
    logits: Tensor,
    target: Optional[Tensor],
    labels_scores: Optional[tuple[Tensor, Tensor]],
    params: dict,
    *,
    pos_weight: Optional[Tensor],
    weight: Optional[Tensor],
    reduction: str,
    avg_factor,
    impl: str,
) -> Tensor:
    """The fused loss with the contract of :func:`qfocal.functional._run`; ``impl`` is eager/inductor/triton."""
    if impl not in _IMPLS:
        raise ValueError(f"impl: expected one of {_IMPLS}, got {impl!r}")
    if _needs_reference(impl, logits, target, labels_scores, pos_weight, weight, avg_factor):
        if labels_scores is not None:
            target = _F._densify(*labels_scores, logits.shape, _F._compute_dtype(logits.dtype))
        return _F._reference(kind, logits, target, params, pos_weight, weight, reduction, avg_factor)
    labels, scores = labels_scores if labels_scores is not None else (None, None)
    avg_tensor = avg_factor if isinstance(avg_factor, Tensor) else None
    avg_value = float(avg_factor) if avg_factor is not None and avg_tensor is None else -1.0
    alpha = params.get("alpha")
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _ = fused_loss_op(
        logits, target, labels, scores, pos_weight, weight, avg_tensor,
        kind, float(params["gamma"]), -1.0 if alpha is None else float(alpha),
        bool(params.get("iou_weighted", True)), reduction, avg_value, need_grad, impl,
    )  # fmt: skip
    if avg_tensor is not None and reduction == "mean" and avg_tensor.dim() > 0:
        loss = loss.reshape(avg_tensor.shape)  # the reference's sum / avg_factor broadcasts to its shape
    return loss
