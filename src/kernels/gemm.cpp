#include "kernels/gemm.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"

namespace hxq {

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

}  // namespace

void gemm_dense(const float* X, int64_t T, int64_t K, const void* W, DType wdt, int64_t N, float* Y) {
  if (wdt != DType::F32 && wdt != DType::F16 && wdt != DType::BF16)
    fail("gemm: unsupported weight dtype {}", dtype_name(wdt));
  const size_t es = dtype_size(wdt);
  const int64_t RB = 16;  // rows of W decoded at a time
  const int64_t nblocks = (N + RB - 1) / RB;
  pool().parallel_for(nblocks, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> wb(size_t(RB * K));
    for (int64_t b = b0; b < b1; ++b) {
      int64_t r0 = b * RB, r1 = std::min(N, r0 + RB);
      to_f32(wdt, static_cast<const char*>(W) + size_t(r0 * K) * es, wb.data(), size_t((r1 - r0) * K));
      for (int64_t t = 0; t < T; ++t) {
        const float* x = X + t * K;
        float* y = Y + t * N;
        for (int64_t r = r0; r < r1; ++r) y[r] = dot(x, wb.data() + (r - r0) * K, K);
      }
    }
  });
}

}  // namespace hxq
