// HXQ v2 matrix kernels: Y[T, N] = X[T, K] · Wᵀ where W[r, c] = s[r, c / G] · codebook[index[r, c]]
// (+ a sparse sidecar) is decoded inside the kernel from b-bit packed indices (b = 4, 5, 6, 8), a
// codebook of 2^b floats and per-group scales — never materialised (see docs/FORMAT.md).
#pragma once
#include <cstdint>
#include <vector>

namespace hxq {

// Index packing of one chunk of 32 weights in 4·b bytes (the layout of docs/FORMAT.md):
//   b = 8: byte j = idx[j];
//   b = 4, 5, 6: bytes 0..15 = (idx[j] & 15) | (idx[j + 16] & 15) << 4;
//   b = 5: then a little-endian u32 whose bit j is bit 4 of idx[j];
//   b = 6: then a little-endian u64 whose bits 2j, 2j+1 are bits 4, 5 of idx[j].
// A row whose length is not a multiple of 32 ends in a short chunk of n < 32 weights stored in
// ceil(n·b / 8) bytes as a little-endian bit stream (index j at bits j·b .. j·b+b−1): no padding.
void hxq2_pack_chunk(const uint8_t* idx32, int bits, uint8_t* out);
void hxq2_unpack_chunk(const uint8_t* in, int bits, uint8_t* idx32);
void hxq2_pack_tail(const uint8_t* idx, int64_t n, int bits, uint8_t* out);
void hxq2_unpack_tail(const uint8_t* in, int64_t n, int bits, uint8_t* idx);  // idx[n..31] = 0
// Bytes of one packed row of `cols` indices.
inline int64_t hxq2_packed_row_bytes(int64_t cols, int bits) {
  return cols / 32 * 4 * bits + (cols % 32 * bits + 7) / 8;
}

// One v2 weight [rows = N outputs, cols = K inputs] as the kernels consume it.
struct Hxq2View {
  int64_t rows = 0, cols = 0;
  int bits = 8;                       // 4, 5, 6 or 8
  int group = 32;                     // 16 or 32 weights per scale
  const float* codebook = nullptr;    // 2^bits entries
  const uint8_t* indices = nullptr;   // [rows, row_bytes()]
  const uint8_t* codes = nullptr;     // [rows, groups] scale codes, one byte each (< 64)
  const float* scale_lut = nullptr;   // 64 scale values
  // Sidecar, CSR over rows (as HxqView): entries add sc_delta[e] to W[r, sc_col[e]].
  const int64_t* sc_row_ptr = nullptr;
  const int32_t* sc_col = nullptr;
  const float* sc_delta = nullptr;

  int64_t row_bytes() const { return hxq2_packed_row_bytes(cols, bits); }
  int64_t groups() const { return (cols + group - 1) / group; }
};

// Row r of W decoded without the sidecar (the scalar reference of every kernel).
void hxq2_decode_row(const Hxq2View& w, int64_t r, float* out);

// Y [T, rows] = X [T, cols] · Wᵀ (+ sidecar), row-major float32, not overlapping. With a SIMD
// kernel ISA (AVX2 or AVX-512): decode regime (few rows of X; with the fast kernels up to
// kHxq2FastDecodeMaxT, in blocks of 8) = the fast kernels or the AVX2 row decoder + dot
// products, prefill = decoded panels through the packed float micro-kernel; scalar ISA = the
// reference. A view with bad sizes or sidecar throws hxq::Error.
void gemm_hxq2(const float* X, int64_t T, const Hxq2View& w, float* Y);
// The scalar reference alone (tests).
void gemm_hxq2_reference(const float* X, int64_t T, const Hxq2View& w, float* Y);

// Rows of X up to which the fast kernels (in blocks of 8) run instead of the prefill panels.
inline constexpr int64_t kHxq2FastDecodeMaxT = 64;

// Whether HxqMath::Fast (hxq_gemm.h) has a fast v2 kernel for this bit width with the current
// kernel ISA: b = 4, 5, 6 on every SIMD ISA (the AVX2 integer kernel below), and b = 8 with the
// AVX-512 kernels on a CPU with VNNI (hxq2_avx512.cpp: VPERMI2B lookups; that kernel also serves
// b = 5, 6 there). With AVX2 alone b = 8 is exact: its 256-entry table needs one load per weight
// either way (a 16-bit table of all index pairs, 256 KiB, halves the loads but measured 0.7x the
// exact path's speed: it misses in L2).
bool hxq2_fast_available(int bits);

namespace detail {
// The AVX2 row decoder (hxq2_avx2.cpp; AVX2 + FMA CPUs only): bit-identical to hxq2_decode_row.
void hxq2_decode_row_avx2(const Hxq2View& w, int64_t r, float* out);
// The prefill panel of rows n0 .. n0 + n − 1 with the sidecar: dst[k · nr + i] (nr a multiple of
// 8; rows n .. nr − 1 zero).
void hxq2_pack_panel_avx2(const Hxq2View& w, int64_t n0, int64_t n, int64_t nr, float* dst);

// Fast decode (HxqMath::Fast, T <= 8 rows of X per call — gemm_hxq2 runs more in blocks of 8 —
// the widths of hxq2_fast_available): integer dot products
// on 16-bit forms of the codebook and of X.
//  * codebook: q[j] = round(c[j] / cs), cs = max|c| / 16383 (error <= cs / 2 per entry);
//  * X: per block of kHxq2XBlock columns, q = round(x / xs), xs = max|x in block| / 16383 (error
//    <= xs / 2 per element);
//  * indices -> 16-bit values by byte shuffles (VPSHUFB) of 16-entry tables (AVX2) or VPERMI2B of
//    the 256-entry table (AVX-512, b = 8); X is stored per chunk of 32 columns in the order the
//    AVX2 vectors come out: columns 0..7, 16..23, 8..15, 24..31 (chunk = 32), or per chunk of 64
//    in the order of the AVX-512 unpacks: the first 8 columns of each 16-column block, then the
//    last 8, blocks in the order 0, 1, 2, 3 (b = 8) or 0, 2, 1, 3 (b = 5, 6: nibble_lanes);
//  * per group, Σ q_c·q_x in exact int32 (|sum| <= 4 · 16383² < 2^31 per lane), then float32:
//    y = cs · Σ_blocks xs · Σ_groups s_g · (int sum).
// So |y − exact| <= Σ_c |s_g|·(cs/2·|x_c| + xs/2·|c[idx_c]|) + float32 rounding of the sums. The
// sidecar is always added exactly (from the float X).
inline constexpr int64_t kHxq2XBlock = 256;
struct Hxq2QuantX {
  int64_t T = 0, K = 0, K32 = 0;  // K32: K rounded up to `chunk` (zero padded): the row stride
  int chunk = 32;                 // 32 (AVX2 order) or 64 (AVX-512 order)
  bool nibble_lanes = false;      // chunk 64: blocks in the order 0, 2, 1, 3
  std::vector<int16_t> q;         // [T][K32], permuted per chunk as above
  std::vector<float> xs;          // [T][ceil(K / kHxq2XBlock)]
  int16_t cbq[256] = {};          // the 16-bit codebook of the weight (hxq2_quant_codebook)
  float cs = 0;                   // its step
};
// The 16-bit codebook (above) of w into q.cbq / q.cs, once per product (not per task).
void hxq2_quant_codebook(const Hxq2View& w, Hxq2QuantX& q);
// False when X holds a non-finite value (the caller then takes the exact path).
bool hxq2_quant_x(const float* X, int64_t T, int64_t K, Hxq2QuantX& q, int chunk = 32, bool nibble_lanes = false);
// Y[t, n] for n in [n0, n1), t < q.T <= 8, without the sidecar (AVX2 + FMA CPUs only; b <= 6,
// a finite codebook).
void hxq2_fast_rows_avx2(const Hxq2QuantX& q, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy);
// The same for b = 5, 6, 8 from X quantised with chunk = 64 (AVX-512 F/BW/VBMI/VNNI CPUs only).
void hxq2_fast_rows_avx512(const Hxq2QuantX& q, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy);
}  // namespace detail

}  // namespace hxq
