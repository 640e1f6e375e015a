"""The formula every backend of the selected text softmax computes, and the inputs it accepts.

Per head, the maps Learn-to-Steer's classifier reads are

    maps = softmax over the T text keys of (q_img · k_txtᵀ · scale), times a (T, G) selector

(the selector averages each object word's sub-word tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor


def selected_text_softmax_reference(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    """The explicit formula ``softmax(q kᵀ · scale, over T) @ selector``; materialises (B, H, N, T)."""
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return probs @ selector.to(dtype=probs.dtype)


def check_tensors(**inputs) -> None:
    """A TypeError naming the first input that is not a torch.Tensor (a list or an array, say)."""
    for name, value in inputs.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def check_inputs(q: Tensor, k: Tensor, selector: Tensor) -> None:
    """Raise ValueError/TypeError with a one-line reason unless q, k, selector fit the op."""
    check_tensors(q=q, k=k, selector=selector)
    for name, value in (("q", q), ("k", k), ("selector", selector)):
        if value.layout != torch.strided:   # no kernel takes them: the dispatcher's error names no input
            raise TypeError(f"{name} must be a dense tensor, got layout {value.layout} (use .to_dense())")
    if q.dim() != 4 or k.dim() != 4 or selector.dim() != 2:
        raise ValueError(
            "selected_text_softmax expects q (B, H, N, D), k (B, H, T, D), selector (T, G); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(selector.shape)}"
        )
    batch, heads, _, head_dim = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (batch, heads, head_dim):
        raise ValueError(f"k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, heads and head dim")
    if selector.shape[0] != k.shape[2]:
        raise ValueError(f"{k.shape[2]} text keys but a selector over {selector.shape[0]} tokens")
    if k.shape[2] == 0:
        raise ValueError("no text keys (T = 0): the text softmax is undefined")
    if not q.dtype.is_floating_point or k.dtype != q.dtype:
        raise TypeError(f"q and k must share one floating dtype (got {q.dtype}, {k.dtype})")
    if not selector.dtype.is_floating_point:
        raise TypeError(f"the selector must be a floating-point tensor (got {selector.dtype})")
    if not (q.device == k.device == selector.device):
        raise ValueError(f"q, k, selector on different devices: {q.device}, {k.device}, {selector.device}")


def check_grad_out(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor) -> None:
    """:func:`check_inputs`, and ``grad_out`` of the forward's shape, on q's device, floating point."""
    check_inputs(q, k, selector)
    expected = (*q.shape[:3], selector.shape[1])
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)}; the forward's output is {expected}")
    if grad_out.device != q.device or not grad_out.dtype.is_floating_point:
        raise ValueError(f"grad_out must be a floating-point tensor on {q.device}, got {grad_out.dtype} on "
                         f"{grad_out.device}")
