// AVX-512 kernels (F, BW, VL, DQ, VBMI; compiled with those flags, only called after run-time
// detection): streaming matvec for dense and HXQ weights, packing and the 12x32 FMA micro-kernel.
// GCC 12 reports false 'uninitialized' warnings inside its own AVX-512 headers (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/byte_table_avx512.h"
#include "kernels/dispatch.h"

namespace hxq::detail {

namespace {

constexpr int kMR = 12, kNR = 32;
// Decode kernels read R rows of W at once and prefetch (into L2) the same columns of the next R
// rows: R concurrent 4 KiB-apart streams defeat the hardware prefetcher otherwise (measured:
// BF16 T=4 matvec 14 -> 22 GB/s on one Zen 4 core).
constexpr int kDenseRows = 4;

// ---------------------------------------------------------------------------------------------
// Decode regime

// Row stride of Xp: K rounded up to 64 (zero padded), plus 16 floats so that the TT rows of Xp
// (and W rows with power-of-two K) do not all map to the same L1 sets.
int64_t decode_kp(int64_t K) { return (K + 63) / 64 * 64 + 16; }

// Xp rows are padded with zeros to decode_kp(K). BF16 weights are expanded as (even, odd)
// halves of 32-element blocks, HXQ weights in the lane order of the byte-plane unpacking below.
void decode_prep_x(const float* X, int64_t T, int64_t K, DType wdt, bool hxq, float* Xp) {
  const int64_t kp = (K + 63) / 64 * 64;
  for (int64_t t = 0; t < T; ++t) {
    const float* x = X + t * K;
    float* d = Xp + t * decode_kp(K);
    auto at = [&](int64_t k) { return k < K ? x[k] : 0.0f; };
    if (hxq) {
      for (int64_t b = 0; b < kp; b += 64)
        for (int j = 0; j < 4; ++j)
          for (int L = 0; L < 4; ++L)
            for (int i = 0; i < 4; ++i) d[b + 16 * j + 4 * L + i] = at(b + 16 * L + 4 * j + i);
    } else if (wdt == DType::BF16) {
      for (int64_t b = 0; b < kp; b += 32)
        for (int i = 0; i < 16; ++i) {
          d[b + i] = at(b + 2 * i);
          d[b + 16 + i] = at(b + 2 * i + 1);
        }
    } else {
      std::memcpy(d, x, size_t(K) * sizeof(float));
      std::fill(d + K, d + kp, 0.0f);
    }
  }
}

// Weight loaders: kStep weights of one row expand into kVecs float vectors, matching Xp.
struct LoadF32 {
  static constexpr int kStep = 16, kVecs = 1;
  const float* w;
  int64_t stride;
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  void full(int64_t k, __m512* v) const { v[0] = _mm512_loadu_ps(w + k); }
  void tail(int64_t k, int64_t rem, __m512* v) const {
    v[0] = _mm512_maskz_loadu_ps(__mmask16((1u << rem) - 1), w + k);
  }
};

struct LoadF16 {
  static constexpr int kStep = 16, kVecs = 1;
  const uint16_t* w;
  int64_t stride;
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  void full(int64_t k, __m512* v) const {
    v[0] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
  }
  void tail(int64_t k, int64_t rem, __m512* v) const {
    v[0] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16((1u << rem) - 1), w + k));
  }
};

// 32 BF16 values: the low halves of the 16 dwords are the even elements, the high halves the odd.
struct LoadBF16 {
  static constexpr int kStep = 32, kVecs = 2;
  const uint16_t* w;
  int64_t stride;
  static void expand(__m512i v, __m512* out) {
    out[0] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    out[1] = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
  }
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  void full(int64_t k, __m512* v) const { expand(_mm512_loadu_si512(w + k), v); }
  void tail(int64_t k, int64_t rem, __m512* v) const {
    expand(_mm512_maskz_loadu_epi16(__mmask32((uint64_t(1) << rem) - 1), w + k), v);
  }
};

// HXQ: 64 indices are looked up in four byte planes of the codebook (plane p holds byte p of
// every entry; byte_table_avx512.h), then the planes are interleaved into 4 vectors of exact
// float32 codebook values. Lane order: vector j, 128-bit lane L, dword i holds weight
// 16L + 4j + i (decode_prep_x permutes X the same way).
struct HxqTables {
  __m512i t[4][4];
  explicit HxqTables(const float* cb) { load_byte_planes(CodebookBytePlanes(cb), t); }
};

struct LoadHxq {
  static constexpr int kStep = 64, kVecs = 4;
  const uint8_t* w;
  int64_t stride;
  const HxqTables* tb;
  void expand(__m512i idx, __m512* v) const {
    __m512i P[4];
    for (int p = 0; p < 4; ++p) P[p] = byte_table_lookup(tb->t[p], idx);
    interleave_byte_planes(P, v);
  }
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  void full(int64_t k, __m512* v) const { expand(_mm512_loadu_si512(w + k), v); }
  // Padding lanes read index 0: a finite codebook value times the zero padding of Xp.
  void tail(int64_t k, int64_t rem, __m512* v) const {
    expand(_mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << rem) - 1), w + k), v);
  }
};

// BF16-exact codebooks (low 16 bits of every entry zero): only planes 2 and 3 are looked up
// (4 permutes instead of 8) and the low halves are zeros; same values and lane order as LoadHxq.
struct HxqTablesBf16 {
  __m512i t[2][4];
  explicit HxqTablesBf16(const float* cb) {
    alignas(64) uint8_t planes[2][256];
    for (int e = 0; e < 256; ++e) {
      uint32_t u;
      std::memcpy(&u, cb + e, 4);
      planes[0][e] = uint8_t(u >> 16);
      planes[1][e] = uint8_t(u >> 24);
    }
    for (int p = 0; p < 2; ++p)
      for (int q = 0; q < 4; ++q) t[p][q] = _mm512_load_si512(planes[p] + 64 * q);
  }
};

struct LoadHxqBf16 {
  static constexpr int kStep = 64, kVecs = 4;
  const uint8_t* w;
  int64_t stride;
  const HxqTablesBf16* tb;
  void expand(__m512i idx, __m512* v) const {
    __m512i P[2];
    for (int p = 0; p < 2; ++p) P[p] = byte_table_lookup(tb->t[p], idx);
    const __m512i z = _mm512_setzero_si512();
    const __m512i c = _mm512_unpacklo_epi8(P[0], P[1]), d = _mm512_unpackhi_epi8(P[0], P[1]);
    v[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, c));
    v[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, c));
    v[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, d));
    v[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, d));
  }
  void prefetch(int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(w + k), _MM_HINT_T1); }
  void full(int64_t k, __m512* v) const { expand(_mm512_loadu_si512(w + k), v); }
  void tail(int64_t k, int64_t rem, __m512* v) const {
    expand(_mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << rem) - 1), w + k), v);
  }
};

// R rows of W times TT rows of Xp; Y[t * ldy + r] for the R rows starting at W row 0. With one
// row of X, each (row, t) pair keeps one accumulator per vector of a step (kVecs independent FMA
// chains hide the FMA latency); with more, one accumulator each (registers run out otherwise).
// The summation order of an output never depends on R or on how rows are split over threads.
template <int R, int TT, class L>
inline void decode_tile(const L* rows, int64_t K, const float* Xp, int64_t kp, float* Y, int64_t ldy) {
  constexpr int S = L::kStep, V = L::kVecs, A = TT == 1 ? V : 1;
  __m512 acc[R][TT][A];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t)
      for (int a = 0; a < A; ++a) acc[r][t][a] = _mm512_setzero_ps();
  auto step = [&](int64_t k, const __m512* w, int r) {
    for (int t = 0; t < TT; ++t)
      for (int v = 0; v < V; ++v)
        acc[r][t][v % A] = _mm512_fmadd_ps(w[v], _mm512_load_ps(Xp + t * kp + k + 16 * v), acc[r][t][v % A]);
  };
  int64_t k = 0;
  for (; k + S <= K; k += S)
    for (int r = 0; r < R; ++r) {
      rows[r].prefetch(k + R * rows[r].stride);
      __m512 w[V];
      rows[r].full(k, w);
      step(k, w, r);
    }
  if (k < K)
    for (int r = 0; r < R; ++r) {
      __m512 w[V];
      rows[r].tail(k, K - k, w);
      step(k, w, r);
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      __m512 s = acc[r][t][0];
      for (int a = 1; a < A; ++a) s = _mm512_add_ps(s, acc[r][t][a]);
      Y[t * ldy + r] = _mm512_reduce_add_ps(s);
    }
}

template <int R, class L>
inline void decode_rows_t(const L* rows, int64_t T, int64_t K, const float* Xp, int64_t kp, float* Y,
                          int64_t ldy) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) decode_tile<R, 4>(rows, K, Xp + t * kp, kp, Y + t * ldy, ldy);
  switch (T - t) {
    case 3: decode_tile<R, 3>(rows, K, Xp + t * kp, kp, Y + t * ldy, ldy); break;
    case 2: decode_tile<R, 2>(rows, K, Xp + t * kp, kp, Y + t * ldy, ldy); break;
    case 1: decode_tile<R, 1>(rows, K, Xp + t * kp, kp, Y + t * ldy, ldy); break;
    default: break;
  }
}

// Rows in groups of R (then singles); make(n) builds the loader of W row n.
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
    decode_rows<kDenseRows>([&](int64_t n) { return LoadBF16{w + n * K, K}; }, T, K, Xp, n0, n1, Y, ldy);
  } else if (wdt == DType::F16) {
    const uint16_t* w = static_cast<const uint16_t*>(W);
    decode_rows<kDenseRows>([&](int64_t n) { return LoadF16{w + n * K, K}; }, T, K, Xp, n0, n1, Y, ldy);
  } else {
    const float* w = static_cast<const float*>(W);
    decode_rows<kDenseRows>([&](int64_t n) { return LoadF32{w + n * K, K}; }, T, K, Xp, n0, n1, Y, ldy);
  }
}

constexpr int64_t kBf16MaxT = 2;

// Two rows per tile: with T = 4 and K = 4096 the four rows of Xp (64 KiB) live in L2, and one
// row per tile re-read them at ~40 B/cycle (measured 6.5 -> 8.5 G weights/s on one core).
void hxq_decode(const float* Xp, int64_t T, const HxqView& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  const int64_t K = w.cols;
  // Two planes only for T <= 2: with 3-4 rows of X per tile it measured slower than the
  // four-plane decoder (one Zen 4 core, 2048x4096: T=1 10.9 -> 13.9 GB/s, T=2 9.8 -> 11.8,
  // T=3 8.3 -> 7.2, T=4 7.0 -> 5.9). Both give bit-identical results, so this is only speed.
  if (w.codebook_bf16_exact && T <= kBf16MaxT) {
    const HxqTablesBf16 tb(w.codebook);
    decode_rows<2>([&](int64_t n) { return LoadHxqBf16{w.indices + n * K, K, &tb}; }, T, K, Xp, n0, n1, Y, ldy);
    return;
  }
  const HxqTables tb(w.codebook);
  decode_rows<2>([&](int64_t n) { return LoadHxq{w.indices + n * K, K, &tb}; }, T, K, Xp, n0, n1, Y, ldy);
}

// ---------------------------------------------------------------------------------------------
// Fast HXQ decode regime: integer dot products (VNNI) on a 16-bit form of codebook and X.
//
// The codebook becomes cb[e] ≈ z + s · u[e] with u[e] = round((cb[e] − z) / s) in [0, 65535]
// (z = min, s = (max − min) / 65535: error ≤ s/2), split into two byte planes u = 256·uh + ul.
// X is quantised per block of kQBlock columns: q = round(x / sx) in [−32639, 32639], split as
// q = 256·qh + ql with qh, ql int8 (see QuantX). For 64 indices, each plane is looked up with two
// merge-masked VPERMI2B (as the exact decoder does) and multiplied straight into int32 by
// VPDPBUSD (unsigned byte × signed byte, 4 products per lane): Σ u·q = 65536·Σ uh·qh +
// 256·(Σ uh·ql + Σ ul·qh) + Σ ul·ql — 4 permutes and 4 dot-product instructions per 64 weights
// per row of X, no unpacking (the exact decoder needs 8 permutes + 8 unpacks + 4 FMAs), which
// measured ~0.85 of one core's read bandwidth instead of ~0.5. Per block the integer sums are
// exact and are scaled into float32 accumulators. To keep those sums small (no cancellation
// between a large Σ u·q and the zero-point term), the code is re-centred, u' = u − 32768, and
// the block's 32768·Σq is removed in integers, lane by lane (QuantX::lanes):
//   y = s · Σ_b sx_b · (256 · (256·hh_b + m_b − lanes_b) + ll_b) + (z + 32768·s) · Σ_k x̂_k.
// Bounds per lane and block (kQBlock = 1024: 64 products per lane): |256·hh + m| ≤
// 64·(255·128)·258 ≈ 5.4e8 < 2^31, |lanes| ≤ 128·64·32639 ≈ 2.7e8, their difference is 64
// products of |u'| ≤ 32768 by |q| ≤ 32639 over 256: ≈ 2.7e8; |ll| ≤ 64·255·128. (1024-column
// blocks measured ~3 % faster than 512 on one core; larger ones would overflow.)

// The codebook's 16-bit form (see above); false when its range overflows float32.
bool fast_codebook(const float* cb, QuantX& q) {
  float mn = cb[0], mx = cb[0];
  for (int e = 1; e < 256; ++e) {
    mn = std::min(mn, cb[e]);
    mx = std::max(mx, cb[e]);
  }
  if (!std::isfinite(mx - mn)) return false;
  q.z = mn;
  q.s = (mx - mn) / 65535.0f;
  const float inv = q.s > 0 ? 1.0f / q.s : 0.0f;
  for (int e = 0; e < 256; ++e) {
    const float f = std::nearbyint((cb[e] - mn) * inv);
    const uint32_t u = uint32_t(std::clamp(f, 0.0f, 65535.0f));
    q.cb_lo[e] = uint8_t(u);
    q.cb_hi[e] = uint8_t(u >> 8);
  }
  return true;
}

struct HxqFastTables {
  __m512i lo[4], hi[4];
  explicit HxqFastTables(const QuantX& q) {
    for (int i = 0; i < 4; ++i) {
      lo[i] = _mm512_load_si512(q.cb_lo + 64 * i);
      hi[i] = _mm512_load_si512(q.cb_hi + 64 * i);
    }
  }
};

bool hxq_quant_x(const float* X, const float* codebook, QuantX& q) {
  if (!fast_codebook(codebook, q)) return false;
  const int64_t K = q.K;
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t t = 0; t < q.T; ++t) {
    const float* x = X + t * K;
    int8_t* hi = q.hi + t * q.kp;
    int8_t* lo = q.lo + t * q.kp;
    double sum = 0;
    for (int64_t b = 0; b < q.nb; ++b) {
      const int64_t k0 = b * kQBlock, k1 = std::min(K, k0 + kQBlock);
      // Largest |x| of the block, and whether any x is Inf or NaN (max_ps may drop NaNs, so they
      // are caught by an unordered compare against FLT_MAX in the same pass).
      __m512 m = _mm512_setzero_ps();
      __mmask16 bad = 0;
      const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
      int64_t k = k0;
      for (; k + 16 <= k1; k += 16) {
        const __m512 a = _mm512_and_ps(_mm512_loadu_ps(x + k), absmask);
        bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
        m = _mm512_max_ps(m, a);
      }
      float mx = _mm512_reduce_max_ps(m);
      for (; k < k1; ++k) {
        if (!std::isfinite(x[k])) return false;
        mx = std::max(mx, std::fabs(x[k]));
      }
      if (bad) return false;
      // Blocks whose largest |x| is below 1e-30 quantise to zero (their products are far below
      // float32 resolution of any realistic output); this keeps 32639 / mx finite.
      const float sx = mx >= 1e-30f ? mx / 32639.0f : 0.0f;
      const float inv = mx >= 1e-30f ? 32639.0f / mx : 0.0f;
      q.scale[t * q.nb + b] = sx;
      const __m512 vinv = _mm512_set1_ps(inv);
      const __m512i lim = _mm512_set1_epi32(32639), nlim = _mm512_set1_epi32(-32639);
      __m512i qs = _mm512_setzero_si512();
      int32_t* lanes = q.lanes + (t * q.nb + b) * 16;
      std::fill(lanes, lanes + 16, 0);
      alignas(64) int32_t qv[16];
      for (k = k0; k < k1; k += 16) {
        const int64_t rem = std::min<int64_t>(16, k1 - k);
        const __mmask16 mk = rem == 16 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(mk, x + k);
        __m512i qi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        qi = _mm512_min_epi32(_mm512_max_epi32(qi, nlim), lim);
        qs = _mm512_add_epi32(qs, qi);
        _mm512_store_si512(qv, qi);  // masked-off lanes are 0
        for (int j = 0; j < 4; ++j) lanes[((k - k0) % 64) / 4 + j] += 128 * (qv[4 * j] + qv[4 * j + 1] + qv[4 * j + 2] + qv[4 * j + 3]);
        const __m512i h = _mm512_srai_epi32(_mm512_add_epi32(qi, _mm512_set1_epi32(128)), 8);
        const __m512i l = _mm512_sub_epi32(qi, _mm512_slli_epi32(h, 8));
        _mm_mask_storeu_epi8(hi + k, mk, _mm512_cvtepi32_epi8(h));
        _mm_mask_storeu_epi8(lo + k, mk, _mm512_cvtepi32_epi8(l));
      }
      sum += double(sx) * double(_mm512_reduce_add_epi32(qs));
    }
    std::memset(hi + K, 0, size_t(q.kp - K));
    std::memset(lo + K, 0, size_t(q.kp - K));
    q.sum[t] = sum;
  }
  return true;
}

// R rows of W (indices w + r·K) against TT rows of q; Y[t·ldy + r]. Registers: R·TT·3 integer
// accumulators (the two middle products share one: measured as fast as separate ones at T = 1)
// + R·TT float accumulators + 8 table registers.
template <int R, int TT>
inline void fast_tile(const uint8_t* w, int64_t K, const QuantX& q, const HxqFastTables& tb, float* Y, int64_t ldy) {
  // Prefetch (into L2) the rows two tiles ahead: with one tile ahead the row streams start too
  // late (measured in a one-core prototype, 8512×2048, T = 1: 18.7 → 24.1 GB/s).
  constexpr int64_t kAhead = 2 * R;
  __m512 f[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) f[r][t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < q.nb; ++b) {
    const int64_t k0 = b * kQBlock, k1 = std::min(K, k0 + kQBlock);
    __m512i hh[R][TT], mid[R][TT], ll[R][TT];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) hh[r][t] = mid[r][t] = ll[r][t] = _mm512_setzero_si512();
    for (int64_t k = k0; k < k1; k += 64) {
      const int64_t rem = k1 - k;
      for (int r = 0; r < R; ++r) {
        const uint8_t* wr = w + r * K + k;
        _mm_prefetch(reinterpret_cast<const char*>(wr + kAhead * K), _MM_HINT_T1);
        // Past K: index 0 against the zero padding of q.
        const __m512i idx = rem >= 64 ? _mm512_loadu_si512(wr) : _mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << rem) - 1), wr);
        const __m512i ul = byte_table_lookup(tb.lo, idx), uh = byte_table_lookup(tb.hi, idx);
        for (int t = 0; t < TT; ++t) {
          const __m512i xh = _mm512_load_si512(q.hi + t * q.kp + k), xl = _mm512_load_si512(q.lo + t * q.kp + k);
          hh[r][t] = _mm512_dpbusd_epi32(hh[r][t], uh, xh);
          mid[r][t] = _mm512_dpbusd_epi32(mid[r][t], uh, xl);
          mid[r][t] = _mm512_dpbusd_epi32(mid[r][t], ul, xh);
          ll[r][t] = _mm512_dpbusd_epi32(ll[r][t], ul, xl);
        }
      }
    }
    for (int t = 0; t < TT; ++t) {
      const float sxf = q.scale[t * q.nb + b];
      const __m512 sx = _mm512_set1_ps(sxf), sx256 = _mm512_set1_ps(256.0f * sxf);
      const __m512i lanes = _mm512_load_si512(q.lanes + (t * q.nb + b) * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i a = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(hh[r][t], 8), mid[r][t]), lanes);
        f[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), sx256, f[r][t]);
        f[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ll[r][t]), sx, f[r][t]);
      }
    }
  }
  const double zc = double(q.z) + 32768.0 * double(q.s);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) Y[t * ldy + r] = float(double(q.s) * double(_mm512_reduce_add_ps(f[r][t])) + zc * q.sum[t]);
}

template <int R, int TT>
inline void fast_rows(const QuantX& q, const HxqView& w, const HxqFastTables& tb, int64_t n0, int64_t n1, float* Y,
                      int64_t ldy) {
  const int64_t K = w.cols;
  int64_t n = n0;
  for (; n + R <= n1; n += R) fast_tile<R, TT>(w.indices + n * K, K, q, tb, Y + n, ldy);
  for (; n < n1; ++n) fast_tile<1, TT>(w.indices + n * K, K, q, tb, Y + n, ldy);
}

void hxq_decode_fast(const QuantX& q, const HxqView& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  const HxqFastTables tb(q);
  switch (q.T) {
    case 1: fast_rows<2, 1>(q, w, tb, n0, n1, Y, ldy); break;
    case 2: fast_rows<2, 2>(q, w, tb, n0, n1, Y, ldy); break;
    case 3: fast_rows<1, 3>(q, w, tb, n0, n1, Y, ldy); break;
    case 4: fast_rows<1, 4>(q, w, tb, n0, n1, Y, ldy); break;
    default: break;
  }
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

// In-register transpose of a 16x16 float block: r[i] = row i in, column i out.
inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int a = 0; a < 8; ++a) {
    t[2 * a] = _mm512_unpacklo_ps(r[2 * a], r[2 * a + 1]);
    t[2 * a + 1] = _mm512_unpackhi_ps(r[2 * a], r[2 * a + 1]);
  }
  __m512 s[16];
  for (int b = 0; b < 4; ++b) {
    s[4 * b + 0] = _mm512_shuffle_ps(t[4 * b], t[4 * b + 2], 0x44);
    s[4 * b + 1] = _mm512_shuffle_ps(t[4 * b], t[4 * b + 2], 0xee);
    s[4 * b + 2] = _mm512_shuffle_ps(t[4 * b + 1], t[4 * b + 3], 0x44);
    s[4 * b + 3] = _mm512_shuffle_ps(t[4 * b + 1], t[4 * b + 3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(s[j], s[4 + j], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(s[j], s[4 + j], 0xee);
    const __m512 v2 = _mm512_shuffle_f32x4(s[8 + j], s[12 + j], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(s[8 + j], s[12 + j], 0xee);
    r[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
    r[8 + j] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
  }
}

// Packs rows n0 .. n0+n-1 into dst[k * 32 + r] through 16x16 transposes; load(row, k, rem)
// returns 16 floats of a row starting at column k (rem < 16: only rem valid, rest zero).
template <class Load>
inline void pack_panel(int64_t K, int64_t n, float* dst, Load load) {
  for (int64_t rb = 0; rb < kNR; rb += 16) {
    for (int64_t k = 0; k < K; k += 16) {
      const int64_t rem = std::min<int64_t>(16, K - k);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = rb + i < n ? load(rb + i, k, rem) : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t c = 0; c < rem; ++c) _mm512_store_ps(dst + (k + c) * kNR + rb, r[c]);
    }
  }
}

void dense_pack_w(const void* W, DType wdt, int64_t K, int64_t n0, int64_t n, float* dst) {
  if (wdt == DType::BF16) {
    const uint16_t* w = static_cast<const uint16_t*>(W) + n0 * K;
    pack_panel(K, n, dst, [&](int64_t r, int64_t k, int64_t rem) {
      const __m256i h = rem == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k))
                                  : _mm256_maskz_loadu_epi16(__mmask16((1u << rem) - 1), w + r * K + k);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    });
  } else if (wdt == DType::F16) {
    const uint16_t* w = static_cast<const uint16_t*>(W) + n0 * K;
    pack_panel(K, n, dst, [&](int64_t r, int64_t k, int64_t rem) {
      const __m256i h = rem == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k))
                                  : _mm256_maskz_loadu_epi16(__mmask16((1u << rem) - 1), w + r * K + k);
      return _mm512_cvtph_ps(h);
    });
  } else {
    const float* w = static_cast<const float*>(W) + n0 * K;
    pack_panel(K, n, dst, [&](int64_t r, int64_t k, int64_t rem) {
      return rem == 16 ? _mm512_loadu_ps(w + r * K + k) : _mm512_maskz_loadu_ps(__mmask16((1u << rem) - 1), w + r * K + k);
    });
  }
}

// HXQ panels: 64 indices per row decode (VBMI, see LoadHxq) into a 16-row scratch block whose
// vector j holds columns k0 + 16L + 4j + i (lane 4L + i); each vector j of the 16 rows is then
// transposed and its lane c stored at column k0 + 16(c / 4) + 4j + c % 4.
void hxq_pack_w(const HxqView& wv, int64_t n0, int64_t n, float* dst) {
  const int64_t K = wv.cols;
  const uint8_t* w = wv.indices + n0 * K;
  const HxqTables tb(wv.codebook);
  alignas(64) float tmp[16][64];
  for (int64_t rb = 0; rb < kNR; rb += 16) {
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      const int64_t rem = std::min<int64_t>(64, K - k0);
      for (int i = 0; i < 16; ++i) {
        __m512 v[4];
        if (rb + i < n) {
          LoadHxq row{w + (rb + i) * K, K, &tb};
          if (rem == 64) row.full(k0, v);
          else row.tail(k0, rem, v);
        } else {
          v[0] = v[1] = v[2] = v[3] = _mm512_setzero_ps();
        }
        for (int j = 0; j < 4; ++j) _mm512_store_ps(tmp[i] + 16 * j, v[j]);
      }
      for (int j = 0; j < 4; ++j) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(tmp[i] + 16 * j);
        transpose16(r);
        for (int c = 0; c < 16; ++c) {
          const int64_t k = k0 + 16 * (c >> 2) + 4 * j + (c & 3);
          if (k < K) _mm512_store_ps(dst + k * kNR + rb, r[c]);
        }
      }
    }
  }
}

template <int M>
void micro_t(const float* A, const float* B, int64_t kc, float* C, int64_t ldc, int n, bool accumulate) {
  __m512 c0[M], c1[M];
  for (int m = 0; m < M; ++m) c0[m] = c1[m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(B + k * kNR), b1 = _mm512_load_ps(B + k * kNR + 16);
    for (int m = 0; m < M; ++m) {
      const __m512 a = _mm512_set1_ps(A[k * kMR + m]);
      c0[m] = _mm512_fmadd_ps(a, b0, c0[m]);
      c1[m] = _mm512_fmadd_ps(a, b1, c1[m]);
    }
  }
  const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  const __mmask16 m1 = n >= 32 ? __mmask16(0xffff) : n > 16 ? __mmask16((1u << (n - 16)) - 1) : __mmask16(0);
  for (int m = 0; m < M; ++m) {
    float* c = C + m * ldc;
    if (accumulate) {
      c0[m] = _mm512_add_ps(c0[m], _mm512_maskz_loadu_ps(m0, c));
      c1[m] = _mm512_add_ps(c1[m], _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, c0[m]);
    _mm512_mask_storeu_ps(c + 16, m1, c1[m]);
  }
}

void micro(const float* A, const float* B, int64_t kc, float* C, int64_t ldc, int m, int n, bool accumulate) {
  switch (m) {
    case 12: return micro_t<12>(A, B, kc, C, ldc, n, accumulate);
    case 11: return micro_t<11>(A, B, kc, C, ldc, n, accumulate);
    case 10: return micro_t<10>(A, B, kc, C, ldc, n, accumulate);
    case 9: return micro_t<9>(A, B, kc, C, ldc, n, accumulate);
    case 8: return micro_t<8>(A, B, kc, C, ldc, n, accumulate);
    case 7: return micro_t<7>(A, B, kc, C, ldc, n, accumulate);
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
  __m512i acc[8];
  for (auto& a : acc) a = _mm512_setzero_si512();
  size_t i = 0;
  // Software prefetch into L2 8 KiB ahead, as the streaming kernels do: the baseline must not
  // be below what the kernels themselves can pull (measured +5-10% on one core).
  for (; i + 512 <= bytes; i += 512) {
    for (int j = 0; j < 8; ++j) _mm_prefetch(c + i + 8192 + 64 * j, _MM_HINT_T1);
    for (int j = 0; j < 8; ++j) acc[j] = _mm512_add_epi64(acc[j], _mm512_loadu_si512(c + i + 64 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm512_add_epi64(acc[0], acc[j]);
  alignas(64) uint64_t lanes[8];  // (_mm512_reduce_add_epi64 adds signed: overflow is UB)
  _mm512_store_si512(lanes, acc[0]);
  uint64_t s = 0;
  for (uint64_t l : lanes) s += l;
  for (; i < bytes; ++i) s += uint8_t(c[i]);
  return s;
}

double fma_loop(int64_t iters) {
  constexpr int A = 12;  // independent chains: > FMA latency x FMA issue rate
  __m512 acc[A];
  for (int j = 0; j < A; ++j) acc[j] = _mm512_set1_ps(float(j));
  const __m512 mul = _mm512_set1_ps(0.999999f), add = _mm512_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < A; ++j) acc[j] = _mm512_fmadd_ps(acc[j], mul, add);
  __m512 s = acc[0];
  for (int j = 1; j < A; ++j) s = _mm512_add_ps(s, acc[j]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return double(iters) * A * 16 * 2;
}

}  // namespace

const KernelSet& kernels_avx512() {
  static const KernelSet ks{decode_kp, decode_prep_x, dense_decode, hxq_decode, kMR, kNR, pack_x,
                            dense_pack_w, hxq_pack_w, micro, read_sum, fma_loop, hxq_quant_x,
                            hxq_decode_fast};
  return ks;
}

}  // namespace hxq::detail
