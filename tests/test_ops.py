"""The custom op l2s::selected_text_softmax: kernels vs the explicit formula, autograd, compile.

Which implementation each test exercises:
* float32 / float16 / bfloat16 on CPU: l2s_fast (C++), through the registered op and its autograd.
* float64 (gradcheck): the op's exact float64 blockwise PyTorch path, which runs the same
  online-softmax / LSE-and-Δ algorithm as the kernels; gradcheck therefore checks the op's
  registration and autograd formula plus that algorithm, not l2s_fast's float32 code (checked
  against float64 autograd of the reference at 1e-5 instead).
* Triton kernels: on CPU through Triton's interpreter (TRITON_INTERPRET=1, in a subprocess);
  on a GPU for real (tests marked gpu).
* l2s_fast's CUDA kernels: on CPU, csrc/cuda/selected_softmax.cu compiled for the host under a
  SIMT emulation (csrc/cuda/host_emulation: a thread per CUDA thread, real barriers); for real
  only on a GPU with an L2S_BUILD_CUDA=1 build (tests marked gpu).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import l2s.ops.selected_softmax as ops

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    out = ops.selected_text_softmax_reference(q64, k64, selector.double(), scale)
    out.backward(grad_out.double())
    return out.detach(), q64.grad, k64.grad


def op_grads(q, k, selector, scale, grad_out):
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    out = ops.selected_text_softmax(q, k, selector, scale)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad


def assert_close64(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol, rtol=tol)


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


def test_fake_tensor_gives_shape_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, selector = random_inputs(2, 3, 11, 7, 8, 4, dtype=torch.bfloat16)
        out = torch.ops.l2s.selected_text_softmax(q, k, selector, 0.5)
        grad_q, grad_k = torch.ops.l2s.selected_text_softmax_backward(out, q, k, selector, 0.5)
    assert out.shape == (2, 3, 11, 4) and out.dtype == torch.bfloat16
    assert grad_q.shape == q.shape and grad_k.shape == k.shape


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
# Drop-in for capture.selected_text_attention, errors, backends
# ------------------------------------------------------------------------------------------------


def test_selected_text_attention_matches_the_sdpa_capture_path():
    from l2s.capture import selected_text_attention, token_group_selector

    q, k, _ = random_inputs(2, 2, 12, 9, 16, 1)
    selector = token_group_selector([[1, 2], [4], [6, 7, 8]], text_len=9, width=16)  # padded as on CPU
    grad_out = torch.randn(2, 2, 12, 16)
    maps = {}
    for name, fn in (("native", ops.selected_text_attention), ("sdpa", selected_text_attention)):
        q_, k_ = q.clone().requires_grad_(), k.clone().requires_grad_()
        out = fn(q_, k_, selector)
        out.backward(grad_out)
        maps[name] = (out.detach(), q_.grad, k_.grad)
    assert maps["native"][0].shape == (2, 2, 12, 16)
    assert not maps["native"][0][..., 3:].any()  # padding columns stay zero
    for native, sdpa in zip(maps["native"], maps["sdpa"]):
        torch.testing.assert_close(native, sdpa, atol=1e-5, rtol=1e-5)


def test_selected_text_attention_with_a_mask_applies_it():
    q, k, selector = random_inputs(1, 2, 5, 6, 8, 2)
    mask = torch.tensor([True, True, False, True, False, True]).view(1, 1, 1, 6)  # key padding
    out = ops.selected_text_attention(q, k, selector, attn_mask=mask)
    logits = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(out, logits.softmax(-1) @ selector, atol=1e-5, rtol=1e-5)


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


def test_mixed_dtypes_are_rejected():
    q, k, selector = random_inputs(1, 1, 2, 3, 4, 1)
    with pytest.raises(TypeError, match="share one floating dtype"):
        ops.selected_text_softmax(q, k.double(), selector)


def test_available_backends_report_this_machine():
    backends = ops.available_backends()
    assert backends["cpu"] == ["l2s_fast"]
    if not torch.cuda.is_available():
        assert backends["cuda"] == []
    else:
        assert set(backends["cuda"]) <= set(ops.CUDA_BACKENDS)


def test_cuda_backend_choice_never_falls_back_silently(monkeypatch):
    monkeypatch.delenv(ops.CUDA_BACKEND_ENV, raising=False)
    monkeypatch.setattr(ops, "_triton_importable", lambda: True)
    monkeypatch.setattr(ops, "_l2s_fast_cuda_usable", lambda: True)
    assert ops._cuda_backend() == "triton"
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, "l2s_fast_cuda")
    assert ops._cuda_backend() == "l2s_fast_cuda"
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, "cudnn")
    with pytest.raises(RuntimeError, match="choose one of"):
        ops._cuda_backend()
    monkeypatch.setattr(ops, "_l2s_fast_cuda_usable", lambda: False)
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, "l2s_fast_cuda")
    with pytest.raises(RuntimeError, match="not available"):
        ops._cuda_backend()
    monkeypatch.delenv(ops.CUDA_BACKEND_ENV)
    monkeypatch.setattr(ops, "_triton_importable", lambda: False)
    with pytest.raises(RuntimeError, match="needs Triton"):
        ops._cuda_backend()


# ------------------------------------------------------------------------------------------------
# Triton kernels on CPU through the interpreter
# ------------------------------------------------------------------------------------------------

_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, math, os, sys
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    import l2s.ops.selected_softmax as ops
    from l2s.kernels import selected_softmax as kernels

    torch.manual_seed(0)
    results = []
    cases = [  # (B, H, N, T, D, G, dtype): partial tiles, D and G not powers of two, one key
        (1, 1, 1, 1, 8, 1, torch.float32),
        (2, 3, 70, 77, 16, 3, torch.float32),
        (1, 2, 65, 130, 40, 17, torch.float32),
        (1, 2, 20, 30, 16, 3, torch.float16),
        (1, 2, 70, 130, 16, 3, torch.float16),  # several 64-wide tiles (float32 uses 32-wide ones)
    ]
    for B, H, N, T, D, G, dtype in cases:
        q = torch.randn(B, N, H, D).transpose(1, 2).to(dtype)  # strided, as diffusers hands it
        k = torch.randn(B, H, T, D).to(dtype)
        selector = torch.rand(T, G)
        scale = 1.0 / math.sqrt(D)
        grad_out = torch.randn(B, H, N, G).to(dtype)
        q64 = q.double().requires_grad_()
        k64 = k.double().requires_grad_()
        expected = ops.selected_text_softmax_reference(q64, k64, selector.double(), scale)
        expected.backward(grad_out.double())
        lse_expected = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) * scale, dim=-1)
        # The op's CUDA kernels, called directly: the backend choice and the Triton launchers.
        out = ops._forward_cuda(q, k, selector, scale)
        grad_q, grad_k = ops._backward_cuda(grad_out, q, k, selector, scale)
        _, lse = kernels.selected_softmax_forward(q, k, selector, scale, return_lse=True)
        err = lambda a, b: (a.double() - b).abs().max().item()
        results.append({
            "case": [B, H, N, T, D, G, str(dtype)],
            "backend": ops._cuda_backend(),
            "dtypes": [str(t.dtype) for t in (out, grad_q, grad_k)],
            "out": err(out, expected.detach()), "lse": err(lse, lse_expected),
            "grad_q": err(grad_q, q64.grad), "grad_k": err(grad_k, k64.grad),
        })
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def interpreter_results():
    if not HAS_TRITON:
        pytest.skip("triton is not installed (`pip install triton`, ~290 MB wheel, no other dependencies)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop(ops.CUDA_BACKEND_ENV, None)
    # A subprocess: TRITON_INTERPRET must be set before the kernels are decorated (imported),
    # and must not leak into GPU tests of this process.
    completed = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_triton_kernels_match_reference_in_the_interpreter(interpreter_results):
    """bfloat16 is not covered here: Triton 3.9's interpreter multiplies bfloat16 tiles as raw
    uint16 in tl.dot (its numpy bf16 stand-in), so only the GPU tests check bfloat16."""
    assert len(interpreter_results) == 5
    for result in interpreter_results:
        tol = 1e-5 if result["case"][-1] == "torch.float32" else 5e-2
        assert result["backend"] == "triton"
        assert len(set(result["dtypes"])) == 1 and result["dtypes"][0] == result["case"][-1]
        for key in ("out", "grad_q", "grad_k"):
            assert result[key] < tol, (result["case"], key, result[key])
        assert result["lse"] < 1e-4, result


# ------------------------------------------------------------------------------------------------
# GPU: Triton and CUDA C++ kernels vs the reference and vs the SDPA selector baseline
# ------------------------------------------------------------------------------------------------

GPU_DTYPES = [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)]
GPU_SHAPES = [(1, 3, 1, 1, 16, 1), (2, 4, 300, 77, 64, 3), (1, 4, 1024, 512, 128, 8), (1, 2, 33, 130, 72, 17)]


def _check_backend_on_gpu(monkeypatch, backend, shape, dtype, tol):
    monkeypatch.setenv(ops.CUDA_BACKEND_ENV, backend)
    B, H, N, T, D, G = shape
    q, k, selector = random_inputs(*shape, dtype=dtype, device="cuda")
    grad_out = torch.randn(B, H, N, G, device="cuda", dtype=dtype)
    expected = reference_grads(q, k, selector, D ** -0.5, grad_out)
    actual = op_grads(q, k, selector, D ** -0.5, grad_out)
    for name, got, wanted in zip(("out", "grad_q", "grad_k"), actual, expected):
        assert got.dtype == dtype
        scale = max(1.0, wanted.abs().max().item())
        assert (got.double() - wanted).abs().max().item() <= tol * scale, (backend, name)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "B{}H{}N{}T{}D{}G{}".format(*s))
def test_triton_kernels_match_reference_on_gpu(monkeypatch, shape, dtype, tol):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    _check_backend_on_gpu(monkeypatch, "triton", shape, dtype, tol)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "B{}H{}N{}T{}D{}G{}".format(*s))
def test_cuda_cpp_kernels_match_reference_on_gpu(monkeypatch, shape, dtype, tol):
    import l2s_fast

    if not l2s_fast.has_cuda():
        pytest.skip("l2s_fast was built without CUDA: `L2S_BUILD_CUDA=1 pip install --no-build-isolation -e .`")
    _check_backend_on_gpu(monkeypatch, "l2s_fast_cuda", shape, dtype, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_capture_matches_the_sdpa_selector_baseline_on_gpu(dtype):
    """FLUX-sized layer (24 heads, 1024 image × 512 text tokens, 3 groups padded to 8)."""
    from l2s.capture import selected_text_attention, token_group_selector

    q, k, _ = random_inputs(1, 24, 1024, 512, 128, 1, dtype=dtype, device="cuda")
    selector = token_group_selector([[3, 4], [9], [20, 21, 22]], 512, width=8, device="cuda", dtype=dtype)
    grad_out = torch.randn(1, 24, 1024, 8, device="cuda", dtype=dtype)
    results = []
    for fn in (ops.selected_text_attention, selected_text_attention):
        q_, k_ = q.clone().requires_grad_(), k.clone().requires_grad_()
        out = fn(q_, k_, selector)
        out.backward(grad_out)
        results.append((out.float(), q_.grad.float(), k_.grad.float()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for native, baseline in zip(*results):
        assert (native - baseline).norm() <= tol * baseline.norm()


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


# ------------------------------------------------------------------------------------------------
# l2s_fast's CUDA kernels on CPU: the .cu compiled for the host under a SIMT emulation
# ------------------------------------------------------------------------------------------------

CUDA_DIR = REPO_ROOT / "csrc" / "cuda"
EMULATION_DIR = CUDA_DIR / "host_emulation"


def _host_compiler() -> str | None:
    import shutil

    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _emulated_cuda_source() -> str:
    """selected_softmax.cu rewritten for cuda_host_shim.h: headers, shared memory, launches."""
    import re

    source = (CUDA_DIR / "selected_softmax.cu").read_text()
    source, headers = re.subn(r"#include <cuda_\w+\.h>\n", "", source)
    source, shared = re.subn(r"extern __shared__ float smem\[\];", "float* smem = g_block_smem;", source)
    source, launches = re.subn(r"(\w+)<<<([^>]*)>>>\(", r"emulate_launch(\1, \2, ", source)
    # A refactor of the .cu that escapes these rewrites must fail here, not test less.
    assert (headers, shared, launches) == (3, 3, 3), (headers, shared, launches)
    return '#include "cuda_host_shim.h"\n' + source


def test_cuda_kernels_in_host_emulation(tmp_path):
    """The CUDA C++ kernels (float32, float16, bfloat16; D up to 256, G up to 32, partial tiles,
    N = 0) vs the CPU kernels, each CUDA thread a host thread (see cuda_host_shim.h)."""
    compiler = _host_compiler()
    if compiler is None:
        pytest.skip("no host C++ compiler (g++/c++) to build the CUDA-kernel emulation")
    probe = tmp_path / "probe.cpp"
    probe.write_text("#include <barrier>\nint main() { std::barrier<> b(1); _Float16 h = 1; return int(h) - 1; }\n")
    flags = ["-std=c++20", "-pthread"]
    if subprocess.run([compiler, *flags, str(probe), "-o", str(tmp_path / "probe")], capture_output=True).returncode:
        pytest.skip(f"{compiler} lacks C++20 <barrier> or _Float16, which the emulation needs")
    kernels = tmp_path / "selected_softmax_host.cpp"
    kernels.write_text(_emulated_cuda_source())
    binary = tmp_path / "check"
    build = subprocess.run(
        [compiler, *flags, "-O1", "-Wno-unknown-pragmas", f"-I{EMULATION_DIR}", f"-I{CUDA_DIR}",
         f"-I{CUDA_DIR.parent}", str(EMULATION_DIR / "check_selected_softmax.cpp"), str(kernels),
         str(CUDA_DIR.parent / "selected_text_softmax_cpu.cpp"), "-o", str(binary)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout + run.stderr[-2000:]
    assert run.stdout.count("ok   ") == 10
