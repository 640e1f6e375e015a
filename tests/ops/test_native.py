"""The native module l2s_fast: build facts, the CPU selected-text-softmax op vs PyTorch, and its
CUDA kernels on CPU: csrc/cuda/selected_softmax.cu compiled for the host under a SIMT emulation
(csrc/cuda/host_emulation: a thread per CUDA thread, real barriers)."""

from __future__ import annotations

import math
import os
import subprocess

import numpy as np
import pytest
import torch

try:
    import l2s_fast
except ImportError as error:  # a missing build is a failure, not a skip
    raise ImportError(
        "l2s_fast is not built: run `pip install --no-build-isolation -e .` in the repository root"
    ) from error

import l2s

from .helpers import REPO_ROOT


def reference(q, k, selector, scale):
    """softmax over the text keys of q k^T scale, then @ selector (materialises (N, T))."""
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ selector


def random_inputs(B, H, N, T, D, G):
    q = torch.randn(B, H, N, D)
    k = torch.randn(B, H, T, D)
    selector = torch.rand(T, G)
    return q, k, selector


def reference_grads(q, k, selector, scale, grad_out):
    """grad_q, grad_k by autograd in float64 from the float32 inputs."""
    q64 = q.double().requires_grad_()
    k64 = k.double().requires_grad_()
    out = reference(q64, k64, selector.double(), scale)
    out.backward(grad_out.double())
    return out.detach(), q64.grad, k64.grad


def close(native: np.ndarray, expected: torch.Tensor) -> None:
    torch.testing.assert_close(torch.from_numpy(native).double(), expected, atol=1e-5, rtol=1e-5)


def test_module_reports_its_build():
    assert l2s_fast.__version__ == l2s.__version__
    assert isinstance(l2s_fast.built_with_cuda(), bool)
    assert isinstance(l2s_fast.has_cuda(), bool)
    # A usable device needs both the compiled kernels and a visible GPU.
    assert l2s_fast.has_cuda() == (l2s_fast.built_with_cuda() and torch.cuda.is_available())
    info = l2s_fast.build_info()
    assert {"version", "compiler", "cxx_flags", "build_type", "openmp", "cuda",
            "cuda_version"} <= info.keys()
    assert info["version"] == l2s_fast.__version__
    assert info["cuda"] is l2s_fast.built_with_cuda()
    assert (info["cuda_version"] is None) == (not info["cuda"])
    assert isinstance(info["openmp"], bool) and info["compiler"]
    assert info["source_digest"] == l2s_fast.__source_digest__


def test_the_module_was_built_from_this_checkouts_sources():
    # CMake's digest of csrc/ and Python's agree (a stale build warns: see the next test).
    from l2s.ops.native import source_digest

    assert l2s_fast.__source_digest__ == source_digest(REPO_ROOT / "csrc")


@pytest.fixture
def said_afresh():
    """``_say_if_stale`` with nothing said yet, and so again after the test, whatever it did."""
    from l2s.ops import native

    native._say_if_stale.cache_clear()
    yield native
    native._say_if_stale.cache_clear()


def test_a_module_built_from_other_sources_is_named_once(tmp_path, monkeypatch, caplog, said_afresh):
    native = said_afresh
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "k.cu").write_text("int k;")
    (tmp_path / "module.cpp").write_text("int m;")
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    built_from = native.source_digest(tmp_path)
    (tmp_path / ".module.cpp.swp").write_text("an editor's")     # no source: the digest stays
    (tmp_path / "module.o").write_bytes(b"\0")
    with caplog.at_level("WARNING", logger="l2s.ops.native"):
        native._say_if_stale(built_from)
        assert not caplog.records
        (tmp_path / "module.cpp").write_text("int m2;")
        native._say_if_stale(l2s_fast.__source_digest__)
        native._say_if_stale(l2s_fast.__source_digest__)
    assert len(caplog.records) == 1 and "l2s_fast was built from other sources" in caplog.text


def test_a_standalone_build_computes_the_digest_again_after_an_edit(tmp_path):
    # `cmake --build` reconfigures only for a configure dependency: without the sources as ones, a module
    # rebuilt after an edit kept the old digest and warned that it was stale
    import shutil

    from l2s.ops.native import source_digest

    pybind11 = pytest.importorskip("pybind11", reason="needs pybind11, a build requirement of l2s_fast")
    if shutil.which("cmake") is None or shutil.which("make") is None:
        pytest.skip("needs cmake and make (the build tools of l2s_fast)")
    shutil.copy(REPO_ROOT / "CMakeLists.txt", tmp_path)
    shutil.copytree(REPO_ROOT / "csrc", tmp_path / "csrc")
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", tmp_path, "-B", build, "-G", "Unix Makefiles",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"], check=True, capture_output=True, timeout=300)
    with open(tmp_path / "csrc" / "module.cpp", "a") as source:
        source.write("// an edit\n")
    # the check every `cmake --build` starts with; it configures again when a dependency changed
    subprocess.run(["make", "-C", build, "cmake_check_build_system"], check=True, capture_output=True, timeout=300)
    header = (build / "generated" / "build_config.h").read_text()
    assert f'L2S_SOURCE_DIGEST "{source_digest(tmp_path / "csrc")}"' in header


SHAPES = [  # (B, H, N, T, D, G)
    (1, 1, 1, 1, 4, 1),
    (1, 2, 1, 77, 16, 3),
    (2, 3, 64, 77, 16, 3),
    (2, 1, 64, 1, 16, 3),
    (1, 2, 64, 77, 4, 1),
    (2, 2, 5, 9, 4, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}N{}T{}D{}G{}".format(*s))
def test_forward_and_backward_match_pytorch(shape):
    B, H, N, T, D, G = shape
    q, k, selector = random_inputs(B, H, N, T, D, G)
    scale = 1.0 / math.sqrt(D)
    grad_out = torch.randn(B, H, N, G)
    expected_out, expected_dq, expected_dk = reference_grads(q, k, selector, scale, grad_out)

    out = l2s_fast.selected_text_softmax_forward(q.numpy(), k.numpy(), selector.numpy(), scale)
    assert out.shape == (B, H, N, G) and out.dtype == np.float32
    close(out, expected_out)

    dq, dk = l2s_fast.selected_text_softmax_backward(
        grad_out.numpy(), q.numpy(), k.numpy(), selector.numpy(), scale
    )
    assert dq.shape == (B, H, N, D) and dk.shape == (B, H, T, D)
    close(dq, expected_dq)
    close(dk, expected_dk)


def test_single_text_key_gives_its_selector_row_and_no_gradient():
    q, k, selector = random_inputs(1, 2, 3, 1, 4, 3)
    out = l2s_fast.selected_text_softmax_forward(q.numpy(), k.numpy(), selector.numpy(), 0.5)
    np.testing.assert_allclose(out, np.broadcast_to(selector.numpy()[0], out.shape), rtol=1e-6)
    dq, dk = l2s_fast.selected_text_softmax_backward(
        np.ones_like(out), q.numpy(), k.numpy(), selector.numpy(), 0.5
    )
    assert not dq.any() and not dk.any()


def test_large_logits_stay_finite_and_exact():
    """A naive exp(logit) overflows float32 at logit > 88; the stable softmax must not."""
    q, k, selector = random_inputs(1, 2, 8, 77, 16, 3)
    scale = 40.0  # logits in the hundreds
    grad_out = torch.randn(1, 2, 8, 3)
    expected_out, expected_dq, expected_dk = reference_grads(q, k, selector, scale, grad_out)
    out = l2s_fast.selected_text_softmax_forward(q.numpy(), k.numpy(), selector.numpy(), scale)
    dq, dk = l2s_fast.selected_text_softmax_backward(
        grad_out.numpy(), q.numpy(), k.numpy(), selector.numpy(), scale
    )
    assert np.isfinite(out).all() and np.isfinite(dq).all() and np.isfinite(dk).all()
    close(out, expected_out)
    torch.testing.assert_close(torch.from_numpy(dq).double(), expected_dq, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(dk).double(), expected_dk, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("masked", [0, 3])
def test_a_key_masked_with_minus_infinity_counts_for_nothing_wherever_it_is(masked):
    """A key whose logit is -inf (a masked token) gets probability 0, the first key too (where the
    running max is still -inf and exp(-inf - -inf) would be NaN)."""
    q, k, selector = random_inputs(1, 1, 3, 5, 4, 2)
    q = q.abs() + 0.1
    k[0, 0, masked] = -math.inf                                  # every logit of that key is -inf
    out = l2s_fast.selected_text_softmax_forward(q.numpy(), k.numpy(), selector.numpy(), 0.5)
    close(out, reference(q.double(), k.double(), selector.double(), 0.5))


def test_float64_and_strided_inputs_are_converted():
    q, k, selector = random_inputs(2, 3, 6, 7, 4, 2)
    expected = l2s_fast.selected_text_softmax_forward(q.numpy(), k.numpy(), selector.numpy(), 0.5)
    # float64 copies, and a q that is a non-contiguous (B, N, H, D) -> (B, H, N, D) view.
    q_strided = np.ascontiguousarray(q.numpy().transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not q_strided.flags.c_contiguous
    out = l2s_fast.selected_text_softmax_forward(
        q_strided, k.numpy().astype(np.float64), selector.numpy().astype(np.float64), 0.5
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    # CPU torch tensors are accepted directly through the array protocol.
    np.testing.assert_allclose(
        l2s_fast.selected_text_softmax_forward(q, k, selector, 0.5), expected, rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, object])
def test_arrays_that_are_not_real_numbers_are_refused(dtype):
    """A plain cast would drop an imaginary part or read booleans as 0/1 without a word."""
    q, k, selector = (t.numpy() for t in random_inputs(1, 2, 3, 5, 4, 2))
    with pytest.raises(TypeError, match=r"^q must hold real numbers \(float or integer\), got dtype"):
        l2s_fast.selected_text_softmax_forward(q.astype(dtype), k, selector, 0.5)
    with pytest.raises(TypeError, match=r"^grad_out must hold real numbers"):
        l2s_fast.selected_text_softmax_backward(np.ones((1, 2, 3, 2), dtype), q, k, selector, 0.5)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "sel_shape", "message"),
    [
        ((1, 2, 3), (1, 2, 5, 4), (5, 2), "q must have shape"),
        ((1, 2, 3, 4), (1, 3, 5, 4), (5, 2), "head count"),
        ((1, 2, 3, 4), (1, 2, 5, 8), (5, 2), "head dim"),
        ((1, 2, 3, 4), (1, 2, 5, 4), (6, 2), "selector rows"),
        ((1, 2, 3, 4), (1, 2, 0, 4), (0, 2), "T = 0"),
    ],
)
def test_bad_shapes_are_rejected_clearly(q_shape, k_shape, sel_shape, message):
    with pytest.raises(ValueError, match=message):
        l2s_fast.selected_text_softmax_forward(
            np.zeros(q_shape, np.float32), np.zeros(k_shape, np.float32),
            np.zeros(sel_shape, np.float32), 1.0,
        )


def test_backward_rejects_grad_out_of_the_wrong_shape():
    q, k, selector = random_inputs(1, 2, 3, 5, 4, 2)
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        l2s_fast.selected_text_softmax_backward(
            np.zeros((1, 2, 3, 3), np.float32), q.numpy(), k.numpy(), selector.numpy(), 1.0
        )


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
