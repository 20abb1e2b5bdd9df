// An HXQ v2 linear weight (docs/FORMAT.md) read from a checkpoint or built from an in-memory
// encoding: validated, and held in the kernels' form (packed indices viewed in the file mapping,
// 2^b-entry codebook, one scale code byte per group, CSR sidecar of deltas).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/hxq2_gemm.h"

namespace hxq {

class TensorStore;
struct Hxq2Tensor;

// Name of the checkpoint-wide codebook that v2 modules without their own `M.codebook` use.
std::string hxq2_shared_codebook_name(int bits);

class Hxq2Weight {
 public:
  // Module M's tensors: M.qparams (I32 [2] = {bits | group << 8 | 2 << 16,
  // in_features}), M.packed_indices (U8
  // [out, row_bytes]), M.scales (U8 [ceil(out · groups · 6 / 8)]), M.scale_params (F32 [2] = {max,
  // step}), M.codebook (float [2^bits]; absent: the shared hxq2_shared_codebook_name(bits)),
  // optional M.sidecar_positions (I64, flat, strictly ascending) + M.sidecar_values (float).
  // `out`/`in` (-1 = unknown) are checked when given. Every problem throws Error
  // "<file>: tensor '<name>': ...".
  static std::shared_ptr<const Hxq2Weight> load(const TensorStore& store, const std::string& module, int64_t out = -1,
                                                int64_t in = -1);
  static std::shared_ptr<const Hxq2Weight> from_tensor(const Hxq2Tensor& t);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int bits() const { return bits_; }
  int group() const { return group_; }
  bool shared_codebook() const { return shared_; }
  int64_t sidecar_count() const { return int64_t(sc_col_.size()); }
  Hxq2View view() const;

  void forward(const float* X, int64_t T, float* Y) const;  // Y[T, rows] = X[T, cols] · Wᵀ
  void row(int64_t r, float* out) const;                    // decoded row, sidecar values replacing
  size_t bytes() const;  // what one forward reads: indices, scale codes, codebook, sidecar

 private:
  void build_sidecar(const std::vector<int64_t>& pos, const std::vector<float>& val);

  int64_t rows_ = 0, cols_ = 0;
  int bits_ = 8, group_ = 32;
  bool shared_ = false;
  std::vector<float> codebook_, lut_;
  const uint8_t* idx_ = nullptr;
  std::vector<uint8_t> idx_own_;
  std::vector<uint8_t> codes_;
  std::vector<int64_t> sc_row_ptr_;
  std::vector<int32_t> sc_col_;
  std::vector<float> sc_delta_, sc_value_;
};

// True when the store holds module M in v2 form (M.qparams).
bool is_hxq2_module(const TensorStore& store, const std::string& module);

}  // namespace hxq
