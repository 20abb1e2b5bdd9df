#include "models/linear.h"

#include <algorithm>
#include <chrono>
#include <fmt/format.h>

#include "codec/hxq2_weight.h"
#include "codec/hxq_weight.h"
#include "codec/lora.h"
#include "core/error.h"
#include "core/op_profile.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"
#include "kernels/gemm_t.h"
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
  if (lora_) [[unlikely]] add_lora(X, T, Y);
  if (prof)
    op_profile_add(profile_label(T), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   weight_bytes());
}

void Linear::set_lora(std::shared_ptr<const LoraModule> lora) {
  if (lora) {
    const LoraModule& m = *lora;
    if (m.in != in_ || m.out != out_)
      fail("LoRA module '{}' has shape [{}, {}] (out, in), the layer '{}' is [{}, {}]", m.name, m.out, m.in, name_,
           out_, in_);
    if (m.rank <= 0 || m.A.size() != size_t(m.rank * m.in) || m.B.size() != size_t(m.out * m.rank))
      fail("LoRA module '{}': A has {} values and B {} for rank {} and shape [{}, {}]", m.name, m.A.size(),
           m.B.size(), m.rank, m.out, m.in);
  }
  lora_ = std::move(lora);
}

void Linear::grad_input(const float* G, int64_t T, float* dX) const {
  if (T <= 0) return;
  if (kind_ == Kind::Hxq2) {
    gemm_t_hxq2(G, T, hxq2_->view(), dX);
  } else if (kind_ == Kind::Hxq && hxq_->canonical()) {
    gemm_t_hxq(G, T, hxq_->view(), dX);
  } else if (kind_ == Kind::Hxq) {
    // helix-substrate's wide (k > 256) and pair codebooks have no kernel view: one decoded row
    // at a time, dX[t] += G[t, r] · W[r] (in row order, as the references sum).
    std::vector<float> w(static_cast<size_t>(in_));
    std::fill(dX, dX + T * in_, 0.0f);
    for (int64_t r = 0; r < out_; ++r) {
      hxq_->row(r, w.data());
      for (int64_t t = 0; t < T; ++t) {
        const float g = G[t * out_ + r];
        float* d = dX + t * in_;
        for (int64_t c = 0; c < in_; ++c) d[c] += g * w[size_t(c)];
      }
    }
  } else {
    gemm_t_dense(G, T, out_, data_, dtype_, in_, dX);
  }
  if (lora_) {
    // dX += s · (G · B) · A, with G·B [T, rank] through the same transposed kernel
    const LoraModule& m = *lora_;
    std::vector<float> gb(size_t(T * m.rank)), d(size_t(T * in_));
    gemm_t_dense(G, T, out_, m.B.data(), DType::F32, m.rank, gb.data());
    for (auto& x : gb) x *= m.scale;
    gemm_t_dense(gb.data(), T, m.rank, m.A.data(), DType::F32, in_, d.data());
    for (int64_t i = 0; i < T * in_; ++i) dX[i] += d[size_t(i)];
  }
}

// Y += s·(X·Aᵀ)·Bᵀ, in chunks of rows so that the scratch stays small (rank + out floats per row
// of a chunk). The scratch is per thread (Linear::forward may run on several threads at once) and
// only grows: no allocation once warm.
void Linear::add_lora(const float* X, int64_t T, float* Y) const {
  const LoraModule& m = *lora_;
  constexpr int64_t kRows = 64;
  const int64_t rows = std::min(T, kRows);
  thread_local std::vector<float> t_buf, u_buf;
  if (t_buf.size() < size_t(rows * m.rank)) t_buf.resize(size_t(rows * m.rank));
  if (u_buf.size() < size_t(rows * out_)) u_buf.resize(size_t(rows * out_));
  float* t = t_buf.data();
  float* u = u_buf.data();
  for (int64_t r0 = 0; r0 < T; r0 += kRows) {
    const int64_t n = std::min(kRows, T - r0);
    gemm_dense(X + r0 * in_, n, in_, m.A.data(), DType::F32, m.rank, t);  // [n, rank]
    for (int64_t i = 0; i < n * m.rank; ++i) t[i] *= m.scale;
    gemm_dense(t, n, m.rank, m.B.data(), DType::F32, out_, u);  // [n, out]
    float* y = Y + r0 * out_;
    for (int64_t i = 0; i < n * out_; ++i) y[i] += u[i];
  }
}

std::string Linear::profile_label(int64_t T) const {
  std::string kind = kind_ == Kind::Hxq    ? "HXQ helix"
                     : kind_ == Kind::Hxq2 ? fmt::format("HXQ v2 {}-bit", hxq2_->bits())
                                           : fmt::format("dense {}", dtype_name(dtype_));
  std::string l = fmt::format("{} {}x{}", kind, out_, in_);
  if (lora_) l += fmt::format(" +LoRA r={}", lora_->rank);
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
  const size_t adapter = lora_ ? lora_->bytes() : 0;
  if (kind_ == Kind::Hxq) return hxq_->bytes() + adapter;
  if (kind_ == Kind::Hxq2) return hxq2_->bytes() + adapter;
  return size_t(in_ * out_) * dtype_size(dtype_) + adapter;
}

}  // namespace hxq
