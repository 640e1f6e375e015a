"""Which kernel runs the op, per device and dtype; nothing falls back silently to other results.

* CPU, float32 / float16 / bfloat16: ``l2s_fast`` (C++/OpenMP), computed in float32, cast back.
* CUDA, float32 / float16 / bfloat16: the Triton kernels in ``l2s.kernels.selected_softmax`` when
  triton is importable, else ``l2s_fast``'s CUDA kernels (built with ``L2S_BUILD_CUDA=1``), else
  a RuntimeError. ``L2S_CAPTURE_CUDA_BACKEND=triton|l2s_fast_cuda`` forces one of them.
* float64, any device: the exact blockwise PyTorch path (for gradcheck).
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import torch
from torch import Tensor

from . import native
from .blockwise import blockwise_backward, blockwise_forward
from .reference import check_grad_out, check_inputs

CUDA_BACKEND_ENV = "L2S_CAPTURE_CUDA_BACKEND"
CUDA_BACKENDS = ("triton", "l2s_fast_cuda")
_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _l2s_fast_cuda_usable() -> bool:
    try:
        import l2s_fast
    except ImportError:
        return False
    return bool(l2s_fast.has_cuda())


def cuda_backend() -> str:
    """The backend CUDA tensors run on: the forced one, else Triton, else l2s_fast's CUDA kernels
    (on a machine without CUDA, the one they would run on: see ``available_backends()``)."""
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
        "l2s::selected_text_softmax on CUDA needs Triton (`pip install 'l2s[triton]'`) or l2s_fast built "
        f"with CUDA (set L2S_BUILD_CUDA=1 and {native.BUILD_HINT}); neither is available"
    )


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


def require_kernels(device: torch.device | str) -> None:
    """Raise the op's one-line RuntimeError now when ``device`` has no kernel for float32 / float16 /
    bfloat16 inputs here (CPU: l2s_fast not built; CUDA: neither Triton nor l2s_fast's CUDA kernels),
    so a caller can refuse before a model loads instead of failing at its first steered pass."""
    kind = torch.device(device).type
    if kind == "cpu":
        native.load_l2s_fast()
    elif kind == "cuda":
        cuda_backend()


def _triton_kernels():
    # Imported on first CUDA use only: triton is absent on CPU-only machines.
    from l2s.kernels import selected_softmax

    return selected_softmax


def forward_cpu(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    check_inputs(q, k, selector)
    if q.dtype == torch.float64:
        return blockwise_forward(q, k, selector, scale)[0]
    return native.cpu_forward(q, k, selector, scale)


def backward_cpu(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    check_grad_out(grad_out, q, k, selector)
    if q.dtype == torch.float64:
        return blockwise_backward(grad_out.to(torch.float64), q, k, selector, scale)
    return native.cpu_backward(grad_out, q, k, selector, scale)


def forward_cuda(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    check_inputs(q, k, selector)
    if q.dtype == torch.float64:
        return blockwise_forward(q, k, selector, scale)[0]
    if q.dtype not in _NATIVE_DTYPES:
        raise TypeError(f"l2s::selected_text_softmax has no CUDA kernel for {q.dtype}")
    if cuda_backend() == "triton":
        return _triton_kernels().selected_softmax_forward(q, k, selector, scale)
    return native.cuda_forward(q, k, selector, scale)


def backward_cuda(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    check_grad_out(grad_out, q, k, selector)
    if q.dtype == torch.float64:
        return blockwise_backward(grad_out.to(torch.float64), q, k, selector, scale)
    if q.dtype not in _NATIVE_DTYPES:
        raise TypeError(f"l2s::selected_text_softmax_backward has no CUDA kernel for {q.dtype}")
    if cuda_backend() == "triton":
        return _triton_kernels().selected_softmax_backward(grad_out, q, k, selector, scale)
    return native.cuda_backward(grad_out, q, k, selector, scale)
