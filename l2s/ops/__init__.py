"""l2s.ops: token-selected text-softmax maps ``softmax_T(q kᵀ · scale) @ selector``.

Two backends compute the same maps and gradients:

* ``"sdpa"``: fused SDPA with the ``(T, W)`` selector as value matrix (:mod:`.sdpa`);
* ``"native"``: the custom op ``l2s::selected_text_softmax`` (:mod:`.selected_softmax`), whose
  kernels :mod:`.dispatch` picks: l2s_fast on CPU, Triton or l2s_fast's CUDA kernels on a GPU,
  the exact blockwise PyTorch path (:mod:`.blockwise`) for float64.

Explicit PyTorch formulas: :func:`selected_text_softmax_reference`,
:func:`selected_text_attention_reference`.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from . import selected_softmax as _registration  # noqa: F401  (registers torch.ops.l2s.*)
from .dispatch import CUDA_BACKEND_ENV, CUDA_BACKENDS, available_backends, cuda_backend, require_kernels
from .reference import check_inputs as _check_inputs
from .reference import check_tensors as _check_tensors
from .reference import selected_text_softmax_reference
from .sdpa import sdpa_selected_text_attention, selected_text_attention_reference
from .selector import selector_width, token_group_selector

__all__ = [
    "ATTENTION_BACKENDS",
    "CUDA_BACKENDS",
    "CUDA_BACKEND_ENV",
    "available_backends",
    "cuda_backend",
    "require_kernels",
    "selected_text_attention",
    "selected_text_attention_reference",
    "selected_text_softmax",
    "selected_text_softmax_reference",
    "selector_width",
    "token_group_selector",
]

ATTENTION_BACKENDS = ("sdpa", "native")


def selected_text_softmax(q: Tensor, k: Tensor, selector: Tensor, scale: float | None = None) -> Tensor:
    """Token-selected text-softmax maps ``softmax_T(q kᵀ · scale) @ selector`` via the native op.

    Args:
        q: ``(B, H, N, D)`` image queries (any strides).
        k: ``(B, H, T, D)`` text keys, same dtype and device as ``q``.
        selector: ``(T, G)`` token weights per group (:func:`token_group_selector`).
        scale: logit scale; default ``1/√D`` (SDPA's).

    Returns:
        ``(B, H, N, G)`` maps in q's dtype (under autocast: autocast's dtype, as SDPA's); first-order
        reverse-mode differentiable w.r.t. q, k and selector (``backward``, ``torch.autograd.grad``).
        Forward mode (``torch.func.jvp``, forward AD) is refused; ``torch.func.grad``/``jacrev`` and
        double backward are not supported: use :func:`selected_text_softmax_reference` for those.

    Limits by kernel (:mod:`.dispatch` picks): CPU (l2s_fast) any D and G, computed in float32
    (float64 exactly, blockwise); CUDA in float32/float16/bfloat16 only, Triton D <= 256 and G <= 128,
    l2s_fast's CUDA kernels 1 <= D <= 256, G <= 32 and B·H <= 65535. Beyond them a one-line error.
    """
    _check_tensors(q=q, k=k, selector=selector)
    q, k = _autocast(q, k)
    _check_inputs(q, k, selector)
    _refuse_forward_mode(q, k, selector)
    if scale is None:   # D = 0: every logit is 0 whatever the scale
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a Python number, got {type(scale).__name__}")
    return torch.ops.l2s.selected_text_softmax(q, k, selector, float(scale))


def _autocast(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """q and k in autocast's dtype where it is on (SDPA, the other backend, is cast the same way;
    like autocast, float64 is left alone)."""
    device = q.device.type
    if not torch.amp.is_autocast_available(device):   # e.g. meta tensors (shape-only tracing)
        return q, k
    if q.dtype.is_floating_point and q.dtype != torch.float64 and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return q.to(dtype), k.to(dtype)
    return q, k


def _refuse_forward_mode(*tensors: Tensor) -> None:
    # The op has a reverse-mode formula only; forward mode would silently give a zero tangent.
    if torch.compiler.is_compiling():
        return
    if any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError("l2s::selected_text_softmax has no forward-mode derivative (jvp): use "
                                  "selected_text_softmax_reference")


def selected_text_attention(
    query: Tensor,
    text_key: Tensor,
    selector: Tensor,
    attn_mask: Tensor | None = None,
    backend: str = "sdpa",
) -> Tensor:
    """Token-averaged text-softmax attention maps ``softmax(q kᵀ/√d) @ selector``.

    Args:
        query: ``(B, H, N, D)`` image queries (after the model's norms and RoPE).
        text_key: ``(B, H, T, D)`` text keys.
        selector: ``(T, W)`` from :func:`token_group_selector` (``W`` may include zero padding).
        attn_mask: optional SDPA mask over the text keys (SD passes the model's own mask).
        backend: ``"sdpa"`` (fused SDPA, selector as value) or ``"native"`` (the custom op). The
            native op takes no mask: with ``attn_mask`` the call goes to SDPA, same maths.

    Returns:
        ``(B, H, N, W)`` maps; the columns past the real groups are zero.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {ATTENTION_BACKENDS}")
    if backend == "native" and attn_mask is None:
        return selected_text_softmax(query, text_key, selector)
    _check_tensors(query=query, text_key=text_key, selector=selector)
    _check_inputs(*_autocast(query, text_key), selector)   # both backends refuse the same inputs
    return sdpa_selected_text_attention(query, text_key, selector, attn_mask=attn_mask)
