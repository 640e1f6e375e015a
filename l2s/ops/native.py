"""Wrappers of the native module ``l2s_fast``: its C++/OpenMP CPU kernels and its CUDA kernels.

The CPU kernels compute in float32 on numpy arrays (results cast back to the input dtype); the CUDA
kernels take raw device pointers and run on the tensors' current stream.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)
# The C++ sources of a checkout (absent from an installed wheel, where nothing is compared).
SOURCES = Path(__file__).resolve().parents[2] / "csrc"
SOURCE_SUFFIXES = (".cpp", ".cc", ".h", ".hpp", ".cu", ".cuh", ".in")   # as CMakeLists.txt globs them

# How to build l2s_fast, said alike to a user of an installed l2s and to one of a checkout.
BUILD_HINT = "build it from l2s's sources: `pip install .` there (developing: `pip install --no-build-isolation -e .`)"

# dtype codes of l2s_fast's CUDA entry points (csrc/cuda/selected_softmax.h).
_CUDA_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def load_l2s_fast():
    """The ``l2s_fast`` module, or a RuntimeError that says how to build it or why it does not load."""
    try:
        import l2s_fast
    except ImportError as error:  # the op is useless without it: say how to build it, or why it fails
        why = _unloadable(error)
        raise RuntimeError(f"l2s::selected_text_softmax on CPU needs the native module l2s_fast: {why}") from error
    _say_if_stale(getattr(l2s_fast, "__source_digest__", None))
    return l2s_fast


def _unloadable(error: ImportError) -> str:
    """Not built: how to build it. Built but not loading (a shared library such as libgomp missing on
    this machine): the loader's reason, since building again would not bring that library."""
    if isinstance(error, ModuleNotFoundError) and error.name == "l2s_fast":
        return BUILD_HINT
    return f"it is installed but does not load ({error})"


def source_digest(folder: Path) -> str:
    """The digest CMakeLists.txt compiles into l2s_fast: SHA-256 over each source file's relative path
    and SHA-256, in sorted path order (an editor's swap file or a stray object file is no source)."""
    lines = []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if path.is_file() and path.suffix in SOURCE_SUFFIXES:
            lines.append(f"{path.relative_to(folder).as_posix()} {hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@functools.cache
def _say_if_stale(built_from: str | None) -> None:
    """Warn once when the module was built from other sources than this checkout's csrc/: its kernels
    may not be the ones the Python side and the tests expect."""
    if SOURCES.is_dir() and built_from != source_digest(SOURCES):
        log.warning("warning: l2s_fast was built from other sources than %s: rebuild it with "
                    "`pip install --no-build-isolation -e .` in the repository root", SOURCES)


def _float32_array(tensor: Tensor):
    return tensor.detach().to(dtype=torch.float32).contiguous().numpy()


def cpu_forward(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    """The maps by l2s_fast's CPU kernel, in q's dtype."""
    out = load_l2s_fast().selected_text_softmax_forward(
        _float32_array(q), _float32_array(k), _float32_array(selector), scale
    )
    return torch.from_numpy(out).to(dtype=q.dtype)


def cpu_backward(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(grad_q, grad_k)`` by l2s_fast's CPU kernel, in q's and k's dtypes."""
    grad_q, grad_k = load_l2s_fast().selected_text_softmax_backward(
        _float32_array(grad_out), _float32_array(q), _float32_array(k), _float32_array(selector), scale
    )
    return torch.from_numpy(grad_q).to(dtype=q.dtype), torch.from_numpy(grad_k).to(dtype=k.dtype)


def _cuda_shape_args(q: Tensor, k: Tensor, selector: Tensor) -> tuple[int, ...]:
    batch, heads, queries, head_dim = q.shape
    return batch, heads, queries, k.shape[2], head_dim, selector.shape[1]


def cuda_forward(q: Tensor, k: Tensor, selector: Tensor, scale: float) -> Tensor:
    """The maps by l2s_fast's CUDA kernel (float32 / float16 / bfloat16), in q's dtype."""
    q, k = q.contiguous(), k.contiguous()
    selector = selector.to(dtype=torch.float32).contiguous()
    out = torch.empty((*q.shape[:3], selector.shape[1]), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        load_l2s_fast().selected_text_softmax_forward_cuda(
            q.data_ptr(), k.data_ptr(), selector.data_ptr(), out.data_ptr(),
            *_cuda_shape_args(q, k, selector), scale, _CUDA_DTYPE_CODES[q.dtype], stream,
        )
    return out


def cuda_backward(grad_out: Tensor, q: Tensor, k: Tensor, selector: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(grad_q, grad_k)`` by l2s_fast's two CUDA backward kernels (dq, then dk)."""
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
        load_l2s_fast().selected_text_softmax_backward_cuda(
            grad_out.data_ptr(), q.data_ptr(), k.data_ptr(), selector.data_ptr(),
            lse.data_ptr(), delta.data_ptr(), grad_q.data_ptr(), grad_k.data_ptr(),
            *_cuda_shape_args(q, k, selector), scale, _CUDA_DTYPE_CODES[q.dtype], stream,
        )
    return grad_q, grad_k
