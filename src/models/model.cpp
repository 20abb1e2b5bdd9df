#include "models/model.h"

#include <filesystem>

#include "core/error.h"
#include "models/mamba1.h"
#include "models/mamba2.h"
#include "models/transformer.h"
#include "models/zamba2.h"

namespace hxq {

std::vector<std::string> supported_model_types() {
  return {"mamba", "falcon_mamba", "mamba2", "zamba2", "llama", "qwen2"};
}

void check_decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, int64_t vocab,
                        int64_t max_context, const std::string& location) {
  const size_t B = states.size();
  if (ids.size() != B) fail("decode_batch: {} ids for {} states", ids.size(), B);
  for (size_t i = 0; i < B; ++i) {
    if (!states[i]) fail("decode_batch: state {} is null", i);
    for (size_t j = 0; j < i; ++j)
      if (states[j] == states[i]) fail("decode_batch: entries {} and {} are the same state", j, i);
  }
  for (size_t i = 0; i < B; ++i) {
    const int64_t n = states[i]->position() + 1;
    if (max_context > 0 && n > max_context)
      fail("{}: context of {} tokens exceeds the model's limit of {} (max_position_embeddings in config.json)",
           location, n, max_context);
    if (ids[i] < 0 || ids[i] >= vocab) fail("token id {} outside the vocabulary [0, {})", ids[i], vocab);
  }
}

void Model::decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, float* logits) const {
  const int64_t V = vocab_size();
  check_decode_batch(states, ids, V);
  for (size_t i = 0; i < states.size(); ++i)
    forward(*states[i], ids.subspan(i, 1), 0, logits ? logits + int64_t(i) * V : nullptr);
}

std::unique_ptr<Model> load_model(const std::string& dir, const LoadOptions& opt) {
  json cfg = load_config(dir);
  std::string type;
  if (cfg.contains("model_type") && cfg["model_type"].is_string()) {
    type = cfg["model_type"].get<std::string>();
  } else if (cfg.contains("ssm_cfg") && cfg.contains("d_model")) {
    // mamba_ssm-style config (state-spaces releases): its layer is Mamba1 unless ssm_cfg says "Mamba2"
    const json& ssm = cfg["ssm_cfg"];
    type = ssm.is_object() && ssm.contains("layer") && ssm["layer"] == "Mamba2" ? "mamba2" : "mamba";
  }
  if (type == "mamba" || type == "falcon_mamba") return load_mamba1(dir, cfg, opt);
  if (type == "mamba2") return load_mamba2(dir, cfg, opt);
  if (type == "zamba2") return load_zamba2(dir, cfg, opt);
  if (type == "llama" || type == "qwen2") return load_transformer(dir, cfg, opt);
  std::string list;
  for (auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
  if (type.empty()) fail("{}/config.json: no \"model_type\" (supported: {})", dir, list);
  fail("{}/config.json: unsupported model_type \"{}\" (supported: {})", dir, type, list);
}

}  // namespace hxq
