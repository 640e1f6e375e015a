"""The custom op l2s::selected_text_softmax: kernels vs the explicit formula, autograd, compile.

Which implementation each test exercises:
* float32 / float16 / bfloat16 on CPU: l2s_fast (C++), through the registered op and its autograd.
* float64 (gradcheck): the op's exact float64 blockwise PyTorch path, which runs the same
  online-softmax / LSE-and-Δ algorithm as the kernels; gradcheck therefore checks the op's
  registration and autograd formula plus that algorithm, not l2s_fast's float32 code (checked
  against float64 autograd of the reference at 1e-5 instead).
* CUDA: l2s_fast's CUDA kernels and inductor on a GPU (tests marked gpu). The Triton kernels are
  tested in test_triton_kernels.py, the SDPA backend in test_sdpa.py, l2s_fast itself in
  test_native.py.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

import l2s.ops as ops
from l2s.ops import dispatch

from .helpers import (
    GPU_DTYPES,
    GPU_SHAPES,
    assert_close64,
    check_backend_on_gpu,
    op_grads,
    random_inputs,
    reference_grads,
)

SHAPES = [  # (B, H, N, T, D, G)
    (1, 1, 1, 1, 4, 1),
    (2, 3, 17, 9, 8, 3),
    (1, 2, 33, 77, 16, 4),
    (2, 1, 5, 1, 4, 2),
]
SHAPE_IDS = ["B{}H{}N{}T{}D{}G{}".format(*shape) for shape in SHAPES]


# ------------------------------------------------------------------------------------------------
# CPU op (l2s_fast) vs the explicit formula
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cpu_forward_and_backward_match_reference(shape):
    B, H, N, T, D, G = shape
    q, k, selector = random_inputs(*shape)
    scale = 1.0 / math.sqrt(D)
    grad_out = torch.randn(B, H, N, G)
    expected = reference_grads(q, k, selector, scale, grad_out)
    out, grad_q, grad_k = op_grads(q, k, selector, scale, grad_out)
    assert out.shape == (B, H, N, G) and out.dtype == torch.float32
    assert grad_q.shape == q.shape and grad_k.shape == k.shape
    for actual, wanted in zip((out, grad_q, grad_k), expected):
        assert_close64(actual, wanted)


def test_strided_queries_give_the_contiguous_result():
    """diffusers hands (B, S, H, D) tensors: the op must accept their (B, H, S, D) views."""
    q, k, selector = random_inputs(2, 3, 10, 7, 8, 2)
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous()
    grad_out = torch.randn(2, 3, 10, 2)
    for actual, wanted in zip(op_grads(q_view, k, selector, 0.3, grad_out), op_grads(q, k, selector, 0.3, grad_out)):
        torch.testing.assert_close(actual, wanted, atol=0, rtol=0)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, selector = random_inputs(1, 2, 6, 5, 16, 2)
    assert_close64(ops.selected_text_softmax(q, k, selector), ops.selected_text_softmax_reference(q, k, selector, 0.25))


def test_large_logits_stay_finite():
    q, k, selector = random_inputs(1, 2, 8, 40, 16, 3)
    grad_out = torch.randn(1, 2, 8, 3)
    out, grad_q, grad_k = op_grads(q, k, selector, 40.0, grad_out)  # logits in the hundreds
    expected = reference_grads(q, k, selector, 40.0, grad_out)
    assert all(torch.isfinite(t).all() for t in (out, grad_q, grad_k))
    assert_close64(out, expected[0])
    assert_close64(grad_q, expected[1], tol=1e-3)
    assert_close64(grad_k, expected[2], tol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype(dtype):
    q, k, selector = random_inputs(1, 2, 9, 11, 8, 3)
    q, k = q.to(dtype), k.to(dtype)
    grad_out = torch.randn(1, 2, 9, 3, dtype=dtype)
    out, grad_q, grad_k = op_grads(q, k, selector, 0.35, grad_out)
    assert out.dtype == grad_q.dtype == grad_k.dtype == dtype
    expected = reference_grads(q, k, selector, 0.35, grad_out)
    for actual, wanted in zip((out, grad_q, grad_k), expected):
        assert_close64(actual, wanted, tol=2e-2)


def test_float64_path_is_exact():
    """float64 inputs run in float64: agreement far beyond float32 precision."""
    q, k, selector = random_inputs(2, 2, 7, 300, 8, 3, dtype=torch.float64)  # > one 128-key block
    grad_out = torch.randn(2, 2, 7, 3, dtype=torch.float64)
    out, grad_q, grad_k = op_grads(q, k, selector, 0.4, grad_out)
    expected = reference_grads(q, k, selector, 0.4, grad_out)
    assert out.dtype == torch.float64
    for actual, wanted in zip((out, grad_q, grad_k), expected):
        torch.testing.assert_close(actual, wanted, atol=1e-12, rtol=1e-12)


def test_gradcheck_float64_q_and_k():
    q, k, selector = random_inputs(1, 2, 4, 5, 4, 2, dtype=torch.float64)
    q.requires_grad_()
    k.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k: ops.selected_text_softmax(q, k, selector, 0.7), (q, k))


def test_gradcheck_float64_with_selector_gradient():
    q, k, selector = random_inputs(1, 2, 3, 4, 4, 2, dtype=torch.float64)
    for tensor in (q, k, selector):
        tensor.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k, s: ops.selected_text_softmax(q, k, s, 0.7), (q, k, selector))


def test_selector_gradient_float32_matches_reference():
    q, k, selector = random_inputs(1, 2, 5, 6, 4, 3)
    selector.requires_grad_()
    grad_out = torch.randn(1, 2, 5, 3)
    ops.selected_text_softmax(q, k, selector, 0.5).backward(grad_out)
    selector64 = selector.detach().double().requires_grad_()
    ops.selected_text_softmax_reference(q.double(), k.double(), selector64, 0.5).backward(grad_out.double())
    assert_close64(selector.grad, selector64.grad)


# ------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward(dtype):
    q, k, selector = random_inputs(1, 2, 5, 6, 4, 3, dtype=dtype)
    q.requires_grad_()
    k.requires_grad_()
    torch.library.opcheck(torch.ops.l2s.selected_text_softmax, (q, k, selector, 0.5))


def test_opcheck_backward():
    q, k, selector = random_inputs(1, 2, 5, 6, 4, 3)
    torch.library.opcheck(torch.ops.l2s.selected_text_softmax_backward, (torch.randn(1, 2, 5, 3), q, k, selector, 0.5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_on_cuda(dtype):
    """The CUDA kernels (Triton, or l2s_fast's) agree with the fake kernels and autograd registration."""
    q, k, selector = (t.cuda() for t in random_inputs(1, 2, 37, 130, 16, 3, dtype=dtype))
    q.requires_grad_()
    k.requires_grad_()
    torch.library.opcheck(torch.ops.l2s.selected_text_softmax, (q, k, selector, 0.25))
    grad_out = torch.randn(1, 2, 37, 3, device="cuda", dtype=dtype)
    torch.library.opcheck(torch.ops.l2s.selected_text_softmax_backward,
                          (grad_out, q.detach(), k.detach(), selector, 0.25))


def test_fake_tensor_gives_shape_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, selector = random_inputs(2, 3, 11, 7, 8, 4, dtype=torch.bfloat16)
        out = torch.ops.l2s.selected_text_softmax(q, k, selector, 0.5)
        grad_q, grad_k = torch.ops.l2s.selected_text_softmax_backward(out, q, k, selector, 0.5)
    assert out.shape == (2, 3, 11, 4) and out.dtype == torch.bfloat16
    assert grad_q.shape == q.shape and grad_k.shape == k.shape


def test_the_public_wrappers_give_shapes_of_meta_tensors():
    from l2s.ops import selected_text_attention, selected_text_softmax

    q, k, selector = (torch.empty(*shape, device="meta") for shape in ((1, 2, 3, 4), (1, 2, 5, 4), (5, 2)))
    assert selected_text_softmax(q, k, selector).shape == (1, 2, 3, 2)
    assert selected_text_attention(q, k, selector).shape == (1, 2, 3, 2)


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd is returning a function:UserWarning")
def test_torch_compile_fullgraph_with_gradients():
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    torch._dynamo.reset()
    q, k, selector = random_inputs(1, 2, 6, 5, 8, 3)

    def loss_fn(q, k):
        return (ops.selected_text_softmax(q, k, selector) ** 2).sum()

    recorder = AotEagerAndRecordGraphs()
    compiled = torch.compile(loss_fn, backend=recorder, fullgraph=True)
    q_c, k_c = q.clone().requires_grad_(), k.clone().requires_grad_()
    compiled(q_c, k_c).backward()
    q_e, k_e = q.clone().requires_grad_(), k.clone().requires_grad_()
    loss_fn(q_e, k_e).backward()
    torch.testing.assert_close(q_c.grad, q_e.grad)
    torch.testing.assert_close(k_c.grad, k_e.grad)
    # The op stays one opaque node each way: the custom backward, not a decomposition.
    assert "l2s.selected_text_softmax.default" in recorder.fw_graphs[0].code
    assert "l2s.selected_text_softmax_backward.default" in recorder.bw_graphs[0].code
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------
# Errors, backends
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "sel_shape", "error", "message"),
    [
        ((1, 2, 3), (1, 2, 5, 4), (5, 2), ValueError, "expects q"),
        ((1, 2, 3, 4), (1, 3, 5, 4), (5, 2), ValueError, "must match q"),
        ((1, 2, 3, 4), (1, 2, 5, 8), (5, 2), ValueError, "must match q"),
        ((1, 2, 3, 4), (1, 2, 5, 4), (6, 2), ValueError, "5 text keys but a selector over 6"),
        ((1, 2, 3, 4), (1, 2, 0, 4), (0, 2), ValueError, "T = 0"),
    ],
)
def test_bad_shapes_are_rejected_clearly(q_shape, k_shape, sel_shape, error, message):
    with pytest.raises(error, match=message):
        ops.selected_text_softmax(torch.zeros(q_shape), torch.zeros(k_shape), torch.zeros(sel_shape))


@pytest.mark.parametrize("backend", ["native", "sdpa"])
def test_inputs_that_are_not_tensors_are_named(backend):
    q, k, selector = random_inputs(1, 1, 2, 3, 4, 1)
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got list"):
        ops.selected_text_softmax(q.tolist(), k, selector)
    with pytest.raises(TypeError, match="selector must be a torch.Tensor, got ndarray"):
        ops.selected_text_attention(q, k, selector.numpy(), backend=backend)


@pytest.mark.parametrize("backend", ["native", "sdpa"])
def test_sparse_inputs_are_named(backend):
    q, k, selector = random_inputs(1, 1, 2, 3, 4, 1)
    with pytest.raises(TypeError, match="selector must be a dense tensor, got layout torch.sparse_coo"):
        ops.selected_text_attention(q, k, selector.to_sparse(), backend=backend)
    with pytest.raises(TypeError, match="q must be a dense tensor"):
        ops.selected_text_softmax(q.to_sparse(), k, selector)


def test_mixed_dtypes_are_rejected():
    q, k, selector = random_inputs(1, 1, 2, 3, 4, 1)
    with pytest.raises(TypeError, match="share one floating dtype"):
        ops.selected_text_softmax(q, k.double(), selector)
    with pytest.raises(TypeError, match="scale must be a Python number, got Tensor"):
        ops.selected_text_softmax(q, k, selector, torch.tensor(0.5))   # compiled, it would fail deep inside


def test_forward_mode_is_refused_not_silently_zero():
    """The op has a reverse-mode formula only: a jvp would otherwise come back as zeros."""
    import torch.autograd.forward_ad as fwAD

    q, k, selector = random_inputs(1, 2, 3, 5, 4, 2)
    tangent = torch.randn_like(q)
    with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        torch.func.jvp(lambda a: ops.selected_text_softmax(a, k, selector), (q,), (tangent,))
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        ops.selected_text_softmax(fwAD.make_dual(q, tangent), k, selector)
    # The reference it points to has one.
    _, jvp = torch.func.jvp(lambda a: ops.selected_text_softmax_reference(a, k, selector, 0.5), (q,), (tangent,))
    assert jvp.abs().sum() > 0


def test_available_backends_report_this_machine():
    backends = ops.available_backends()
    assert backends["cpu"] == ["l2s_fast"]
    if not torch.cuda.is_available():
        assert backends["cuda"] == []
    else:
        assert set(backends["cuda"]) <= set(ops.CUDA_BACKENDS)


def test_cuda_backend_choice_never_falls_back_silently(monkeypatch):
    monkeypatch.delenv(ops.CUDA_BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_triton_importable", lambda: True)
    monkeypatch.setattr(dispatch, "_l2s_fast_cuda_usable", lambda: True)
    assert dispatch.cuda_backend() == "triton"
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, "l2s_fast_cuda")
    assert dispatch.cuda_backend() == "l2s_fast_cuda"
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, "cudnn")
    with pytest.raises(RuntimeError, match="choose one of"):
        dispatch.cuda_backend()
    monkeypatch.setattr(dispatch, "_l2s_fast_cuda_usable", lambda: False)
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, "l2s_fast_cuda")
    with pytest.raises(RuntimeError, match="not available"):
        dispatch.cuda_backend()
    monkeypatch.delenv(ops.CUDA_BACKEND_ENV)
    monkeypatch.setattr(dispatch, "_triton_importable", lambda: False)
    with pytest.raises(RuntimeError, match="needs Triton"):
        dispatch.cuda_backend()


def test_require_kernels_says_before_any_work_what_a_device_lacks(monkeypatch):
    ops.require_kernels("cpu")          # l2s_fast is built here
    ops.require_kernels("meta")         # shape-only tracing needs no kernel
    monkeypatch.setitem(sys.modules, "l2s_fast", None)      # as if it were never built
    with pytest.raises(RuntimeError, match="needs the native module l2s_fast: build it from l2s's sources"):
        ops.require_kernels("cpu")
    monkeypatch.delenv(ops.CUDA_BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_triton_importable", lambda: False)
    with pytest.raises(RuntimeError, match="needs Triton"):
        ops.require_kernels(torch.device("cuda", 1))


def test_kernel_errors_name_no_repository_folder(monkeypatch):
    """An installed l2s has no repository root: the build hints name only commands it can run."""
    monkeypatch.setitem(sys.modules, "l2s_fast", None)
    monkeypatch.delenv(ops.CUDA_BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_triton_importable", lambda: False)
    monkeypatch.setattr(dispatch, "_l2s_fast_cuda_usable", lambda: False)
    for device in ("cpu", "cuda"):
        with pytest.raises(RuntimeError) as raised:
            ops.require_kernels(device)
        assert "repository" not in str(raised.value) and "pip install" in str(raised.value), device
    assert "`pip install 'l2s[triton]'`" in str(raised.value)   # the extra's range, not any triton


def test_l2s_fast_that_does_not_load_says_why(monkeypatch, tmp_path):
    """A built l2s_fast that fails to load (a shared library missing here) says the loader's reason,
    not how to build it again."""
    (tmp_path / "l2s_fast.py").write_text('raise ImportError("libgomp.so.1: cannot open shared object file")\n')
    monkeypatch.delitem(sys.modules, "l2s_fast", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match=r"l2s_fast: it is installed but does not load \(libgomp\.so\.1: cannot"):
        ops.require_kernels("cpu")


# ------------------------------------------------------------------------------------------------
# GPU: l2s_fast's CUDA kernels vs the reference, inductor
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "B{}H{}N{}T{}D{}G{}".format(*s))
def test_cuda_cpp_kernels_match_reference_on_gpu(monkeypatch, shape, dtype, tol):
    import l2s_fast

    if not l2s_fast.has_cuda():
        pytest.skip("l2s_fast was built without CUDA: `L2S_BUILD_CUDA=1 pip install --no-build-isolation -e .`")
    check_backend_on_gpu(monkeypatch, "l2s_fast_cuda", shape, dtype, tol)


@pytest.mark.gpu
def test_op_compiles_with_inductor_on_gpu():
    torch._dynamo.reset()
    q, k, selector = random_inputs(1, 4, 64, 77, 64, 3, device="cuda")

    def loss_fn(q, k):
        return ops.selected_text_softmax(q, k, selector).square().sum()

    q_c, k_c = q.clone().requires_grad_(), k.clone().requires_grad_()
    torch.compile(loss_fn, fullgraph=True)(q_c, k_c).backward()
    q_e, k_e = q.clone().requires_grad_(), k.clone().requires_grad_()
    loss_fn(q_e, k_e).backward()
    torch.testing.assert_close(q_c.grad, q_e.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(k_c.grad, k_e.grad, atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()
