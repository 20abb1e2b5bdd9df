#include "kernels/hxq_gemm.h"

#include <algorithm>
#include <vector>

#include "core/threadpool.h"

namespace hxq {

void gemm_hxq(const float* X, int64_t T, const HxqView& w, float* Y) {
  const int64_t K = w.cols, N = w.rows;
  const int64_t RB = 16;
  const int64_t nblocks = (N + RB - 1) / RB;
  pool().parallel_for(nblocks, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> wb(size_t(RB * K));
    for (int64_t b = b0; b < b1; ++b) {
      int64_t r0 = b * RB, r1 = std::min(N, r0 + RB);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* idx = w.indices + r * K;
        float* dst = wb.data() + (r - r0) * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = w.codebook[idx[k]];
        if (w.sc_row_ptr)
          for (int64_t e = w.sc_row_ptr[r]; e < w.sc_row_ptr[r + 1]; ++e) dst[w.sc_col[e]] += w.sc_delta[e];
      }
      for (int64_t t = 0; t < T; ++t) {
        const float* x = X + t * K;
        float* y = Y + t * N;
        for (int64_t r = r0; r < r1; ++r) {
          const float* wr = wb.data() + (r - r0) * K;
          float acc[16] = {};
          int64_t k = 0;
          for (; k + 16 <= K; k += 16)
            for (int j = 0; j < 16; ++j) acc[j] += x[k + j] * wr[k + j];
          float s = 0;
          for (; k < K; ++k) s += x[k] * wr[k];
          for (int j = 0; j < 16; ++j) s += acc[j];
          y[r] = s;
        }
      }
    }
  });
}

}  // namespace hxq
