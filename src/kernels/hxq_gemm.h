// HXQ matrix kernels: Y[T, N] = X[T, K] · Wᵀ where W is decoded inside the kernel from a 256-entry
// float32 codebook and uint8 indices, plus a sparse sidecar correction — never materialised.
#pragma once
#include <cstdint>

namespace hxq {

// One HXQ weight [rows = N outputs, cols = K inputs] as the kernels consume it.
// The sidecar is stored as CSR over rows: entries sc_row_ptr[r] .. sc_row_ptr[r+1]-1 belong to
// row r, at column sc_col[e], and add sc_delta[e] = exact value − codebook[index] to W[r, col].
struct HxqView {
  int64_t rows = 0, cols = 0;
  const float* codebook = nullptr;  // 256 entries (unused tail entries may be anything finite)
  const uint8_t* indices = nullptr;  // [rows, cols] row-major
  const int64_t* sc_row_ptr = nullptr;  // [rows + 1], or nullptr when there is no sidecar
  const int32_t* sc_col = nullptr;
  const float* sc_delta = nullptr;
  // Promise by the view's producer: every codebook entry the indices can reach has zero low 16
  // bits (is exactly a BF16 value). The AVX-512 decode regime then looks up only the two high
  // byte planes (half the permutes); results are bit-identical to the float32 path. A false
  // promise gives the truncated values, never undefined behaviour.
  bool codebook_bf16_exact = false;
};

// Whether all n entries of cb are exactly representable as BF16 (low 16 bits zero).
bool codebook_is_bf16_exact(const float* cb, int64_t n);

// How the decode regime (few rows of X: dispatch.h use_decode) computes HXQ products:
// * Fast (default): on AVX-512 with VBMI and VNNI, integer dot products on a 16-bit form of the
//   codebook (affine, error <= (max − min) / 131070 per entry) and of X (per 1024-column block,
//   error <= max|x| / 65278 per element); ~1.7× the exact path's speed, at the memory-bandwidth
//   limit. Up to 4 rows of X per pass over W, more in blocks of 4; each row is quantised on its
//   own, so its result does not depend on the other rows. Everywhere else (other ISAs, from a
//   block with non-finite X on) it is the exact path.
// * Exact: float32 codebook values and X, exact products, float32 sums (every ISA, every T).
// The sidecar is always added exactly. Prefill (larger T) is always exact.
enum class HxqMath { Fast, Exact };
// The math of this thread: the innermost HxqMathScope, else the process default (initialised from
// the environment variable HXQ_EXACT: "1" = Exact; set_hxq_math changes it).
HxqMath hxq_math();
void set_hxq_math(HxqMath m);
// Overrides the math on the calling thread while it lives (e.g. one model of a comparison).
class HxqMathScope {
 public:
  explicit HxqMathScope(HxqMath m);
  ~HxqMathScope();
  HxqMathScope(const HxqMathScope&) = delete;
  HxqMathScope& operator=(const HxqMathScope&) = delete;

 private:
  int saved_;
};
// Whether HxqMath::Fast has a fast kernel on this machine with the current kernel ISA.
bool hxq_fast_available();

// Y [T, rows] = X [T, cols] · Wᵀ (+ sidecar), row-major float32, not overlapping. Exact float32
// codebook values unless hxq_math() is Fast and the fast kernel applies (see HxqMath); same
// regimes, threading and ISA dispatch as gemm_dense. A sidecar with decreasing row pointers or a
// column outside [0, cols) throws hxq::Error.
void gemm_hxq(const float* X, int64_t T, const HxqView& w, float* Y);

}  // namespace hxq
