// Host emulation of the CUDA features csrc/cuda/selected_softmax.cu uses, so its kernels can be
// checked on machines without a GPU (tests/ops/test_native.py::test_cuda_kernels_in_host_emulation).
//
// One std::thread per CUDA thread, block by block; std::barrier implements __syncthreads and
// __syncwarp, a per-warp buffer implements __shfl_xor_sync. A missing barrier shows up as a
// race (wrong results, as a rule), a divergent one as a hang, and shared memory starts as NaN in every
// block so reads of unwritten entries show. Not for speed: a block of 256 threads per launch.
// The test rewrites the .cu (headers, `extern __shared__`, `<<<...>>>` launches) to use this.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline float* g_block_smem = nullptr;

struct BlockSync {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> exchange;  // [warp][lane]
};
inline BlockSync* g_sync = nullptr;

inline void __syncthreads() { g_sync->block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_sync->warps[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int offset) {
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* buf = g_sync->exchange.data() + warp * 32;
  buf[lane] = v;
  __syncwarp();
  const float other = buf[lane ^ offset];
  __syncwarp();
  return other;
}

using __half = _Float16;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }
struct __nv_bfloat16 { uint16_t bits = 0; };
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = uint32_t(b.bits) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u; std::memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return __nv_bfloat16{uint16_t(u >> 16)};
}

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
template <typename K> cudaError_t cudaFuncSetAttribute(K, cudaFuncAttribute, int) { return cudaSuccess; }

inline size_t g_launches = 0;
template <typename Kernel, typename... Args>
void emulate_launch(Kernel kernel, dim3 grid, int threads, size_t smem_bytes, cudaStream_t, Args... args) {
  ++g_launches;
  blockDim = dim3(threads);
  gridDim = grid;
  std::vector<float> smem(smem_bytes / sizeof(float) + 1, std::nanf(""));  // NaN: reads of unwritten smem show
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::fill(smem.begin(), smem.end(), std::nanf(""));
      BlockSync sync;
      sync.block = std::make_unique<std::barrier<>>(threads);
      for (int w = 0; w < threads / 32; ++w) sync.warps.push_back(std::make_unique<std::barrier<>>(32));
      sync.exchange.assign(threads, 0.0f);
      g_sync = &sync;
      g_block_smem = smem.data();
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([=] {
          threadIdx = dim3(t);
          blockIdx = dim3(bx, by);
          kernel(args...);
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}
