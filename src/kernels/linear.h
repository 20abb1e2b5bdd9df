// A linear layer's weight W [out, in] in the form the checkpoint stores it — dense F32/F16/BF16
// or HXQ (codebook + indices + sidecar) — and the products computed straight from that storage.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace hxq {

struct TensorInfo;

class Linear {
 public:
  enum class Kind { Dense, Hxq };

  Linear() = default;
  // Dense weight [out, in] (F32, F16 or BF16), optional bias [out] (any float dtype).
  static Linear dense(const TensorInfo& w, const TensorInfo* bias = nullptr);

  Kind kind() const { return kind_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  DType dtype() const { return dtype_; }
  const void* data() const { return data_; }
  bool has_bias() const { return !bias_.empty(); }

  // Y[T, out] = X[T, in] · Wᵀ (+ bias). X and Y are row-major float32.
  void forward(const float* X, int64_t T, float* Y) const;
  // Row r of W (an embedding lookup when W is a token embedding).
  void row(int64_t r, float* out) const;
  // Bytes of weight data read by one forward (codebook, indices and sidecar for HXQ).
  size_t weight_bytes() const;

 private:
  Kind kind_ = Kind::Dense;
  int64_t in_ = 0, out_ = 0;
  DType dtype_ = DType::F32;
  const void* data_ = nullptr;
  std::vector<float> bias_;
};

}  // namespace hxq
