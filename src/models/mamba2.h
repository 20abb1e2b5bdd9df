// Mamba2 (pure SSM) language model: chunked-SSD prefill, recurrent one-token decode, gated
// RMSNorm with n_groups, exactly as transformers' Mamba2ForCausalLM (fp32 compute).
#pragma once
#include <memory>
#include <string>

#include "models/model.h"

namespace hxq {

struct Mamba2Config {
  int64_t d_model = 0, n_layer = 0, vocab = 0;
  int64_t d_inner = 0, n_heads = 0, head_dim = 0, d_state = 0, n_groups = 1, d_conv = 4;
  int64_t chunk_size = 256;
  double norm_eps = 1e-5;
  double dt_min = 0.0, dt_max = 0.0;  // time_step_limit (clamp of softplus(dt + dt_bias))
  bool tie_embeddings = true;
  bool grouped_norm = false;  // gated RMSNorm per group (mamba_ssm) or over all d_inner (transformers)
  bool conv_bias = true;
  bool proj_bias = false;

  // Parses transformers' Mamba2Config or a mamba_ssm-style config (d_model, n_layer, ssm_cfg).
  static Mamba2Config from_json(const json& cfg, const std::string& path);
  int64_t conv_dim() const { return d_inner + 2 * n_groups * d_state; }
  int64_t in_proj_dim() const { return 2 * d_inner + 2 * n_groups * d_state + n_heads; }
};

std::unique_ptr<Model> load_mamba2(const std::string& dir, const json& cfg, const LoadOptions& opt);

}  // namespace hxq
