"""Benchmark: one layer's selected-map capture, forward + backward, three ways.

* ``native``: the custom op ``l2s::selected_text_softmax`` (l2s.ops; l2s_fast on CPU, Triton or
  l2s_fast's CUDA kernels on a GPU) with the unpadded ``(T, G)`` selector;
* ``explicit``: ``softmax(q kᵀ · scale) @ selector``, materialising the (B, H, N, T) probabilities;
* ``sdpa_selector``: :func:`l2s.capture.selected_text_attention`, fused SDPA with the selector as
  the value matrix, padded as the capture processors pad it (to the head dim on CPU, 8 on CUDA).

Run with ``python -m pytest bench/test_bench_capture_op.py`` (pytest-benchmark; ~10 s on CPU).
Every method is checked against the float64 reference first, so a fast wrong one fails. Threads:
``L2S_BENCH_THREADS`` (default 1). The CUDA cases (one FLUX layer: 24 heads, 1024 image × 512
text tokens, head dim 128, 3 groups) run only where a GPU is visible.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported: never download

import pytest  # noqa: E402
import torch  # noqa: E402

import l2s.ops as ops  # noqa: E402
from l2s.ops import selected_text_attention, token_group_selector  # noqa: E402

THREADS = int(os.environ.get("L2S_BENCH_THREADS", "1"))
GROUPS = [[3, 4], [9], [20, 21, 22]]  # sub-word tokens of three object words
CASES = {  # device -> (B, H, N, T, D, dtype)
    "cpu": (1, 4, 256, 77, 32, torch.float32),
    "cuda": (1, 24, 1024, 512, 128, torch.bfloat16),
}
SDPA_SELECTOR_WIDTH = {"cpu": 32, "cuda": 8}  # what capture._selector_width picks for these shapes

needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_gpu)]


def _explicit(q, k, selector):
    return ops.selected_text_softmax_reference(q, k, selector, q.shape[-1] ** -0.5)


METHODS = {
    "native": lambda q, k, selector, padded: ops.selected_text_softmax(q, k, selector),
    "explicit": lambda q, k, selector, padded: _explicit(q, k, selector),
    "sdpa_selector": lambda q, k, selector, padded: selected_text_attention(q, k, padded)[..., : selector.shape[1]],
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def _layer_inputs(device: str):
    torch.manual_seed(0)
    B, H, N, T, D, dtype = CASES[device]
    q = torch.randn(B, H, N, D, device=device, dtype=dtype)
    k = torch.randn(B, H, T, D, device=device, dtype=dtype)
    selector = token_group_selector(GROUPS, T, device=device, dtype=dtype)
    padded = token_group_selector(GROUPS, T, width=SDPA_SELECTOR_WIDTH[device], device=device, dtype=dtype)
    grad_out = torch.randn(B, H, N, len(GROUPS), device=device, dtype=dtype)
    return q, k, selector, padded, grad_out


def _forward_backward(method, q, k, selector, padded, grad_out):
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    out = METHODS[method](q, k, selector, padded)
    out.backward(grad_out)
    if q.is_cuda:
        torch.cuda.synchronize()
    return out.detach(), q.grad, k.grad


def _run(benchmark, method: str, device: str) -> None:
    q, k, selector, padded, grad_out = _layer_inputs(device)
    got = _forward_backward(method, q, k, selector, padded, grad_out)
    q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
    expected = _explicit(q64, k64, selector.double())
    expected.backward(grad_out.double())
    tol = 1e-4 if q.dtype == torch.float32 else 3e-2
    for name, actual, wanted in zip(("maps", "grad_q", "grad_k"), got, (expected.detach(), q64.grad, k64.grad)):
        error = (actual.double() - wanted).norm() / wanted.norm()
        assert error <= tol, f"{method} on {device}: relative error of {name} {error:.2e}"

    B, H, N, T, D, dtype = CASES[device]
    benchmark.group = f"capture fwd+bwd, {device}: B{B} H{H} N{N} T{T} D{D} G{len(GROUPS)} {dtype}"
    benchmark.extra_info["method"] = method
    if method == "native" and device == "cuda":
        benchmark.extra_info["backend"] = ops.cuda_backend()
    benchmark(_forward_backward, method, q, k, selector, padded, grad_out)


@pytest.mark.parametrize("device", DEVICES)
def test_native_op(benchmark, device):
    _run(benchmark, "native", device)


@pytest.mark.parametrize("device", DEVICES)
def test_explicit_softmax(benchmark, device):
    _run(benchmark, "explicit", device)


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_selector(benchmark, device):
    _run(benchmark, "sdpa_selector", device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ops.CUDA_BACKENDS)
def test_native_op_cuda_backends(benchmark, monkeypatch, backend):
    """The two CUDA kernels of the op side by side (each skipped where it is not available)."""
    if backend not in ops.available_backends()["cuda"]:
        pytest.skip(f"CUDA backend {backend} is not available here")
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, backend)
    _run(benchmark, "native", "cuda")
