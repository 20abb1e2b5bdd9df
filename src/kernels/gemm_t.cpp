// dX = G · W from the stored form of W (see gemm_t.h). The reduction runs over the N rows of W,
// which W stores contiguously, so no transpose is needed anywhere; W is decoded row by row
// (dtype conversion, codebook lookups, sidecar deltas added) and never as a whole. Two regimes,
// both summing each output in the same order — FMA chains over blocks of kKC = 256 rows of W
// (from zero), the blocks' sums added in row order — so results are bit-identical between them,
// between the AVX2 and AVX-512 kernels, and for every thread count; a row of dX does not depend
// on the other rows of G computed with it:
// * T <= kSlabMaxT (few rows of G, memory- or decode-bound): the rows of W are split into slabs of
//   kKC rows (and, when there are few, the columns into parts); each task streams whole rows
//   of its slab — decoded into a small float block, or for T <= 4 dense rows read directly —
//   through register-blocked FMAs (4 rows of G x 64 columns) into its own partial sum, and the
//   partial sums are added in slab order at the end.
// * Larger T (compute-bound): the forward's packed machinery with the roles swapped: G [T, N] is
//   packed like X (pack_x: [n][mr] per block of mr rows), the rows of each block of kKC rows of W
//   are decoded into [rows][nr] panels per column tile of dX, and the ISA's micro-kernel
//   accumulates C (+)= A · B. Threads own column ranges of dX (no reduction).
// This file is compiled for the baseline x86-64: its SIMD functions carry their own target and
// run only when kernel_isa() says the CPU has it (every SIMD kernel ISA implies AVX2 + FMA + F16C).
// GCC 12 reports false 'uninitialized' warnings inside its own AVX-512 headers (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/gemm_t.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/byte_table_avx512.h"
#include "kernels/cpu_features.h"
#include "kernels/dispatch.h"

#define HXQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define HXQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define HXQ_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))

namespace hxq {

namespace {

using detail::byte_table_lookup;
using detail::CodebookBytePlanes;
using detail::interleave_byte_planes;
using detail::load_byte_planes;

// Rows of W per block (both regimes; see above). Fixed, so that the summation order of an output
// depends on N alone.
constexpr int64_t kKC = 256;
// Rows of G up to which the slab regime runs. Measured on one Zen 4 core, N = K = 2048 (ms,
// slabs / panels): T = 8: BF16 1.22 / 1.34, v2 4-bit 1.09 / 1.46; T = 16: 2.27 / 1.99,
// 1.90 / 2.07; T = 32: 4.29 / 3.41, 3.55 / 3.27.
constexpr int64_t kSlabMaxT = 8;
// Rows of G up to which the slab regime reads dense rows directly instead of converting them into
// a float block first (T = 1, BF16 2048 x 2048, one core: 0.18 ms vs 0.51 ms; with more rows of G
// the conversion is shared by more of them).
constexpr int64_t kDirectMaxT = 4;
// Column ranges of the reference are multiples of 32 (those of the SIMD regimes of 64): v2 rows
// are decoded per chunk of 32 indices (a range starting at a chunk is a valid row of its own,
// see hxq2_sub_row), and 32 is a multiple of every ISA's nr.
constexpr int64_t kColAlign = 32;

// Decodes W[r, c0 .. c0 + cw) (sidecar included) into out.
using DecodeFn = FnRef<void(int64_t r, int64_t c0, int64_t cw, float* out)>;

// ---- checks (all before dX is written) ------------------------------------------------------

void check_shape(const char* who, int64_t T, int64_t N, int64_t K, const float* G, float* dX) {
  if (T < 0 || N < 0 || K < 0) fail("{}: negative shape T={} N={} K={}", who, T, N, K);
  if (!G && T > 0 && N > 0) fail("{}: G is null with T={} N={}", who, T, N);
  if (!dX && T > 0 && K > 0) fail("{}: dX is null with T={} K={}", who, T, K);
}

// The whole CSR once: the kernels below then index it without checks (a throwing worker would
// leave dX half written).
template <class View>
void check_sidecar(const char* who, const View& w) {
  if (!w.sc_row_ptr) return;
  const int64_t* rp = w.sc_row_ptr;
  if (rp[0] < 0) fail("{}: sidecar row pointer of row 0 is negative ({})", who, rp[0]);
  for (int64_t r = 0; r < w.rows; ++r)
    if (rp[r + 1] < rp[r])
      fail("{}: sidecar row pointers of row {} are not increasing ({}, {})", who, r, rp[r], rp[r + 1]);
  if (rp[w.rows] == rp[0]) return;
  if (!w.sc_col || !w.sc_delta) fail("{}: sidecar entries without columns or deltas", who);
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t e = rp[r]; e < rp[r + 1]; ++e)
      if (w.sc_col[e] < 0 || w.sc_col[e] >= w.cols)
        fail("{}: sidecar column {} of row {} out of range [0, {})", who, w.sc_col[e], r, w.cols);
}

void check_dense(const char* who, int64_t T, int64_t N, const void* W, DType wdt, int64_t K, const float* G,
                 float* dX) {
  if (wdt != DType::F32 && wdt != DType::F16 && wdt != DType::BF16)
    fail("{}: unsupported weight dtype {}", who, dtype_name(wdt));
  check_shape(who, T, N, K, G, dX);
  if (!W && N > 0 && K > 0) fail("{}: W is null with N={} K={}", who, N, K);
}

void check_hxq(const char* who, const float* G, int64_t T, const HxqView& w, float* dX) {
  check_shape(who, T, w.rows, w.cols, G, dX);
  if (w.rows > 0 && w.cols > 0 && (!w.codebook || !w.indices)) fail("{}: view without codebook or indices", who);
  check_sidecar(who, w);
}

void check_hxq2(const char* who, const float* G, int64_t T, const Hxq2View& w, float* dX) {
  check_shape(who, T, w.rows, w.cols, G, dX);
  if (w.bits != 4 && w.bits != 5 && w.bits != 6 && w.bits != 8) fail("{}: unsupported bit width {}", who, w.bits);
  if (w.group != 16 && w.group != 32) fail("{}: unsupported group size {}", who, w.group);
  if (w.rows > 0 && w.cols > 0 && (!w.codebook || !w.indices || !w.codes || !w.scale_lut))
    fail("{}: view without codebook, indices or scales", who);
  check_sidecar(who, w);
}

// True when there is nothing left to compute (dX zeroed where N = 0).
bool trivial(int64_t T, int64_t N, int64_t K, float* dX) {
  if (T == 0 || K == 0) return true;
  if (N == 0) {
    std::fill(dX, dX + T * K, 0.0f);
    return true;
  }
  return false;
}

// ---- row decoders ---------------------------------------------------------------------------

// Adds row r's sidecar deltas that fall in [c0, c0 + cw), in stored order.
template <class View>
inline void fold_sidecar(const View& w, int64_t r, int64_t c0, int64_t cw, float* out) {
  if (!w.sc_row_ptr) return;
  for (int64_t e = w.sc_row_ptr[r]; e < w.sc_row_ptr[r + 1]; ++e) {
    const int64_t c = int64_t(w.sc_col[e]) - c0;
    if (c >= 0 && c < cw) out[c] += w.sc_delta[e];
  }
}

// The panel regime reads each row's range of columns: rows K·(bytes per weight) apart, which the
// hardware prefetchers do not follow, so the decoders ask for the row kAhead rows on (measured
// 9.9 -> 7.1 ms, T = 64, BF16 2048 x 2048 in 256-column ranges, two threads).
constexpr int64_t kAhead = 8;
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}

// Columns [c0, c0 + cw) of row r of a v2 weight as a one-row view of its own: c0 is a multiple of
// 32 (a chunk boundary, hence also a group boundary) and the range either ends on a chunk
// boundary or at the row's end, so its chunks (and a short tail chunk) are those of the row.
Hxq2View hxq2_sub_row(const Hxq2View& w, int64_t r, int64_t c0, int64_t cw) {
  Hxq2View s = w;
  s.rows = 1;
  s.cols = cw;
  s.indices = w.indices + r * w.row_bytes() + c0 / 32 * 4 * w.bits;
  s.codes = w.codes + r * w.groups() + c0 / w.group;
  s.sc_row_ptr = nullptr;
  s.sc_col = nullptr;
  s.sc_delta = nullptr;
  return s;
}

// 16-bit float rows to float32 (exact conversions).
HXQ_AVX2 void half_row_avx2(const uint16_t* src, int64_t n, bool bf16, float* out) {
  int64_t i = 0;
  if (bf16) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    for (; i < n; ++i) out[i] = bf16_to_f32(src[i]);
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) out[i] = f16_to_f32(src[i]);
  }
}

// Helix rows on AVX-512 VBMI: the codebook's byte planes in 16 registers, 64 indices looked up
// per plane and interleaved into floats (byte_table_avx512.h). The interleave works per 128-bit
// lane, so the indices are first permuted such that the four result vectors hold columns 0..15,
// 16..31, 32..47, 48..63 in order: position 16L + 4q + i takes column 16q + 4L + i.
struct HelixPlanes {
  CodebookBytePlanes planes;
  alignas(64) uint8_t perm[64];
  explicit HelixPlanes(const float* cb) : planes(cb) {
    for (int L = 0; L < 4; ++L)
      for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 4; ++i) perm[16 * L + 4 * q + i] = uint8_t(16 * q + 4 * L + i);
  }
};

// 64 indices (bytes of raw) -> the four vectors of their codebook values (columns 0..15, ...,
// 48..63); t = the planes in registers, perm = HelixPlanes::perm.
HXQ_AVX512_VBMI inline void planes_lookup64(const __m512i (&t)[4][4], __m512i perm, __m512i raw, __m512 (&v)[4]) {
  const __m512i x = _mm512_maskz_permutexvar_epi8(~__mmask64(0), perm, raw);  // (maskz: GCC 12 warns on the plain form)
  __m512i P[4];
  for (int b = 0; b < 4; ++b) P[b] = byte_table_lookup(t[b], x);
  interleave_byte_planes(P, v);
}

HXQ_AVX512_VBMI void helix_row_avx512(const HelixPlanes& hp, const uint8_t* idx, int64_t n, float* out) {
  __m512i t[4][4];
  load_byte_planes(hp.planes, t);
  const __m512i perm = _mm512_load_si512(hp.perm);
  for (int64_t i = 0; i < n; i += 64) {
    const int64_t m = std::min<int64_t>(64, n - i);
    __m512 v[4];
    const __m512i raw =
        m == 64 ? _mm512_loadu_si512(idx + i) : _mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << m) - 1), idx + i);
    planes_lookup64(t, perm, raw, v);
    for (int q = 0; q < 4 && 16 * q < m; ++q) {
      const int64_t k = std::min<int64_t>(16, m - 16 * q);
      _mm512_mask_storeu_ps(out + i + 16 * q, __mmask16((1u << k) - 1), v[q]);
    }
  }
}

// HXQ v2 rows on AVX-512 (bit-identical to hxq2_decode_row: the same scale × entry products).
// b = 4, 5, 6: a full chunk's 16 nibble bytes widen to two vectors of 16 indices (low nibbles =
// columns 0..15, high = 16..31), the high bits come from the chunk's bit planes (b = 5: one bit
// per column, a mask; b = 6: two per column, shifted into place per lane), and the codebook (16,
// 32 or 64 entries) is looked up in registers by one or two float permutes. b = 8: the byte
// planes of the helix decoder, 64 columns at a time.
struct V2Tables {
  alignas(64) float cb[256] = {};  // the codebook, zero padded
  HelixPlanes planes;              // b = 8
  explicit V2Tables(const Hxq2View& w) : planes((std::memcpy(cb, w.codebook, sizeof(float) << w.bits), cb)) {}
};

HXQ_AVX512_VBMI void v2_row_avx512(const Hxq2View& w, const V2Tables& tb, int64_t r, int64_t c0, int64_t cw,
                                   float* out) {
  const int bits = w.bits, gshift = w.group == 16 ? 4 : 5;
  const uint8_t* prow = w.indices + r * w.row_bytes() + c0 / 32 * 4 * bits;
  const uint8_t* codes = w.codes + r * w.groups() + c0 / w.group;
  const float* lut = w.scale_lut;
  const int64_t full = cw / 32 * 32;  // the range ends on a chunk boundary or at the row's end
#define HXQ_SCALE(c) _mm512_set1_ps(lut[codes[(c) >> gshift] & 63])
  if (bits == 8) {
    __m512i t[4][4];
    load_byte_planes(tb.planes.planes, t);
    const __m512i perm = _mm512_load_si512(tb.planes.perm);
    for (int64_t i = 0; i < full; i += 64) {
      const bool two = i + 64 <= full;  // else one chunk of 32
      __m512 v[4];
      const __m512i raw =
          two ? _mm512_loadu_si512(prow + i) : _mm512_maskz_loadu_epi8(__mmask64(0xffffffffu), prow + i);
      planes_lookup64(t, perm, raw, v);
      for (int q = 0; q < (two ? 4 : 2); ++q)
        _mm512_storeu_ps(out + i + 16 * q, _mm512_mul_ps(HXQ_SCALE(i + 16 * q), v[q]));
    }
  } else {
    const __m512 t0 = _mm512_load_ps(tb.cb), t1 = _mm512_load_ps(tb.cb + 16), t2 = _mm512_load_ps(tb.cb + 32),
                 t3 = _mm512_load_ps(tb.cb + 48);
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i three = _mm512_set1_epi32(3), bit4 = _mm512_set1_epi32(16), bit5 = _mm512_set1_epi32(32);
    for (int64_t c = 0; c < full; c += 32) {
      const uint8_t* p = prow + c / 32 * 4 * bits;
      const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      __m512i i0 = _mm512_and_si512(bytes, _mm512_set1_epi32(15)), i1 = _mm512_srli_epi32(bytes, 4);
      __m512 v0, v1;
      if (bits == 4) {
        v0 = _mm512_permutexvar_ps(i0, t0);
        v1 = _mm512_permutexvar_ps(i1, t0);
      } else if (bits == 5) {
        uint32_t h;
        std::memcpy(&h, p + 16, 4);
        i0 = _mm512_mask_or_epi32(i0, __mmask16(h), i0, bit4);
        i1 = _mm512_mask_or_epi32(i1, __mmask16(h >> 16), i1, bit4);
        v0 = _mm512_permutex2var_ps(t0, i0, t1);
        v1 = _mm512_permutex2var_ps(t0, i1, t1);
      } else {
        uint64_t h;
        std::memcpy(&h, p + 16, 8);
        const __m512i h0 = _mm512_set1_epi32(int(uint32_t(h))), h1 = _mm512_set1_epi32(int(uint32_t(h >> 32)));
        i0 = _mm512_or_si512(i0, _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(h0, shifts), three), 4));
        i1 = _mm512_or_si512(i1, _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(h1, shifts), three), 4));
        v0 = _mm512_mask_blend_ps(_mm512_test_epi32_mask(i0, bit5), _mm512_permutex2var_ps(t0, i0, t1),
                                  _mm512_permutex2var_ps(t2, i0, t3));
        v1 = _mm512_mask_blend_ps(_mm512_test_epi32_mask(i1, bit5), _mm512_permutex2var_ps(t0, i1, t1),
                                  _mm512_permutex2var_ps(t2, i1, t3));
      }
      _mm512_storeu_ps(out + c, _mm512_mul_ps(HXQ_SCALE(c), v0));
      _mm512_storeu_ps(out + c + 16, _mm512_mul_ps(HXQ_SCALE(c + 16), v1));
    }
  }
#undef HXQ_SCALE
  if (full < cw) {  // the row's short last chunk
    uint8_t idx[32];
    hxq2_unpack_tail(prow + full / 32 * 4 * bits, cw - full, bits, idx);
    for (int64_t j = 0; j < cw - full; ++j) out[full + j] = lut[codes[(full + j) >> gshift] & 63] * w.codebook[idx[j]];
  }
}

// ---- panel regime (larger T) ----------------------------------------------------------------

// Width of the column ranges (multiple of 64): ~2 per thread so that dynamic_for balances them,
// at most 256 (the panels of one row block, kKC x 256 floats, stay in L2).
int64_t column_width(int64_t K) {
  const int64_t want = (K + 2 * pool().size() - 1) / (2 * pool().size());
  return std::clamp<int64_t>((want + 63) / 64 * 64, 64, 256);
}

// Row k of a block into the tiles of the panel buffer (tile j: [kKC][NR] at j·kKC·NR).
template <int NR>
void row_to_tiles(const float* row, int64_t ntiles, int64_t k, float* P) {
  for (int64_t j = 0; j < ntiles; ++j) std::memcpy(P + (j * kKC + k) * NR, row + j * NR, NR * sizeof(float));
}

void gemm_t_panels(const detail::KernelSet& ks, const float* G, int64_t T, int64_t N, int64_t K, DecodeFn decode,
                   float* dX) {
  const int64_t MR = ks.mr, NR = ks.nr;
  const int64_t ntb = (T + MR - 1) / MR;
  // G [T, N] packed as the forward packs X [T, K]: block b = [n][mr] (rows past T zero).
  thread_local detail::AlignedFloats gbuf;
  float* Gp = gbuf.get(size_t(ntb * N * MR));
  detail::dynamic_for(ntb, std::max<int64_t>(1, 65536 / (MR * N)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) ks.pack_x(G + b * MR * N, N, std::min(MR, T - b * MR), N, Gp + b * N * MR);
  });
  const int64_t CW = column_width(K);
  const int64_t nranges = (K + CW - 1) / CW;
  detail::dynamic_for(nranges, 1, [&](int64_t i0, int64_t i1) {
    thread_local detail::AlignedFloats pbuf, rbuf;
    const int64_t ntiles_max = (CW + NR - 1) / NR;
    float* P = pbuf.get(size_t(ntiles_max * kKC * NR));
    float* row = rbuf.get(size_t(ntiles_max * NR));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c0 = i * CW, cw = std::min(CW, K - c0), ntiles = (cw + NR - 1) / NR;
      // The last tile's columns past cw stay zero (the micro-kernel reads whole tiles and stores
      // only n columns; zeros keep its unused lanes finite).
      std::fill(row + cw, row + ntiles * NR, 0.0f);
      for (int64_t r0 = 0; r0 < N; r0 += kKC) {
        const int64_t kc = std::min(kKC, N - r0);
        for (int64_t k = 0; k < kc; ++k) {
          decode(r0 + k, c0, cw, row);
          if (NR == 32) row_to_tiles<32>(row, ntiles, k, P);
          else if (NR == 16) row_to_tiles<16>(row, ntiles, k, P);
          else for (int64_t j = 0; j < ntiles; ++j) std::memcpy(P + (j * kKC + k) * NR, row + j * NR, size_t(NR) * 4);
        }
        // One block of G (kc x mr, L1) against every tile of the range (panels in L2); the
        // first block stores, the others add.
        for (int64_t tb = 0; tb < ntb; ++tb) {
          const int64_t t0 = tb * MR;
          const int m = int(std::min(MR, T - t0));
          for (int64_t j = 0; j < ntiles; ++j)
            ks.micro(Gp + tb * N * MR + r0 * MR, P + j * kKC * NR, kc, dX + t0 * K + c0 + j * NR, K, m,
                     int(std::min(NR, cw - j * NR)), r0 > 0);
        }
      }
    }
  });
}

// ---- slab regime (few rows of G) ------------------------------------------------------------

// Where the streaming kernels read W: a decoded float block, or dense rows in place.
enum class Src { F32, BF16, F16 };

template <Src S>
HXQ_AVX512 inline __m512 load16(const void* base, int64_t off, __mmask16 m) {
  if constexpr (S == Src::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + off);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + off);
    if constexpr (S == Src::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// D[t, j] += Σ_r G[t, r] · W[r, j] for t < TT, r < nrows, j < cw, one FMA chain per output in r
// order; W's element (r, j) at offset r·ldw + j from W. Per 64 columns, the 4·TT accumulators stay
// in registers over the rows (four independent chains per row of G hide the FMA latency).
// prefetch: ask for the same columns nrows rows on (the next call's), into L2 — the rows are
// nrows streams K apart, too many for the hardware prefetcher (as in the forward's decode).
template <int TT, Src S>
HXQ_AVX512 void stream_avx512(const float* G, int64_t ldg, int64_t nrows, const void* W, int64_t ldw, int64_t cw,
                              float* D, int64_t ldd, bool prefetch) {
  constexpr int64_t es = S == Src::F32 ? 4 : 2;
  const char* wb = static_cast<const char*>(W);
  for (int64_t j = 0; j < cw; j += 64) {
    __mmask16 mk[4];
    for (int v = 0; v < 4; ++v) {
      const int64_t rem = cw - j - 16 * v;
      mk[v] = rem >= 16 ? __mmask16(0xffff) : rem > 0 ? __mmask16((1u << rem) - 1) : __mmask16(0);
    }
    __m512 acc[TT][4];
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[t][v] = _mm512_maskz_loadu_ps(mk[v], D + t * ldd + j + 16 * v);
    for (int64_t r = 0; r < nrows; ++r) {
      if (prefetch)
        for (int64_t b = 0; b < std::min<int64_t>(64, cw - j) * es; b += 64)
          _mm_prefetch(wb + ((r + nrows) * ldw + j) * es + b, _MM_HINT_T1);
      __m512 w[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) w[v] = load16<S>(W, r * ldw + j + 16 * v, mk[v]);
#pragma GCC unroll 4
      for (int t = 0; t < TT; ++t) {
        const __m512 g = _mm512_set1_ps(G[t * ldg + r]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) acc[t][v] = _mm512_fmadd_ps(g, w[v], acc[t][v]);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(D + t * ldd + j + 16 * v, mk[v], acc[t][v]);
  }
}

// 8 columns from offset off (n < 8: the first n, the rest zero).
template <Src S>
HXQ_AVX2 inline __m256 load8(const void* base, int64_t off, int64_t n) {
  constexpr size_t es = S == Src::F32 ? 4 : 2;
  alignas(32) uint8_t buf[32] = {};
  const uint8_t* p = static_cast<const uint8_t*>(base) + off * int64_t(es);
  if (n < 8) {
    if (n > 0) std::memcpy(buf, p, size_t(n) * es);
    p = buf;
  }
  if constexpr (S == Src::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (S == Src::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else return _mm256_cvtph_ps(h);
  }
}

// The same on AVX2: 16 registers hold 4 rows of G x 2 vectors (16 columns); identical results.
template <int TT, Src S>
HXQ_AVX2 void stream_avx2(const float* G, int64_t ldg, int64_t nrows, const void* W, int64_t ldw, int64_t cw, float* D,
                          int64_t ldd, bool prefetch) {
  constexpr int64_t es = S == Src::F32 ? 4 : 2;
  const char* wb = static_cast<const char*>(W);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < cw; j += 16) {
    const int rem = int(std::min<int64_t>(16, cw - j));
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), iota);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem - 8), iota);
    __m256 acc[TT][2];
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) {
      acc[t][0] = _mm256_maskload_ps(D + t * ldd + j, m0);
      acc[t][1] = _mm256_maskload_ps(D + t * ldd + j + 8, m1);
    }
    for (int64_t r = 0; r < nrows; ++r) {
      if (prefetch && (j & 63) == 0)
        for (int64_t b = 0; b < std::min<int64_t>(64, cw - j) * es; b += 64)
          _mm_prefetch(wb + ((r + nrows) * ldw + j) * es + b, _MM_HINT_T1);
      const __m256 w0 = load8<S>(W, r * ldw + j, rem), w1 = load8<S>(W, r * ldw + j + 8, rem - 8);
#pragma GCC unroll 4
      for (int t = 0; t < TT; ++t) {
        const __m256 g = _mm256_broadcast_ss(G + t * ldg + r);
        acc[t][0] = _mm256_fmadd_ps(g, w0, acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(g, w1, acc[t][1]);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) {
      _mm256_maskstore_ps(D + t * ldd + j, m0, acc[t][0]);
      _mm256_maskstore_ps(D + t * ldd + j + 8, m1, acc[t][1]);
    }
  }
}

template <Src S>
void stream_rows(bool avx512, const float* G, int64_t T, int64_t ldg, int64_t nrows, const void* W, int64_t ldw,
                 int64_t cw, float* D, int64_t ldd, bool prefetch) {
  for (int64_t t0 = 0; t0 < T; t0 += 4) {
    const float* g = G + t0 * ldg;
    float* d = D + t0 * ldd;
    const int tt = int(std::min<int64_t>(4, T - t0));
#define HXQ_STREAM(TT)                                                         \
  (avx512 ? stream_avx512<TT, S>(g, ldg, nrows, W, ldw, cw, d, ldd, prefetch) \
          : stream_avx2<TT, S>(g, ldg, nrows, W, ldw, cw, d, ldd, prefetch))
    switch (tt) {
      case 1: HXQ_STREAM(1); break;
      case 2: HXQ_STREAM(2); break;
      case 3: HXQ_STREAM(3); break;
      default: HXQ_STREAM(4); break;
    }
#undef HXQ_STREAM
  }
}

// Dense W read in place by the slab regime (T <= kDirectMaxT).
struct Direct {
  const void* w = nullptr;  // [N, K]
  Src src = Src::F32;
};

void gemm_t_slabs(bool avx512, const float* G, int64_t T, int64_t N, int64_t K, DecodeFn decode, Direct direct,
                  float* dX) {
  const int64_t nslabs = (N + kKC - 1) / kKC;
  const int nthreads = pool().size();
  // Few slabs: also split the columns (multiples of 64) so that every thread has work.
  const int64_t want = std::max<int64_t>(1, (2 * nthreads + nslabs - 1) / nslabs);
  const int64_t CW = std::max<int64_t>(64, ((K + want - 1) / want + 63) / 64 * 64), nparts = (K + CW - 1) / CW;
  const bool in_place = direct.w && T <= kDirectMaxT;
  const int64_t es = direct.src == Src::F32 ? 4 : 2;
  // Rows per step: decoded, ~64 KiB of floats (L2), 4 to 32 rows; in place, 8 rows — 8 streams
  // K apart (T = 1, BF16 8192 x 8192 from memory, one core: 4, 8, 16, 32 rows took 6.3, 5.7,
  // 8.9, 14.5 ms).
  const int64_t R = in_place ? 8 : std::clamp<int64_t>((int64_t(64) << 10) / (4 * CW), 4, 32);
  // Slab 0 sums into dX, slab b > 0 into P[b - 1] (T x K each).
  thread_local detail::AlignedFloats pbuf;
  float* P = nslabs > 1 ? pbuf.get(size_t((nslabs - 1) * T * K)) : nullptr;
  detail::dynamic_for(nslabs * nparts, 1, [&](int64_t i0, int64_t i1) {
    thread_local detail::AlignedFloats wbuf;
    float* Wb = in_place ? nullptr : wbuf.get(size_t(R * CW));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / nparts, c0 = i % nparts * CW, cw = std::min(CW, K - c0);
      const int64_t r0 = b * kKC, r1 = std::min(N, r0 + kKC);
      float* dst = b == 0 ? dX : P + (b - 1) * T * K;
      for (int64_t t = 0; t < T; ++t) std::fill(dst + t * K + c0, dst + t * K + c0 + cw, 0.0f);
      for (int64_t rb = r0; rb < r1; rb += R) {
        const int64_t nr = std::min(R, r1 - rb);
        if (in_place) {
          const void* w = static_cast<const char*>(direct.w) + (rb * K + c0) * es;
          const bool pf = rb + 2 * nr <= r1;  // the next step's rows exist (and are as many)
          if (direct.src == Src::BF16) stream_rows<Src::BF16>(avx512, G + rb, T, N, nr, w, K, cw, dst + c0, K, pf);
          else if (direct.src == Src::F16) stream_rows<Src::F16>(avx512, G + rb, T, N, nr, w, K, cw, dst + c0, K, pf);
          else stream_rows<Src::F32>(avx512, G + rb, T, N, nr, w, K, cw, dst + c0, K, pf);
          continue;
        }
        for (int64_t k = 0; k < nr; ++k) decode(rb + k, c0, cw, Wb + k * cw);
        stream_rows<Src::F32>(avx512, G + rb, T, N, nr, Wb, cw, cw, dst + c0, K, false);
      }
    }
  });
  if (nslabs == 1) return;
  // The slabs' sums in slab order, as the panel regime's micro-kernel adds its blocks.
  const int64_t n = T * K;
  detail::dynamic_for(n, 16384, [&](int64_t e0, int64_t e1) {
    for (int64_t b = 1; b < nslabs; ++b) {
      const float* p = P + (b - 1) * n;
      for (int64_t e = e0; e < e1; ++e) dX[e] += p[e];
    }
  });
}

void gemm_t_simd(const detail::KernelSet& ks, const float* G, int64_t T, int64_t N, int64_t K, DecodeFn decode,
                 float* dX, Direct direct = {}) {
  if (T <= kSlabMaxT) return gemm_t_slabs(kernel_isa() == Isa::Avx512, G, T, N, K, decode, direct, dX);
  gemm_t_panels(ks, G, T, N, K, decode, dX);
}

// The reference: per range of 32 columns, rows decoded in order and accumulated into dX.
void gemm_t_scalar(const float* G, int64_t T, int64_t N, int64_t K, DecodeFn decode, float* dX) {
  const int64_t nranges = (K + kColAlign - 1) / kColAlign;
  pool().parallel_for(nranges, [&](int64_t i0, int64_t i1, int) {
    float row[kColAlign];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c0 = i * kColAlign, cw = std::min(kColAlign, K - c0);
      for (int64_t t = 0; t < T; ++t) std::fill(dX + t * K + c0, dX + t * K + c0 + cw, 0.0f);
      for (int64_t r = 0; r < N; ++r) {
        decode(r, c0, cw, row);
        for (int64_t t = 0; t < T; ++t) {
          const float g = G[t * N + r];
          float* d = dX + t * K + c0;
          for (int64_t c = 0; c < cw; ++c) d[c] += g * row[c];
        }
      }
    }
  });
}

void dense_decode_scalar(const void* W, DType wdt, int64_t K, int64_t r, int64_t c0, int64_t cw, float* out) {
  const size_t es = dtype_size(wdt);
  to_f32(wdt, static_cast<const char*>(W) + size_t(r * K + c0) * es, out, size_t(cw));
}

void hxq_decode_scalar(const HxqView& w, int64_t r, int64_t c0, int64_t cw, float* out) {
  const uint8_t* idx = w.indices + r * w.cols + c0;
  for (int64_t c = 0; c < cw; ++c) out[c] = w.codebook[idx[c]];
  fold_sidecar(w, r, c0, cw, out);
}

}  // namespace

void gemm_t_dense_reference(const float* G, int64_t T, int64_t N, const void* W, DType wdt, int64_t K, float* dX) {
  check_dense("gemm_t_dense", T, N, W, wdt, K, G, dX);
  if (trivial(T, N, K, dX)) return;
  gemm_t_scalar(G, T, N, K, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
    dense_decode_scalar(W, wdt, K, r, c0, cw, out);
  }, dX);
}

void gemm_t_hxq_reference(const float* G, int64_t T, const HxqView& w, float* dX) {
  check_hxq("gemm_t_hxq", G, T, w, dX);
  if (trivial(T, w.rows, w.cols, dX)) return;
  gemm_t_scalar(G, T, w.rows, w.cols, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
    hxq_decode_scalar(w, r, c0, cw, out);
  }, dX);
}

void gemm_t_hxq2_reference(const float* G, int64_t T, const Hxq2View& w, float* dX) {
  check_hxq2("gemm_t_hxq2", G, T, w, dX);
  if (trivial(T, w.rows, w.cols, dX)) return;
  gemm_t_scalar(G, T, w.rows, w.cols, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
    hxq2_decode_row(hxq2_sub_row(w, r, c0, cw), 0, out);
    fold_sidecar(w, r, c0, cw, out);
  }, dX);
}

void gemm_t_dense(const float* G, int64_t T, int64_t N, const void* W, DType wdt, int64_t K, float* dX) {
  check_dense("gemm_t_dense", T, N, W, wdt, K, G, dX);
  if (trivial(T, N, K, dX)) return;
  const detail::KernelSet* ks = detail::active_kernels();
  if (!ks) return gemm_t_dense_reference(G, T, N, W, wdt, K, dX);
  if (wdt == DType::F32) {
    const float* w = static_cast<const float*>(W);
    gemm_t_simd(*ks, G, T, N, K, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
      if (r + kAhead < N) prefetch_bytes(w + (r + kAhead) * K + c0, cw * 4);
      std::memcpy(out, w + r * K + c0, size_t(cw) * 4);
    }, dX, Direct{W, Src::F32});
    return;
  }
  const uint16_t* w = static_cast<const uint16_t*>(W);
  const bool bf16 = wdt == DType::BF16;
  gemm_t_simd(*ks, G, T, N, K, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
    if (r + kAhead < N) prefetch_bytes(w + (r + kAhead) * K + c0, cw * 2);
    half_row_avx2(w + r * K + c0, cw, bf16, out);
  }, dX, Direct{W, bf16 ? Src::BF16 : Src::F16});
}

void gemm_t_hxq(const float* G, int64_t T, const HxqView& w, float* dX) {
  check_hxq("gemm_t_hxq", G, T, w, dX);
  if (trivial(T, w.rows, w.cols, dX)) return;
  const detail::KernelSet* ks = detail::active_kernels();
  if (!ks) return gemm_t_hxq_reference(G, T, w, dX);
  if (kernel_isa() == Isa::Avx512) {
    const HelixPlanes hp(w.codebook);
    gemm_t_simd(*ks, G, T, w.rows, w.cols, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
      if (r + kAhead < w.rows) prefetch_bytes(w.indices + (r + kAhead) * w.cols + c0, cw);
      helix_row_avx512(hp, w.indices + r * w.cols + c0, cw, out);
      fold_sidecar(w, r, c0, cw, out);
    }, dX);
    return;
  }
  // AVX2: plain table loads (VPGATHERDD measured slower than scalar loads on Zen 3/4, see
  // hxq2_avx2.cpp).
  gemm_t_simd(*ks, G, T, w.rows, w.cols, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
    if (r + kAhead < w.rows) prefetch_bytes(w.indices + (r + kAhead) * w.cols + c0, cw);
    hxq_decode_scalar(w, r, c0, cw, out);
  }, dX);
}

void gemm_t_hxq2(const float* G, int64_t T, const Hxq2View& w, float* dX) {
  check_hxq2("gemm_t_hxq2", G, T, w, dX);
  if (trivial(T, w.rows, w.cols, dX)) return;
  const detail::KernelSet* ks = detail::active_kernels();
  if (!ks) return gemm_t_hxq2_reference(G, T, w, dX);
  auto ahead = [&](int64_t r, int64_t c0, int64_t cw) {
    if (r + kAhead >= w.rows) return;
    const Hxq2View a = hxq2_sub_row(w, r + kAhead, c0, cw);
    prefetch_bytes(a.indices, a.row_bytes());
    prefetch_bytes(a.codes, a.groups());
  };
  if (kernel_isa() == Isa::Avx512) {
    // T = 1, 2048 x 2048, one core: 0.57 ms (8 bits) and 0.42 ms (4 bits) against 2.1 and 1.7 ms
    // with the AVX2 row decoder.
    const V2Tables tb(w);
    gemm_t_simd(*ks, G, T, w.rows, w.cols, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
      ahead(r, c0, cw);
      v2_row_avx512(w, tb, r, c0, cw, out);
      fold_sidecar(w, r, c0, cw, out);
    }, dX);
    return;
  }
  gemm_t_simd(*ks, G, T, w.rows, w.cols, [&](int64_t r, int64_t c0, int64_t cw, float* out) {
    ahead(r, c0, cw);
    detail::hxq2_decode_row_avx2(hxq2_sub_row(w, r, c0, cw), 0, out);
    fold_sidecar(w, r, c0, cw, out);
  }, dX);
}

}  // namespace hxq
