// HXQ v2 encoding of one weight matrix (docs/FORMAT.md): a codebook of k = 2^b normalised values
// (b = 8, 6, 5 or 4), one b-bit index per weight, a 6-bit log-scale code per group of G = 32 (or
// 16) consecutive weights of a row, and an optional sidecar of exact values:
//     W[r, c] = s(q[r, c / G]) · codebook[index[r, c]],   s(q) = scale_max · 2^(−q · scale_step)
// The codebook is fitted to the normalised weights W / s by optimal weighted 1-D k-means (weight
// s², so that the error it minimises is the error in W), and each group's scale code is chosen
// among its neighbours to minimise the group's squared error. No calibration data; deterministic.
#pragma once
#include <cstdint>
#include <vector>

#include "codec/hxq_codec.h"
#include "core/dtype.h"
#include "kernels/hxq2_gemm.h"

namespace hxq {

inline constexpr int kHxq2Chunk = 32;   // indices are packed in chunks of 32 weights (4·b bytes)
inline constexpr int kHxq2Codes = 64;   // scale codes are 6 bits
inline constexpr int kHxq2HistBins = 16384;  // histogram resolution of the codebook fit
inline constexpr float kHxq2HistRange = 1.25f;  // normalised values are clamped to ±this for the fit

bool hxq2_bits_supported(int bits);   // 4, 5, 6, 8
bool hxq2_group_supported(int group);  // 16, 32

int64_t hxq2_chunks(int64_t cols);                    // ceil(cols / 32)
int64_t hxq2_row_bytes(int64_t cols, int bits);       // full chunks · 4 · b + ceil(rest · b / 8)
int64_t hxq2_groups(int64_t cols, int group);         // ceil(cols / group)
int64_t hxq2_scale_bytes(int64_t rows, int64_t cols, int group);  // ceil(rows · groups · 6 / 8)

// Index packing: see hxq2_pack_chunk / hxq2_unpack_chunk in kernels/hxq2_gemm.h.
// All indices of one packed row (cols of them) as bytes.
void hxq2_unpack_row(const uint8_t* row, int bits, int64_t cols, uint8_t* idx);
// Scale codes: 6-bit fields, one little-endian bit stream per tensor (code i = r · groups + g at
// bits 6i .. 6i+5).
uint32_t hxq2_scale_code(const uint8_t* srow, int64_t g);
void hxq2_set_scale_code(uint8_t* srow, int64_t g, uint32_t q);
// The 64 scale values s(q) = scale_max · 2^(−q · scale_step) (float32, exp2 in double).
void hxq2_scale_table(float scale_max, float scale_step, float* lut64);

struct Hxq2Tensor {
  int64_t rows = 0, cols = 0;
  int bits = 8, group = 32;
  std::vector<float> codebook;  // 2^bits normalised values, ascending
  bool shared_codebook = false;  // the codebook is the checkpoint's shared one for this b
  std::vector<uint8_t> indices;  // [rows, hxq2_row_bytes]
  std::vector<uint8_t> scales;   // [hxq2_scale_bytes]
  float scale_max = 0, scale_step = 0;
  std::vector<int64_t> sidecar_pos;  // flat row-major, strictly ascending
  std::vector<float> sidecar_val;    // replacement values
  // Bytes this module stores (codebook counted unless shared; qparams and scale parameters 16 bytes; sidecar
  // 12 bytes per entry).
  uint64_t stored_bytes() const;
};

// A weighted histogram of normalised values over [−kHxq2HistRange, kHxq2HistRange]: per bin the
// sum of weights and of weight · value (the codebook fit's input; summed over tensors it fits a
// shared codebook).
struct Hxq2Histogram {
  std::vector<double> w, wu;
  Hxq2Histogram() : w(kHxq2HistBins, 0.0), wu(kHxq2HistBins, 0.0) {}
  void add(const Hxq2Histogram& o);
};

struct Encode2Options {
  int bits = 8;
  int group = 32;
  // Error-driven sidecar: floor(fraction · numel) positions with the largest error, exact values.
  double sidecar_fraction = 0;
  // Given (shared) codebook of 2^bits ascending entries: no fit, only scales and indices.
  const std::vector<float>* codebook = nullptr;
};

// Scale parameters and initial codes of a tensor, and the histogram of its normalised values
// under them (stage 1 of encoding; what a shared codebook is fitted on).
struct Hxq2Scales {
  float scale_max = 0, scale_step = 0;
  std::vector<uint8_t> code;  // [rows, groups], one byte per code
};
Hxq2Scales hxq2_initial_scales(const float* w, int64_t rows, int64_t cols, int group);
Hxq2Histogram hxq2_histogram(const float* w, int64_t rows, int64_t cols, int group, const Hxq2Scales& s);
// The histogram under the scales chosen for `codebook` (a shared codebook's second fitting round).
Hxq2Histogram hxq2_searched_histogram(const float* w, int64_t rows, int64_t cols, int group,
                                      const std::vector<float>& codebook);
// Weighted k-means on a histogram: 2^bits ascending centroids (repeated last entry when fewer
// non-empty bins exist). k < kHxq2CoarseFitK: the optimal DP on all bins. Larger k (the DP costs
// O(k·n·log n): 0.3 s per fit at k = 256 on 16,384 bins): the optimal DP on bins merged to ~8 per
// centroid, then Lloyd iterations on all bins; with `init` (the previous round's codebook), Lloyd
// from it alone. (Synthetic Mamba2-370m at 8 bits: median SQNR 46.621 dB against 46.623 with the
// full DP in both rounds, compression 72 -> 28 s.)
inline constexpr int kHxq2CoarseFitK = 64;
inline constexpr int kHxq2LloydIters = 200;
std::vector<float> hxq2_fit_codebook(const Hxq2Histogram& h, int bits, const std::vector<float>* init = nullptr);

// Encodes w [rows, cols] (float32, finite; throws Error otherwise).
Hxq2Tensor encode2(const float* w, int64_t rows, int64_t cols, const Encode2Options& opts);
Hxq2Tensor encode2(const void* data, DType dtype, int64_t rows, int64_t cols, const Encode2Options& opts);

// Checks sizes, codebook length and order, scale parameters and the sidecar; throws Error.
void validate(const Hxq2Tensor& t);
// Row r decoded (sidecar values replacing).
void decode_row(const Hxq2Tensor& t, int64_t r, float* out);
void decode(const Hxq2Tensor& t, float* out);
// Error of the encoding against the original weights (mse, sqnr_db, max_abs_err; mse_vq without
// the sidecar).
EncodeStats encode_stats(const void* data, DType dtype, const Hxq2Tensor& t);

}  // namespace hxq
