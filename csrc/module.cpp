// pybind11 bindings of the native module `l2s_fast`.
//
// Deliberately independent of libtorch (no ABI coupling with the torch wheel): ops take
// numpy / buffer-protocol arrays and return numpy arrays; l2s wraps them with torch.library.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "build_config.h"
#include "selected_text_softmax.h"
#ifdef L2S_WITH_CUDA
#include "cuda/selected_softmax.h"
#endif

namespace py = pybind11;

namespace {

// float32, C-contiguous; other real dtypes (float64, integers) and strided views are copied.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// forcecast alone would drop a complex array's imaginary part or read booleans as numbers.
FloatArray real_array(const py::object& value, const char* name) {
  const py::array array = py::array::ensure(value);   // numpy arrays and anything with __array__
  if (!array) throw py::type_error(std::string(name) + " must be an array");
  const char kind = array.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u') {
    throw py::type_error(std::string(name) + " must hold real numbers (float or integer), got dtype " +
                         std::string(py::str(array.dtype())));
  }
  return FloatArray::ensure(array);
}

void require_ndim(const FloatArray& array, py::ssize_t ndim, const char* name, const char* layout) {
  if (array.ndim() != ndim) {
    throw py::value_error(std::string(name) + " must have shape " + layout + ", got " +
                          std::to_string(array.ndim()) + " dimensions");
  }
}

void require_dim(py::ssize_t got, py::ssize_t want, const char* what) {
  if (got != want) {
    throw py::value_error(std::string(what) + ": expected " + std::to_string(want) + ", got " +
                          std::to_string(got));
  }
}

l2s::SelectedTextSoftmaxShape checked_shape(const FloatArray& q, const FloatArray& k,
                                            const FloatArray& selector) {
  require_ndim(q, 4, "q", "(B, H, N, D)");
  require_ndim(k, 4, "k", "(B, H, T, D)");
  require_ndim(selector, 2, "selector", "(T, G)");
  require_dim(k.shape(0), q.shape(0), "k batch size (dim 0) must match q");
  require_dim(k.shape(1), q.shape(1), "k head count (dim 1) must match q");
  require_dim(k.shape(3), q.shape(3), "k head dim (dim 3) must match q");
  require_dim(selector.shape(0), k.shape(2), "selector rows (dim 0) must match the T text keys of k");
  if (k.shape(2) == 0) throw py::value_error("k has no text keys (T = 0): the softmax is undefined");
  return {q.shape(0), q.shape(1), q.shape(2), k.shape(2), q.shape(3), selector.shape(1)};
}

FloatArray forward(const py::object& q_in, const py::object& k_in, const py::object& selector_in,
                   float scale) {
  const FloatArray q = real_array(q_in, "q"), k = real_array(k_in, "k");
  const FloatArray selector = real_array(selector_in, "selector");
  const auto s = checked_shape(q, k, selector);
  FloatArray out({s.batch, s.heads, s.queries, s.groups});
  {
    py::gil_scoped_release release;
    l2s::selected_text_softmax_forward_cpu(s, q.data(), k.data(), selector.data(), scale,
                                           out.mutable_data());
  }
  return out;
}

std::pair<FloatArray, FloatArray> backward(const py::object& grad_out_in, const py::object& q_in,
                                           const py::object& k_in, const py::object& selector_in,
                                           float scale) {
  const FloatArray grad_out = real_array(grad_out_in, "grad_out"), q = real_array(q_in, "q");
  const FloatArray k = real_array(k_in, "k"), selector = real_array(selector_in, "selector");
  const auto s = checked_shape(q, k, selector);
  require_ndim(grad_out, 4, "grad_out", "(B, H, N, G)");
  const std::vector<py::ssize_t> want{s.batch, s.heads, s.queries, s.groups};
  for (py::ssize_t d = 0; d < 4; ++d) {
    if (grad_out.shape(d) != want[d]) {
      throw py::value_error("grad_out must have the forward output's shape (B, H, N, G) = (" +
                            std::to_string(want[0]) + ", " + std::to_string(want[1]) + ", " +
                            std::to_string(want[2]) + ", " + std::to_string(want[3]) + ")");
    }
  }
  FloatArray grad_q({s.batch, s.heads, s.queries, s.head_dim});
  FloatArray grad_k({s.batch, s.heads, s.keys, s.head_dim});
  {
    py::gil_scoped_release release;
    l2s::selected_text_softmax_backward_cpu(s, grad_out.data(), q.data(), k.data(),
                                            selector.data(), scale, grad_q.mutable_data(),
                                            grad_k.mutable_data());
  }
  return {std::move(grad_q), std::move(grad_k)};
}

bool built_with_cuda() {
#ifdef L2S_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool has_cuda() {
#ifdef L2S_WITH_CUDA
  // Probed once: the answer cannot change within a process.
  static const bool usable = l2s::cuda_device_count() > 0;
  return usable;
#else
  return false;
#endif
}

py::dict build_info() {
  py::dict info;
  info["version"] = L2S_VERSION_STRING;
  info["source_digest"] = L2S_SOURCE_DIGEST;
  info["compiler"] = L2S_CXX_COMPILER;
  info["cxx_flags"] = L2S_CXX_FLAGS;
  info["build_type"] = L2S_BUILD_TYPE;
  info["pybind11_version"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                             std::to_string(PYBIND11_VERSION_MINOR) + "." +
                             std::to_string(PYBIND11_VERSION_PATCH);
  info["openmp"] = l2s::cpu_built_with_openmp();
  info["openmp_max_threads"] = l2s::cpu_max_threads();
  info["cuda"] = built_with_cuda();
#ifdef L2S_WITH_CUDA
  const int v = l2s::cuda_runtime_version_compiled();  // e.g. 13000 -> "13.0"
  info["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  info["cuda_compiler"] = L2S_CUDA_COMPILER;
  info["cuda_architectures"] = L2S_CUDA_ARCHITECTURES;
#else
  info["cuda_version"] = py::none();
  info["cuda_compiler"] = py::none();
  info["cuda_architectures"] = py::none();
#endif
  return info;
}


// ------------------------------------------------------------------------------------------------
// CUDA entry points: raw device pointers, sizes and a cudaStream_t, all as Python integers (the
// caller, l2s/ops/native.py, owns the torch tensors and keeps them alive). Always bound, so a CPU-only
// build answers with a clear error instead of a missing attribute.
// ------------------------------------------------------------------------------------------------

#ifdef L2S_WITH_CUDA
l2s::SelectedTextSoftmaxShape cuda_call_shape(int64_t batch, int64_t heads, int64_t queries,
                                              int64_t keys, int64_t head_dim, int64_t groups) {
  return {batch, heads, queries, keys, head_dim, groups};
}

l2s::CudaDType cuda_dtype(int code) {
  if (code < 0 || code > 2) {
    throw py::value_error("dtype code must be 0 (float32), 1 (float16) or 2 (bfloat16), got " +
                          std::to_string(code));
  }
  return static_cast<l2s::CudaDType>(code);
}

template <typename T>
T* device_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}
#else
[[noreturn]] void no_cuda_build() {
  throw std::runtime_error(
      "l2s_fast was built without CUDA kernels: rebuild with "
      "`L2S_BUILD_CUDA=1 pip install --no-build-isolation -e .`");
}
#endif

void forward_cuda([[maybe_unused]] std::uintptr_t q, [[maybe_unused]] std::uintptr_t k,
                  [[maybe_unused]] std::uintptr_t selector, [[maybe_unused]] std::uintptr_t out,
                  [[maybe_unused]] int64_t batch, [[maybe_unused]] int64_t heads,
                  [[maybe_unused]] int64_t queries, [[maybe_unused]] int64_t keys,
                  [[maybe_unused]] int64_t head_dim, [[maybe_unused]] int64_t groups,
                  [[maybe_unused]] float scale, [[maybe_unused]] int dtype,
                  [[maybe_unused]] std::uintptr_t stream) {
#ifdef L2S_WITH_CUDA
  const auto shape = cuda_call_shape(batch, heads, queries, keys, head_dim, groups);
  const auto element = cuda_dtype(dtype);
  py::gil_scoped_release release;
  l2s::selected_text_softmax_forward_cuda(shape, element, device_ptr<const void>(q),
                                          device_ptr<const void>(k),
                                          device_ptr<const float>(selector), scale,
                                          device_ptr<void>(out), device_ptr<void>(stream));
#else
  no_cuda_build();
#endif
}

void backward_cuda([[maybe_unused]] std::uintptr_t grad_out, [[maybe_unused]] std::uintptr_t q,
                   [[maybe_unused]] std::uintptr_t k, [[maybe_unused]] std::uintptr_t selector,
                   [[maybe_unused]] std::uintptr_t lse, [[maybe_unused]] std::uintptr_t delta,
                   [[maybe_unused]] std::uintptr_t grad_q, [[maybe_unused]] std::uintptr_t grad_k,
                   [[maybe_unused]] int64_t batch, [[maybe_unused]] int64_t heads,
                   [[maybe_unused]] int64_t queries, [[maybe_unused]] int64_t keys,
                   [[maybe_unused]] int64_t head_dim, [[maybe_unused]] int64_t groups,
                   [[maybe_unused]] float scale, [[maybe_unused]] int dtype,
                   [[maybe_unused]] std::uintptr_t stream) {
#ifdef L2S_WITH_CUDA
  const auto shape = cuda_call_shape(batch, heads, queries, keys, head_dim, groups);
  const auto element = cuda_dtype(dtype);
  py::gil_scoped_release release;
  l2s::selected_text_softmax_backward_cuda(
      shape, element, device_ptr<const void>(grad_out), device_ptr<const void>(q),
      device_ptr<const void>(k), device_ptr<const float>(selector), scale, device_ptr<float>(lse),
      device_ptr<float>(delta), device_ptr<void>(grad_q), device_ptr<void>(grad_k),
      device_ptr<void>(stream));
#else
  no_cuda_build();
#endif
}

}  // namespace

PYBIND11_MODULE(l2s_fast, m) {
  m.doc() = "Native kernels of l2s (CPU always; CUDA when built with L2S_WITH_CUDA).";
  m.attr("__version__") = L2S_VERSION_STRING;
  m.attr("__source_digest__") = L2S_SOURCE_DIGEST;

  m.def("built_with_cuda", &built_with_cuda,
        "True when this build compiled the CUDA kernels (says nothing about a device).");
  m.def("has_cuda", &has_cuda,
        "True when the CUDA kernels were compiled in AND a device can run them now.");
  m.def("build_info", &build_info,
        "Compiler, flags, OpenMP and CUDA facts about this build, as a dict.");

  m.def("selected_text_softmax_forward", &forward, py::arg("q"), py::arg("k"),
        py::arg("selector"), py::arg("scale"),
        R"doc(Token-selected text-softmax maps: softmax_T(q k^T scale) @ selector.

q: (B, H, N, D) image queries; k: (B, H, T, D) text keys; selector: (T, G) weights of the
text tokens per group. Inputs are read as C-contiguous float32 (other real dtypes and strided
arrays are copied; complex, boolean and object arrays are refused). Returns out: (B, H, N, G)
float32. Never stores the (N, T) probabilities.)doc");

  m.def("selected_text_softmax_backward", &backward, py::arg("grad_out"), py::arg("q"),
        py::arg("k"), py::arg("selector"), py::arg("scale"),
        R"doc(Backward of selected_text_softmax_forward with respect to q and k.

grad_out: (B, H, N, G), the gradient of the loss w.r.t. the forward output; other arguments as
in the forward. Returns (grad_q (B, H, N, D), grad_k (B, H, T, D)) as float32. The selector is
treated as a constant (no gradient).)doc");

  m.def("selected_text_softmax_forward_cuda", &forward_cuda, py::arg("q"), py::arg("k"),
        py::arg("selector"), py::arg("out"), py::arg("batch"), py::arg("heads"),
        py::arg("queries"), py::arg("keys"), py::arg("head_dim"), py::arg("groups"),
        py::arg("scale"), py::arg("dtype"), py::arg("stream"),
        R"doc(CUDA forward on raw device pointers (integers); launches on `stream` (a cudaStream_t).

q (B,H,N,D), k (B,H,T,D), out (B,H,N,G): contiguous, element type `dtype` (0 float32,
1 float16, 2 bfloat16); selector (T,G) contiguous float32. D <= 256, G <= 32. Asynchronous.
Raises RuntimeError when this build has no CUDA kernels.)doc");

  m.def("selected_text_softmax_backward_cuda", &backward_cuda, py::arg("grad_out"), py::arg("q"),
        py::arg("k"), py::arg("selector"), py::arg("lse"), py::arg("delta"), py::arg("grad_q"),
        py::arg("grad_k"), py::arg("batch"), py::arg("heads"), py::arg("queries"), py::arg("keys"),
        py::arg("head_dim"), py::arg("groups"), py::arg("scale"), py::arg("dtype"),
        py::arg("stream"),
        R"doc(CUDA backward on raw device pointers: writes grad_q (B,H,N,D) and grad_k (B,H,T,D).

grad_out (B,H,N,G) has the element type `dtype`, like q, k, grad_q, grad_k; lse and delta are
float32 scratch of B*H*N elements each. Asynchronous; RuntimeError without CUDA kernels.)doc");
}
