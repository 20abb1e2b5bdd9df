#include "codec/hxq_weight.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "codec/hxq_codec.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"

namespace hxq {

namespace {

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

std::vector<float> read_floats(const TensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

}  // namespace

const std::vector<std::string>& hxq_tensor_suffixes() {
  static const std::vector<std::string> s{".codebook", ".indices", ".sidecar_positions", ".sidecar_values",
                                          ".qparams", ".packed_indices", ".scales", ".scale_params"};
  return s;
}

bool is_hxq_module(const TensorStore& store, const std::string& module) {
  return (store.contains(module + ".codebook") && store.contains(module + ".indices")) ||
         store.contains(module + ".qparams");
}

std::shared_ptr<const HxqWeight> HxqWeight::load(const TensorStore& store, const std::string& module, int64_t out,
                                                 int64_t in) {
  const TensorInfo* cb = store.find(module + ".codebook");
  const TensorInfo* ix = store.find(module + ".indices");
  if (!cb || !ix)
    fail("{}: module '{}' is not HXQ-compressed (needs tensors '{}.codebook' and '{}.indices')", store.location(),
         module, module, module);
  for (const char* sfx : {".svd_U", ".svd_s", ".svd_Vt", ".channel_scales"})
    if (const TensorInfo* t = store.find(module + sfx))
      fail("{}: tensor '{}': HXQ modules with SVD residuals or channel scales are not supported", t->file, t->name);
  if (const TensorInfo* t = store.find(module + ".weight"))
    fail("{}: tensor '{}': module '{}' has both a dense weight and a codebook", t->file, t->name, module);

  auto w = std::make_shared<HxqWeight>();
  // ---- codebook
  if (!is_float_dtype(cb->dtype))
    fail("{}: tensor '{}': codebook dtype {} (need F32, F16 or BF16)", cb->file, cb->name, dtype_name(cb->dtype));
  if (cb->shape.size() == 1) w->d_ = 1;
  else if (cb->shape.size() == 2 && cb->shape[1] == 2) w->d_ = 2;
  else fail("{}: tensor '{}': codebook shape {} (need [k] or [k, 2])", cb->file, cb->name, cb->shape_str());
  w->k_ = cb->shape[0];
  if (w->k_ < 1 || w->k_ > 65536)
    fail("{}: tensor '{}': codebook has {} entries (need 1 to 65536)", cb->file, cb->name, w->k_);
  std::vector<float> cbv = read_floats(*cb);
  for (float x : cbv)
    if (!std::isfinite(x)) fail("{}: tensor '{}': codebook holds a non-finite value", cb->file, cb->name);
  const int d = w->d_;

  // ---- indices: shape and storage
  enum class Store { U8, U16, Packed12 } st;
  if (ix->dtype == DType::U8) st = Store::U8;
  else if (ix->dtype == DType::U16) st = Store::U16;
  else fail("{}: tensor '{}': indices dtype {} (need U8, U16 or 12-bit packed U8)", ix->file, ix->name, dtype_name(ix->dtype));
  int64_t rows, cols;
  if (ix->shape.size() == 2) {
    rows = ix->shape[0];
    cols = ix->shape[1] * d;
    if ((out >= 0 && rows != out) || (in >= 0 && cols != in))
      fail("{}: tensor '{}': indices shape {} does not match the layer's [{}, {}]{}", ix->file, ix->name,
           ix->shape_str(), out, in, d == 2 ? " (pair codebook: [out, in/2])" : "");
  } else if (ix->shape.size() == 1) {
    if (out < 0 || in < 0)
      fail("{}: tensor '{}': 1-D (packed) indices need the layer shape, which is not known here", ix->file, ix->name);
    if (in % d) fail("{}: tensor '{}': {} input features not divisible by the codebook's vector size {}", ix->file, ix->name, in, d);
    rows = out;
    cols = in;
    const int64_t nidx = out * (in / d);
    if (ix->shape[0] == nidx) {
      // flat, unpacked
    } else if (st == Store::U8 && nidx % 2 == 0 && ix->shape[0] == nidx / 2 * 3) {
      st = Store::Packed12;
    } else {
      fail("{}: tensor '{}': {} index entries fit neither {} plain nor {} 12-bit packed indices for the layer [{}, {}]",
           ix->file, ix->name, ix->shape[0], nidx, nidx % 2 ? std::string("(odd count)") : std::to_string(nidx / 2 * 3),
           out, in);
    }
  } else {
    fail("{}: tensor '{}': indices shape {} (need [out, in/d] or packed 1-D)", ix->file, ix->name, ix->shape_str());
  }
  if (rows < 0 || cols < 0 || cols > std::numeric_limits<int32_t>::max())
    fail("{}: tensor '{}': unsupported layer shape [{}, {}]", ix->file, ix->name, rows, cols);
  w->rows_ = rows;
  w->cols_ = cols;
  const int64_t nidx = rows * (cols / d);
  const int64_t k = w->k_;
  w->canonical_ = d == 1 && k <= 256;
  const auto* raw = reinterpret_cast<const uint8_t*>(ix->data);
  if (st == Store::U8) {
    if (k < 256) {
      uint8_t mx = 0;
      for (int64_t i = 0; i < nidx; ++i) mx = std::max(mx, raw[i]);
      if (nidx && int64_t(mx) >= k)
        fail("{}: tensor '{}': index {} out of range for a codebook of {} entries", ix->file, ix->name, int(mx), k);
    }
    w->idx8_ = raw;  // view into the mapping
  } else {
    std::vector<uint16_t> v(static_cast<size_t>(nidx));
    if (st == Store::U16) {
      std::memcpy(v.data(), raw, size_t(nidx) * 2);
    } else {
      for (int64_t p = 0; p < nidx / 2; ++p) {
        const uint32_t b0 = raw[3 * p], b1 = raw[3 * p + 1], b2 = raw[3 * p + 2];
        v[size_t(2 * p)] = uint16_t(b0 | ((b1 & 0x0fu) << 8));
        v[size_t(2 * p + 1)] = uint16_t((b1 >> 4) | (b2 << 4));
      }
    }
    uint16_t mx = 0;
    for (uint16_t x : v) mx = std::max(mx, x);
    if (nidx && int64_t(mx) >= k)
      fail("{}: tensor '{}': index {} out of range for a codebook of {} entries", ix->file, ix->name, int(mx), k);
    if (k <= 256) {
      w->idx8_own_.resize(v.size());
      for (size_t i = 0; i < v.size(); ++i) w->idx8_own_[i] = uint8_t(v[i]);
      w->idx8_ = w->idx8_own_.data();
    } else {
      w->idx16_ = std::move(v);
    }
  }
  if (w->canonical_) {
    w->codebook_.assign(256, cbv.back());
    std::copy(cbv.begin(), cbv.end(), w->codebook_.begin());
    w->cb_bf16_ = codebook_is_bf16_exact(w->codebook_.data(), 256);
  } else {
    w->codebook_ = std::move(cbv);
  }

  // ---- sidecar
  const TensorInfo* sp = store.find(module + ".sidecar_positions");
  const TensorInfo* sv = store.find(module + ".sidecar_values");
  std::vector<int64_t> pos;
  std::vector<float> val;
  if (sp || sv) {
    if (!sp) fail("{}: tensor '{}': sidecar values without '{}.sidecar_positions'", sv->file, sv->name, module);
    if (!sv) fail("{}: tensor '{}': sidecar positions without '{}.sidecar_values'", sp->file, sp->name, module);
    if (sp->dtype != DType::I64 || sp->shape.size() != 1)
      fail("{}: tensor '{}': sidecar positions must be 1-D I64, got {} {}", sp->file, sp->name, dtype_name(sp->dtype),
           sp->shape_str());
    if (!is_float_dtype(sv->dtype) || sv->shape.size() != 1)
      fail("{}: tensor '{}': sidecar values must be 1-D F32/F16/BF16, got {} {}", sv->file, sv->name,
           dtype_name(sv->dtype), sv->shape_str());
    if (sv->shape[0] != sp->shape[0])
      fail("{}: tensor '{}': {} sidecar values for {} positions", sv->file, sv->name, sv->shape[0], sp->shape[0]);
    pos.resize(size_t(sp->shape[0]));
    if (!pos.empty()) std::memcpy(pos.data(), sp->data, pos.size() * 8);
    val = read_floats(*sv);
    const int64_t n = rows * cols;
    for (size_t i = 0; i < pos.size(); ++i) {
      if (pos[i] < 0 || pos[i] >= n)
        fail("{}: tensor '{}': sidecar position {} (entry {}) out of range [0, {})", sp->file, sp->name, pos[i], i, n);
      if (i && pos[i] <= pos[i - 1])
        fail("{}: tensor '{}': sidecar positions not strictly ascending at entry {} ({} after {})", sp->file, sp->name,
             i, pos[i], pos[i - 1]);
      if (!std::isfinite(val[i]))
        fail("{}: tensor '{}': sidecar value {} is not finite", sv->file, sv->name, i);
    }
  }
  w->build_sidecar(pos, val);
  return w;
}

std::shared_ptr<const HxqWeight> HxqWeight::from_tensor(const HxqTensor& t) {
  validate(t);
  auto w = std::make_shared<HxqWeight>();
  w->rows_ = t.rows;
  w->cols_ = t.cols;
  w->k_ = 256;
  w->d_ = 1;
  w->canonical_ = true;
  w->codebook_ = t.codebook;
  w->cb_bf16_ = codebook_is_bf16_exact(w->codebook_.data(), int64_t(w->codebook_.size()));
  w->idx8_own_ = t.indices;
  w->idx8_ = w->idx8_own_.data();
  w->build_sidecar(t.sidecar_pos, t.sidecar_val);
  return w;
}

float HxqWeight::decoded_no_sidecar(int64_t r, int64_t c) const {
  if (d_ == 1) {
    const int64_t i = r * cols_ + c;
    return codebook_[idx16_.empty() ? idx8_[i] : idx16_[size_t(i)]];
  }
  const int64_t i = r * (cols_ / d_) + c / d_;
  const int64_t j = idx16_.empty() ? idx8_[i] : idx16_[size_t(i)];
  return codebook_[size_t(j * d_ + c % d_)];
}

void HxqWeight::build_sidecar(const std::vector<int64_t>& pos, const std::vector<float>& val) {
  sc_row_ptr_.assign(size_t(rows_ + 1), 0);
  sc_col_.resize(pos.size());
  sc_delta_.resize(pos.size());
  sc_value_ = val;
  for (size_t e = 0; e < pos.size(); ++e) {
    const int64_t r = pos[e] / cols_, c = pos[e] % cols_;
    sc_row_ptr_[size_t(r + 1)]++;
    sc_col_[e] = int32_t(c);
    sc_delta_[e] = val[e] - decoded_no_sidecar(r, c);
  }
  for (int64_t r = 0; r < rows_; ++r) sc_row_ptr_[size_t(r + 1)] += sc_row_ptr_[size_t(r)];
}

HxqView HxqWeight::view() const {
  if (!canonical_) fail("HXQ weight [{}, {}] with a {}-entry codebook of vector size {} has no u8 kernel view", rows_, cols_, k_, d_);
  HxqView v;
  v.rows = rows_;
  v.cols = cols_;
  v.codebook = codebook_.data();
  v.indices = idx8_;
  v.codebook_bf16_exact = cb_bf16_;
  if (!sc_col_.empty()) {
    v.sc_row_ptr = sc_row_ptr_.data();
    v.sc_col = sc_col_.data();
    v.sc_delta = sc_delta_.data();
  }
  return v;
}

void HxqWeight::decode_row(int64_t r, float* out) const {
  if (canonical_) {
    const uint8_t* idx = idx8_ + r * cols_;
    for (int64_t c = 0; c < cols_; ++c) out[c] = codebook_[idx[c]];
  } else if (d_ == 1) {
    if (idx16_.empty()) {
      const uint8_t* idx = idx8_ + r * cols_;
      for (int64_t c = 0; c < cols_; ++c) out[c] = codebook_[idx[c]];
    } else {
      const uint16_t* idx = idx16_.data() + r * cols_;
      for (int64_t c = 0; c < cols_; ++c) out[c] = codebook_[idx[c]];
    }
  } else {
    const int64_t ic = cols_ / d_;
    for (int64_t c = 0; c < ic; ++c) {
      const int64_t j = idx16_.empty() ? idx8_[r * ic + c] : idx16_[size_t(r * ic + c)];
      for (int t = 0; t < d_; ++t) out[c * d_ + t] = codebook_[size_t(j * d_ + t)];
    }
  }
  for (int64_t e = sc_row_ptr_[size_t(r)]; e < sc_row_ptr_[size_t(r + 1)]; ++e) out[sc_col_[size_t(e)]] = sc_value_[size_t(e)];
}

void HxqWeight::row(int64_t r, float* out) const {
  if (r < 0 || r >= rows_) fail("HXQ weight: row {} out of range [0, {})", r, rows_);
  decode_row(r, out);
}

void HxqWeight::forward(const float* X, int64_t T, float* Y) const {
  if (canonical_) {
    gemm_hxq(X, T, view(), Y);
    return;
  }
  // Tile-local decode: 16 rows of W at a time, never the whole matrix.
  const int64_t K = cols_, N = rows_, RB = 16;
  const int64_t nblocks = (N + RB - 1) / RB;
  pool().parallel_for(nblocks, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> wb(static_cast<size_t>(RB * K));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * RB, r1 = std::min(N, r0 + RB);
      for (int64_t r = r0; r < r1; ++r) decode_row(r, wb.data() + (r - r0) * K);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t r = r0; r < r1; ++r) Y[t * N + r] = dot_f32(X + t * K, wb.data() + (r - r0) * K, K);
    }
  });
}

size_t HxqWeight::bytes() const {
  const size_t nidx = size_t(rows_ * (cols_ / d_));
  const size_t idx_bytes = idx16_.empty() ? nidx : nidx * 2;
  const size_t cb = codebook_.size() * 4;
  const size_t sc = sc_col_.empty() ? 0 : sc_row_ptr_.size() * 8 + sc_col_.size() * (4 + 4);
  return cb + idx_bytes + sc;
}

}  // namespace hxq
