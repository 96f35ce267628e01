"""The ``qfocal::fused_loss`` custom op: forward returns the loss and saves ``d loss / d logits``; backward
scales that saved gradient by the incoming one.

Registered with :func:`torch.library.custom_op`, :func:`~torch.library.register_autograd` and
:func:`~torch.library.register_fake`, so a model that calls a qfocal loss compiles under
``torch.compile(fullgraph=True)`` with the op as one opaque node. :func:`fused_loss` is the callable that
:func:`qfocal.ops.select` hands to the public losses; it routes to :func:`qfocal._reference.reference_loss`
whatever the fused op cannot honour (gradients for targets or weights, empty inputs, unusual dtypes).

The op's arguments are addressed by name everywhere (``_TENSORS`` and ``_ATTRS`` are read off the signature of
:func:`_forward_impl`), so adding one means adding it to that signature and to :func:`fused_loss`'s call.
"""

# ruff: noqa: UP045  (torch.library infers the op schema from typing.Optional on every supported torch)

import inspect
from typing import Any, Optional, Protocol

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .._names import FUSED_IMPLS
from .._reference import AVG_EPS, LossSpec, LossTensors, densify, reference_loss
from ._inductor import inductor_loss_and_grad
from ._math import fused_loss_and_grad

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _scale(logits: Tensor, reduction: str, avg_factor: Optional[Tensor], avg_value: float) -> Tensor:
    """The factor of the summed loss: 1 for sum/none, 1 / numel for mean, 1 / (avg_factor + eps) with one."""
    cdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if reduction != "mean":
        return torch.ones((), dtype=cdtype, device=logits.device)
    if avg_factor is not None:
        return 1.0 / (avg_factor.to(device=logits.device, dtype=cdtype).reshape(()) + AVG_EPS)
    denominator = avg_value + AVG_EPS if avg_value >= 0 else float(logits.numel())
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
    exponent: float,
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
    if impl == "inductor" and labels is not None:
        # Inductor generates different code (vectorisation, reduction order) for the sparse and the dense graph,
        # which then differ in the last bit: build the dense target, as the reference does, so that both forms
        # run the same compiled code and give the same bits. Eager and Triton compute t in place, identically.
        target = densify(labels, scores, logits.shape, scores.dtype)  # type: ignore[arg-type,union-attr]  # scores come with labels
        labels = scores = None
    has_alpha = alpha >= 0
    alpha_offset = 1.0 - alpha if has_alpha else 1.0
    alpha_slope = 2.0 * alpha - 1.0 if has_alpha else 0.0
    if impl == "triton":
        from ._triton import triton_loss_and_grad

        loss, grad = triton_loss_and_grad(
            logits, target, labels, scores, pos_weight, weight, scale,
            kind=kind, exponent=exponent, alpha=alpha, alpha_offset=alpha_offset, alpha_slope=alpha_slope,
            iou_weighted=iou_weighted, reduce=reduce, need_grad=need_grad,
        )  # fmt: skip
    else:
        cdtype = scale.dtype

        def as_tensor(value: float) -> Tensor:
            return torch.full((), value, dtype=cdtype, device=logits.device)

        run = inductor_loss_and_grad if impl == "inductor" else fused_loss_and_grad
        loss, grad = run(
            logits, target, labels, scores, pos_weight, weight,
            as_tensor(exponent), as_tensor(alpha), as_tensor(alpha_offset), as_tensor(alpha_slope),
            torch.full((), iou_weighted, dtype=torch.bool, device=logits.device), scale,
            kind, reduce, need_grad,
        )  # fmt: skip
    grad = logits.new_empty((0,)) if grad is None else _like_logits(grad, logits)
    if not reduce:
        loss = _like_logits(loss, logits)
    return loss, grad


def _like_logits(t: Tensor, logits: Tensor) -> Tensor:
    """``t`` (shaped like ``logits``) in the layout of ``torch.empty_like(logits)``, which the fake kernel declares.

    The kernels choose their own output layout (Triton writes row-major, Inductor and eager follow the inputs);
    torch.compile trusts the fake's strides, so a permuted or channels_last input must get the declared ones.
    A copy only where they differ (non-contiguous logits).
    """
    expected = torch.empty_like(logits, device="meta").stride()
    if t.stride() == expected:
        return t
    out = torch.empty_like(logits, dtype=t.dtype)
    out.copy_(t)
    return out


_SIGNATURE = inspect.signature(_forward_impl)
_TENSORS = tuple(n for n, p in _SIGNATURE.parameters.items() if "Tensor" in str(p.annotation))
_ATTRS = tuple(n for n in _SIGNATURE.parameters if n not in _TENSORS)


def _bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The op's arguments by name, however they were passed."""
    return dict(_SIGNATURE.bind(*args, **kwargs).arguments)


def _spec(attrs: dict[str, Any]) -> LossSpec:
    alpha = attrs["alpha"]
    return LossSpec(
        kind=attrs["kind"],
        exponent=attrs["exponent"],
        alpha=None if alpha < 0 else alpha,
        iou_weighted=attrs["iou_weighted"],
        reduction=attrs["reduction"],
    )


fused_loss_op = torch.library.custom_op("qfocal::fused_loss", _forward_impl, mutates_args=())


@fused_loss_op.register_fake
def _fake(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    a = _bind(args, kwargs)
    logits = a["logits"]
    # the layout of empty_like(logits), as _forward_impl returns: a permuted input keeps its strides
    loss = logits.new_empty(()) if a["reduction"] != "none" else torch.empty_like(logits)
    grad = torch.empty_like(logits) if a["need_grad"] else logits.new_empty((0,))
    return loss, grad


class _Ctx(Protocol):
    """The autograd context as this op uses it: torch's, with the attributes _setup_context sets."""

    attrs: dict[str, Any]
    traced: bool
    grad: Optional[Tensor]
    consumed: bool
    saved_tensors: tuple[Tensor, ...]
    needs_input_grad: tuple[bool, ...]

    def set_materialize_grads(self, value: bool) -> None: ...

    def save_for_backward(self, *tensors: Optional[Tensor]) -> None: ...


def _setup_context(ctx: _Ctx, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    a = dict(zip(_SIGNATURE.parameters, inputs, strict=True))
    ctx.set_materialize_grads(False)  # else autograd allocates zeros for the unused gradient output
    ctx.attrs = {n: a[n] for n in _ATTRS}
    ctx.traced = _traced(output[1])
    if ctx.traced:  # a traced graph (compile, export, AOTAutograd) sees only what is saved
        ctx.save_for_backward(*(a[n] for n in _TENSORS), output[1])
        ctx.grad = None
    else:
        ctx.save_for_backward(*(a[n] for n in _TENSORS))
        ctx.grad = output[1]  # not saved_tensors: eager backward scales it in place, see _backward
    ctx.consumed = False


def _traced(t: Tensor) -> bool:
    """Whether the op is being traced (torch.compile, torch.export, AOTAutograd as in opcheck), not run."""
    return torch.compiler.is_compiling() or is_fake(t)


def _reference_grad(ctx: _Ctx, tensors: dict[str, Any], grad_loss: Tensor, create_graph: bool) -> Tensor:
    """d loss / d logits through the reference math, differentiable again (double backward)."""
    avg_value = ctx.attrs["avg_value"]
    if tensors["avg_factor"] is None and avg_value >= 0:
        tensors = {**tensors, "avg_factor": avg_value}
    grad: Tensor
    with torch.enable_grad():
        loss = reference_loss(_spec(ctx.attrs), **tensors)
        (grad,) = torch.autograd.grad(
            loss.reshape(grad_loss.shape), tensors["logits"], grad_loss, create_graph=create_graph
        )
    return grad


def _backward(
    ctx: _Ctx, grad_loss: Optional[Tensor], _grad_of_grad: Optional[Tensor]
) -> tuple[Optional[Tensor], ...]:
    grads = dict.fromkeys(_SIGNATURE.parameters)
    if grad_loss is not None and ctx.needs_input_grad[0]:
        grads["logits"] = _logits_grad(ctx, grad_loss)
    return tuple(grads.values())


def _saved(ctx: _Ctx) -> dict[str, Any]:
    return dict(zip(_TENSORS, ctx.saved_tensors[: len(_TENSORS)], strict=True))


def _logits_grad(ctx: _Ctx, grad_loss: Tensor) -> Tensor:
    if ctx.traced:
        return ctx.saved_tensors[-1] * grad_loss  # traced by AOTAutograd: Inductor plans the memory itself
    if torch.is_grad_enabled():  # create_graph=True: differentiate the reference math instead
        return _reference_grad(ctx, _saved(ctx), grad_loss, create_graph=True)
    if _functorch_active() or not torch._C._has_storage(grad_loss):
        # a batched backward (autograd.grad(is_grads_batched=True), jacobian(vectorize=True)): grad_loss is a
        # batched tensor without storage of its own, so scale out of place (no in-place, no host read)
        saved = ctx.grad if not ctx.consumed else None
        if saved is None:
            _, saved = _forward_impl(**_saved(ctx), **{**ctx.attrs, "need_grad": True})
        return saved * grad_loss
    # Hand the saved buffer itself to autograd (no second N x C tensor); a later backward through the same
    # graph (retain_graph=True) recomputes it with the same kernel, so both give the same bits.
    if ctx.consumed:
        _, grad = _forward_impl(**_saved(ctx), **{**ctx.attrs, "need_grad": True})
    else:
        grad, ctx.grad, ctx.consumed = ctx.grad, None, True  # type: ignore[assignment]  # set until consumed
    if grad_loss.numel() != 1:
        grad.mul_(grad_loss)
    elif grad_loss.device.type == "cpu":
        if grad_loss.item() != 1.0:
            grad.mul_(grad_loss)
    elif ctx.attrs["impl"] == "triton" and grad.is_contiguous():
        from ._triton import scale_inplace

        scale_inplace(grad, grad_loss)
    else:
        grad.mul_(grad_loss)
    return grad


fused_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _functorch_active() -> bool:
    """Whether a functorch transform (vmap, grad, jvp, ...) is active: its tensors are wrapped at some level."""
    current_level = getattr(torch._C._functorch, "maybe_current_level", None)
    return current_level is not None and current_level() is not None


def _under_transform(logits: Tensor, tensors: LossTensors) -> bool:
    """Whether forward-mode AD or a functorch transform (vmap, grad, jvp, jacrev, hessian, ...) sees this call.

    The op differentiates in reverse mode only: torch.library's ``register_autograd`` has no forward rule (forward
    mode silently gets a zero tangent) and functorch refuses the autograd.Function behind it. Rather than give the
    op a jvp, a vmap rule and functorch's ``setup_context`` contract (each a second implementation to keep equal
    to the reference, for calls that are rare and not hot), such calls run the reference math, which is plain
    PyTorch and composes with every transform: the same numbers whichever transform or backend, never a
    zero tangent, and no answer that changes when ``auto`` switches to Inductor mid-run. Under torch.compile
    (where ``torch.func`` transforms are traced by dynamo itself) the op stays.
    """
    if torch.compiler.is_compiling():
        return False
    if _functorch_active():  # inside vmap / grad / jvp / jacrev ...
        return True
    # plain forward mode (torch.autograd.forward_ad.dual_level): does any input carry a tangent?
    return any(
        isinstance(t, Tensor) and fwAD.unpack_dual(t).tangent is not None for t in (logits, *tensors.values())
    )


def _needs_reference(impl: str, logits: Tensor, tensors: LossTensors) -> bool:
    if logits.dtype not in _SUPPORTED_DTYPES or logits.numel() == 0:
        return True
    if _under_transform(logits, tensors):
        return True
    if impl == "triton" and logits.dtype == torch.float64:
        return True
    if torch.is_grad_enabled():
        return any(isinstance(t, Tensor) and t.requires_grad for t in tensors.values())
    return False


def fused_loss(
    spec: LossSpec,
    logits: Tensor,
    *,
    target: Optional[Tensor] = None,
    labels: Optional[Tensor] = None,
    scores: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    avg_factor: float | Tensor | None = None,
    impl: str,
) -> Tensor:
    """The fused loss with the contract of :func:`qfocal._reference.reference_loss`; ``impl`` is one of
    ``FUSED_IMPLS`` (eager, inductor, triton)."""
    if impl not in FUSED_IMPLS:
        raise ValueError(f"impl: expected one of {FUSED_IMPLS}, got {impl!r}")
    tensors: LossTensors = {
        "target": target, "labels": labels, "scores": scores,
        "pos_weight": pos_weight, "weight": weight, "avg_factor": avg_factor,
    }  # fmt: skip
    if _needs_reference(impl, logits, tensors):
        return reference_loss(spec, logits, **tensors)
    avg_tensor = avg_factor if isinstance(avg_factor, Tensor) else None
    avg_value = float(avg_factor) if avg_factor is not None and avg_tensor is None else -1.0
    loss: Tensor
    loss, _ = fused_loss_op(
        logits=logits, **{**tensors, "avg_factor": avg_tensor},
        kind=spec.kind, exponent=float(spec.exponent),
        alpha=-1.0 if spec.alpha is None else float(spec.alpha),
        iou_weighted=bool(spec.iou_weighted), reduction=spec.reduction, avg_value=avg_value,
        need_grad=torch.is_grad_enabled() and logits.requires_grad, impl=impl,
    )  # fmt: skip
    if avg_tensor is not None and spec.reduction == "mean" and avg_tensor.dim() > 0:
        loss = loss.reshape(avg_tensor.shape)  # the reference's sum / avg_factor broadcasts to its shape
    return loss
