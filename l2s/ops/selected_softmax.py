"""Native token-selected attention capture as a PyTorch custom op: ``l2s::selected_text_softmax``.

The maps that Learn-to-Steer's classifier reads (reference/performance.md §2) are, per head,

    maps = softmax over the T text keys of (q_img · k_txtᵀ · scale), times a (T, G) selector

(the selector averages each object word's sub-word tokens). The op computes them without ever
storing the (N, T) probabilities, and its backward recomputes them blockwise, including the
softmax normaliser's term (the gradient is dense over all T keys).

Kernels, chosen by device and dtype; nothing falls back silently to a path with other results:

* CPU, float32 / float16 / bfloat16: ``l2s_fast`` (C++/OpenMP), computed in float32, cast back.
* CUDA, float32 / float16 / bfloat16: the Triton kernels in ``l2s.kernels.selected_softmax`` when
  triton is importable, else ``l2s_fast``'s CUDA kernels (built with ``L2S_BUILD_CUDA=1``), else
  a RuntimeError. ``L2S_CAPTURE_CUDA_BACKEND=triton|l2s_fast_cuda`` forces one of them.
* float64, any device: an exact float64 PyTorch implementation of the same blockwise algorithm
  (online softmax over key blocks; backward from the row log-sum-exp and Δ = rowsum(dO ∘ O)).
  It exists for ``torch.autograd.gradcheck``, which needs float64 throughout.

The op works under ``torch.compile`` (fake kernels are registered) and has an autograd formula
whose backward is the custom op ``l2s::selected_text_softmax_backward``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "available_backends",
    "selected_text_attention",
    "selected_text_softmax",
    "selected_text_softmax_reference",
]

CUDA_BACKEND_ENV = "L2S_CAPTURE_CUDA_BACKEND"
CUDA_BACKENDS = ("triton", "l2s_fast_cuda")
_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Key block of the float64 path: bounds its (N, block) temporaries.
_FLOAT64_KEY_BLOCK = 128
# dtype codes of l2s_fast's CUDA entry points (csrc/cuda/selected_softmax.h).
_CUDA_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


# ------------------------------------------------------------------------------------------------
# Reference and shape checks
# ------------------------------------------------------------------------------------------------


def selected_text_softmax_reference(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    """The explicit formula ``softmax(q kᵀ · scale, over T) @ selector``; materialises (B, H, N, T)."""
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return probs @ selector.to(dtype=probs.dtype)


def _check_inputs(q: Tensor, k: Tensor, selector: Tensor) -> None:
    """Raise ValueError/TypeError with a one-line reason unless q, k, selector fit the op."""
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
    if not (q.dtype.is_floating_point and selector.dtype.is_floating_point) or k.dtype != q.dtype:
        raise TypeError(f"q and k must share one floating dtype (got {q.dtype}, {k.dtype}); selector {selector.dtype}")
    if not (q.device == k.device == selector.device):
        raise ValueError(f"q, k, selector on different devices: {q.device}, {k.device}, {selector.device}")


# ------------------------------------------------------------------------------------------------
# float64 path: the blockwise algorithm in exact PyTorch (any device)
# ------------------------------------------------------------------------------------------------


def _blockwise_forward(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` by an online softmax over key blocks, as the kernels compute them."""
    shape = (*q.shape[:3], 1)
    row_max = torch.full(shape, float("-inf"), dtype=q.dtype, device=q.device)
    denom = torch.zeros(shape, dtype=q.dtype, device=q.device)
    acc = torch.zeros((*q.shape[:3], selector.shape[1]), dtype=q.dtype, device=q.device)
    selector = selector.to(dtype=q.dtype)
    for start in range(0, k.shape[2], _FLOAT64_KEY_BLOCK):
        block = slice(start, start + _FLOAT64_KEY_BLOCK)
        logits = q @ k[:, :, block].transpose(-1, -2) * scale
        new_max = torch.maximum(row_max, logits.amax(dim=-1, keepdim=True))
        rescale = torch.exp(row_max - new_max)
        probs = torch.exp(logits - new_max)
        denom = denom * rescale + probs.sum(dim=-1, keepdim=True)
        acc = acc * rescale + probs @ selector[block]
        row_max = new_max
    return acc / denom, row_max + torch.log(denom)


def _blockwise_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """``(grad_q, grad_k)``: dS = P ∘ (dO·selᵀ − Δ), Δ = rowsum(dO ∘ O), P recomputed per block."""
    out, lse = _blockwise_forward(q, k, selector, scale)
    delta = (grad_out * out).sum(dim=-1, keepdim=True)
    selector = selector.to(dtype=q.dtype)
    grad_q = torch.zeros_like(q, memory_format=torch.contiguous_format)
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    for start in range(0, k.shape[2], _FLOAT64_KEY_BLOCK):
        block = slice(start, start + _FLOAT64_KEY_BLOCK)
        k_block = k[:, :, block]
        probs = torch.exp(q @ k_block.transpose(-1, -2) * scale - lse)
        grad_logits = probs * (grad_out @ selector[block].T - delta)
        grad_q += grad_logits @ k_block * scale
        grad_k[:, :, block] = grad_logits.transpose(-1, -2) @ q * scale
    return grad_q, grad_k


def _selector_grad(grad_out: Tensor, q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``∂ℓ/∂selector = Σ_{b,h,n} P_nt dO_ng`` — only when a selector requires grad (rare).

    Computed in PyTorch over query chunks, so P is materialised one (B, H, chunk, T) slab at a time.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    grad = torch.zeros((k.shape[2], grad_out.shape[-1]), dtype=compute, device=q.device)
    chunk = 256
    for start in range(0, q.shape[2], chunk):
        rows = slice(start, start + chunk)
        probs = torch.softmax(q[:, :, rows].to(compute) @ k.to(compute).transpose(-1, -2) * scale, dim=-1)
        grad += torch.einsum("bhnt,bhng->tg", probs, grad_out[:, :, rows].to(compute))
    return grad


# ------------------------------------------------------------------------------------------------
# CPU kernels: l2s_fast
# ------------------------------------------------------------------------------------------------


def _float32_array(tensor: Tensor):
    return tensor.detach().to(dtype=torch.float32).contiguous().numpy()


def _l2s_fast():
    try:
        import l2s_fast
    except ImportError as error:  # the op is useless without it: say how to build it
        raise RuntimeError(
            "l2s::selected_text_softmax on CPU needs the native module l2s_fast: run "
            "`pip install --no-build-isolation -e .` in the repository root"
        ) from error
    return l2s_fast


def _forward_cpu(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    _check_inputs(q, k, selector)
    if q.dtype == torch.float64:
        return _blockwise_forward(q, k, selector, scale)[0]
    out = _l2s_fast().selected_text_softmax_forward(
        _float32_array(q), _float32_array(k), _float32_array(selector), scale
    )
    return torch.from_numpy(out).to(dtype=q.dtype)


def _backward_cpu(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    _check_inputs(q, k, selector)
    if q.dtype == torch.float64:
        return _blockwise_backward(grad_out.to(torch.float64), q, k, selector, scale)
    grad_q, grad_k = _l2s_fast().selected_text_softmax_backward(
        _float32_array(grad_out), _float32_array(q), _float32_array(k), _float32_array(selector), scale
    )
    return torch.from_numpy(grad_q).to(dtype=q.dtype), torch.from_numpy(grad_k).to(dtype=k.dtype)


# ------------------------------------------------------------------------------------------------
# CUDA kernels: Triton, else l2s_fast's CUDA build
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _l2s_fast_cuda_usable() -> bool:
    try:
        import l2s_fast
    except ImportError:
        return False
    return bool(l2s_fast.has_cuda())


def _cuda_backend() -> str:
    """The CUDA backend to run: the forced one, else Triton, else l2s_fast's CUDA kernels."""
    forced = os.environ.get(CUDA_BACKEND_ENV, "").strip()
    if forced:
        if forced not in CUDA_BACKENDS:
            raise RuntimeError(f"{CUDA_BACKEND_ENV}={forced!r}: choose one of {', '.join(CUDA_BACKENDS)}")
        usable = _triton_importable() if forced == "triton" else _l2s_fast_cuda_usable()
        if not usable:
            raise RuntimeError(f"{CUDA_BACKEND_ENV}={forced!r} but that backend is not available here")
        return forced
    if _triton_importable():
        return "triton"
    if _l2s_fast_cuda_usable():
        return "l2s_fast_cuda"
    raise RuntimeError(
        "l2s::selected_text_softmax on CUDA needs Triton (`pip install triton`) or l2s_fast built "
        "with CUDA (`L2S_BUILD_CUDA=1 pip install --no-build-isolation -e .`); neither is available"
    )


def _triton_kernels():
    from l2s.kernels import selected_softmax

    return selected_softmax


def _cuda_shape_args(q: Tensor, k: Tensor, selector: Tensor) -> tuple[int, ...]:
    batch, heads, queries, head_dim = q.shape
    return batch, heads, queries, k.shape[2], head_dim, selector.shape[1]


def _forward_l2s_fast_cuda(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    q, k = q.contiguous(), k.contiguous()
    selector = selector.to(dtype=torch.float32).contiguous()
    out = torch.empty((*q.shape[:3], selector.shape[1]), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        _l2s_fast().selected_text_softmax_forward_cuda(
            q.data_ptr(), k.data_ptr(), selector.data_ptr(), out.data_ptr(),
            *_cuda_shape_args(q, k, selector), scale, _CUDA_DTYPE_CODES[q.dtype], stream,
        )
    return out


def _backward_l2s_fast_cuda(
    grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    q, k = q.contiguous(), k.contiguous()
    grad_out = grad_out.to(dtype=q.dtype).contiguous()
    selector = selector.to(dtype=torch.float32).contiguous()
    if q.numel() == 0:  # no queries (or no heads): every gradient is zero
        return torch.zeros_like(q), torch.zeros_like(k)
    grad_q = torch.empty_like(q)  # fully written by the kernels
    grad_k = torch.empty_like(k)
    # O(N) workspaces: row log-sum-exp and Δ, written by the dq kernel and read by the dk kernel.
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    delta = torch.empty_like(lse)
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        _l2s_fast().selected_text_softmax_backward_cuda(
            grad_out.data_ptr(), q.data_ptr(), k.data_ptr(), selector.data_ptr(),
            lse.data_ptr(), delta.data_ptr(), grad_q.data_ptr(), grad_k.data_ptr(),
            *_cuda_shape_args(q, k, selector), scale, _CUDA_DTYPE_CODES[q.dtype], stream,
        )
    return grad_q, grad_k


def _forward_cuda(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    _check_inputs(q, k, selector)
    if q.dtype == torch.float64:
        return _blockwise_forward(q, k, selector, scale)[0]
    if q.dtype not in _NATIVE_DTYPES:
        raise TypeError(f"l2s::selected_text_softmax has no CUDA kernel for {q.dtype}")
    if _cuda_backend() == "triton":
        return _triton_kernels().selected_softmax_forward(q, k, selector, scale)
    return _forward_l2s_fast_cuda(q, k, selector, scale)


def _backward_cuda(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    _check_inputs(q, k, selector)
    if q.dtype == torch.float64:
        return _blockwise_backward(grad_out.to(torch.float64), q, k, selector, scale)
    if q.dtype not in _NATIVE_DTYPES:
        raise TypeError(f"l2s::selected_text_softmax_backward has no CUDA kernel for {q.dtype}")
    if _cuda_backend() == "triton":
        return _triton_kernels().selected_softmax_backward(grad_out, q, k, selector, scale)
    return _backward_l2s_fast_cuda(grad_out, q, k, selector, scale)


# ------------------------------------------------------------------------------------------------
# Op registration
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("l2s::selected_text_softmax", mutates_args=(), device_types="cpu")
def _selected_text_softmax_op(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    return _forward_cpu(q, k, selector, scale)


_selected_text_softmax_op.register_kernel("cuda")(_forward_cuda)


@_selected_text_softmax_op.register_fake
def _(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    _check_inputs(q, k, selector)
    return q.new_empty((*q.shape[:3], selector.shape[1]))


@torch.library.custom_op("l2s::selected_text_softmax_backward", mutates_args=(), device_types="cpu")
def _selected_text_softmax_backward_op(
    grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    return _backward_cpu(grad_out, q, k, selector, scale)


_selected_text_softmax_backward_op.register_kernel("cuda")(_backward_cuda)


@_selected_text_softmax_backward_op.register_fake
def _(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    _check_inputs(q, k, selector)
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
        grad_selector = _selector_grad(grad_out, q, k, ctx.scale).to(dtype=selector.dtype)
    return (grad_q if needs_q else None), (grad_k if needs_k else None), grad_selector, None


_selected_text_softmax_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def selected_text_softmax(q: Tensor, k: Tensor, selector: Tensor, scale: float | None = None) -> Tensor:
    """Token-selected text-softmax maps ``softmax_T(q kᵀ · scale) @ selector`` via the native op.

    Args:
        q: ``(B, H, N, D)`` image queries (any strides).
        k: ``(B, H, T, D)`` text keys, same dtype and device as ``q``.
        selector: ``(T, G)`` token weights per group (:func:`l2s.capture.token_group_selector`).
        scale: logit scale; default ``1/√D`` (SDPA's).

    Returns:
        ``(B, H, N, G)`` maps in q's dtype; differentiable w.r.t. q, k (and selector).
    """
    _check_inputs(q, k, selector)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.ops.l2s.selected_text_softmax(q, k, selector, float(scale))


def selected_text_attention(
    query: Tensor,
    text_key: Tensor,
    selector: Tensor,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Drop-in for :func:`l2s.capture.selected_text_attention` backed by the native op.

    Same arguments and result (``(B, H, N, W)`` maps, scale ``1/√D``). The native op takes no
    mask: with ``attn_mask`` the call goes to the SDPA path in l2s.capture, which computes the
    same masked maths.
    """
    if attn_mask is not None:
        from l2s.capture import selected_text_attention as sdpa_selected_text_attention

        return sdpa_selected_text_attention(query, text_key, selector, attn_mask=attn_mask)
    return selected_text_softmax(query, text_key, selector)


def available_backends() -> dict[str, list[str]]:
    """Kernels the op can use here, per device type, in the order it prefers them.

    ``"cpu"``: ``["l2s_fast"]`` when the native module is built. ``"cuda"``: ``"triton"`` (when
    triton is importable) and ``"l2s_fast_cuda"`` (when l2s_fast was built with CUDA and sees a
    device); empty without a CUDA device. float64 inputs always run the exact PyTorch path.
    """
    try:
        import l2s_fast  # noqa: F401

        cpu = ["l2s_fast"]
    except ImportError:
        cpu = []
    cuda: list[str] = []
    if torch.cuda.is_available():
        if _triton_importable():
            cuda.append("triton")
        if _l2s_fast_cuda_usable():
            cuda.append("l2s_fast_cuda")
    return {"cpu": cpu, "cuda": cuda}
