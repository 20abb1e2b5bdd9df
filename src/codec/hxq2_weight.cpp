#include "codec/hxq2_weight.h"

#include <cmath>
#include <cstring>

#include "codec/hxq2_codec.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace hxq {

std::string hxq2_shared_codebook_name(int bits) { return "hxq.codebook.b" + std::to_string(bits); }

bool is_hxq2_module(const TensorStore& store, const std::string& module) { return store.contains(module + ".qparams"); }

namespace {

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

const TensorInfo& need(const TensorStore& store, const std::string& name, const std::string& module) {
  const TensorInfo* t = store.find(name);
  if (!t) fail("{}: HXQ v2 module '{}' lacks tensor '{}'", store.location(), module, name);
  return *t;
}

void need_shape(const TensorInfo& t, DType dt, std::vector<int64_t> shape, const char* what) {
  if (t.dtype != dt || t.shape != shape) {
    TensorInfo want;
    want.shape = shape;
    fail("{}: tensor '{}': {} must be {} {}, got {} {}", t.file, t.name, what, dtype_name(dt), want.shape_str(),
         dtype_name(t.dtype), t.shape_str());
  }
}

}  // namespace

std::shared_ptr<const Hxq2Weight> Hxq2Weight::load(const TensorStore& store, const std::string& m, int64_t out,
                                                   int64_t in) {
  if (const TensorInfo* t = store.find(m + ".weight"))
    fail("{}: tensor '{}': module '{}' has both a dense weight and HXQ v2 tensors", t->file, t->name, m);
  auto w = std::make_shared<Hxq2Weight>();
  const TensorInfo& qp = need(store, m + ".qparams", m);
  need_shape(qp, DType::I32, {2}, "qparams");
  int32_t p2[2];
  std::memcpy(p2, qp.data, sizeof p2);
  // {bits | group << 8 | version << 16, in_features}
  const int version = (p2[0] >> 16) & 0xffff, bits = p2[0] & 0xff, group = (p2[0] >> 8) & 0xff;
  if (version != 2) fail("{}: tensor '{}': format version {} (this build reads 2)", qp.file, qp.name, version);
  if (!hxq2_bits_supported(bits)) fail("{}: tensor '{}': bit width {} (need 4, 5, 6 or 8)", qp.file, qp.name, bits);
  if (!hxq2_group_supported(group)) fail("{}: tensor '{}': group size {} (need 16 or 32)", qp.file, qp.name, group);
  if (p2[1] <= 0) fail("{}: tensor '{}': in_features {} (need > 0)", qp.file, qp.name, p2[1]);
  w->bits_ = bits;
  w->group_ = group;
  w->cols_ = p2[1];
  const TensorInfo& ix = need(store, m + ".packed_indices", m);
  if (ix.dtype != DType::U8 || ix.shape.size() != 2 || ix.shape[1] != hxq2_row_bytes(w->cols_, w->bits_))
    fail("{}: tensor '{}': indices must be U8 [out, {}] ({} inputs at {} bits), got {} {}", ix.file, ix.name,
         hxq2_row_bytes(w->cols_, w->bits_), w->cols_, w->bits_, dtype_name(ix.dtype), ix.shape_str());
  w->rows_ = ix.shape[0];
  if (w->rows_ <= 0) fail("{}: tensor '{}': no rows", ix.file, ix.name);
  if ((out >= 0 && w->rows_ != out) || (in >= 0 && w->cols_ != in))
    fail("{}: tensor '{}': shape [{}, {}] does not match the layer's [{}, {}]", ix.file, ix.name, w->rows_, w->cols_, out,
         in);
  w->idx_ = reinterpret_cast<const uint8_t*>(ix.data);
  const TensorInfo& sc = need(store, m + ".scales", m);
  need_shape(sc, DType::U8, {hxq2_scale_bytes(w->rows_, w->cols_, w->group_)}, "scales");
  const TensorInfo& sp = need(store, m + ".scale_params", m);
  need_shape(sp, DType::F32, {2}, "scale_params");
  float spv[2];
  std::memcpy(spv, sp.data, sizeof spv);
  if (!(spv[0] > 0) || !std::isfinite(spv[0]) || !(spv[1] > 0) || !(spv[1] <= 4))
    fail("{}: tensor '{}': scale parameters ({}, {}) out of range (max > 0 finite, 0 < step <= 4)", sp.file, sp.name,
         spv[0], spv[1]);
  w->lut_.resize(kHxq2Codes);
  hxq2_scale_table(spv[0], spv[1], w->lut_.data());
  w->codes_.resize(size_t(w->rows_ * hxq2_groups(w->cols_, w->group_)));
  const uint8_t* sdata = reinterpret_cast<const uint8_t*>(sc.data);
  for (size_t i = 0; i < w->codes_.size(); ++i) w->codes_[i] = uint8_t(hxq2_scale_code(sdata, int64_t(i)));

  const int64_t k = int64_t(1) << w->bits_;
  const TensorInfo* cb = store.find(m + ".codebook");
  if (!cb) {
    cb = store.find(hxq2_shared_codebook_name(w->bits_));
    if (!cb)
      fail("{}: HXQ v2 module '{}' has no '{}.codebook' and the checkpoint has no shared '{}'", store.location(), m, m,
           hxq2_shared_codebook_name(w->bits_));
    w->shared_ = true;
  }
  if (!is_float_dtype(cb->dtype) || cb->shape != std::vector<int64_t>{k})
    fail("{}: tensor '{}': codebook must be a float [{}] for {} bits, got {} {}", cb->file, cb->name, k, w->bits_,
         dtype_name(cb->dtype), cb->shape_str());
  w->codebook_.resize(size_t(k));
  to_f32(cb->dtype, cb->data, w->codebook_.data(), w->codebook_.size());
  for (float x : w->codebook_)
    if (!std::isfinite(x)) fail("{}: tensor '{}': codebook holds a non-finite value", cb->file, cb->name);

  const TensorInfo* sp_pos = store.find(m + ".sidecar_positions");
  const TensorInfo* sp_val = store.find(m + ".sidecar_values");
  if (bool(sp_pos) != bool(sp_val))
    fail("{}: module '{}': sidecar needs both '.sidecar_positions' and '.sidecar_values'", store.location(), m);
  if (sp_pos) {
    if (sp_pos->dtype != DType::I64 || sp_pos->shape.size() != 1)
      fail("{}: tensor '{}': sidecar positions must be I64 [n], got {} {}", sp_pos->file, sp_pos->name,
           dtype_name(sp_pos->dtype), sp_pos->shape_str());
    if (!is_float_dtype(sp_val->dtype) || sp_val->shape != sp_pos->shape)
      fail("{}: tensor '{}': sidecar values must be float {}, got {} {}", sp_val->file, sp_val->name,
           sp_pos->shape_str(), dtype_name(sp_val->dtype), sp_val->shape_str());
    std::vector<int64_t> pos(size_t(sp_pos->numel()));
    std::memcpy(pos.data(), sp_pos->data, pos.size() * 8);
    std::vector<float> val(pos.size());
    to_f32(sp_val->dtype, sp_val->data, val.data(), val.size());
    for (size_t i = 0; i < pos.size(); ++i) {
      if (pos[i] < 0 || pos[i] >= w->rows_ * w->cols_)
        fail("{}: tensor '{}': sidecar position {} out of range [0, {})", sp_pos->file, sp_pos->name, pos[i],
             w->rows_ * w->cols_);
      if (i && pos[i] <= pos[i - 1])
        fail("{}: tensor '{}': sidecar positions not strictly ascending at entry {}", sp_pos->file, sp_pos->name, i);
      if (!std::isfinite(val[i])) fail("{}: tensor '{}': non-finite sidecar value", sp_val->file, sp_val->name);
    }
    w->build_sidecar(pos, val);
  }
  return w;
}

std::shared_ptr<const Hxq2Weight> Hxq2Weight::from_tensor(const Hxq2Tensor& t) {
  validate(t);
  auto w = std::make_shared<Hxq2Weight>();
  w->rows_ = t.rows;
  w->cols_ = t.cols;
  w->bits_ = t.bits;
  w->group_ = t.group;
  w->shared_ = t.shared_codebook;
  w->codebook_ = t.codebook;
  w->lut_.resize(kHxq2Codes);
  hxq2_scale_table(t.scale_max, t.scale_step, w->lut_.data());
  w->idx_own_ = t.indices;
  w->idx_ = w->idx_own_.data();
  w->codes_.resize(size_t(t.rows * hxq2_groups(t.cols, t.group)));
  for (size_t i = 0; i < w->codes_.size(); ++i) w->codes_[i] = uint8_t(hxq2_scale_code(t.scales.data(), int64_t(i)));
  w->build_sidecar(t.sidecar_pos, t.sidecar_val);
  return w;
}

void Hxq2Weight::build_sidecar(const std::vector<int64_t>& pos, const std::vector<float>& val) {
  sc_row_ptr_.clear();
  sc_col_.clear();
  sc_delta_.clear();
  sc_value_.clear();
  if (pos.empty()) return;
  sc_row_ptr_.assign(size_t(rows_ + 1), 0);
  std::vector<float> row(static_cast<size_t>(cols_));
  int64_t cur = -1;
  const Hxq2View v = view();
  for (size_t i = 0; i < pos.size(); ++i) {
    const int64_t r = pos[i] / cols_, c = pos[i] % cols_;
    if (r != cur) {
      hxq2_decode_row(v, r, row.data());
      cur = r;
    }
    sc_row_ptr_[size_t(r + 1)]++;
    sc_col_.push_back(int32_t(c));
    sc_delta_.push_back(val[i] - row[size_t(c)]);
    sc_value_.push_back(val[i]);
  }
  for (int64_t r = 0; r < rows_; ++r) sc_row_ptr_[size_t(r + 1)] += sc_row_ptr_[size_t(r)];
}

Hxq2View Hxq2Weight::view() const {
  Hxq2View v;
  v.rows = rows_;
  v.cols = cols_;
  v.bits = bits_;
  v.group = group_;
  v.codebook = codebook_.data();
  v.indices = idx_;
  v.codes = codes_.data();
  v.scale_lut = lut_.data();
  if (!sc_row_ptr_.empty()) {
    v.sc_row_ptr = sc_row_ptr_.data();
    v.sc_col = sc_col_.data();
    v.sc_delta = sc_delta_.data();
  }
  return v;
}

void Hxq2Weight::forward(const float* X, int64_t T, float* Y) const { gemm_hxq2(X, T, view(), Y); }

void Hxq2Weight::row(int64_t r, float* out) const {
  if (r < 0 || r >= rows_) fail("row {} out of range [0, {})", r, rows_);
  hxq2_decode_row(view(), r, out);
  if (sc_row_ptr_.empty()) return;
  for (int64_t e = sc_row_ptr_[size_t(r)]; e < sc_row_ptr_[size_t(r + 1)]; ++e) out[sc_col_[size_t(e)]] = sc_value_[size_t(e)];
}

size_t Hxq2Weight::bytes() const {
  return size_t(rows_ * hxq2_row_bytes(cols_, bits_)) + codes_.size() + codebook_.size() * 4 +
         sc_col_.size() * 8 + size_t(sc_row_ptr_.size()) * 8;
}

}  // namespace hxq
