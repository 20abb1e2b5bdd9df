// HXQ encoding of one weight matrix: 256-entry float32 codebook (optimal 1-D k-means or
// helix-substrate's Lloyd), one uint8 index per weight, and a sparse sidecar of exact values.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace hxq {

// One encoded matrix [rows, cols]. Decoding: W = codebook[indices], then W.flat[sidecar_pos[i]] =
// sidecar_val[i] (a replacement, as in the checkpoint format).
// The codebook always has 256 entries, ascending. When fewer than 256 distinct centroids exist
// (fewer distinct weight values than k, or k < 256), the real centroids come first and the
// remaining entries repeat the last one, so no index ever points at them.
struct HxqTensor {
  std::vector<float> codebook;
  std::vector<uint8_t> indices;      // [rows, cols] row-major
  std::vector<int64_t> sidecar_pos;  // flat row-major positions, strictly ascending
  std::vector<float> sidecar_val;    // values that replace the decoded weight there
  int64_t rows = 0, cols = 0;
};

enum class CodebookMethod {
  Optimal,  // minimum-SSE 1-D k-means (exact DP; see kmeans1d.h and the F32 note below)
  Lloyd,    // helix-substrate's _simple_kmeans, bit-exact (see helix_reference.h)
};

enum class SidecarMethod {
  None,
  Error,      // the `budget` positions with the largest |w − codebook[index]|; exact values
  Magnitude,  // helix-substrate's percentile rule on |w| (per-module policy), values as float16
};

enum class CodebookPrecision { F32, Bf16 };

struct EncodeOptions {
  CodebookMethod codebook = CodebookMethod::Optimal;
  SidecarMethod sidecar = SidecarMethod::Error;
  // Error sidecar: budget = floor(sidecar_fraction · numel) positions (only positions whose
  // error is > 0 are taken). Ties in error at the cut are broken by lowest position.
  double sidecar_fraction = 0.001;
  // Module name (tensor name minus ".weight"): chooses helix's percentile/cap for Magnitude.
  std::string module;
  // Overrides of the Magnitude policy (<= 0: take helix's per-module default).
  double sidecar_percentile = 0;
  int64_t sidecar_max = 0;
  // What the float32 weights originally were. BF16/F16 sources have <= 65,536 distinct values:
  // their k-means is always solved exactly. (Values not exactly representable in that dtype are
  // handled as F32.)
  DType source_dtype = DType::F32;
  int k = 256;  // codebook entries used (1..256)
  // F32 sources with more distinct values than this are clustered exactly on a histogram of at
  // most this many bins (then refined by Lloyd steps on the exact values; see kF32ExactBound).
  int64_t f32_exact_bound = 0;  // 0: kF32ExactBound
  // Bf16: after the codebook is found, each centroid is rounded to the nearest BF16 value
  // (duplicates merged, ascending), every weight is re-assigned to the nearest rounded centroid
  // and the Error sidecar is chosen on the new errors (Magnitude sidecars do not depend on the
  // codebook). Such codebooks let the kernels decode from two byte planes (HxqView).
  CodebookPrecision codebook_precision = CodebookPrecision::F32;
};

// F32 sources: exact optimal k-means when the tensor has at most this many distinct values.
// Above it the sorted distinct values are grouped into <= kF32ExactBound consecutive bins, chosen
// greedily to keep every bin's (count × value width) under a threshold τ (the smallest τ that
// fits). The DP is exact on the bins, so the result is optimal among partitions whose boundaries
// fall on bin edges; snapping each of the k−1 optimal boundaries to a bin edge moves at most one
// bin's points across a boundary between centroids c_j < c_{j+1}, each by at most the bin
// width, so
//     SSE(result) <= SSE(optimum) + 2 · Σ_j (c_{j+1} − c_j) · τ <= SSE(optimum) + 2 (max − min) τ.
// Lloyd steps on the exact values afterwards can only lower the SSE further.
inline constexpr int64_t kF32ExactBound = 1 << 16;

// Encodes w [rows, cols] (float32). Throws Error on NaN/Inf weights or bad options.
HxqTensor encode(const float* w, int64_t rows, int64_t cols, const EncodeOptions& opts);
// Same from raw storage (F32, F16 or BF16) without converting the whole tensor first (the BF16/F16
// path works on the 16-bit codes directly). opts.source_dtype is ignored (taken from dtype).
HxqTensor encode(const void* data, DType dtype, int64_t rows, int64_t cols, const EncodeOptions& opts);

// Decodes into out [rows·cols]. Validates indices (< 256), sidecar positions (in range, strictly
// ascending) and sizes; throws Error otherwise.
void decode(const HxqTensor& t, float* out);
void validate(const HxqTensor& t);

struct EncodeStats {
  double mse = 0;          // mean of (w − decoded)², over all elements
  double sqnr_db = 0;      // 10·log10(Σ w² / Σ (w − decoded)²); +inf when exact
  double max_abs_err = 0;  // max |w − decoded|
  double mse_vq = 0;       // the same MSE without the sidecar (codebook lookup only)
};
// Compares the encoding with the original weights (never materialises the decoded matrix).
EncodeStats encode_stats(const float* w, const HxqTensor& t);
EncodeStats encode_stats(const void* data, DType dtype, const HxqTensor& t);

// Nearest-centroid index of x for an ascending codebook c[0..k-1] (exact comparison, lower index
// on exact ties): the number of midpoints (c[j] + c[j+1]) / 2 (computed in double) below x.
uint8_t nearest_index(float x, const float* c, int k);

}  // namespace hxq
