"""Registration of the custom ops ``l2s::selected_text_softmax`` and ``..._backward``.

Each op has its CPU and CUDA kernels (:mod:`.dispatch`) and, beside them, a fake kernel so that it
works under ``torch.compile``. The forward's autograd formula calls the backward op, so both stay
one opaque node each in compiled graphs. The backward recomputes the probabilities blockwise,
including the softmax normaliser's term (the gradient is dense over all T keys); it never stores
the (N, T) probabilities. There is no forward-mode formula: called as ``torch.ops.l2s.*``, a jvp
gets a zero tangent; :func:`l2s.ops.selected_text_softmax` refuses forward mode instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .blockwise import selector_grad
from .dispatch import backward_cpu, backward_cuda, forward_cpu, forward_cuda
from .reference import check_grad_out, check_inputs


@torch.library.custom_op("l2s::selected_text_softmax", mutates_args=(), device_types="cpu")
def _selected_text_softmax_op(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    return forward_cpu(q, k, selector, scale)


_selected_text_softmax_op.register_kernel("cuda")(forward_cuda)


@_selected_text_softmax_op.register_fake
def _(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    check_inputs(q, k, selector)
    return q.new_empty((*q.shape[:3], selector.shape[1]))


@torch.library.custom_op("l2s::selected_text_softmax_backward", mutates_args=(), device_types="cpu")
def _selected_text_softmax_backward_op(
    grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    return backward_cpu(grad_out, q, k, selector, scale)


_selected_text_softmax_backward_op.register_kernel("cuda")(backward_cuda)


@_selected_text_softmax_backward_op.register_fake
def _(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    check_grad_out(grad_out, q, k, selector)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    q, k, selector, scale = inputs
    ctx.save_for_backward(q, k, selector)  # O(N + T) state: P is recomputed in the backward
    ctx.scale = scale


def _backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
    q, k, selector = ctx.saved_tensors
    needs_q, needs_k, needs_selector, _ = ctx.needs_input_grad
    grad_q = grad_k = grad_selector = None
    if needs_q or needs_k:
        grad_q, grad_k = torch.ops.l2s.selected_text_softmax_backward(grad_out, q, k, selector, ctx.scale)
    if needs_selector:
        grad_selector = selector_grad(grad_out, q, k, ctx.scale).to(dtype=selector.dtype)
    return (grad_q if needs_q else None), (grad_k if needs_k else None), grad_selector, None


_selected_text_softmax_op.register_autograd(_backward, setup_context=_setup_context)
