// Zamba2 (transformers' Zamba2ForCausalLM): a Mamba2 backbone whose "hybrid" layers first run a
// shared transformer block on concat(hidden, original embedding) — attention with per-invocation
// LoRA adapters on q/k/v, rotary embeddings, a gated MLP with per-invocation LoRA adapters — and
// add its output, through the layer's own `linear`, to the Mamba layer's input. fp32 compute.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/mamba2.h"
#include "models/model.h"
#include "models/rope.h"

namespace hxq {

struct Zamba2Config {
  int64_t hidden = 0, layers = 0, vocab = 0, intermediate = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;  // attention over 2·hidden: head_dim = 2·hidden / heads
  int64_t mem_blocks = 1;                          // num_mem_blocks: shared blocks, used in turn
  int64_t adapter_rank = 0;
  int64_t max_position = 0;
  double rms_eps = 1e-5;
  bool mlp_adapter = false, attn_adapter = false, rope_on = false, bias = false, tie_embeddings = true;
  enum class Act { Gelu, GeluTanh, Silu } act = Act::Gelu;
  std::vector<bool> hybrid;        // per layer: "hybrid" (else "mamba")
  std::vector<int64_t> hybrid_ids;  // the hybrid layers in order (invocation j = hybrid_ids[j])
  RopeConfig rope;
  Mamba2Config mamba;  // the Mamba2 layers (n_layer = layers)

  // Parses transformers' Zamba2Config; one-line errors naming `path`.
  static Zamba2Config from_json(const json& cfg, const std::string& path);
  int64_t attn_dim() const { return 2 * hidden; }  // attention_hidden_size
  // The shared block of invocation j: transformers cycles through the blocks (block j mod num_mem_blocks).
  int64_t block_of(int64_t j) const { return j % mem_blocks; }
};

std::unique_ptr<Model> load_zamba2(const std::string& dir, const json& cfg, const LoadOptions& opt);

}  // namespace hxq
