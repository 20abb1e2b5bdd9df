// Decoder-only rotary transformers (transformers' LlamaForCausalLM and Qwen2ForCausalLM): batched
// causal prefill into a float32 KV cache, one-token decode, GQA, SwiGLU, fp32 compute.
#pragma once
#include <memory>
#include <string>

#include "models/model.h"
#include "models/rope.h"

namespace hxq {

struct TransformerConfig {
  std::string arch;  // "llama" or "qwen2"
  int64_t hidden = 0, layers = 0, vocab = 0, intermediate = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t max_position = 0;  // max_position_embeddings
  double rms_eps = 1e-6;
  RopeConfig rope;
  bool tie_embeddings = false;
  bool qkv_bias = false, o_bias = false, mlp_bias = false;

  // Parses a transformers LlamaConfig / Qwen2Config (config.json at `path`), with their defaults.
  static TransformerConfig from_json(const json& cfg, const std::string& path);
  // Longest context a state accepts: max_position_embeddings, or factor × it for "dynamic" RoPE
  // (whose purpose is to run past the trained length).
  int64_t max_context() const;
};

// model_type "llama" or "qwen2" from the checkpoint directory `dir`.
std::unique_ptr<Model> load_transformer(const std::string& dir, const json& cfg, const LoadOptions& opt);

}  // namespace hxq
