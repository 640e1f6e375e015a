// CUDA kernels of the token-selected text-softmax capture (interface in selected_softmax.h).
//
// Plain SIMT kernels (no tensor cores; the Triton kernels in kernels/selected_softmax.py are the
// tensor-core path). Layout shared by all three kernels:
//   * a block is 8 warps; each warp owns one row (a query row, or a key row for dk);
//   * the other operand is streamed through shared memory in tiles of 32 rows, one per lane,
//     so each lane computes one full q·k dot product from shared memory (no per-logit shuffles);
//   * softmax statistics are kept per lane with an online (running-max) update and merged
//     across the warp once per row with a log-sum-exp merge;
//   * gradient accumulations switch to lanes-over-D: the warp's 32 dS values go through shared
//     memory and each lane accumulates D/32 output columns in registers.
// Logits are in base 2 (scale·log2 e folded into the resident row), everything in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "selected_softmax.h"

namespace l2s {
namespace {

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 8;            // warps per block, one resident row each
constexpr int kTile = kWarpSize;            // streamed rows per tile, one per lane
constexpr int kThreads = kRowsPerBlock * kWarpSize;
constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ float to_float(T value);
template <>
__device__ __forceinline__ float to_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ float to_float<__half>(__half value) { return __half2float(value); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 value) {
  return __bfloat162float(value);
}

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ __half from_float<__half>(float value) { return __float2half_rn(value); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1)
    value = fmaxf(value, __shfl_xor_sync(kFullMask, value, offset));
  return value;
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1)
    value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

// Odd row strides in shared memory: lane i reading row i, column d hits bank (i*stride + d) % 32,
// distinct for all lanes whenever the stride is odd.
__host__ __device__ __forceinline__ int odd_stride(int width) { return width | 1; }

__device__ __forceinline__ float dot_shared(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc = fmaf(a[i], b[i], acc);
  return acc;
}

// Cooperative copy of rows [row0, row0 + kTile) of a (rows, width) matrix into a float tile with
// row stride `stride`; rows past the end are zero.
template <typename T>
__device__ void load_tile(const T* __restrict__ src, int row0, int rows, int width, int stride,
                          float* tile) {
  for (int i = threadIdx.x; i < kTile * width; i += blockDim.x) {
    const int r = i / width;
    const int c = i - r * width;
    const int row = row0 + r;
    tile[r * stride + c] = row < rows ? to_float(src[static_cast<int64_t>(row) * width + c]) : 0.0f;
  }
}

// Running softmax state of one lane over the keys it has seen (base-2 logits).
struct OnlineMax {
  float max = -INFINITY;
  // Moves the running max to cover `logit`; returns the factor to rescale running sums by.
  __device__ __forceinline__ float update(float logit) {
    if (logit <= max) return 1.0f;
    const float rescale = exp2f(max - logit);  // 0 on the first key (max = -inf)
    max = logit;
    return rescale;
  }
  // Factor that brings this lane's sums to the warp-wide max (0 for a lane that saw no key).
  __device__ __forceinline__ float to_warp(float warp_max_value) const {
    return max == -INFINITY ? 0.0f : exp2f(max - warp_max_value);
  }
};

// ------------------------------------------------------------------------------------------------
// Forward: out[row] = Σ_t P_t selector[t] with P = softmax over T, one warp per query row.
// ------------------------------------------------------------------------------------------------
template <typename scalar_t, int MAX_G>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
               const float* __restrict__ selector, scalar_t* __restrict__ out, int N, int T, int D,
               int G, float qk_scale) {
  extern __shared__ float smem[];
  const int k_stride = odd_stride(D), g_stride = odd_stride(G);
  float* k_tile = smem;                          // [kTile][k_stride]
  float* sel_tile = k_tile + kTile * k_stride;   // [kTile][g_stride]
  float* q_rows = sel_tile + kTile * g_stride;   // [kRowsPerBlock][D]

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t bh = blockIdx.y;
  const int row = blockIdx.x * kRowsPerBlock + warp;
  const bool active = row < N;
  const scalar_t* k_head = k + bh * T * D;
  float* q_row = q_rows + warp * D;
  for (int d = lane; d < D; d += kWarpSize)
    q_row[d] = active ? to_float(q[(bh * N + row) * D + d]) * qk_scale : 0.0f;

  OnlineMax running;
  float denom = 0.0f;
  float acc[MAX_G];
#pragma unroll
  for (int g = 0; g < MAX_G; ++g) acc[g] = 0.0f;

  for (int t0 = 0; t0 < T; t0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and q_rows are written, on tile one)
    load_tile(k_head, t0, T, D, k_stride, k_tile);
    load_tile(selector, t0, T, G, g_stride, sel_tile);
    __syncthreads();
    if (active && t0 + lane < T) {
      const float logit = dot_shared(q_row, k_tile + lane * k_stride, D);
      const float rescale = running.update(logit);
      const float p = logit == -INFINITY ? 0.0f : exp2f(logit - running.max);  // a masked key
      denom = denom * rescale + p;
      const float* sel_row = sel_tile + lane * g_stride;
#pragma unroll
      for (int g = 0; g < MAX_G; ++g)
        if (g < G) acc[g] = acc[g] * rescale + p * sel_row[g];
    }
  }

  const float row_max = warp_max(running.max);
  const float to_warp = running.to_warp(row_max);
  const float inv_denom = 1.0f / warp_sum(denom * to_warp);
#pragma unroll
  for (int g = 0; g < MAX_G; ++g) {
    if (g >= G) break;  // G is uniform across the warp: the shuffles stay converged
    const float value = warp_sum(acc[g] * to_warp) * inv_denom;
    if (active && lane == 0) out[(bh * N + row) * G + g] = from_float<scalar_t>(value);
  }
}

// ------------------------------------------------------------------------------------------------
// Backward, query side: per query row, pass 1 gives lse and Δ = Σ_t P_t dP_t online; pass 2
// recomputes P, dS = P (dP − Δ) and accumulates dq = scale Σ_t dS_t k_t. Writes lse and Δ.
// ------------------------------------------------------------------------------------------------
template <typename scalar_t, int MAX_G, int D_CHUNKS>
__global__ void __launch_bounds__(kThreads)
backward_dq_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ q,
                   const scalar_t* __restrict__ k, const float* __restrict__ selector,
                   float* __restrict__ lse_out, float* __restrict__ delta_out,
                   scalar_t* __restrict__ grad_q, int N, int T, int D, int G, float qk_scale,
                   float scale) {
  extern __shared__ float smem[];
  const int k_stride = odd_stride(D), g_stride = odd_stride(G);
  float* k_tile = smem;                          // [kTile][k_stride]
  float* sel_tile = k_tile + kTile * k_stride;   // [kTile][g_stride]
  float* q_rows = sel_tile + kTile * g_stride;   // [kRowsPerBlock][D]
  float* ds_rows = q_rows + kRowsPerBlock * D;   // [kRowsPerBlock][kTile]

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t bh = blockIdx.y;
  const int row = blockIdx.x * kRowsPerBlock + warp;
  const bool active = row < N;
  const int64_t row_index = bh * N + row;
  const scalar_t* k_head = k + bh * T * D;
  float* q_row = q_rows + warp * D;
  float* ds_row = ds_rows + warp * kTile;
  for (int d = lane; d < D; d += kWarpSize)
    q_row[d] = active ? to_float(q[row_index * D + d]) * qk_scale : 0.0f;
  float dout[MAX_G];
#pragma unroll
  for (int g = 0; g < MAX_G; ++g)
    dout[g] = (active && g < G) ? to_float(grad_out[row_index * G + g]) : 0.0f;

  // Pass 1: lse and Δ (u = Σ exp(logit − max) dP, rescaled like the denominator).
  OnlineMax running;
  float denom = 0.0f, u = 0.0f;
  for (int t0 = 0; t0 < T; t0 += kTile) {
    __syncthreads();
    load_tile(k_head, t0, T, D, k_stride, k_tile);
    load_tile(selector, t0, T, G, g_stride, sel_tile);
    __syncthreads();
    if (active && t0 + lane < T) {
      const float logit = dot_shared(q_row, k_tile + lane * k_stride, D);
      const float* sel_row = sel_tile + lane * g_stride;
      float dp = 0.0f;
#pragma unroll
      for (int g = 0; g < MAX_G; ++g)
        if (g < G) dp = fmaf(dout[g], sel_row[g], dp);
      const float rescale = running.update(logit);
      const float p = logit == -INFINITY ? 0.0f : exp2f(logit - running.max);  // a masked key
      denom = denom * rescale + p;
      u = u * rescale + p * dp;
    }
  }
  const float row_max = warp_max(running.max);
  const float to_warp = running.to_warp(row_max);
  const float row_denom = warp_sum(denom * to_warp);
  const float lse = row_max + log2f(row_denom);
  const float delta = warp_sum(u * to_warp) / row_denom;
  if (active && lane == 0) {
    lse_out[row_index] = lse;
    delta_out[row_index] = delta;
  }

  // Pass 2: dq.
  float dq[D_CHUNKS];
#pragma unroll
  for (int c = 0; c < D_CHUNKS; ++c) dq[c] = 0.0f;
  for (int t0 = 0; t0 < T; t0 += kTile) {
    __syncthreads();
    load_tile(k_head, t0, T, D, k_stride, k_tile);
    load_tile(selector, t0, T, G, g_stride, sel_tile);
    __syncthreads();
    float ds = 0.0f;
    if (active && t0 + lane < T) {
      const float logit = dot_shared(q_row, k_tile + lane * k_stride, D);
      const float* sel_row = sel_tile + lane * g_stride;
      float dp = 0.0f;
#pragma unroll
      for (int g = 0; g < MAX_G; ++g)
        if (g < G) dp = fmaf(dout[g], sel_row[g], dp);
      ds = exp2f(logit - lse) * (dp - delta);
    }
    ds_row[lane] = ds;
    __syncwarp();
    if (active) {
#pragma unroll
      for (int c = 0; c < D_CHUNKS; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < D) {
          float sum = 0.0f;
          for (int tt = 0; tt < kTile; ++tt) sum = fmaf(ds_row[tt], k_tile[tt * k_stride + d], sum);
          dq[c] += sum;
        }
      }
    }
  }
  if (active) {
#pragma unroll
    for (int c = 0; c < D_CHUNKS; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < D) grad_q[row_index * D + d] = from_float<scalar_t>(dq[c] * scale);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward, key side: per key row, stream the query tiles with their lse and Δ and accumulate
// dk = scale Σ_n dS_n q_n. Each key row belongs to one warp: no atomics.
// ------------------------------------------------------------------------------------------------
template <typename scalar_t, int MAX_G, int D_CHUNKS>
__global__ void __launch_bounds__(kThreads)
backward_dk_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ q,
                   const scalar_t* __restrict__ k, const float* __restrict__ selector,
                   const float* __restrict__ lse, const float* __restrict__ delta,
                   scalar_t* __restrict__ grad_k, int N, int T, int D, int G, float qk_scale,
                   float scale) {
  extern __shared__ float smem[];
  const int q_stride = odd_stride(D), g_stride = odd_stride(G);
  float* q_tile = smem;                          // [kTile][q_stride]
  float* dout_tile = q_tile + kTile * q_stride;  // [kTile][g_stride]
  float* lse_tile = dout_tile + kTile * g_stride;  // [kTile]
  float* delta_tile = lse_tile + kTile;          // [kTile]
  float* k_rows = delta_tile + kTile;            // [kRowsPerBlock][D]
  float* ds_rows = k_rows + kRowsPerBlock * D;   // [kRowsPerBlock][kTile]

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t bh = blockIdx.y;
  const int key = blockIdx.x * kRowsPerBlock + warp;
  const bool active = key < T;
  const int64_t key_index = bh * T + key;
  const scalar_t* q_head = q + bh * N * D;
  const scalar_t* dout_head = grad_out + bh * N * G;
  float* k_row = k_rows + warp * D;
  float* ds_row = ds_rows + warp * kTile;
  for (int d = lane; d < D; d += kWarpSize)
    k_row[d] = active ? to_float(k[key_index * D + d]) * qk_scale : 0.0f;
  float sel[MAX_G];
#pragma unroll
  for (int g = 0; g < MAX_G; ++g) sel[g] = (active && g < G) ? selector[key * G + g] : 0.0f;

  float dk[D_CHUNKS];
#pragma unroll
  for (int c = 0; c < D_CHUNKS; ++c) dk[c] = 0.0f;
  for (int n0 = 0; n0 < N; n0 += kTile) {
    __syncthreads();
    load_tile(q_head, n0, N, D, q_stride, q_tile);
    load_tile(dout_head, n0, N, G, g_stride, dout_tile);
    if (threadIdx.x < kTile) {
      const int n = n0 + threadIdx.x;
      lse_tile[threadIdx.x] = n < N ? lse[bh * N + n] : 0.0f;
      delta_tile[threadIdx.x] = n < N ? delta[bh * N + n] : 0.0f;
    }
    __syncthreads();
    float ds = 0.0f;
    if (active && n0 + lane < N) {
      const float logit = dot_shared(k_row, q_tile + lane * q_stride, D);
      const float* dout_row = dout_tile + lane * g_stride;
      float dp = 0.0f;
#pragma unroll
      for (int g = 0; g < MAX_G; ++g)
        if (g < G) dp = fmaf(dout_row[g], sel[g], dp);
      ds = exp2f(logit - lse_tile[lane]) * (dp - delta_tile[lane]);
    }
    ds_row[lane] = ds;
    __syncwarp();
    if (active) {
#pragma unroll
      for (int c = 0; c < D_CHUNKS; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < D) {
          float sum = 0.0f;
          for (int nn = 0; nn < kTile; ++nn) sum = fmaf(ds_row[nn], q_tile[nn * q_stride + d], sum);
          dk[c] += sum;
        }
      }
    }
  }
  if (active) {
#pragma unroll
    for (int c = 0; c < D_CHUNKS; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < D) grad_k[key_index * D + d] = from_float<scalar_t>(dk[c] * scale);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side: checks, template dispatch, launches.
// ------------------------------------------------------------------------------------------------

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear it so the caller's next CUDA call starts clean
    throw std::runtime_error(std::string("l2s_fast CUDA ") + what + ": " + cudaGetErrorString(status));
  }
}

void check_shape(const SelectedTextSoftmaxShape& s) {
  if (s.batch < 0 || s.heads < 0 || s.queries < 0 || s.groups < 0)
    throw std::invalid_argument("negative tensor size");
  if (s.keys <= 0) throw std::invalid_argument("no text keys (T = 0): the softmax is undefined");
  if (s.head_dim <= 0 || s.head_dim > kCudaMaxHeadDim)
    throw std::invalid_argument("head dim must be in [1, " + std::to_string(kCudaMaxHeadDim) +
                                "], got " + std::to_string(s.head_dim));
  if (s.groups > kCudaMaxGroups)
    throw std::invalid_argument("at most " + std::to_string(kCudaMaxGroups) +
                                " selector columns, got " + std::to_string(s.groups));
  if (s.batch * s.heads > 65535)
    throw std::invalid_argument("batch * heads must be <= 65535 (grid y), got " +
                                std::to_string(s.batch * s.heads));
  if (s.queries > (int64_t{1} << 30) || s.keys > (int64_t{1} << 30))
    throw std::invalid_argument("too many queries or keys for 32-bit row indices");
}

// Kernels whose shared memory exceeds the 48 KiB default must opt in first.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)),
               "shared-memory opt-in");
  }
}

template <typename scalar_t, int MAX_G>
void launch_forward(const SelectedTextSoftmaxShape& s, const void* q, const void* k,
                    const float* selector, float scale, void* out, cudaStream_t stream) {
  const int D = static_cast<int>(s.head_dim), G = static_cast<int>(s.groups);
  const size_t floats = kTile * odd_stride(D) + kTile * odd_stride(G) + kRowsPerBlock * D;
  const size_t bytes = floats * sizeof(float);
  auto kernel = forward_kernel<scalar_t, MAX_G>;
  allow_shared_memory(kernel, bytes);
  const dim3 grid(static_cast<unsigned>((s.queries + kRowsPerBlock - 1) / kRowsPerBlock),
                  static_cast<unsigned>(s.batch * s.heads));
  kernel<<<grid, kThreads, bytes, stream>>>(
      static_cast<const scalar_t*>(q), static_cast<const scalar_t*>(k), selector,
      static_cast<scalar_t*>(out), static_cast<int>(s.queries), static_cast<int>(s.keys), D, G,
      scale * kLog2e);
  check_cuda(cudaGetLastError(), "forward launch");
}

template <typename scalar_t, int MAX_G, int D_CHUNKS>
void launch_backward(const SelectedTextSoftmaxShape& s, const void* grad_out, const void* q,
                     const void* k, const float* selector, float scale, float* lse, float* delta,
                     void* grad_q, void* grad_k, cudaStream_t stream) {
  const int N = static_cast<int>(s.queries), T = static_cast<int>(s.keys);
  const int D = static_cast<int>(s.head_dim), G = static_cast<int>(s.groups);
  const unsigned heads = static_cast<unsigned>(s.batch * s.heads);
  const size_t common = kTile * odd_stride(D) + kTile * odd_stride(G) + kRowsPerBlock * D +
                        kRowsPerBlock * kTile;
  const size_t dq_bytes = common * sizeof(float);
  const size_t dk_bytes = (common + 2 * kTile) * sizeof(float);
  auto dq_kernel = backward_dq_kernel<scalar_t, MAX_G, D_CHUNKS>;
  auto dk_kernel = backward_dk_kernel<scalar_t, MAX_G, D_CHUNKS>;
  allow_shared_memory(dq_kernel, dq_bytes);
  allow_shared_memory(dk_kernel, dk_bytes);
  const auto* grad_out_t = static_cast<const scalar_t*>(grad_out);
  const auto* q_t = static_cast<const scalar_t*>(q);
  const auto* k_t = static_cast<const scalar_t*>(k);
  if (N > 0) {
    const dim3 grid(static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock), heads);
    dq_kernel<<<grid, kThreads, dq_bytes, stream>>>(grad_out_t, q_t, k_t, selector, lse, delta,
                                                    static_cast<scalar_t*>(grad_q), N, T, D, G,
                                                    scale * kLog2e, scale);
    check_cuda(cudaGetLastError(), "backward dq launch");
  }
  // Same stream: the dk kernel reads the lse and Δ written above. With N = 0 it writes zeros.
  const dim3 grid(static_cast<unsigned>((T + kRowsPerBlock - 1) / kRowsPerBlock), heads);
  dk_kernel<<<grid, kThreads, dk_bytes, stream>>>(grad_out_t, q_t, k_t, selector, lse, delta,
                                                  static_cast<scalar_t*>(grad_k), N, T, D, G,
                                                  scale * kLog2e, scale);
  check_cuda(cudaGetLastError(), "backward dk launch");
}

template <typename Fn>
void dispatch_dtype(CudaDType dtype, Fn&& fn) {
  switch (dtype) {
    case CudaDType::kFloat32: fn(float{}); return;
    case CudaDType::kFloat16: fn(__half{}); return;
    case CudaDType::kBFloat16: fn(__nv_bfloat16{}); return;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace

void selected_text_softmax_forward_cuda(const SelectedTextSoftmaxShape& s, CudaDType dtype,
                                        const void* q, const void* k, const float* selector,
                                        float scale, void* out, void* stream) {
  check_shape(s);
  if (s.batch * s.heads * s.queries * s.groups == 0) return;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (s.groups <= 8)
      launch_forward<scalar_t, 8>(s, q, k, selector, scale, out, cuda_stream);
    else
      launch_forward<scalar_t, kCudaMaxGroups>(s, q, k, selector, scale, out, cuda_stream);
  });
}

void selected_text_softmax_backward_cuda(const SelectedTextSoftmaxShape& s, CudaDType dtype,
                                         const void* grad_out, const void* q, const void* k,
                                         const float* selector, float scale, float* lse,
                                         float* delta, void* grad_q, void* grad_k, void* stream) {
  check_shape(s);
  if (s.batch * s.heads == 0) return;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    auto with_groups = [&](auto max_groups) {
      constexpr int MAX_G = decltype(max_groups)::value;
      if (s.head_dim <= 64)
        launch_backward<scalar_t, MAX_G, 2>(s, grad_out, q, k, selector, scale, lse, delta, grad_q, grad_k, cuda_stream);
      else if (s.head_dim <= 128)
        launch_backward<scalar_t, MAX_G, 4>(s, grad_out, q, k, selector, scale, lse, delta, grad_q, grad_k, cuda_stream);
      else
        launch_backward<scalar_t, MAX_G, 8>(s, grad_out, q, k, selector, scale, lse, delta, grad_q, grad_k, cuda_stream);
    };
    if (s.groups <= 8)
      with_groups(std::integral_constant<int, 8>{});
    else
      with_groups(std::integral_constant<int, kCudaMaxGroups>{});
  });
}

}  // namespace l2s
