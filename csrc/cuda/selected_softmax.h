// CUDA path of the token-selected text-softmax capture (maths in ../selected_text_softmax.h).
//
// Plain C++ interface (no CUDA headers) so module.cpp, compiled by the host compiler, can bind
// it: tensors arrive as raw device pointers, the stream as an opaque pointer. Every tensor is
// contiguous; q, k, out, grad_out, grad_q, grad_k share the element type `dtype`; selector and
// the two O(B*H*N) workspaces are float32. Errors are thrown as std::runtime_error /
// std::invalid_argument (pybind11 turns them into RuntimeError / ValueError).
#pragma once

#include "../selected_text_softmax.h"

namespace l2s {

// Element type codes shared with l2s/ops/native.py (_CUDA_DTYPE_CODES).
enum class CudaDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Limits of the kernels' register/shared-memory tiles.
constexpr int64_t kCudaMaxHeadDim = 256;
constexpr int64_t kCudaMaxGroups = 32;

// out (B,H,N,G) = softmax_T(scale q k^T) @ selector. One block per (b·h, tile of 8 query rows).
void selected_text_softmax_forward_cuda(const SelectedTextSoftmaxShape& shape, CudaDType dtype,
                                        const void* q, const void* k, const float* selector,
                                        float scale, void* out, void* stream);

// grad_q (B,H,N,D), grad_k (B,H,T,D), fully overwritten. lse and delta (B*H*N floats each) are
// scratch written by the dq kernel (row log-sum-exp in base 2, and Δ) and read by the dk kernel.
void selected_text_softmax_backward_cuda(const SelectedTextSoftmaxShape& shape, CudaDType dtype,
                                         const void* grad_out, const void* q, const void* k,
                                         const float* selector, float scale, float* lse,
                                         float* delta, void* grad_q, void* grad_k, void* stream);

}  // namespace l2s
