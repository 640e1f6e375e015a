// CUDA runtime probe for has_cuda(). Compiled only when L2S_WITH_CUDA is ON.
//
// Linked against the static CUDA runtime, so the module still imports where no driver or
// libcudart is installed; every failure here means "no usable device", never an exception.
#include <cuda_runtime.h>

#include "../selected_text_softmax.h"

namespace l2s {
namespace {

// Never launched: asking for its attributes tells whether this binary holds code the
// current device can run (a kernel built for the wrong architecture fails here).
__global__ void probe_kernel() {}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later CUDA users start clean
    return 0;
  }
  if (count == 0) return 0;
  cudaFuncAttributes attributes;
  if (cudaFuncGetAttributes(&attributes, probe_kernel) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int cuda_runtime_version_compiled() { return CUDART_VERSION; }

}  // namespace l2s
