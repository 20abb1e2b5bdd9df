// A linear layer's weight W [out, in] in the form the checkpoint stores it — dense F32/F16/BF16
// or HXQ (codebook + indices + sidecar) — and the products computed straight from that storage.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace hxq {

struct TensorInfo;
class TensorStore;
class HxqWeight;
class Hxq2Weight;
struct LoraModule;

class Linear {
 public:
  enum class Kind { Dense, Hxq, Hxq2 };

  Linear() = default;
  // Dense weight [out, in] (F32, F16 or BF16), optional bias [out] (any float dtype).
  static Linear dense(const TensorInfo& w, const TensorInfo* bias = nullptr);
  // HXQ module M (tensor name minus ".weight") of the store: M.codebook, M.indices, optional
  // sidecar and M.bias — every stored variant (see codec/hxq_weight.h). `out`/`in` = the layer's
  // expected shape (-1: take it from the indices; required for 12-bit packed indices).
  // U8 indices stay a view into the file mapping. Throws Error naming the file and tensor.
  static Linear hxq(const TensorStore& store, const std::string& module, int64_t out = -1, int64_t in = -1);
  // HXQ v2 modules (M.qparams present; docs/FORMAT.md) are read the same way.
  // From an already-loaded HXQ weight (e.g. codec's encode() output via HxqWeight::from_tensor).
  static Linear hxq(std::shared_ptr<const HxqWeight> w, std::vector<float> bias = {});
  static Linear hxq(std::shared_ptr<const Hxq2Weight> w, std::vector<float> bias = {});

  Kind kind() const { return kind_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  DType dtype() const { return dtype_; }  // dense storage dtype (F32 for HXQ)
  const void* data() const { return data_; }  // dense storage (nullptr for HXQ)
  const HxqWeight* hxq_weight() const { return hxq_.get(); }     // nullptr unless Kind::Hxq
  const Hxq2Weight* hxq2_weight() const { return hxq2_.get(); }  // nullptr unless Kind::Hxq2
  bool compressed() const { return kind_ != Kind::Dense; }
  // Whether the decode regime has an integer fast kernel for this layer on this machine (used
  // under HxqMath::Fast; see hxq_gemm.h / hxq2_gemm.h): helix layers on AVX-512 VBMI + VNNI, v2
  // layers at 4-6 bits on any SIMD ISA.
  bool fast_decode_kernel() const;
  bool has_bias() const { return !bias_.empty(); }

  // The module's name in the model (the checkpoint's tensor name minus ".weight"; set by
  // load_linear), e.g. "model.layers.0.self_attn.q_proj". Empty for layers built otherwise.
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  // A LoRA adapter on this layer (codec/lora.h): forward adds s·B·(A·X) for every row. Fails with
  // a one-line error naming the module unless the adapter's [out, in] is this layer's; null
  // detaches. Not thread-safe against concurrent forwards (attach before running).
  void set_lora(std::shared_ptr<const LoraModule> lora);
  const LoraModule* lora() const { return lora_.get(); }

  // Y[T, out] = X[T, in] · Wᵀ (+ bias) (+ s·(X·Aᵀ)·Bᵀ with a LoRA adapter). X and Y are
  // row-major float32. Safe to call from several threads at once (on different X and Y).
  void forward(const float* X, int64_t T, float* Y) const;
  // dX[T, in] = G[T, out] · W: the input gradient of forward() (the bias has none; a LoRA
  // adapter adds s·(G·B)·A), computed from the stored form by the transposed kernels
  // (kernels/gemm_t.h), never from a dense copy of W. For training through frozen layers
  // (python/hxq/torch.py). Same threading guarantees as forward().
  void grad_input(const float* G, int64_t T, float* dX) const;
  // Row r of W (an embedding lookup when W is a token embedding).
  void row(int64_t r, float* out) const;
  // Bytes of weight data read by one forward (codebook, indices and sidecar for HXQ; a LoRA
  // adapter's A and B).
  size_t weight_bytes() const;
  // The label of this layer's forwards in the op profile (core/op_profile.h): storage and shape,
  // e.g. "HXQ v2 8-bit 4096x8192", "dense BF16 32000x2048" (+ " +LoRA r=16" with an adapter,
  // + " T=n" for n rows of X).
  std::string profile_label(int64_t T) const;

 private:
  Kind kind_ = Kind::Dense;
  int64_t in_ = 0, out_ = 0;
  DType dtype_ = DType::F32;
  const void* data_ = nullptr;
  std::vector<float> bias_;
  std::shared_ptr<const HxqWeight> hxq_;
  std::shared_ptr<const Hxq2Weight> hxq2_;
  std::string name_;
  std::shared_ptr<const LoraModule> lora_;

  void add_lora(const float* X, int64_t T, float* Y) const;
};

}  // namespace hxq
