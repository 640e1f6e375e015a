"""Inputs and float64 reference gradients shared by the tests of l2s.ops."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from l2s.ops import CUDA_BACKEND_ENV, selected_text_softmax, selected_text_softmax_reference

REPO_ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def random_inputs(B, H, N, T, D, G, dtype=torch.float32, device="cpu"):
    q = torch.randn(B, H, N, D, dtype=dtype, device=device)
    k = torch.randn(B, H, T, D, dtype=dtype, device=device)
    selector = torch.rand(T, G, dtype=dtype, device=device)
    return q, k, selector


def reference_grads(q, k, selector, scale, grad_out):
    """Output, grad_q, grad_k of the explicit formula by autograd in float64."""
    q64 = q.detach().double().requires_grad_()
    k64 = k.detach().double().requires_grad_()
    out = selected_text_softmax_reference(q64, k64, selector.double(), scale)
    out.backward(grad_out.double())
    return out.detach(), q64.grad, k64.grad


def op_grads(q, k, selector, scale, grad_out):
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    out = selected_text_softmax(q, k, selector, scale)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad


def assert_close64(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol, rtol=tol)


GPU_DTYPES = [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)]
GPU_SHAPES = [(1, 3, 1, 1, 16, 1), (2, 4, 300, 77, 64, 3), (1, 4, 1024, 512, 128, 8), (1, 2, 33, 130, 72, 17)]


def check_backend_on_gpu(monkeypatch, backend, shape, dtype, tol):
    """The op on CUDA with ``backend`` forced: output and gradients vs the float64 reference."""
    monkeypatch.setenv(CUDA_BACKEND_ENV, backend)
    B, H, N, T, D, G = shape
    q, k, selector = random_inputs(*shape, dtype=dtype, device="cuda")
    grad_out = torch.randn(B, H, N, G, device="cuda", dtype=dtype)
    expected = reference_grads(q, k, selector, D ** -0.5, grad_out)
    actual = op_grads(q, k, selector, D ** -0.5, grad_out)
    for name, got, wanted in zip(("out", "grad_q", "grad_k"), actual, expected):
        assert got.dtype == dtype
        scale = max(1.0, wanted.abs().max().item())
        assert (got.double() - wanted).abs().max().item() <= tol * scale, (backend, name)
