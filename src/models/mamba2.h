// Mamba2 (pure SSM) language model: chunked-SSD prefill, recurrent one-token decode, gated
// RMSNorm with n_groups, exactly as transformers' Mamba2ForCausalLM (fp32 compute). Its mixer is
// also the SSM layer of Zamba2 (models/zamba2.h).
#pragma once
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "models/linear.h"
#include "models/model.h"

namespace hxq {

class TensorStore;

struct Mamba2Config {
  int64_t d_model = 0, n_layer = 0, vocab = 0;
  int64_t d_inner = 0, n_heads = 0, head_dim = 0, d_state = 0, n_groups = 1, d_conv = 4;
  int64_t chunk_size = 256;
  double norm_eps = 1e-5;
  double gnorm_eps = 1e-5;            // the gated RMSNorm's epsilon (Mamba2: norm_eps; Zamba2: 1e-5)
  double dt_min = 0.0, dt_max = 0.0;  // time_step_limit (clamp of softplus(dt + dt_bias))
  bool tie_embeddings = true;
  bool grouped_norm = false;  // gated RMSNorm per group (mamba_ssm) or over all d_inner (transformers)
  bool conv_bias = true;
  bool proj_bias = false;

  // Parses transformers' Mamba2Config or a mamba_ssm-style config (d_model, n_layer, ssm_cfg).
  static Mamba2Config from_json(const json& cfg, const std::string& path);
  int64_t conv_dim() const { return d_inner + 2 * n_groups * d_state; }
  int64_t in_proj_dim() const { return 2 * d_inner + 2 * n_groups * d_state + n_heads; }
  // Checks the sizes (positive, divisible); fails naming `path`.
  void validate(const std::string& path) const;
};

// Buffers of one mixer pass, kept in a model state so that decoding allocates nothing once warm.
struct Mamba2Scratch {
  std::vector<float> zxbcdt, xbc, dt, y, conv_tail;
  std::vector<float> cb, bt, cc;  // per (group, chunk) of the scan: C·Bᵀ [L][L], Bᵀ [N][L], C [L][N]
  struct Share {                  // per pool share: one head's chunk at a time
    std::vector<float> a, w, xw, y, ds, cum, dtc, wts, bc;
  };
  std::vector<Share> share;
};

// The recurrent state of n_layer mixers: conv windows and SSM states.
struct Mamba2Cache {
  explicit Mamba2Cache(const Mamba2Config& c)
      : conv_stride((c.d_conv - 1) * c.conv_dim()),
        ssm_stride(c.n_heads * c.head_dim * c.d_state),
        conv(size_t(c.n_layer * conv_stride), 0.0f),
        ssm(size_t(c.n_layer * ssm_stride), 0.0f) {}
  void reset() {
    std::fill(conv.begin(), conv.end(), 0.0f);
    std::fill(ssm.begin(), ssm.end(), 0.0f);
  }
  size_t bytes() const { return (conv.size() + ssm.size()) * sizeof(float); }
  // Whether this is the cache of a model with config c (a state of that model).
  bool fits(const Mamba2Config& c) const {
    return conv_stride == (c.d_conv - 1) * c.conv_dim() && ssm_stride == c.n_heads * c.head_dim * c.d_state &&
           conv.size() == size_t(c.n_layer * conv_stride) && ssm.size() == size_t(c.n_layer * ssm_stride);
  }
  float* conv_at(int64_t l) { return conv.data() + l * conv_stride; }  // [d_conv-1][conv_dim], oldest first
  float* ssm_at(int64_t l) { return ssm.data() + l * ssm_stride; }     // [head][head_dim][d_state]

  int64_t conv_stride, ssm_stride;
  std::vector<float> conv, ssm;
};

// One Mamba2 mixer: in_proj → (z, xBC, dt); causal conv + SiLU on xBC; SSD scan with
// A = −exp(A_log), dt = clamp(softplus(dt + dt_bias)), D skip; gated RMSNorm y·silu(z); out_proj.
struct Mamba2Mixer {
  Linear in_proj, out_proj;
  std::vector<float> conv_w;   // [conv_dim, d_conv]
  std::vector<float> conv_wt;  // [d_conv, conv_dim]: conv_w tap-major, for the vectorised conv
  std::vector<float> conv_b;   // [conv_dim] (zeros without bias)
  std::vector<float> A;        // -exp(A_log) [n_heads]
  std::vector<float> D, dt_bias;
  std::vector<float> gnorm_w;  // [d_inner]

  // The tensors <prefix>in_proj, <prefix>conv1d.weight, <prefix>A_log, ... (prefix ends in '.'),
  // shapes checked against c (one-line errors naming the tensor and config.json).
  static Mamba2Mixer load(const TensorStore& store, const std::string& prefix, const Mamba2Config& c);
  int64_t params() const;
  uint64_t weight_bytes() const { return in_proj.weight_bytes() + out_proj.weight_bytes(); }

  // out [T, d_model] = mixer(xn [T, d_model]), continuing (and updating) one layer's conv window
  // and SSM state: the chunked scan for a prompt, decode()'s recurrent step for T = 1.
  void forward(const Mamba2Config& c, float* conv_state, float* ssm_state, const float* xn, int64_t T, float* out,
               Mamba2Scratch& s) const;
  // One token of each of B sequences: out[b] = mixer(xn[b]), continuing sequence b's conv window
  // conv_state[b] and SSM state ssm_state[b] (this layer's). in_proj, the gated norm and out_proj
  // run on the B rows at once; per sequence the conv step and dt, then the SSM step of every
  // head, the (sequence, head) pairs in parallel.
  void decode(const Mamba2Config& c, float* const* conv_state, float* const* ssm_state, const float* xn, int64_t B,
              float* out, Mamba2Scratch& s) const;

 private:
  // The conv part of one sequence's decode step from its in_proj row zxbcdt: xbc = silu(conv of
  // the window and xBC) (the window shifts), dt = clamp(softplus(dt_raw + dt_bias)) per head.
  void conv_dt_step(const Mamba2Config& c, float* conv_state, const float* zxbcdt, float* xbc, float* dt) const;
  // The recurrent SSM step of heads [h0, h1) of one sequence (its state, xbc, dt and output y):
  //   S = exp(dt A) S + dt x ⊗ B;   y = S · C + D x.
  void ssm_step_heads(const Mamba2Config& c, float* ssm_state, const float* xbc, const float* dt, int64_t h0,
                      int64_t h1, float* y) const;
  // y [T, d_inner] = gated RMSNorm of y · silu(z), z the first d_inner entries of zxbcdt's rows.
  void gated_norm(const Mamba2Config& c, float* y, const float* zxbcdt, int64_t T) const;
  // The chunked SSD scan of T > 1 tokens (s.xbc, s.dt) into s.y.
  void scan(const Mamba2Config& c, float* ssm, int64_t T, Mamba2Scratch& s) const;
};

std::unique_ptr<Model> load_mamba2(const std::string& dir, const json& cfg, const LoadOptions& opt);

}  // namespace hxq
