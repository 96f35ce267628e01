"""The ``qfocal::fused_loss`` custom op: forward returns the loss and saves ``d loss / d logits``; backward
scales that saved gradient by the incoming one.

Registered with :func:`torch.library.custom_op`, :func:`~torch.library.register_autograd` and
:func:`~torch.library.register_fake`, so a model that calls a qfocal loss compiles under
``torch.compile(fullgraph=True)`` with the op as one opaque node. :func:`fused_loss` is the callable that
:func:`qfocal.ops.select` hands to the public losses; it routes to :func:`qfocal._reference.reference_loss`
whatever the fused op cannot honour (gradients for targets or weights, empty inputs, unusual dtypes).

``qfocal::fused_loss_norms`` is the same op with a third output, ``[||d loss / d logits||^2, ||d BCE / d
logits||^2]`` (float64), summed in the loop that writes the gradient: what gradient-norm matching needs
(:mod:`qfocal.integrations.balance`), without a second evaluation of either. :func:`fused_loss` runs it inside
:func:`capture_grad_norms`, which collects the norms of each fused call; a call that takes the reference math
reports nothing (the caller falls back to its own rule).

What makes the Inductor implementation compile a new graph (dtypes, optional tensors present or not, their
broadcast, layouts without a 1-D view...) is listed in :mod:`qfocal.ops._inductor`.

The ops' arguments are addressed by name everywhere (``_TENSORS`` and ``_ATTRS`` are read off the signature of
:func:`_forward_impl`), so adding one means adding it to that signature and to :func:`fused_loss`'s call.
"""

# ruff: noqa: UP045  (torch.library infers the op schema from typing.Optional on every supported torch)

import contextlib
import contextvars
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Optional, cast

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .._names import FUSED_IMPLS
from .._reference import AVG_EPS, LossSpec, compute_dtype, densify, reference_loss
from ._inductor import inductor_loss_and_grad
from ._math import fused_loss_and_grad, power_form

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


def _run(
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
    need_norms: bool,
    check_range: bool = False,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(loss, d loss / d logits, norms) in ``logits``'s dtype; the second is empty when ``need_grad`` is False,
    the third None unless ``need_norms`` (see :func:`qfocal.ops._math.fused_loss_and_grad`).

    ``alpha < 0`` means no alpha (qfl, focal); ``avg_value < 0`` means no float avg_factor.
    """
    reduce = reduction != "none"
    scale = _scale(logits, reduction, avg_factor, avg_value)
    if impl == "inductor" and labels is not None:
        # Inductor generates different code (vectorisation, reduction order) for the sparse and the dense graph,
        # which then differ in the last bit: build the dense target, as the reference does, so that both forms
        # run the same compiled code and give the same bits. Eager and Triton compute t in place, identically.
        sparse_scores = cast(Tensor, scores)  # scores come with labels
        target = densify(labels, sparse_scores, logits.shape, sparse_scores.dtype)
        labels = scores = None
    has_alpha = alpha >= 0
    alpha_offset = 1.0 - alpha if has_alpha else 1.0
    alpha_slope = 2.0 * alpha - 1.0 if has_alpha else 0.0
    if impl == "triton":
        from ._triton import triton_loss_and_grad

        loss, grad, norms = triton_loss_and_grad(
            logits, target, labels, scores, pos_weight, weight, scale,
            kind=kind, exponent=exponent, alpha=alpha, alpha_offset=alpha_offset, alpha_slope=alpha_slope,
            iou_weighted=iou_weighted, reduce=reduce, need_grad=need_grad, need_norms=need_norms,
        )  # fmt: skip
    else:
        cdtype = scale.dtype

        def as_tensor(value: float) -> Tensor:
            return torch.full((), value, dtype=cdtype, device=logits.device)

        args = (
            logits, target, labels, scores, pos_weight, weight,
            as_tensor(exponent), as_tensor(alpha), as_tensor(alpha_offset), as_tensor(alpha_slope),
            torch.full((), iou_weighted, dtype=torch.bool, device=logits.device), scale,
            kind, reduce, need_grad, power_form(exponent), need_norms,
        )  # fmt: skip
        if impl == "inductor":
            loss, grad, norms, target_range = inductor_loss_and_grad(*args, check_range=check_range)
            if target_range is not None and not (bool(target_range[0] >= 0) and bool(target_range[1] <= 1)):
                raise _TargetOutOfRange("target: expected values in [0, 1]")
        else:
            loss, grad, norms = fused_loss_and_grad(*args)
    grad = logits.new_empty((0,)) if grad is None else _like_logits(grad, logits)
    if not reduce:
        loss = _like_logits(loss, logits)
    return loss, grad, norms


class _TargetOutOfRange(ValueError):
    """The kernel's own range check found a target outside [0, 1]; :func:`fused_loss` hands the target to the
    caller's check for the message."""


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
    check_range: bool = False,
) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits) in ``logits``'s dtype; the second is empty when ``need_grad`` is False.

    ``alpha < 0`` means no alpha (qfl, focal); ``avg_value < 0`` means no float avg_factor. ``check_range``: the
    target's value check, done in the kernel's own loop (Inductor; ValueError as :func:`qfocal.check_target`).
    """
    loss, grad, _ = _run(
        logits, target, labels, scores, pos_weight, weight, avg_factor, kind, exponent, alpha, iou_weighted,
        reduction, avg_value, need_grad, impl, need_norms=False, check_range=check_range,
    )  # fmt: skip
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


def _forward_norms_impl(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_forward_impl`'s outputs and ``[||d loss / d logits||^2, ||d BCE / d logits||^2]`` (float64) from
    the same pass, the BCE with the loss's ``pos_weight``, ``weight`` and reduction."""
    # need_norms: the third output is set
    return cast("tuple[Tensor, Tensor, Tensor]", _run(**_bind(args, kwargs), need_norms=True))


_forward_norms_impl.__signature__ = _SIGNATURE.replace(  # type: ignore[attr-defined]  # torch.library reads it
    return_annotation=tuple[Tensor, Tensor, Tensor]
)

fused_loss_op = torch.library.custom_op("qfocal::fused_loss", _forward_impl, mutates_args=())
fused_loss_norms_op = torch.library.custom_op(
    "qfocal::fused_loss_norms", _forward_norms_impl, mutates_args=()
)


def _norms_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.device.type in ("cpu", "cuda") else compute_dtype(logits.dtype)


@fused_loss_op.register_fake
def _fake(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    a = _bind(args, kwargs)
    logits = a["logits"]
    # the layout of empty_like(logits), as _forward_impl returns: a permuted input keeps its strides
    loss = logits.new_empty(()) if a["reduction"] != "none" else torch.empty_like(logits)
    grad = torch.empty_like(logits) if a["need_grad"] else logits.new_empty((0,))
    return loss, grad


@fused_loss_norms_op.register_fake
def _fake_norms(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
    logits = _bind(args, kwargs)["logits"]
    return (*_fake(*args, **kwargs), logits.new_empty((2,), dtype=_norms_dtype(logits)))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
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
    if len(output) > 2:  # fused_loss_norms: the norms are statistics, not a function to differentiate
        ctx.mark_non_differentiable(output[2])


def _traced(t: Tensor) -> bool:
    """Whether the op is being traced (torch.compile, torch.export, AOTAutograd as in opcheck), not run."""
    return torch.compiler.is_compiling() or is_fake(t)


def _reference_grad(ctx: Any, tensors: dict[str, Any], grad_loss: Tensor, create_graph: bool) -> Tensor:
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
    ctx: Any, grad_loss: Optional[Tensor], _grad_of_grad: Optional[Tensor], *_grad_of_norms: Optional[Tensor]
) -> tuple[Optional[Tensor], ...]:
    grads = dict.fromkeys(_SIGNATURE.parameters)
    if grad_loss is not None and ctx.needs_input_grad[0]:
        grads["logits"] = _logits_grad(ctx, grad_loss)
    return tuple(grads.values())


def _saved(ctx: Any) -> dict[str, Any]:
    return dict(zip(_TENSORS, ctx.saved_tensors[: len(_TENSORS)], strict=True))


def _logits_grad(ctx: Any, grad_loss: Tensor) -> Tensor:
    if ctx.traced:  # traced by AOTAutograd: Inductor plans the memory itself
        return cast(Tensor, ctx.saved_tensors[-1]) * grad_loss
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
        grad, ctx.grad, ctx.consumed = ctx.grad, None, True
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
fused_loss_norms_op.register_autograd(_backward, setup_context=_setup_context)


def _functorch_active() -> bool:
    """Whether a functorch transform (vmap, grad, jvp, ...) is active: its tensors are wrapped at some level."""
    current_level = getattr(torch._C._functorch, "maybe_current_level", None)
    return current_level is not None and current_level() is not None


def _under_transform(logits: Tensor, tensors: dict[str, Any]) -> bool:
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


def _needs_reference(impl: str, logits: Tensor, tensors: dict[str, Any]) -> bool:
    if logits.dtype not in _SUPPORTED_DTYPES or logits.numel() == 0:
        return True
    if _under_transform(logits, tensors):
        return True
    if impl == "triton" and logits.dtype == torch.float64:
        return True
    if torch.is_grad_enabled():
        return any(isinstance(t, Tensor) and t.requires_grad for t in tensors.values())
    return False


@dataclasses.dataclass(frozen=True)
class GradNorms:
    """What one fused call reports inside :func:`capture_grad_norms`: its inputs as the op received them, its
    output, and the squared norms of two gradients with respect to ``logits`` from the same pass.

    ``own_sq`` is ``||d sum(loss) / d logits||^2`` (weights and reduction as the loss applies them, in the
    compute dtype before any cast to ``logits``'s dtype); ``bce_sq`` is the same for BCE with logits on the same
    logits and target, with this call's ``pos_weight``, ``weight`` and reduction (``sigmoid(x) - t`` for plain
    BCE). Both are 0-dim float64 tensors on ``logits``'s device (no host synchronisation).
    """

    loss: Tensor
    logits: Tensor
    target: Optional[Tensor]
    pos_weight: Optional[Tensor]
    weight: Optional[Tensor]
    reduction: str
    avg_factor: object
    own_sq: Tensor
    bce_sq: Tensor


_NORM_SINK: contextvars.ContextVar[Optional[list[GradNorms]]] = contextvars.ContextVar(
    "qfocal_norm_sink", default=None
)


@contextlib.contextmanager
def capture_grad_norms() -> Iterator[list[GradNorms]]:
    """Collect, in the list it yields, a :class:`GradNorms` for every fused call of a qfocal loss inside.

    Calls that run the reference math (backend ``"reference"``, ``"auto"`` below its size threshold or in its
    warm-up, empty inputs, gradients for targets or weights, functorch transforms and forward-mode AD) and calls
    traced by ``torch.compile`` add nothing. The loss and its gradient are those of an ordinary call, bit for bit.

    Example:
        >>> import torch, qfocal
        >>> from qfocal.ops import capture_grad_norms
        >>> x = torch.randn(8, 3, requires_grad=True)
        >>> with qfocal.backend("eager"), capture_grad_norms() as norms:
        ...     loss = qfocal.quality_focal_loss(x, torch.rand(8, 3))
        >>> gain = (norms[0].bce_sq / norms[0].own_sq).sqrt()
    """
    sink: list[GradNorms] = []
    token = _NORM_SINK.set(sink)
    try:
        yield sink
    finally:
        _NORM_SINK.reset(token)


def _norm_sink() -> Optional[list[GradNorms]]:
    if torch.compiler.is_compiling():  # a traced graph has no place for a side channel
        return None
    return _NORM_SINK.get()


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
    check_target: Callable[[Tensor], object] | None = None,
) -> Tensor:
    """The fused loss with the contract of :func:`qfocal._reference.reference_loss`; ``impl`` is one of
    ``FUSED_IMPLS`` (eager, inductor, triton). Inside :func:`capture_grad_norms` it also reports the norms.

    ``check_target``: the caller's value check of the dense target (values in [0, 1]), left to this call: on
    Inductor the kernel finds the target's range in its own loop (no pass of its own) and the check runs only on
    the error path, for its message; elsewhere it runs before the math."""
    if impl not in FUSED_IMPLS:
        raise ValueError(f"impl: expected one of {FUSED_IMPLS}, got {impl!r}")
    tensors: dict[str, Any] = {
        "target": target, "labels": labels, "scores": scores,
        "pos_weight": pos_weight, "weight": weight, "avg_factor": avg_factor,
    }  # fmt: skip
    check = check_target if target is not None else None
    if _needs_reference(impl, logits, tensors):
        if check is not None:
            check(cast(Tensor, target))
        return reference_loss(spec, logits, **tensors)
    in_kernel = check is not None and impl == "inductor"
    if check is not None and not in_kernel:
        check(cast(Tensor, target))
    avg_tensor = avg_factor if isinstance(avg_factor, Tensor) else None
    avg_value = float(avg_factor) if avg_factor is not None and avg_tensor is None else -1.0
    sink = _norm_sink()
    try:
        outputs = (fused_loss_op if sink is None else fused_loss_norms_op)(
            logits=logits, **{**tensors, "avg_factor": avg_tensor},
            kind=spec.kind, exponent=float(spec.exponent),
            alpha=-1.0 if spec.alpha is None else float(spec.alpha),
            iou_weighted=bool(spec.iou_weighted), reduction=spec.reduction, avg_value=avg_value,
            need_grad=torch.is_grad_enabled() and logits.requires_grad, impl=impl, check_range=in_kernel,
        )  # fmt: skip
    except _TargetOutOfRange:
        cast("Callable[[Tensor], object]", check)(cast(Tensor, target))  # the caller's message
        raise
    loss: Tensor = outputs[0]
    if avg_tensor is not None and spec.reduction == "mean" and avg_tensor.dim() > 0:
        loss = loss.reshape(avg_tensor.shape)  # the reference's sum / avg_factor broadcasts to its shape
    if sink is not None:
        own_sq, bce_sq = outputs[2].unbind()
        dense = target if labels is None else None
        record = GradNorms(
            loss, logits, dense, pos_weight, weight, spec.reduction, avg_factor, own_sq, bce_sq
        )
        sink.append(record)
    return loss
