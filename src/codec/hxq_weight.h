// A compressed (HXQ) linear weight read from a checkpoint: every variant of the stored format,
// validated, and converted to the kernels' form (u8 indices viewed in the mmap, 256-entry codebook,
// CSR sidecar of deltas) — plus a tile-decoding kernel for wide (k > 256) and pair codebooks.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/hxq_gemm.h"

namespace hxq {

class TensorStore;
struct HxqTensor;

class HxqWeight {
 public:
  // Reads module M's tensors: M.codebook (F32/F16/BF16, [k] with k <= 65536, or [k, 2] = pairs
  // of consecutive input columns), M.indices (U8 or U16 [out, in/d], or 1-D U8 holding 12-bit
  // packed pairs: b0 = a & 0xFF, b1 = (a >> 8) | (b & 0xF) << 4, b2 = b >> 4), optional
  // M.sidecar_positions (I64 [nnz], flat row-major, strictly ascending) + M.sidecar_values
  // ([nnz], replacement values). `out`/`in` (the layer's shape, -1 = unknown) are checked when
  // given and are required for packed 1-D indices. M.bias is not read here (see Linear::hxq).
  // Every problem throws Error "<file>: tensor '<name>': ...".
  static std::shared_ptr<const HxqWeight> load(const TensorStore& store, const std::string& module, int64_t out = -1,
                                               int64_t in = -1);
  // From an in-memory encoding (copies it).
  static std::shared_ptr<const HxqWeight> from_tensor(const HxqTensor& t);

  int64_t rows() const { return rows_; }  // out features
  int64_t cols() const { return cols_; }  // in features
  int64_t codebook_entries() const { return k_; }
  int vector_dim() const { return d_; }
  int64_t sidecar_count() const { return int64_t(sc_col_.size()); }
  // True when the weight is in the kernels' form (scalar codebook, k <= 256, u8 indices).
  bool canonical() const { return canonical_; }
  // The kernels' view (canonical() only).
  HxqView view() const;

  // Y[T, rows] = X[T, cols] · Wᵀ (no bias).
  void forward(const float* X, int64_t T, float* Y) const;
  // Row r of the decoded weight (codebook lookup, sidecar values replacing).
  void row(int64_t r, float* out) const;
  // Bytes of codebook, indices and sidecar (what one forward reads).
  size_t bytes() const;

 private:
  void build_sidecar(const std::vector<int64_t>& pos, const std::vector<float>& val);
  float decoded_no_sidecar(int64_t r, int64_t c) const;
  void decode_row(int64_t r, float* out) const;  // generic path

  int64_t rows_ = 0, cols_ = 0, k_ = 0;
  int d_ = 1;
  bool canonical_ = false;
  bool cb_bf16_ = false;  // canonical codebook exactly BF16 (HxqView::codebook_bf16_exact)
  std::vector<float> codebook_;    // canonical: 256 entries; otherwise k·d
  const uint8_t* idx8_ = nullptr;  // [rows, cols/d], in the mapping or in idx8_own_
  std::vector<uint8_t> idx8_own_;
  std::vector<uint16_t> idx16_;    // wide codebooks (k > 256)
  std::vector<int64_t> sc_row_ptr_;
  std::vector<int32_t> sc_col_;
  std::vector<float> sc_delta_, sc_value_;
};

// The suffixes of the tensors a compressed module M may store (M + suffix), helix and v2 alike:
// ".codebook", ".indices", ".sidecar_positions", ".sidecar_values", ".qparams", ".packed_indices",
// ".scales", ".scale_params" (not ".bias", which a dense module has too).
const std::vector<std::string>& hxq_tensor_suffixes();

// True when the store holds module M in HXQ form: M.codebook and M.indices, or v2's M.qparams
// (codec/hxq2_weight.h; Linear::hxq reads either).
bool is_hxq_module(const TensorStore& store, const std::string& module);

}  // namespace hxq
