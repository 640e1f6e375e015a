"""The maps through fused SDPA, with the ``(T, W)`` selector as the value matrix.

``softmax_T(q kᵀ/√d) @ S`` is exactly SDPA with value ``S``, so the fused kernels compute the
token-averaged maps, and their standard backward gives exact gradients, without ever keeping a
``heads × N × T`` probability tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def selected_text_attention_reference(
    query: torch.Tensor,
    text_key: torch.Tensor,
    selector: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The explicit formula: SDPA's masked softmax of ``q kᵀ/√d`` over T, times the selector.

    Materialises the ``(B, H, N, T)`` probabilities; a boolean mask keeps the True keys, a float
    mask is added to the logits, and a row the mask hides entirely is zero (SDPA's conventions).
    """
    scores = query @ text_key.transpose(-1, -2) * query.shape[-1] ** -0.5
    probs_of_nothing = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
            probs_of_nothing = ~attn_mask.any(dim=-1, keepdim=True)
        else:
            scores = scores + attn_mask
            probs_of_nothing = torch.isneginf(attn_mask).all(dim=-1, keepdim=True)
    if probs_of_nothing is not None:   # a finite row first, so neither pass sees 0/0
        probs = scores.masked_fill(probs_of_nothing, 0.0).softmax(dim=-1).masked_fill(probs_of_nothing, 0.0)
    else:
        probs = scores.softmax(dim=-1)
    return probs @ selector.to(dtype=probs.dtype)


def sdpa_selected_text_attention(
    query: torch.Tensor,
    text_key: torch.Tensor,
    selector: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`selected_text_attention_reference` by fused SDPA; ``(B, H, N, W)`` maps."""
    if text_key.shape[-2] != selector.shape[0]:
        # Checked here because torch's CPU flash kernel silently accepts keys longer than values.
        raise ValueError(f"{text_key.shape[-2]} text keys but a selector over {selector.shape[0]} tokens")
    batch, heads, _, _ = query.shape
    value = selector.to(dtype=query.dtype).expand(batch, heads, *selector.shape)
    if not query.is_cuda:
        return F.scaled_dot_product_attention(query, text_key, value, attn_mask=attn_mask)
    # cuDNN's SDPA backward failed on an H100 and flash rejects value dim != q/k dim: force the
    # memory-efficient kernel (math only as a fallback). A contiguous value (tiny: B·H·T·8) avoids
    # relying on the kernel accepting stride-0 batch/head dims.
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(query, text_key, value.contiguous(), attn_mask=attn_mask)
