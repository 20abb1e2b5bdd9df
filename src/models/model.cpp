#include "models/model.h"

#include <filesystem>
#include <map>
#include <optional>

#include "codec/lora.h"
#include "core/error.h"
#include "models/linear.h"
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

void Model::attach_lora(const LoraAdapter& adapter) {
  std::map<std::string, Linear*> by_name;
  visit_linears([&](Linear& l) { by_name[l.name()] = &l; });
  std::vector<std::pair<Linear*, std::shared_ptr<const LoraModule>>> plan;
  for (const auto& m : adapter.modules) {
    auto it = by_name.find(m->name);
    if (it == by_name.end()) {
      const bool head = m->name == "lm_head" || m->name.ends_with(".lm_head");
      const std::string why = head ? "the model's lm_head is tied to the embedding: there is no separate layer to adapt"
                              : m->name.find("embed") != std::string::npos
                                  ? "embeddings cannot carry a LoRA adapter"
                                  : "no linear layer of that name in this " + summary().arch +
                                        " model: an adapter for another base model?";
      fail("{}: adapter module '{}' cannot be attached ({})", adapter.dir, m->name, why);
    }
    const Linear& l = *it->second;
    if (l.out_features() != m->out || l.in_features() != m->in)
      fail("{}: adapter module '{}' has shape [{}, {}] (out, in), the model's layer is [{}, {}] (an adapter for "
           "another base model?)", adapter.dir, m->name, m->out, m->in, l.out_features(), l.in_features());
    plan.emplace_back(it->second, m);
  }
  for (auto& [l, m] : plan) l->set_lora(m);
  int64_t n = 0;
  visit_linears([&](Linear& l) { n += l.lora() != nullptr; });
  lora_layers_ = n;
  lora_dir_ = adapter.dir;
}

namespace {

std::unique_ptr<Model> load_architecture(const std::string& dir, const LoadOptions& opt) {
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

}  // namespace

std::unique_ptr<Model> load_model(const std::string& dir, const LoadOptions& opt) {
  std::optional<LoraAdapter> lora;  // read first: a bad adapter fails before the model loads
  if (!opt.lora.empty()) lora = LoraAdapter::load(opt.lora);
  auto model = load_architecture(dir, opt);
  if (lora) model->attach_lora(*lora);
  return model;
}

}  // namespace hxq
