// AVX2 kernels of HXQ v2 (compiled with -mavx2 -mfma; called only where the CPU has them): a row
// of W is decoded 32 weights at a time into an L1-resident float buffer — indices unpacked to
// bytes, looked up in the codebook (in-register permutes for 16 and 32 entries, scalar loads for
// 64 and 256), multiplied by the group scale — then dotted with the T rows of X.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/row_chunks.h"
#include "kernels/sidecar.h"
#include "kernels/transpose_avx2.h"

namespace hxq::detail {

namespace {

// High-bit planes as bytes: for b = 5, byte j of the result = bit j of h at bit 4; for b = 6,
// byte j = bits 2j, 2j+1 of h at bits 4, 5. Tables over one byte of h.
struct HighBitTables {
  uint64_t b5[256];  // 8 indices per byte of h
  uint32_t b6[256];  // 4 indices per byte of h
  HighBitTables() {
    for (int v = 0; v < 256; ++v) {
      uint64_t x = 0;
      for (int j = 0; j < 8; ++j) x |= uint64_t((v >> j) & 1) << (8 * j + 4);
      b5[v] = x;
      uint32_t y = 0;
      for (int j = 0; j < 4; ++j) y |= uint32_t((v >> (2 * j)) & 3) << (8 * j + 4);
      b6[v] = y;
    }
  }
};
const HighBitTables& high_bits() {
  static const HighBitTables t;
  return t;
}

// 32 indices of a full chunk as bytes.
inline void unpack_chunk(const uint8_t* p, int bits, uint8_t* idx) {
  if (bits == 8) {
    std::memcpy(idx, p, 32);
    return;
  }
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(0x0f);
  __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
  if (bits == 5) {
    const HighBitTables& t = high_bits();
    const __m128i h0 = _mm_set_epi64x(int64_t(t.b5[p[17]]), int64_t(t.b5[p[16]]));
    const __m128i h1 = _mm_set_epi64x(int64_t(t.b5[p[19]]), int64_t(t.b5[p[18]]));
    lo = _mm_or_si128(lo, h0);
    hi = _mm_or_si128(hi, h1);
  } else if (bits == 6) {
    const HighBitTables& t = high_bits();
    const __m128i h0 = _mm_set_epi32(int(t.b6[p[19]]), int(t.b6[p[18]]), int(t.b6[p[17]]), int(t.b6[p[16]]));
    const __m128i h1 = _mm_set_epi32(int(t.b6[p[23]]), int(t.b6[p[22]]), int(t.b6[p[21]]), int(t.b6[p[20]]));
    lo = _mm_or_si128(lo, h0);
    hi = _mm_or_si128(hi, h1);
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(idx), lo);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(idx + 16), hi);
}

// Codebook lookup of 8 indices: in registers for b <= 5 (dword indices), by scalar loads for b = 6, 8.
struct Lookup {
  int bits;
  const float* cb;
  __m256 t[4];  // entries 0..31 for b <= 5
  Lookup(int b, const float* c) : bits(b), cb(c) {
    for (int i = 0; i < 4; ++i) t[i] = _mm256_setzero_ps();
    if (b <= 5)
      for (int i = 0; i < (1 << b) / 8; ++i) t[i] = _mm256_loadu_ps(c + 8 * i);
  }
  __m256 operator()(__m256i i) const {  // b = 4 or 5
    if (bits == 4) {
      const __m256 a = _mm256_permutevar8x32_ps(t[0], i), b = _mm256_permutevar8x32_ps(t[1], i);
      return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));  // bit 3
    }
    const __m256 s3 = _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)), s4 = _mm256_castsi256_ps(_mm256_slli_epi32(i, 27));
    const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[0], i), _mm256_permutevar8x32_ps(t[1], i), s3);
    const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[2], i), _mm256_permutevar8x32_ps(t[3], i), s3);
    return _mm256_blendv_ps(a, b, s4);  // bit 4
  }
  // b = 6, 8: eight scalar loads assembled into a vector (measured 3× faster than VPGATHERDD on
  // Zen 4 for the helix-format kernel, see docs/PERFORMANCE.md).
  // The 8 indices are read as one 64-bit word and split by shifts: one load per weight (the
  // table's), not two — the load ports are the limit. (VPGATHERDD measured 0.5x on Zen 3.)
  __m256 bytes(const uint8_t* ix) const {
    uint64_t q;
    std::memcpy(&q, ix, 8);
    auto f = [&](int i) { return cb[(q >> (8 * i)) & 0xff]; };
    return _mm256_setr_ps(f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7));
  }
};

// Columns [c0, c0 + n) of row r (n <= 32; the chunk starting at c0) into out.
inline void decode_chunk(const Hxq2View& w, const Lookup& lk, const uint8_t* prow, const uint8_t* codes, int64_t c0,
                         float* out) {
  alignas(32) uint8_t idx[32];
  const int64_t n = std::min<int64_t>(32, w.cols - c0);
  const uint8_t* p = prow + c0 / 32 * 4 * w.bits;
  if (n == 32) unpack_chunk(p, w.bits, idx);
  else hxq2_unpack_tail(p, n, w.bits, idx);
  const int gshift = w.group == 16 ? 4 : 5;  // group 16 or 32: a shift, not a division
  const int64_t glast = (w.cols - 1) >> gshift;
  for (int q = 0; q < 4; ++q) {
    const int64_t g = std::min<int64_t>((c0 + 8 * q) >> gshift, glast);
    const __m256 s = _mm256_set1_ps(w.scale_lut[codes[g] & 63]);
    __m256 v;
    if (w.bits >= 6) {
      v = lk.bytes(idx + 8 * q);
    } else {
      v = lk(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(idx + 8 * q))));
    }
    _mm256_storeu_ps(out + 8 * q, _mm256_mul_ps(s, v));
  }
}

inline float hsum(__m256 v) {
  const __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
}

}  // namespace

void hxq2_decode_row_avx2(const Hxq2View& w, int64_t r, float* out) {
  const Lookup lk(w.bits, w.codebook);
  const uint8_t* prow = w.indices + r * w.row_bytes();
  const uint8_t* codes = w.codes + r * w.groups();
  alignas(32) float tmp[32];
  for (int64_t c0 = 0; c0 < w.cols; c0 += 32) {
    if (c0 + 32 <= w.cols) {
      decode_chunk(w, lk, prow, codes, c0, out + c0);
    } else {
      decode_chunk(w, lk, prow, codes, c0, tmp);
      std::memcpy(out + c0, tmp, size_t(w.cols - c0) * sizeof(float));
    }
  }
}

namespace {

// Exact decode fused with the dot products (T <= 4): per chunk of 32 weights, four vectors of 8
// codebook values, their products with X summed per group, and one FMA by the group's scale
// (s · Σ c·x: the scale is applied to the partial sum, not to each weight).
template <int B, int G, int TT, int R>
void exact_tile(const float* X, int64_t K, const Hxq2View& w, const Lookup& lk, int64_t n, float* Y, int64_t ldy) {
  const int64_t rb = w.row_bytes(), ng = w.groups();
  const uint8_t* prow[R];
  const uint8_t* codes[R];
  for (int r = 0; r < R; ++r) {
    prow[r] = w.indices + (n + r) * rb;
    codes[r] = w.codes + (n + r) * ng;
  }
  __m256 acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  // One chunk of 32 columns at c0 of row r: idx = its 32 indices as bytes, xp[t] = X row t there.
  auto chunk = [&](int r, int64_t c0, const uint8_t* idx, const float* const* xp) {
    __m256 v[4];
    for (int q = 0; q < 4; ++q) {
      if constexpr (B >= 6) v[q] = lk.bytes(idx + 8 * q);
      else v[q] = lk(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(idx + 8 * q))));
    }
    if constexpr (G == 32) {
      const __m256 s = _mm256_set1_ps(w.scale_lut[codes[r][c0 >> 5] & 63]);
      for (int t = 0; t < TT; ++t) {
        const float* x = xp[t];
        const __m256 a = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + 8), _mm256_mul_ps(v[0], _mm256_loadu_ps(x)));
        const __m256 b = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(x + 24), _mm256_mul_ps(v[2], _mm256_loadu_ps(x + 16)));
        acc[r][t] = _mm256_fmadd_ps(_mm256_add_ps(a, b), s, acc[r][t]);
      }
    } else {
      const int64_t g0 = c0 >> 4, g1 = std::min(g0 + 1, ng - 1);
      const __m256 s0 = _mm256_set1_ps(w.scale_lut[codes[r][g0] & 63]);
      const __m256 s1 = _mm256_set1_ps(w.scale_lut[codes[r][g1] & 63]);
      for (int t = 0; t < TT; ++t) {
        const float* x = xp[t];
        const __m256 a = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + 8), _mm256_mul_ps(v[0], _mm256_loadu_ps(x)));
        const __m256 b = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(x + 24), _mm256_mul_ps(v[2], _mm256_loadu_ps(x + 16)));
        acc[r][t] = _mm256_fmadd_ps(b, s1, _mm256_fmadd_ps(a, s0, acc[r][t]));
      }
    }
  };
  const float* xp[TT];
  alignas(32) uint8_t idx[32];
  int64_t c0 = 0;
  for (; c0 + 32 <= K; c0 += 32) {
    for (int t = 0; t < TT; ++t) xp[t] = X + t * K + c0;
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = prow[r] + c0 / 32 * 4 * B;
      _mm_prefetch(reinterpret_cast<const char*>(p + R * rb), _MM_HINT_T1);  // the next R rows
      if constexpr (B == 8) {
        chunk(r, c0, p, xp);
      } else {
        unpack_chunk(p, B, idx);
        chunk(r, c0, idx, xp);
      }
    }
  }
  if (c0 < K) {  // short last chunk: indices and X zero padded
    alignas(32) float xt[TT][32];
    for (int t = 0; t < TT; ++t) {
      std::memset(xt[t], 0, sizeof(xt[t]));
      std::memcpy(xt[t], X + t * K + c0, size_t(K - c0) * sizeof(float));
      xp[t] = xt[t];
    }
    for (int r = 0; r < R; ++r) {
      hxq2_unpack_tail(prow[r] + c0 / 32 * 4 * B, K - c0, B, idx);
      chunk(r, c0, idx, xp);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) Y[t * ldy + n + r] = hsum(acc[r][t]);
}

// One row at a time (tiles of two rows measured 0.8x: one core, 8 bits, 8512 x 2048).
template <int B, int G, int TT>
void exact_rows(const float* X, int64_t K, const Hxq2View& w, const Lookup& lk, int64_t n0, int64_t n1, float* Y,
                int64_t ldy) {
  int64_t n = n0;
  for (; n < n1; ++n) exact_tile<B, G, TT, 1>(X, K, w, lk, n, Y, ldy);
}

template <int B, int G>
void exact_rows_t(const float* X, int64_t T, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  const Lookup lk(B, w.codebook);
  const int64_t K = w.cols;
  switch (T) {
    case 1: return exact_rows<B, G, 1>(X, K, w, lk, n0, n1, Y, ldy);
    case 2: return exact_rows<B, G, 2>(X, K, w, lk, n0, n1, Y, ldy);
    case 3: return exact_rows<B, G, 3>(X, K, w, lk, n0, n1, Y, ldy);
    default: return exact_rows<B, G, 4>(X, K, w, lk, n0, n1, Y, ldy);
  }
}

template <int B>
void exact_rows_g(const float* X, int64_t T, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  if (w.group == 16) exact_rows_t<B, 16>(X, T, w, n0, n1, Y, ldy);
  else exact_rows_t<B, 32>(X, T, w, n0, n1, Y, ldy);
}

}  // namespace

// Prefill panel: rows n0 .. n0 + n − 1 (sidecar included) as dst[k · nr + i], zero rows from n to
// nr (a multiple of 8): eight rows decoded into an L1/L2 buffer, then 8x8 in-register transposes.
void hxq2_pack_panel_avx2(const Hxq2View& w, int64_t n0, int64_t n, int64_t nr, float* dst) {
  const int64_t K = w.cols, K8 = (K + 7) / 8 * 8;
  thread_local AlignedFloats buf;
  float* rows = buf.get(size_t(8 * K8));
  for (int64_t rb = 0; rb < nr; rb += 8) {
    for (int64_t i = 0; i < 8; ++i) {
      float* r = rows + i * K8;
      std::memset(r + (K / 8) * 8, 0, size_t(K8 - (K / 8) * 8) * sizeof(float));
      if (rb + i >= n) {
        std::memset(r, 0, size_t(K) * sizeof(float));
        continue;
      }
      const int64_t row = n0 + rb + i;
      hxq2_decode_row_avx2(w, row, r);
      if (w.sc_row_ptr) {
        int64_t e0, e1;
        sidecar_range(w, row, e0, e1);
        for (int64_t e = e0; e < e1; ++e) r[sidecar_col(w, e, row)] += w.sc_delta[e];
      }
    }
    for (int64_t k = 0; k < K; k += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_load_ps(rows + i * K8 + k);
      transpose8(v);
      const int64_t m = std::min<int64_t>(8, K - k);
      for (int64_t c = 0; c < m; ++c) _mm256_storeu_ps(dst + (k + c) * nr + rb, v[c]);
    }
  }
}

// Y[t, n] for rows [n0, n1) of W and T rows of X (plain row-major), without the sidecar: fused
// kernels for T <= 4, else each row decoded once into an L1 buffer and dotted with every row of X.
void hxq2_rows_avx2(const float* X, int64_t T, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  if (T <= 4) {
    switch (w.bits) {
      case 4: return exact_rows_g<4>(X, T, w, n0, n1, Y, ldy);
      case 5: return exact_rows_g<5>(X, T, w, n0, n1, Y, ldy);
      case 6: return exact_rows_g<6>(X, T, w, n0, n1, Y, ldy);
      default: return exact_rows_g<8>(X, T, w, n0, n1, Y, ldy);
    }
  }
  const int64_t K = w.cols, K32 = (K + 31) / 32 * 32;
  const Lookup lk(w.bits, w.codebook);
  thread_local AlignedFloats buf;
  float* row = buf.get(size_t(K32));
  const int64_t rb = w.row_bytes(), ng = w.groups();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* prow = w.indices + n * rb;
    _mm_prefetch(reinterpret_cast<const char*>(prow + 4 * rb), _MM_HINT_T1);
    for (int64_t c0 = 0; c0 < K; c0 += 32) decode_chunk(w, lk, prow, w.codes + n * ng, c0, row + c0);
    for (int64_t t = 0; t < T; ++t) {
      const float* x = X + t * K;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      int64_t k = 0;
      for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(_mm256_load_ps(row + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_load_ps(row + k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_load_ps(row + k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_load_ps(row + k + 24), _mm256_loadu_ps(x + k + 24), a3);
      }
      float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
      for (; k < K; ++k) s += row[k] * x[k];
      Y[t * ldy + n] = s;
    }
  }
}

}  // namespace hxq::detail

// ---------------------------------------------------------------------------------------------
// Fast decode (HxqMath::Fast; see hxq2_gemm.h): b-bit indices -> 16-bit codebook values by byte
// shuffles (VPSHUFB over 16-entry tables of the low and of the high bytes, blended by the index
// bits 4 and 5), VPMADDWD against the 16-bit X, int32 sums per group, one float FMA per group.

namespace hxq::detail {

namespace {

struct FastTables {
  __m256i lo[4], hi[4];  // 16-entry byte tables (both lanes) of entries 16j .. 16j+15
  float cs = 0;          // codebook step
};

// Byte tables of the 16-bit codebook (hxq2_quant_codebook).
FastTables fast_tables(const Hxq2QuantX& qx, int bits) {
  FastTables t;
  const int n = 1 << bits;
  t.cs = qx.cs;
  alignas(16) uint8_t lb[64] = {}, hb[64] = {};
  for (int i = 0; i < n; ++i) {
    lb[i] = uint8_t(uint16_t(qx.cbq[i]) & 0xff);
    hb[i] = uint8_t(uint16_t(qx.cbq[i]) >> 8);
  }
  for (int j = 0; j < 4; ++j) {
    t.lo[j] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(lb + 16 * j)));
    t.hi[j] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(hb + 16 * j)));
  }
  return t;
}

// The 32 indices of a chunk, as byte lanes in column order: the low nibble, and masks whose bit 7
// is index bit 4 (m4) and bit 5 (m5).
struct ChunkIdx {
  __m256i nib, m4, m5;
};

template <int B>
inline ChunkIdx full_chunk(const uint8_t* p) {
  ChunkIdx c;
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  // Lane 0: low nibbles (columns 0..15), lane 1: high nibbles (columns 16..31).
  c.nib = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0f));
  if constexpr (B == 5) {
    uint32_t h;
    std::memcpy(&h, p + 16, 4);
    // Byte j <- byte j / 8 of h, then bit j % 8 of it as a 0x00 / 0xff mask.
    const __m256i e = _mm256_shuffle_epi8(_mm256_set1_epi32(int(h)),
                                          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                                           2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i sel = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    c.m4 = _mm256_cmpeq_epi8(_mm256_and_si256(e, sel), sel);
  } else if constexpr (B == 6) {
    uint64_t h;
    std::memcpy(&h, p + 16, 8);
    // Byte j <- byte j / 4 of h; bits 2(j % 4) and 2(j % 4) + 1 of it are index bits 4 and 5.
    const __m256i e = _mm256_shuffle_epi8(_mm256_set1_epi64x(int64_t(h)),
                                          _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4,
                                                           5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7));
    const __m256i s4 = _mm256_set1_epi32(0x40100401), s5 = _mm256_set1_epi32(int(0x80200802u));
    c.m4 = _mm256_cmpeq_epi8(_mm256_and_si256(e, s4), s4);
    c.m5 = _mm256_cmpeq_epi8(_mm256_and_si256(e, s5), s5);
  }
  return c;
}

// A short last chunk (n < 32 columns; indices n..31 are 0).
inline ChunkIdx tail_chunk(const uint8_t* p, int64_t n, int bits) {
  alignas(32) uint8_t idx[32];
  hxq2_unpack_tail(p, n, bits, idx);
  const __m256i i = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
  return {_mm256_and_si256(i, _mm256_set1_epi8(0x0f)), _mm256_slli_epi16(i, 3), _mm256_slli_epi16(i, 2)};
}

template <int B>
inline __m256i lookup(const __m256i* t, const ChunkIdx& c) {
  __m256i a = _mm256_shuffle_epi8(t[0], c.nib);
  if constexpr (B >= 5) a = _mm256_blendv_epi8(a, _mm256_shuffle_epi8(t[1], c.nib), c.m4);
  if constexpr (B == 6) {
    const __m256i b = _mm256_blendv_epi8(_mm256_shuffle_epi8(t[2], c.nib), _mm256_shuffle_epi8(t[3], c.nib), c.m4);
    a = _mm256_blendv_epi8(a, b, c.m5);
  }
  return a;
}

// Rows n0 .. n1 − 1 of W against rows t0 .. t0 + TT − 1 of X, TT <= 8: each row of W decoded once
// for all of them (with 16 ymm registers, at TT = 8 the 8 block sums accb stay in registers and
// the row sums acc, touched once per kHxq2XBlock columns, go to the stack). Its own function per
// (B, G, TT), the tables and pointers in locals, not reloaded after each call of
// hxq2_unpack_tail. Measured at 4 bits (2 threads, 8512 x 2048 from memory, against the former
// passes of at most 4 rows, inlined into the dispatch): T = 1, 2 1.1x, T = 4 1.15x, T = 5 1.35x,
// T = 6 1.25x, T = 7 1.15x, T = 8 1.0 to 1.05x (1.2x with K = 4096). The arithmetic of one
// output does not depend on TT.
template <int B, int G, int TT>
[[gnu::noinline]] void fast_rows(const Hxq2QuantX& qx, int64_t t0, const FastTables& tables, const Hxq2View& w,
                                 int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  const FastTables tb = tables;
  const int64_t K = w.cols, rb = w.row_bytes(), ng = w.groups(), K32 = qx.K32;
  const int64_t nxb = (K + kHxq2XBlock - 1) / kHxq2XBlock;
  const int16_t* xq = qx.q.data() + t0 * K32;
  const float* xs = qx.xs.data() + t0 * nxb;
  const float* lut = w.scale_lut;
  const uint8_t* indices = w.indices;
  const uint8_t* all_codes = w.codes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* prow = indices + n * rb;
    const uint8_t* codes = all_codes + n * ng;
    _mm_prefetch(reinterpret_cast<const char*>(prow + 4 * rb), _MM_HINT_T1);
    __m256 acc[TT], accb[TT];
    for (int t = 0; t < TT; ++t) acc[t] = accb[t] = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < K; c0 += 32) {
      const ChunkIdx ci = c0 + 32 <= K ? full_chunk<B>(prow + c0 / 32 * 4 * B) : tail_chunk(prow + c0 / 32 * 4 * B, K - c0, B);
      const __m256i lo = lookup<B>(tb.lo, ci), hi = lookup<B>(tb.hi, ci);
      const __m256i wa = _mm256_unpacklo_epi8(lo, hi), wb = _mm256_unpackhi_epi8(lo, hi);
      __m256 s;
      if constexpr (G == 32) {
        s = _mm256_set1_ps(lut[codes[c0 >> 5] & 63]);
      } else {
        const int64_t g0 = c0 >> 4, g1 = std::min(g0 + 1, ng - 1);
        s = _mm256_set_m128(_mm_set1_ps(lut[codes[g1] & 63]), _mm_set1_ps(lut[codes[g0] & 63]));
      }
      for (int t = 0; t < TT; ++t) {
        const __m256i* x = reinterpret_cast<const __m256i*>(xq + t * K32 + c0);
        const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(wa, _mm256_loadu_si256(x)),
                                           _mm256_madd_epi16(wb, _mm256_loadu_si256(x + 1)));
        accb[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, accb[t]);
      }
      if (((c0 + 32) % kHxq2XBlock) == 0 || c0 + 32 >= K) {
        const int64_t blk = c0 / kHxq2XBlock;
        for (int t = 0; t < TT; ++t) {
          acc[t] = _mm256_fmadd_ps(accb[t], _mm256_set1_ps(xs[t * nxb + blk]), acc[t]);
          accb[t] = _mm256_setzero_ps();
        }
      }
    }
    for (int t = 0; t < TT; ++t) Y[t * ldy + n] = hsum(acc[t]) * tb.cs;
  }
}

template <int B, int G>
void fast_rows_t(const Hxq2QuantX& qx, const FastTables& tb, const Hxq2View& w, int64_t n0, int64_t n1, float* Y,
                 int64_t ldy) {
  for_row_chunks(qx.T, [&](auto tt, int64_t t) {
    fast_rows<B, G, decltype(tt)::value>(qx, t, tb, w, n0, n1, Y + t * ldy, ldy);
  });
}

}  // namespace

void hxq2_fast_rows_avx2(const Hxq2QuantX& q, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  const bool g16 = w.group == 16;
  const FastTables tb = fast_tables(q, w.bits);
  switch (w.bits) {
    case 4: return g16 ? fast_rows_t<4, 16>(q, tb, w, n0, n1, Y, ldy) : fast_rows_t<4, 32>(q, tb, w, n0, n1, Y, ldy);
    case 5: return g16 ? fast_rows_t<5, 16>(q, tb, w, n0, n1, Y, ldy) : fast_rows_t<5, 32>(q, tb, w, n0, n1, Y, ldy);
    case 6: return g16 ? fast_rows_t<6, 16>(q, tb, w, n0, n1, Y, ldy) : fast_rows_t<6, 32>(q, tb, w, n0, n1, Y, ldy);
    default: fail("hxq2_fast_rows_avx2: bit width {} has no fast kernel", w.bits);
  }
}

}  // namespace hxq::detail
