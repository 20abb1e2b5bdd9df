// Mamba1 (selective SSM) language model, exactly as transformers' MambaForCausalLM (fp32 compute),
// also from mamba_ssm-style checkpoints (state-spaces/mamba-*), and Falcon-Mamba
// (FalconMambaForCausalLM: weightless RMS norms on dt, B and C). Prefill runs layer by layer over
// the whole prompt with a channel-vectorised scan; decode is the recurrent one-token step.
#pragma once
#include <memory>
#include <string>

#include "models/model.h"

namespace hxq {

struct Mamba1Config {
  int64_t d_model = 0, n_layer = 0, vocab = 0;
  int64_t d_inner = 0, d_state = 16, d_conv = 4, dt_rank = 0;
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  bool conv_bias = true;   // use_conv_bias
  bool proj_bias = false;  // use_bias: in_proj / out_proj biases
  bool bcdt_norm = false;  // Falcon-Mamba: RMS-normalise dt, B and C (no weights)
  double bcdt_eps = 1e-6;  // mixer_rms_eps

  // Parses transformers' MambaConfig / FalconMambaConfig or a mamba_ssm-style config (d_model,
  // n_layer, ssm_cfg, pad_vocab_size_multiple); one-line errors naming `path`.
  static Mamba1Config from_json(const json& cfg, const std::string& path);
  int64_t x_proj_dim() const { return dt_rank + 2 * d_state; }
};

std::unique_ptr<Model> load_mamba1(const std::string& dir, const json& cfg, const LoadOptions& opt);

}  // namespace hxq
