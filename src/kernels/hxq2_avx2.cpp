// AVX2 kernels of HXQ v2 (compiled with -mavx2 -mfma; called only where the CPU has them): a row
// of W is decoded 32 weights at a time into an L1-resident float buffer — indices unpacked to
// bytes, looked up in the codebook (in-register permutes for 16 and 32 entries, scalar loads for
// 64 and 256), multiplied by the group scale — then dotted with the T rows of X.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/dispatch.h"
#include "kernels/hxq2_gemm.h"

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
  __m256 bytes(const uint8_t* ix) const {
    return _mm256_setr_ps(cb[ix[0]], cb[ix[1]], cb[ix[2]], cb[ix[3]], cb[ix[4]], cb[ix[5]], cb[ix[6]], cb[ix[7]]);
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

// Y[t, n] for rows [n0, n1) of W and T <= 8 rows of X (plain row-major), without the sidecar.
void hxq2_rows_avx2(const float* X, int64_t T, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
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
