// Dense matrix kernels: Y[T, N] = X[T, K] · Wᵀ with W [N, K] stored as F32, F16 or BF16
// (converted on the fly, never materialised), float32 accumulation. Multithreaded.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace hxq {

void gemm_dense(const float* X, int64_t T, int64_t K, const void* W, DType wdt, int64_t N, float* Y);

}  // namespace hxq
