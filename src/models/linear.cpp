#include "models/linear.h"

#include <chrono>
#include <fmt/format.h>

#include "codec/hxq2_weight.h"
#include "codec/hxq_weight.h"
#include "core/error.h"
#include "core/op_profile.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"

namespace hxq {

Linear Linear::dense(const TensorInfo& w, const TensorInfo* bias) {
  if (w.shape.size() != 2)
    fail("{}: tensor '{}': expected a 2-D weight, got shape {}", w.file, w.name, w.shape_str());
  if (w.dtype != DType::F32 && w.dtype != DType::F16 && w.dtype != DType::BF16)
    fail("{}: tensor '{}': unsupported weight dtype {} (need F32, F16 or BF16)", w.file, w.name,
         dtype_name(w.dtype));
  Linear l;
  l.kind_ = Kind::Dense;
  l.out_ = w.shape[0];
  l.in_ = w.shape[1];
  l.dtype_ = w.dtype;
  l.data_ = w.data;
  if (bias) {
    if (bias->numel() != l.out_ || bias->shape.size() != 1)
      fail("{}: tensor '{}': bias shape {} does not match {} outputs", bias->file, bias->name, bias->shape_str(),
           l.out_);
    l.bias_.resize(size_t(l.out_));
    to_f32(bias->dtype, bias->data, l.bias_.data(), l.bias_.size());
  }
  return l;
}

namespace {

std::vector<float> load_bias(const TensorStore& store, const std::string& module, int64_t rows) {
  std::vector<float> bias;
  if (const TensorInfo* b = store.find(module + ".bias")) {
    if (b->shape.size() != 1 || b->numel() != rows)
      fail("{}: tensor '{}': bias shape {} does not match {} outputs", b->file, b->name, b->shape_str(), rows);
    if (b->dtype != DType::F32 && b->dtype != DType::F16 && b->dtype != DType::BF16)
      fail("{}: tensor '{}': unsupported bias dtype {}", b->file, b->name, dtype_name(b->dtype));
    bias.resize(size_t(rows));
    to_f32(b->dtype, b->data, bias.data(), bias.size());
  }
  return bias;
}

}  // namespace

Linear Linear::hxq(const TensorStore& store, const std::string& module, int64_t out, int64_t in) {
  if (is_hxq2_module(store, module)) {
    auto w2 = Hxq2Weight::load(store, module, out, in);
    auto bias = load_bias(store, module, w2->rows());
    return hxq(std::move(w2), std::move(bias));
  }
  auto w = HxqWeight::load(store, module, out, in);
  return hxq(w, load_bias(store, module, w->rows()));
}

Linear Linear::hxq(std::shared_ptr<const Hxq2Weight> w, std::vector<float> bias) {
  if (!w) fail("Linear::hxq: null weight");
  if (!bias.empty() && int64_t(bias.size()) != w->rows())
    fail("Linear::hxq: bias has {} entries for {} outputs", bias.size(), w->rows());
  Linear l;
  l.kind_ = Kind::Hxq2;
  l.out_ = w->rows();
  l.in_ = w->cols();
  l.dtype_ = DType::F32;
  l.bias_ = std::move(bias);
  l.hxq2_ = std::move(w);
  return l;
}

Linear Linear::hxq(std::shared_ptr<const HxqWeight> w, std::vector<float> bias) {
  if (!w) fail("Linear::hxq: null weight");
  if (!bias.empty() && int64_t(bias.size()) != w->rows())
    fail("Linear::hxq: bias has {} entries for {} outputs", bias.size(), w->rows());
  Linear l;
  l.kind_ = Kind::Hxq;
  l.out_ = w->rows();
  l.in_ = w->cols();
  l.dtype_ = DType::F32;
  l.data_ = nullptr;
  l.bias_ = std::move(bias);
  l.hxq_ = std::move(w);
  return l;
}

void Linear::forward(const float* X, int64_t T, float* Y) const {
  const bool prof = op_profile_enabled();
  const auto t0 = prof ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  if (kind_ == Kind::Hxq) hxq_->forward(X, T, Y);
  else if (kind_ == Kind::Hxq2) hxq2_->forward(X, T, Y);
  else gemm_dense(X, T, in_, data_, dtype_, out_, Y);
  if (!bias_.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < out_; ++o) Y[t * out_ + o] += bias_[size_t(o)];
  if (prof)
    op_profile_add(profile_label(T), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   weight_bytes());
}

std::string Linear::profile_label(int64_t T) const {
  std::string kind = kind_ == Kind::Hxq    ? "HXQ helix"
                     : kind_ == Kind::Hxq2 ? fmt::format("HXQ v2 {}-bit", hxq2_->bits())
                                           : fmt::format("dense {}", dtype_name(dtype_));
  std::string l = fmt::format("{} {}x{}", kind, out_, in_);
  if (T != 1) l += fmt::format(" T={}", T);
  return l;
}

void Linear::row(int64_t r, float* out) const {
  if (r < 0 || r >= out_) fail("row {} out of range [0, {})", r, out_);
  if (kind_ == Kind::Hxq) return hxq_->row(r, out);
  if (kind_ == Kind::Hxq2) return hxq2_->row(r, out);
  to_f32(dtype_, static_cast<const char*>(data_) + size_t(r * in_) * dtype_size(dtype_), out, size_t(in_));
}

bool Linear::fast_decode_kernel() const {
  if (kind_ == Kind::Hxq) return hxq_fast_available();
  if (kind_ == Kind::Hxq2) return hxq2_fast_available(hxq2_->bits());
  return false;
}

size_t Linear::weight_bytes() const {
  if (kind_ == Kind::Hxq) return hxq_->bytes();
  if (kind_ == Kind::Hxq2) return hxq2_->bytes();
  return size_t(in_ * out_) * dtype_size(dtype_);
}

}  // namespace hxq
