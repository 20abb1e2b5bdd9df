// AVX2 + FMA + F16C kernels (compiled with those flags, only called after run-time detection):
// streaming matvec for dense and HXQ (codebook lookups) weights, packing and a 6x16 micro-kernel.
// GCC 12 reports false 'uninitialized' warnings inside its own AVX-512 headers (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/dispatch.h"
#include "kernels/transpose_avx2.h"

namespace hxq::detail {

namespace {

constexpr int kMR = 6, kNR = 16;

// ---------------------------------------------------------------------------------------------
// Decode regime

// Row stride of Xp: K rounded up to 16 (zero padded), plus 16 floats so that the rows of Xp do
// not all map to the same L1 sets when K is a power of two.
int64_t decode_kp(int64_t K) { return (K + 15) / 16 * 16 + 16; }

// Xp rows are zero padded to decode_kp(K); BF16 weights expand as (even, odd) halves of
// 16-element blocks, so X is permuted the same way.
void decode_prep_x(const float* X, int64_t T, int64_t K, DType wdt, bool hxq, float* Xp) {
  const int64_t kp = (K + 15) / 16 * 16;
  for (int64_t t = 0; t < T; ++t) {
    const float* x = X + t * K;
    float* d = Xp + t * decode_kp(K);
    auto at = [&](int64_t k) { return k < K ? x[k] : 0.0f; };
    if (!hxq && wdt == DType::BF16) {
      for (int64_t b = 0; b < kp; b += 16)
        for (int i = 0; i < 8; ++i) {
          d[b + i] = at(b + 2 * i);
          d[b + 8 + i] = at(b + 2 * i + 1);
        }
    } else {
      std::memcpy(d, x, size_t(K) * sizeof(float));
      std::fill(d + K, d + kp, 0.0f);
    }
  }
}

// Loaders: 16 weights of a row -> 2 float vectors. Tails go through a zero-padded copy.
template <class E>
struct Tail16 {
  alignas(32) E buf[16];
  Tail16(const E* src, int64_t rem) {
    std::memset(buf, 0, sizeof(buf));
    std::memcpy(buf, src, size_t(rem) * sizeof(E));
  }
};

struct LoadF32 {
  const float* w;
  int64_t stride;
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  static void at(const float* p, __m256* v) {
    v[0] = _mm256_loadu_ps(p);
    v[1] = _mm256_loadu_ps(p + 8);
  }
  void full(int64_t k, __m256* v) const { at(w + k, v); }
  void tail(int64_t k, int64_t rem, __m256* v) const { at(Tail16<float>(w + k, rem).buf, v); }
};

struct LoadF16 {
  const uint16_t* w;
  int64_t stride;
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  static void at(const uint16_t* p, __m256* v) {
    v[0] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    v[1] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  }
  void full(int64_t k, __m256* v) const { at(w + k, v); }
  void tail(int64_t k, int64_t rem, __m256* v) const { at(Tail16<uint16_t>(w + k, rem).buf, v); }
};

struct LoadBF16 {
  const uint16_t* w;
  int64_t stride;
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  static void at(const uint16_t* p, __m256* v) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    v[0] = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    v[1] = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xffff0000u))));
  }
  void full(int64_t k, __m256* v) const { at(w + k, v); }
  void tail(int64_t k, int64_t rem, __m256* v) const { at(Tail16<uint16_t>(w + k, rem).buf, v); }
};

// HXQ: codebook lookups (padding indices are 0: a finite value times zero-padded X).
struct LoadHxq {
  const uint8_t* w;
  int64_t stride;
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  const float* cb;
  // Scalar table loads assembled into vectors: 3x faster than VPGATHERDD on Zen 4 (4.8 vs 1.5
  // G weights/s on one core, in cache).
  void at(const uint8_t* p, __m256* v) const {
    uint64_t lo, hi;
    std::memcpy(&lo, p, 8);
    std::memcpy(&hi, p + 8, 8);
    auto f = [&](uint64_t q, int i) { return cb[(q >> (8 * i)) & 0xff]; };
    v[0] = _mm256_setr_ps(f(lo, 0), f(lo, 1), f(lo, 2), f(lo, 3), f(lo, 4), f(lo, 5), f(lo, 6), f(lo, 7));
    v[1] = _mm256_setr_ps(f(hi, 0), f(hi, 1), f(hi, 2), f(hi, 3), f(hi, 4), f(hi, 5), f(hi, 6), f(hi, 7));
  }
  void full(int64_t k, __m256* v) const { at(w + k, v); }
  void tail(int64_t k, int64_t rem, __m256* v) const { at(Tail16<uint8_t>(w + k, rem).buf, v); }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

template <int R, int TT, class L>
inline void decode_tile(const L* rows, int64_t K, const float* Xp, int64_t kp, float* Y, int64_t ldy) {
  __m256 acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  auto step = [&](int64_t k, bool full) {
    for (int r = 0; r < R; ++r) {
      __m256 w[2];
      if (full) {
        rows[r].prefetch(k + R * rows[r].stride);  // the next R rows (see kernels_avx512.cpp)
        rows[r].full(k, w);
      } else {
        rows[r].tail(k, K - k, w);
      }
      for (int t = 0; t < TT; ++t) {
        acc[r][t] = _mm256_fmadd_ps(w[0], _mm256_load_ps(Xp + t * kp + k), acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(w[1], _mm256_load_ps(Xp + t * kp + k + 8), acc[r][t]);
      }
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) step(k, true);
  if (k < K) step(k, false);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) Y[t * ldy + r] = hsum(acc[r][t]);
}

template <int R, class L>
inline void decode_rows_t(const L* rows, int64_t T, int64_t K, const float* Xp, int64_t kp, float* Y,
                          int64_t ldy) {
  int64_t t = 0;
  for (; t + 3 <= T; t += 3) decode_tile<R, 3>(rows, K, Xp + t * kp, kp, Y + t * ldy, ldy);
  switch (T - t) {
    case 2: decode_tile<R, 2>(rows, K, Xp + t * kp, kp, Y + t * ldy, ldy); break;
    case 1: decode_tile<R, 1>(rows, K, Xp + t * kp, kp, Y + t * ldy, ldy); break;
    default: break;
  }
}

template <int R, class Make>
inline void decode_rows(Make make, int64_t T, int64_t K, const float* Xp, int64_t n0, int64_t n1, float* Y,
                        int64_t ldy) {
  const int64_t kp = decode_kp(K);
  using L = decltype(make(int64_t(0)));
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    L rows[R];
    for (int r = 0; r < R; ++r) rows[r] = make(n + r);
    decode_rows_t<R>(rows, T, K, Xp, kp, Y + n, ldy);
  }
  for (; n < n1; ++n) {
    L row = make(n);
    decode_rows_t<1>(&row, T, K, Xp, kp, Y + n, ldy);
  }
}

void dense_decode(const float* Xp, int64_t T, int64_t K, const void* W, DType wdt, int64_t n0, int64_t n1,
                  float* Y, int64_t ldy) {
  if (wdt == DType::BF16) {
    const uint16_t* w = static_cast<const uint16_t*>(W);
    decode_rows<4>([&](int64_t n) { return LoadBF16{w + n * K, K}; }, T, K, Xp, n0, n1, Y, ldy);
  } else if (wdt == DType::F16) {
    const uint16_t* w = static_cast<const uint16_t*>(W);
    decode_rows<4>([&](int64_t n) { return LoadF16{w + n * K, K}; }, T, K, Xp, n0, n1, Y, ldy);
  } else {
    const float* w = static_cast<const float*>(W);
    decode_rows<4>([&](int64_t n) { return LoadF32{w + n * K, K}; }, T, K, Xp, n0, n1, Y, ldy);
  }
}

void hxq_decode(const float* Xp, int64_t T, const HxqView& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  const int64_t K = w.cols;
  decode_rows<2>([&](int64_t n) { return LoadHxq{w.indices + n * K, K, w.codebook}; }, T, K, Xp, n0, n1, Y, ldy);
}

// ---------------------------------------------------------------------------------------------
// Prefill regime

void pack_x(const float* X, int64_t ldx, int64_t m, int64_t K, float* dst) {
  for (int64_t k = 0; k < K; ++k) {
    float* d = dst + k * kMR;
    int64_t i = 0;
    for (; i < m; ++i) d[i] = X[i * ldx + k];
    for (; i < kMR; ++i) d[i] = 0.0f;
  }
}

// Packs rows n0 .. n0+n-1 into dst[k * 16 + r] through 8x8 transposes; load(row, k, rem) returns
// 8 floats of a row from column k (rem < 8: only rem valid, rest zero).
template <class Load>
inline void pack_panel(int64_t K, int64_t n, float* dst, Load load) {
  for (int64_t rb = 0; rb < kNR; rb += 8) {
    for (int64_t k = 0; k < K; k += 8) {
      const int64_t rem = std::min<int64_t>(8, K - k);
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = rb + i < n ? load(rb + i, k, rem) : _mm256_setzero_ps();
      transpose8(r);
      for (int64_t c = 0; c < rem; ++c) _mm256_store_ps(dst + (k + c) * kNR + rb, r[c]);
    }
  }
}

template <class E>
inline const E* tail8(const E* p, int64_t rem, E* buf) {
  if (rem == 8) return p;
  std::memset(buf, 0, 8 * sizeof(E));
  std::memcpy(buf, p, size_t(rem) * sizeof(E));
  return buf;
}

void dense_pack_w(const void* W, DType wdt, int64_t K, int64_t n0, int64_t n, float* dst) {
  if (wdt == DType::BF16 || wdt == DType::F16) {
    const uint16_t* w = static_cast<const uint16_t*>(W) + n0 * K;
    const bool bf = wdt == DType::BF16;
    pack_panel(K, n, dst, [&](int64_t r, int64_t k, int64_t rem) {
      alignas(16) uint16_t buf[8];
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tail8(w + r * K + k, rem, buf)));
      return bf ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
    });
  } else {
    const float* w = static_cast<const float*>(W) + n0 * K;
    pack_panel(K, n, dst, [&](int64_t r, int64_t k, int64_t rem) {
      alignas(32) float buf[8];
      return _mm256_loadu_ps(tail8(w + r * K + k, rem, buf));
    });
  }
}

void hxq_pack_w(const HxqView& wv, int64_t n0, int64_t n, float* dst) {
  const int64_t K = wv.cols;
  const uint8_t* w = wv.indices + n0 * K;
  pack_panel(K, n, dst, [&](int64_t r, int64_t k, int64_t rem) {
    alignas(8) uint8_t buf[8];
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(tail8(w + r * K + k, rem, buf)));
    return _mm256_i32gather_ps(wv.codebook, _mm256_cvtepu8_epi32(b), 4);
  });
}

// Accumulators are only ever indexed by unrolled constants (GCC otherwise keeps the arrays in
// memory and stores them every k step: 40% -> 86% of one Zen 4 core's peak, T = 512).
template <int M>
void micro_t(const float* A, const float* B, int64_t kc, float* C, int64_t ldc, int n, bool accumulate) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) c0[m] = c1[m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(B + k * kNR), b1 = _mm256_load_ps(B + k * kNR + 8);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m256 a = _mm256_broadcast_ss(A + k * kMR + m);
      c0[m] = _mm256_fmadd_ps(a, b0, c0[m]);
      c1[m] = _mm256_fmadd_ps(a, b1, c1[m]);
    }
  }
  if (n == kNR) {
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      float* c = C + m * ldc;
      if (accumulate) {
        c0[m] = _mm256_add_ps(c0[m], _mm256_loadu_ps(c));
        c1[m] = _mm256_add_ps(c1[m], _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, c0[m]);
      _mm256_storeu_ps(c + 8, c1[m]);
    }
    return;
  }
  alignas(32) float tmp[M][16];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    _mm256_store_ps(tmp[m], c0[m]);
    _mm256_store_ps(tmp[m] + 8, c1[m]);
  }
  for (int m = 0; m < M; ++m) {
    float* c = C + m * ldc;
    for (int j = 0; j < n; ++j) c[j] = accumulate ? c[j] + tmp[m][j] : tmp[m][j];
  }
}

void micro(const float* A, const float* B, int64_t kc, float* C, int64_t ldc, int m, int n, bool accumulate) {
  switch (m) {
    case 6: return micro_t<6>(A, B, kc, C, ldc, n, accumulate);
    case 5: return micro_t<5>(A, B, kc, C, ldc, n, accumulate);
    case 4: return micro_t<4>(A, B, kc, C, ldc, n, accumulate);
    case 3: return micro_t<3>(A, B, kc, C, ldc, n, accumulate);
    case 2: return micro_t<2>(A, B, kc, C, ldc, n, accumulate);
    default: return micro_t<1>(A, B, kc, C, ldc, n, accumulate);
  }
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers

uint64_t read_sum(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  __m256i acc[8];
  for (auto& a : acc) a = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    for (int j = 0; j < 4; ++j) _mm_prefetch(c + i + 8192 + 64 * j, _MM_HINT_T1);  // see kernels_avx512.cpp
    for (int j = 0; j < 8; ++j)
      acc[j] = _mm256_add_epi64(acc[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 32 * j)));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm256_add_epi64(acc[0], acc[j]);
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[0]);
  uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < bytes; ++i) s += uint8_t(c[i]);
  return s;
}

double fma_loop(int64_t iters) {
  constexpr int A = 12;  // independent chains: > FMA latency x FMA issue rate
  __m256 acc[A];
  for (int j = 0; j < A; ++j) acc[j] = _mm256_set1_ps(float(j));
  const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < A; ++j) acc[j] = _mm256_fmadd_ps(acc[j], mul, add);
  __m256 s = acc[0];
  for (int j = 1; j < A; ++j) s = _mm256_add_ps(s, acc[j]);
  volatile float sink = hsum(s);
  (void)sink;
  return double(iters) * A * 8 * 2;
}

}  // namespace

const KernelSet& kernels_avx2() {
  static const KernelSet ks{decode_kp, decode_prep_x, dense_decode, hxq_decode, kMR, kNR, pack_x,
                            dense_pack_w, hxq_pack_w, micro, read_sum, fma_loop, nullptr, nullptr};
  return ks;
}

}  // namespace hxq::detail
