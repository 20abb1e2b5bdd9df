// AVX-512 fast decode of HXQ v2 (compiled with AVX-512 F/BW/VL/VBMI/VNNI; called only where the
// CPU has them, see hxq2_fast_available): the 16-bit integer scheme of hxq2_gemm.h at 5, 6 and 8
// bits (at 4, AVX2's kernel is as fast: hxq2_gemm.cpp). Per 64 weights of a row: the 64 indices
// as bytes (b = 5, 6: nibbles split by a shift, the high bits added under byte masks) select the
// low and the high bytes of their 16-bit codebook values — one VPERMB per plane for 32 or 64
// entries, two merge-masked VPERMI2B for 256 (entries 0..127 by the first, 128..255 by the
// second, chosen by the index's top bit) — VPUNPCK{L,H}BW make the 16-bit values, and VPMADDWD +
// VPDPWSSD multiply them into 16 int32 lanes against the 16-bit X, stored per 64 columns in the
// order those unpacks produce (hxq2_quant_x, chunk 64). Each int32 lane holds columns of one group
// only, so one float FMA by a vector of the lanes' group scales applies them, as in the AVX2 kernel.
// One decode of a row serves up to 8 rows of X (fast_rows).
// GCC 12 reports false 'uninitialized' warnings inside its own AVX-512 headers (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/byte_table_avx512.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/row_chunks.h"

namespace hxq::detail {

namespace {

struct Tables {
  __m512i lo[4], hi[4];  // byte planes of the 16-bit codebook, 64 entries per register
  float cs = 0;          // codebook step
};

// Byte planes of the 16-bit codebook (hxq2_quant_codebook).
Tables make_tables(const Hxq2QuantX& qx) {
  Tables t;
  alignas(64) uint8_t lb[256], hb[256];
  for (int i = 0; i < 256; ++i) {
    lb[i] = uint8_t(uint16_t(qx.cbq[i]) & 0xff);
    hb[i] = uint8_t(uint16_t(qx.cbq[i]) >> 8);
  }
  t.cs = qx.cs;
  for (int j = 0; j < 4; ++j) {
    t.lo[j] = _mm512_load_si512(lb + 64 * j);
    t.hi[j] = _mm512_load_si512(hb + 64 * j);
  }
  return t;
}

// Lane order of the 64 index bytes (and of X, hxq2_quant_x): 128-bit lane L holds columns
// 16·kLaneBlock[L] .. + 15. b = 8: columns in order; b = 5, 6: chunk 0's low nibbles, chunk 1's
// low nibbles, chunk 0's high nibbles, chunk 1's high nibbles (one shift and one insert split them).
template <int B>
constexpr int kLaneBlock[4] = {0, 1, 2, 3};
template <>
constexpr int kLaneBlock<5>[4] = {0, 2, 1, 3};
template <>
constexpr int kLaneBlock<6>[4] = {0, 2, 1, 3};

// The row's end (rem < 64 columns): chunks unpacked one by one (full, short or absent), then put
// in lane order. Out of line: it runs once per row.
template <int B>
[[gnu::noinline]] __m512i tail_bytes(const uint8_t* p, int64_t rem) {
  uint8_t idx[64] = {};
  for (int h = 0; h < 2 && 32 * h < rem; ++h) {
    const int64_t n = std::min<int64_t>(32, rem - 32 * h);
    if (n == 32) hxq2_unpack_chunk(p + h * 4 * B, B, idx + 32 * h);
    else hxq2_unpack_tail(p + h * 4 * B, n, B, idx + 32 * h);
  }
  alignas(64) uint8_t out[64];
  for (int L = 0; L < 4; ++L) std::memcpy(out + 16 * L, idx + 16 * kLaneBlock<B>[L], 16);
  return _mm512_load_si512(out);
}

// The 64 indices of columns c0 .. c0 + 63 as bytes in lane order (c0 a multiple of 64); past K
// index 0 (against the zero padding of X).
template <int B>
inline __m512i index_bytes(const uint8_t* prow, int64_t c0, int64_t K) {
  const int64_t rem = K - c0;
  if constexpr (B == 8) {
    // 8-bit rows are plain bytes, the short last chunk included.
    return rem >= 64 ? _mm512_loadu_si512(prow + c0)
                     : _mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << rem) - 1), prow + c0);
  } else {
    const uint8_t* p = prow + c0 / 32 * 4 * B;
    if (rem < 64) return tail_bytes<B>(p, rem);
    const __m256i two = _mm256_setr_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)),
                                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4 * B)));
    const __m256i m = _mm256_set1_epi8(0x0f);
    __m512i idx = _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_and_si256(two, m)),
                                     _mm256_and_si256(_mm256_srli_epi16(two, 4), m), 1);
    if constexpr (B == 5) {  // bit j of each chunk's u32 is bit 4 of its index j
      uint32_t h0, h1;
      std::memcpy(&h0, p + 16, 4);
      std::memcpy(&h1, p + 4 * B + 16, 4);
      // Lane order: bits 0..15 of h0, of h1, bits 16..31 of h0, of h1.
      const uint64_t bits = uint64_t(h0 & 0xffff) | uint64_t(h1 & 0xffff) << 16 | uint64_t(h0 >> 16) << 32 |
                            uint64_t(h1 >> 16) << 48;
      idx = _mm512_mask_add_epi8(idx, _cvtu64_mask64(bits), idx, _mm512_set1_epi8(16));
    } else if constexpr (B == 6) {  // bits 2j, 2j + 1 of each chunk's u64 are bits 4, 5 of index j
      uint64_t h0, h1;
      std::memcpy(&h0, p + 16, 8);
      std::memcpy(&h1, p + 4 * B + 16, 8);
      // Byte i of the result <- byte sel[i] of (h0, h1): index j of chunk h is byte 8h + j / 4;
      // then its bits 2(j % 4) and 2(j % 4) + 1.
      const __m512i hv = _mm512_zextsi128_si512(_mm_set_epi64x(int64_t(h1), int64_t(h0)));
      alignas(64) static const uint8_t sel[64] = {
          0,  0,  0,  0,  1,  1,  1,  1,  2,  2,  2,  2,  3,  3,  3,  3,   // chunk 0, j 0..15
          8,  8,  8,  8,  9,  9,  9,  9,  10, 10, 10, 10, 11, 11, 11, 11,  // chunk 1, j 0..15
          4,  4,  4,  4,  5,  5,  5,  5,  6,  6,  6,  6,  7,  7,  7,  7,   // chunk 0, j 16..31
          12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15};  // chunk 1, j 16..31
      const __m512i e = _mm512_permutexvar_epi8(_mm512_load_si512(sel), hv);
      const __mmask64 m4 = _mm512_test_epi8_mask(e, _mm512_set1_epi32(0x40100401));
      const __mmask64 m5 = _mm512_test_epi8_mask(e, _mm512_set1_epi32(int(0x80200802u)));
      idx = _mm512_mask_add_epi8(idx, m4, idx, _mm512_set1_epi8(16));
      idx = _mm512_mask_add_epi8(idx, m5, idx, _mm512_set1_epi8(32));
    }
    return idx;
  }
}

// 64 table bytes for 64 indices: one VPERMB for <= 64 entries; for 256, entries of idx < 128 from
// (t0, t1) and the others from (t2, t3) by two merge-masked VPERMI2B.
template <int B>
inline __m512i lookup(const __m512i* t, __m512i idx) {
  if constexpr (B == 8) {
    return byte_table_lookup(t, idx);
  } else {
    return _mm512_permutexvar_epi8(idx, t[0]);
  }
}

// The scales of the groups of columns c0 .. c0 + 63 as the 16 int32 lanes see them (lane i:
// 128-bit lane i / 4, i.e. columns 16·kLaneBlock[i / 4] ..): broadcasts from memory and blends,
// no shuffles (the shuffle ports are the kernel's limit).
template <int B, int G>
inline __m512 lane_scales(const float* lut, const uint8_t* codes, int64_t c0, int64_t ng) {
  auto sc = [&](int64_t g) { return _mm512_set1_ps(lut[codes[std::min(g, ng - 1)] & 63]); };
  __mmask16 m1 = 0, m2 = 0, m3 = 0;  // lanes of the second (third, fourth) group
  for (int L = 0; L < 4; ++L) {
    const int blk = kLaneBlock<B>[L];  // 16-column block within the 64
    const __mmask16 lanes = __mmask16(0xf << (4 * L));
    if (G == 32 ? blk >= 2 : blk == 1) m1 |= lanes;
    if (G == 16 && blk == 2) m2 |= lanes;
    if (G == 16 && blk == 3) m3 |= lanes;
  }
  if constexpr (G == 32) {
    const int64_t g = c0 >> 5;
    return _mm512_mask_mov_ps(sc(g), m1, sc(g + 1));
  } else {
    const int64_t g = c0 >> 4;
    __m512 s = _mm512_mask_mov_ps(sc(g), m1, sc(g + 1));
    s = _mm512_mask_mov_ps(s, m2, sc(g + 2));
    return _mm512_mask_mov_ps(s, m3, sc(g + 3));
  }
}

// What the row loop reads, copied into locals (the tables into registers): not reloaded from the
// views after each call of tail_bytes, which the compiler must assume writes memory.
struct Ctx {
  Tables tb;
  int64_t K, K32, nxb, ng, rb;
  const int16_t* xq;  // row t0 of X
  const float* xs;
  const float* lut;
  const uint8_t* indices;
  const uint8_t* codes;
};

// Rows n0 .. n1 − 1 of W against rows t0 .. t0 + TT − 1 of X, TT <= 8: each row of W decoded
// once for all of them. Zen 4 runs a 512-bit VPMADDWD or VPDPWSSD every 2 cycles: the 2 per row of
// X and 64 weights (with their VCVTDQ2PS and FMA) are the floor, the decode is what one pass
// saves. Measured, 2 threads, 8512 x 2048 from memory, against the former passes of at most 4
// rows: T = 5 1.3 to 1.55x, T = 6 1.2 to 1.45x, T = 7 1.1 to 1.3x, T = 8 1.15x at 5 and 6 bits
// (1.2 to 1.3x with K = 4096; 8 bits: see fast_rows_t). The arithmetic of one output does not
// depend on TT: Y is the same, bit for bit, whatever T. Tried and slower: segments of K small
// enough for the X of 8 rows to stay in L1 (X of 8 rows and K = 2048 is 32 KiB; L2 serves it at
// this rate), the rows' sums kept across segments — by up to 15 %, each segment restarting the
// row's weight stream.
// Each (B, G, TT) its own function, not inlined into the dispatch, its loop's inputs in locals
// (Ctx): one hot loop per function (measured up to 8 % faster at T = 1 than inlined).
template <int B, int G, int TT>
[[gnu::noinline]] void fast_rows(const Hxq2QuantX& qx, int64_t t0, const Tables& tb, const Hxq2View& w, int64_t n0,
                                 int64_t n1, float* Y, int64_t ldy) {
  const int64_t K = w.cols, nxb = (K + kHxq2XBlock - 1) / kHxq2XBlock;
  const Ctx c{tb, K, qx.K32, nxb, w.groups(), w.row_bytes(), qx.q.data() + t0 * qx.K32, qx.xs.data() + t0 * nxb,
              w.scale_lut, w.indices, w.codes};
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* prow = c.indices + n * c.rb;
    const uint8_t* codes = c.codes + n * c.ng;
    __m512 acc[TT], accb[TT];
    for (int t = 0; t < TT; ++t) acc[t] = accb[t] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < c.K; c0 += 64) {
      // The row two ahead into L2 (as the helix-format kernel: one ahead starts too late).
      _mm_prefetch(reinterpret_cast<const char*>(prow + 2 * c.rb + c0), _MM_HINT_T1);
      const __m512i idx = index_bytes<B>(prow, c0, c.K);
      const __m512i lo = lookup<B>(c.tb.lo, idx), hi = lookup<B>(c.tb.hi, idx);
      const __m512i wa = _mm512_unpacklo_epi8(lo, hi), wb = _mm512_unpackhi_epi8(lo, hi);
      const __m512 s = lane_scales<B, G>(c.lut, codes, c0, c.ng);
      for (int t = 0; t < TT; ++t) {
        const int16_t* x = c.xq + t * c.K32 + c0;
        const __m512i p = _mm512_dpwssd_epi32(_mm512_madd_epi16(wa, _mm512_loadu_si512(x)), wb,
                                              _mm512_loadu_si512(x + 32));
        accb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, accb[t]);
      }
      if (((c0 + 64) % kHxq2XBlock) == 0 || c0 + 64 >= c.K) {
        const int64_t blk = c0 / kHxq2XBlock;
        for (int t = 0; t < TT; ++t) {
          acc[t] = _mm512_fmadd_ps(accb[t], _mm512_set1_ps(c.xs[t * c.nxb + blk]), acc[t]);
          accb[t] = _mm512_setzero_ps();
        }
      }
    }
    for (int t = 0; t < TT; ++t) Y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]) * c.tb.cs;
  }
}

template <int B, int G>
void fast_rows_t(const Hxq2QuantX& qx, const Tables& tb, const Hxq2View& w, int64_t n0, int64_t n1, float* Y,
                 int64_t ldy) {
  if (B == 8 && qx.T == 8) {
    // 8 bits, 8 rows of X: two passes of 4 (the second finds the task's rows in L2) measured 1.07
    // to 1.2x faster than one pass with the weights from memory (K = 2048, 4096), though 0.88x
    // in cache. Results are the same either way.
    fast_rows<B, G, 4>(qx, 0, tb, w, n0, n1, Y, ldy);
    fast_rows<B, G, 4>(qx, 4, tb, w, n0, n1, Y + 4 * ldy, ldy);
    return;
  }
  for_row_chunks(qx.T, [&](auto tt, int64_t t) {
    fast_rows<B, G, decltype(tt)::value>(qx, t, tb, w, n0, n1, Y + t * ldy, ldy);
  });
}

}  // namespace

void hxq2_fast_rows_avx512(const Hxq2QuantX& q, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  if (q.chunk != 64 || q.nibble_lanes != (w.bits < 8))
    fail("hxq2_fast_rows_avx512: X quantised in another order (chunk {})", q.chunk);
  const Tables tb = make_tables(q);
  const bool g16 = w.group == 16;
  switch (w.bits) {
    case 5: return g16 ? fast_rows_t<5, 16>(q, tb, w, n0, n1, Y, ldy) : fast_rows_t<5, 32>(q, tb, w, n0, n1, Y, ldy);
    case 6: return g16 ? fast_rows_t<6, 16>(q, tb, w, n0, n1, Y, ldy) : fast_rows_t<6, 32>(q, tb, w, n0, n1, Y, ldy);
    case 8: return g16 ? fast_rows_t<8, 16>(q, tb, w, n0, n1, Y, ldy) : fast_rows_t<8, 32>(q, tb, w, n0, n1, Y, ldy);
    default: fail("hxq2_fast_rows_avx512: bit width {} has no fast kernel", w.bits);
  }
}

}  // namespace hxq::detail
