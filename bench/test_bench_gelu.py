"""Benchmark: the tanh-approximate GELU compiled by inductor on the CPU, forward + backward, three ways.

* ``stock``: ``F.gelu(x, approximate="tanh")`` compiled as is (inductor's CPU ``tanh``: Sleef, 1 ulp);
* ``sigmoid``: :func:`l2s.capture.flux_blocks.gelu`, the ``x * sigmoid(2u)`` the steered blocks compile;
* ``exp_tanh``: the stock GELU with inductor's exp-form ``tanh`` (the ``compile`` plain-step engine's
  option on CPU models).

One (288, 512) activation: the shapes model's feed-forward width over its 288 joint tokens.
Run with ``python -m pytest bench/test_bench_gelu.py`` (three cold inductor compiles, ~1 minute on
2 cores). Every way is checked against the float64 GELU first, so a fast wrong one fails.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported: never download

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from l2s.capture.flux_blocks import gelu  # noqa: E402

SHAPE = (288, 512)


def _stock(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return gelu(x, "tanh")


WAYS = {
    "stock": lambda: torch.compile(_stock, fullgraph=True),
    "sigmoid": lambda: torch.compile(_sigmoid, fullgraph=True),
    "exp_tanh": lambda: torch.compile(lambda x: _stock(x), fullgraph=True,
                                      options={"cpp.use_decompose_tanh": True}),
}


@pytest.fixture(scope="module")
def activation():
    torch.manual_seed(0)
    return torch.randn(SHAPE) * 3, torch.randn(SHAPE)


def _forward_backward(fn, x, grad_out):
    x = x.detach().requires_grad_()
    out = fn(x)
    out.backward(grad_out)
    return out.detach(), x.grad


@pytest.mark.parametrize("way", list(WAYS))
def test_compiled_gelu(benchmark, activation, way):
    x, grad_out = activation
    fn = WAYS[way]()
    out, grad = _forward_backward(fn, x, grad_out)              # compiles; then checked
    exact_x = x.double().requires_grad_()
    exact = F.gelu(exact_x, approximate="tanh")
    exact.backward(grad_out.double())
    torch.testing.assert_close(out.double(), exact.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), exact_x.grad, rtol=1e-4, atol=1e-5)
    benchmark.group = "compiled tanh-GELU, forward + backward (CPU)"
    benchmark(_forward_backward, fn, x, grad_out)
