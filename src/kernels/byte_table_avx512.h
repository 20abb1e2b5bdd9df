// Byte-table lookups on AVX-512 VBMI, shared by the helix and v2 kernels (kernels_avx512.cpp,
// hxq2_avx512.cpp, gemm_t.cpp): a 256-entry table of bytes held in four registers answers 64 u8
// indices with two merge-masked VPERMI2B, and the four byte planes of a float32 codebook, each
// looked up that way, interleave into the exact float32 values. Usable from files compiled with
// the AVX-512 flags and from functions carrying the same target attribute.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace hxq::detail {

// t[0..3] = table entries 0..63, 64..127, 128..191, 192..255. Lanes of idx with bit 7 clear take
// entries 0..127 from (t0, t1); the others keep their index, which the second (merge-masked)
// permute looks up in (t2, t3): no blend needed.
[[gnu::target("avx512f,avx512bw,avx512vl,avx512vbmi")]] inline __m512i byte_table_lookup(const __m512i* t,
                                                                                         __m512i idx) {
  const __mmask64 top = _mm512_movepi8_mask(idx);
  const __m512i lo = _mm512_mask2_permutex2var_epi8(t[0], idx, __mmask64(~top), t[1]);
  return _mm512_mask2_permutex2var_epi8(t[2], lo, top, t[3]);
}

// The byte planes of a 256-entry float32 codebook (plane p = byte p of every entry), in memory.
struct CodebookBytePlanes {
  alignas(64) uint8_t p[4][256];
  explicit CodebookBytePlanes(const float* cb) {
    for (int e = 0; e < 256; ++e) {
      uint32_t u;
      std::memcpy(&u, cb + e, 4);
      for (int b = 0; b < 4; ++b) p[b][e] = uint8_t(u >> (8 * b));
    }
  }
};

// ... as byte_table_lookup's tables: t[plane][quarter].
[[gnu::target("avx512f,avx512bw,avx512vl,avx512vbmi")]] inline void load_byte_planes(const CodebookBytePlanes& cp,
                                                                                     __m512i (&t)[4][4]) {
  for (int b = 0; b < 4; ++b)
    for (int q = 0; q < 4; ++q) t[b][q] = _mm512_load_si512(cp.p[b] + 64 * q);
}

// The four looked-up planes of 64 entries -> v[0..3], their float32 values. The unpacks
// work per 128-bit lane: vector j, lane L, dword i holds the value of index 16L + 4j + i.
[[gnu::target("avx512f,avx512bw,avx512vl,avx512vbmi")]] inline void interleave_byte_planes(const __m512i (&P)[4],
                                                                                           __m512* v) {
  const __m512i a = _mm512_unpacklo_epi8(P[0], P[1]), b = _mm512_unpackhi_epi8(P[0], P[1]);
  const __m512i c = _mm512_unpacklo_epi8(P[2], P[3]), d = _mm512_unpackhi_epi8(P[2], P[3]);
  v[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(a, c));
  v[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(a, c));
  v[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(b, d));
  v[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(b, d));
}

}  // namespace hxq::detail
