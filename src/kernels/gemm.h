// Dense matrix kernels: Y[T, N] = X[T, K] · Wᵀ with W [N, K] stored as F32, F16 or BF16
// (converted on the fly, never materialised), float32 accumulation. Multithreaded.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace hxq {

// X [T, K] and Y [T, N] are row-major float32 and must not overlap. Runs on the global pool with
// the instruction set of kernel_isa() (kernels/cpu_features.h): few rows of X stream W once
// (matvec, memory-bound), many rows go through packed panels and a register-blocked FMA
// micro-kernel (compute-bound). Each output is one fixed-order float32 sum, so results do not
// depend on the thread count. Throws hxq::Error for another dtype or negative sizes.
void gemm_dense(const float* X, int64_t T, int64_t K, const void* W, DType wdt, int64_t N, float* Y);

// Portable float32 dot product with 16 partial sums (the scalar reference kernels' order).
float dot_f32(const float* a, const float* b, int64_t n);

}  // namespace hxq
