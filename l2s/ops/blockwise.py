"""The kernels' blockwise algorithm in exact PyTorch: the op's float64 path, on any device.

Forward: an online softmax over key blocks (running max, denominator and ``P @ selector``).
Backward: from the row log-sum-exp and Δ = rowsum(dO ∘ O), recomputing P block by block. It exists
for ``torch.autograd.gradcheck``, which needs float64 throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Key block of the float64 path: bounds its (N, block) temporaries.
KEY_BLOCK = 128
# Query chunk of the selector gradient: bounds its (B, H, chunk, T) probabilities.
_SELECTOR_GRAD_CHUNK = 256


def blockwise_forward(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` by an online softmax over key blocks, as the kernels compute them."""
    shape = (*q.shape[:3], 1)
    row_max = torch.full(shape, float("-inf"), dtype=q.dtype, device=q.device)
    denom = torch.zeros(shape, dtype=q.dtype, device=q.device)
    acc = torch.zeros((*q.shape[:3], selector.shape[1]), dtype=q.dtype, device=q.device)
    selector = selector.to(dtype=q.dtype)
    for start in range(0, k.shape[2], KEY_BLOCK):
        block = slice(start, start + KEY_BLOCK)
        logits = q @ k[:, :, block].transpose(-1, -2) * scale
        new_max = torch.maximum(row_max, logits.amax(dim=-1, keepdim=True))
        rescale = torch.exp(row_max - new_max)
        probs = torch.exp(logits - new_max)
        denom = denom * rescale + probs.sum(dim=-1, keepdim=True)
        acc = acc * rescale + probs @ selector[block]
        row_max = new_max
    return acc / denom, row_max + torch.log(denom)


def blockwise_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """``(grad_q, grad_k)``: dS = P ∘ (dO·selᵀ − Δ), Δ = rowsum(dO ∘ O), P recomputed per block."""
    out, lse = blockwise_forward(q, k, selector, scale)
    delta = (grad_out * out).sum(dim=-1, keepdim=True)
    selector = selector.to(dtype=q.dtype)
    grad_q = torch.zeros_like(q, memory_format=torch.contiguous_format)
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    for start in range(0, k.shape[2], KEY_BLOCK):
        block = slice(start, start + KEY_BLOCK)
        k_block = k[:, :, block]
        probs = torch.exp(q @ k_block.transpose(-1, -2) * scale - lse)
        grad_logits = probs * (grad_out @ selector[block].T - delta)
        grad_q += grad_logits @ k_block * scale
        grad_k[:, :, block] = grad_logits.transpose(-1, -2) @ q * scale
    return grad_q, grad_k


def selector_grad(grad_out: Tensor, q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``∂ℓ/∂selector = Σ_{b,h,n} P_nt dO_ng`` — only when a selector requires grad (rare).

    Computed in PyTorch over query chunks, so P is materialised one (B, H, chunk, T) slab at a time.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    grad = torch.zeros((k.shape[2], grad_out.shape[-1]), dtype=compute, device=q.device)
    for start in range(0, q.shape[2], _SELECTOR_GRAD_CHUNK):
        rows = slice(start, start + _SELECTOR_GRAD_CHUNK)
        probs = torch.softmax(q[:, :, rows].to(compute) @ k.to(compute).transpose(-1, -2) * scale, dim=-1)
        grad += torch.einsum("bhnt,bhng->tg", probs, grad_out[:, :, rows].to(compute))
    return grad
