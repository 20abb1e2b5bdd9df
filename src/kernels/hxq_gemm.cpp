#include "kernels/hxq_gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/cpu_features.h"
#include "kernels/dispatch.h"
#include "kernels/sidecar.h"

namespace hxq {

namespace {

using detail::add_sidecar;
using detail::sidecar_col;
using detail::sidecar_range;

// The portable reference: decodes 16 rows at a time (codebook + sidecar) into float32.
void gemm_hxq_scalar(const float* X, int64_t T, const HxqView& w, float* Y) {
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
        if (w.sc_row_ptr) {
          int64_t e0, e1;
          sidecar_range(w, r, e0, e1);
          for (int64_t e = e0; e < e1; ++e) dst[sidecar_col(w, e, r)] += w.sc_delta[e];
        }
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

}  // namespace

namespace {

int math_from_env() {
  const char* e = std::getenv("HXQ_EXACT");
  return e && std::strcmp(e, "1") == 0 ? int(HxqMath::Exact) : int(HxqMath::Fast);
}
std::atomic<int>& default_math() {
  static std::atomic<int> m{math_from_env()};
  return m;
}
thread_local int scoped_math = -1;

// The fast decode regime; false when it does not apply (the caller takes the exact path).
bool gemm_hxq_fast(const detail::KernelSet& ks, const float* X, int64_t T, const HxqView& w, float* Y) {
  const int64_t K = w.cols, N = w.rows;
  if (!ks.hxq_decode_fast || T > 4 || hxq_math() != HxqMath::Fast || !cpu_features().avx512vnni) return false;
  // (A local, not thread_local: the pool's workers must see this thread's object.)
  detail::QuantX q;
  q.T = T;
  q.K = K;
  q.kp = (K + 63) / 64 * 64;
  q.nb = (K + detail::kQBlock - 1) / detail::kQBlock;
  // One 64-byte aligned buffer: lanes, hi, lo, scale, sum.
  thread_local detail::AlignedFloats buf;
  const int64_t lanes_f = T * q.nb * 16, planes_f = T * q.kp / 4, scale_f = T * q.nb, sum_f = 2 * T;
  float* base = buf.get(size_t(lanes_f + 2 * planes_f + scale_f + sum_f + 16));
  q.lanes = reinterpret_cast<int32_t*>(base);
  q.hi = reinterpret_cast<int8_t*>(base + lanes_f);
  q.lo = reinterpret_cast<int8_t*>(base + lanes_f + planes_f);
  q.scale = base + lanes_f + 2 * planes_f;
  q.sum = reinterpret_cast<double*>(base + lanes_f + 2 * planes_f + scale_f + (scale_f & 1));
  if (!ks.hxq_quant_x(X, w.codebook, q)) return false;
  int64_t grain = std::max<int64_t>(16, (int64_t(256) << 10) / std::max<int64_t>(1, K));
  grain = (grain + 15) / 16 * 16;
  detail::dynamic_for(N, grain, [&](int64_t n0, int64_t n1) {
    ks.hxq_decode_fast(q, w, n0, n1, Y, N);
    add_sidecar(X, T, w, n0, n1, Y);
  });
  return true;
}

}  // namespace

HxqMath hxq_math() { return HxqMath(scoped_math >= 0 ? scoped_math : default_math().load(std::memory_order_relaxed)); }
void set_hxq_math(HxqMath m) { default_math().store(int(m), std::memory_order_relaxed); }
HxqMathScope::HxqMathScope(HxqMath m) : saved_(scoped_math) { scoped_math = int(m); }
HxqMathScope::~HxqMathScope() { scoped_math = saved_; }

bool hxq_fast_available() {
  const detail::KernelSet* ks = detail::active_kernels();
  return ks && ks->hxq_decode_fast && cpu_features().avx512vnni;
}

bool codebook_is_bf16_exact(const float* cb, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, cb + i, 4);
    if (u & 0xffffu) return false;
  }
  return true;
}

void gemm_hxq(const float* X, int64_t T, const HxqView& w, float* Y) {
  const int64_t K = w.cols, N = w.rows;
  if (T < 0 || K < 0 || N < 0) fail("gemm_hxq: negative shape T={} K={} N={}", T, K, N);
  if (T == 0 || N == 0) return;
  if (K > 0 && (!w.codebook || !w.indices)) fail("gemm_hxq: view without codebook or indices");
  if (K == 0) {
    std::fill(Y, Y + T * N, 0.0f);
    return;
  }
  const detail::KernelSet* ks = detail::active_kernels();
  if (!ks) return gemm_hxq_scalar(X, T, w, Y);
  if (detail::use_decode(T, K, true)) {
    // The fast kernel takes up to 4 rows of X per pass over W; more rows run in blocks of 4 (each
    // row quantised on its own: its result does not depend on the rows beside it). A block it
    // declines (non-finite X, exact math) and the rows after it take the exact path.
    int64_t t0 = 0;
    for (; t0 < T; t0 += 4)
      if (!gemm_hxq_fast(*ks, X + t0 * K, std::min<int64_t>(4, T - t0), w, Y + t0 * N)) break;
    if (t0 >= T) return;
    X += t0 * K;
    Y += t0 * N;
    T -= t0;
    detail::decode_driver(*ks, X, T, K, DType::U8, true, N, K, [&](const float* Xp, int64_t n0, int64_t n1) {
      ks->hxq_decode(Xp, T, w, n0, n1, Y, N);
      add_sidecar(X, T, w, n0, n1, Y);
    });
    return;
  }
  const int64_t NR = ks->nr;
  detail::prefill_driver(*ks, X, T, K, N, [&](int64_t n0, int64_t n, float* dst) {
    ks->hxq_pack_w(w, n0, n, dst);
    if (!w.sc_row_ptr) return;
    for (int64_t r = n0; r < n0 + n; ++r) {
      int64_t e0, e1;
      sidecar_range(w, r, e0, e1);
      for (int64_t e = e0; e < e1; ++e) dst[sidecar_col(w, e, r) * NR + (r - n0)] += w.sc_delta[e];
    }
  }, Y);
}

}  // namespace hxq
