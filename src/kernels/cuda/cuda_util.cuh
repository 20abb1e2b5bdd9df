// Internal helpers of the CUDA kernels: CUDA error -> hxq::Error, stream casts, device queries.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hxq::cuda::detail {

// Throws hxq::Error("cuda: <what>: <error name> (<message>)"); clears the non-sticky error.
[[noreturn]] void cuda_fail(const char* what, cudaError_t e);
// Throws hxq::Error with a plain message (e.g. a bad argument).
[[noreturn]] void fail_msg(const char* what, const char* msg);

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) cuda_fail(what, e);
}
// After a kernel launch: reports a bad configuration (the launch itself is asynchronous).
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Throws "cuda: <what>: no CUDA device" when cuda_available() is false.
void require_device(const char* what);
// Number of SMs of device 0 (cached).
int sm_count();

}  // namespace hxq::cuda::detail
