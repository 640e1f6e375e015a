// Token-selected text-softmax attention capture: the maths shared by the CPU and CUDA paths.
//
//   out[b,h,n,:] = softmax_t(scale * q[b,h,n,:] . k[b,h,t,:]) @ selector[t,:]
//
// q (B,H,N,D) image queries, k (B,H,T,D) text keys, selector (T,G) token weights, all
// contiguous float32. The (N,T) probability matrix is never stored: each query row is
// streamed over the T keys; the backward recomputes them blockwise from the row log-sum-exp.
#pragma once

#include <cstdint>

namespace l2s {

struct SelectedTextSoftmaxShape {
  int64_t batch;      // B
  int64_t heads;      // H
  int64_t queries;    // N (image tokens)
  int64_t keys;       // T (text tokens)
  int64_t head_dim;   // D
  int64_t groups;     // G (selector columns, one per object word)
};

// out: (B,H,N,G). Online (single-pass, running-max) softmax per query row.
void selected_text_softmax_forward_cpu(const SelectedTextSoftmaxShape& shape, const float* q,
                                       const float* k, const float* selector, float scale,
                                       float* out);

// grad_q: (B,H,N,D), grad_k: (B,H,T,D); both fully overwritten.
// dS = P o (dO selector^T - delta), delta_n = rowsum(P o dO selector^T); P is recomputed.
void selected_text_softmax_backward_cpu(const SelectedTextSoftmaxShape& shape,
                                        const float* grad_out, const float* q, const float* k,
                                        const float* selector, float scale, float* grad_q,
                                        float* grad_k);

// True when the OpenMP runtime parallelises these loops (compile-time).
bool cpu_built_with_openmp();
// OpenMP's thread budget at call time (1 without OpenMP).
int cpu_max_threads();

#ifdef L2S_WITH_CUDA
// Implemented in csrc/cuda/: number of usable CUDA devices (0 when the driver or device is
// missing; never throws), and the CUDA runtime version the module was compiled against.
int cuda_device_count();
int cuda_runtime_version_compiled();
#endif

}  // namespace l2s
