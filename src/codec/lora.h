// PEFT LoRA adapters (a directory with adapter_config.json + adapter_model.safetensors, as PEFT's
// save_pretrained writes it): per adapted linear module W [out, in], y = W·x + s·B·(A·x) with
// A [r, in], B [out, r] and s = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora). The codec
// knows the tensors only; models/ attaches them to its Linear layers by module name, and
// compress_checkpoint merges them into dense weights (W += s·B·A) before encoding.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hxq {

// One adapted module. `name` is the module's name in the transformers model — the checkpoint's
// tensor name minus ".weight", e.g. "model.layers.0.self_attn.q_proj" (PEFT's tensor names are
// "base_model.model.<name>.lora_A.weight" / ".lora_B.weight").
struct LoraModule {
  std::string name;
  int64_t rank = 0, in = 0, out = 0;
  float scale = 0;       // lora_alpha / rank, or lora_alpha / sqrt(rank) with use_rslora
  std::vector<float> A;  // [rank, in], row-major
  std::vector<float> B;  // [out, rank], row-major
  size_t bytes() const { return (A.size() + B.size()) * sizeof(float); }
};

struct LoraAdapter {
  std::string dir;          // the adapter directory
  int64_t r = 8;            // adapter_config.json: r (rank_pattern may override it per module)
  double lora_alpha = 8;    // lora_alpha (alpha_pattern may override it per module)
  bool use_rslora = false;
  std::vector<std::shared_ptr<const LoraModule>> modules;  // sorted by name

  // Reads `dir`/adapter_config.json and `dir`/adapter_model.safetensors (F32/F16/BF16 tensors,
  // converted to float32). Checks: peft_type "LORA" when given; no fan_in_fan_out, DoRA,
  // modules_to_save, trained biases or other LoRA variants; every module has both lora_A and
  // lora_B with shapes [r, in] and [out, r], r as the config (or its rank_pattern) says; every
  // module selected by target_modules (and not by exclude_modules); no other tensor (embedding
  // adapters lora_embedding_A/B are refused). rank_pattern / alpha_pattern follow PEFT: the first
  // key (in file order) that matches the module name's end — the regex (.*\.)?(key) matching the
  // whole name — gives its rank / alpha. Every failure is one hxq::Error line naming the file and
  // the field, tensor or module.
  static LoraAdapter load(const std::string& dir);

  const LoraModule* find(std::string_view name) const;  // nullptr when the adapter has no such module
};

// W [m.out, m.in] (row-major float32) += m.scale · B · A. Each entry's delta is summed over the
// rank in double (r ascending), scaled, added to the weight in double and rounded to float once:
// deterministic, the same bits whatever the thread count.
void lora_merge(const LoraModule& m, float* W);

}  // namespace hxq
