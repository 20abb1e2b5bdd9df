// Lets the kernel headers (cuda_*_kernels.cuh) compile either with nvcc or, with HXQ_CUDA_EMULATION
// defined, as host C++ inside an emulation harness that provides threadIdx, __syncthreads, etc.
#pragma once
#ifndef HXQ_CUDA_EMULATION
#include <cuda_runtime.h>
// Dynamic shared memory of a kernel.
#define HXQ_EXTERN_SHARED(T, name) extern __shared__ __align__(16) T name[]
#define HXQ_UNROLL _Pragma("unroll")
// Namespace of the kernels: hxq::cuda::kern (emulated: hxq::cuda::kern_emu, so that both can be
// linked into one program).
#define HXQ_KERN_NS kern
#endif

namespace hxq::cuda::HXQ_KERN_NS {

// Σ of v over the 32 lanes of a warp (butterfly of shuffles): every lane gets the sum.
__device__ __forceinline__ float warp_sum(float v) {
HXQ_UNROLL
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace hxq::cuda::HXQ_KERN_NS
