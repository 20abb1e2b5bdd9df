#include "models/generate.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/error.h"

namespace hxq {

std::vector<int32_t> eos_ids_from_config(const json& cfg, std::optional<int32_t> tokenizer_eos) {
  std::vector<int32_t> ids;
  if (cfg.is_object() && cfg.contains("eos_token_id")) {
    const auto& e = cfg["eos_token_id"];
    if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
    if (e.is_array())
      for (auto& x : e)
        if (x.is_number_integer()) ids.push_back(x.get<int32_t>());
  }
  if (ids.empty() && tokenizer_eos) ids.push_back(*tokenizer_eos);
  return ids;
}

GenerateResult generate(const Model& model, ModelState& state, std::span<const int32_t> prompt, int64_t max_new,
                        Sampler& sampler, const std::vector<int32_t>& eos_ids,
                        const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) fail("generate: empty prompt (and no BOS token to start from)");
  using clock = std::chrono::steady_clock;
  GenerateResult r;
  const int64_t V = model.vocab_size();
  std::vector<float> logits(static_cast<size_t>(V));
  auto t0 = clock::now();
  model.forward(state, prompt, int64_t(prompt.size()) - 1, logits.data());
  r.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  auto t1 = clock::now();
  for (int64_t i = 0; i < max_new; ++i) {
    int32_t next = sampler.next(logits.data(), V);
    r.ids.push_back(next);
    bool go_on = on_token ? on_token(next) : true;
    if (std::find(eos_ids.begin(), eos_ids.end(), next) != eos_ids.end()) {
      r.stopped_at_eos = true;
      break;
    }
    if (!go_on || i + 1 == max_new) break;
    model.forward(state, std::span(&next, 1), 0, logits.data());
    r.decode_steps++;
  }
  r.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

std::vector<int32_t> eos_token_ids(const std::string& dir, std::optional<int32_t> tokenizer_eos) {
  std::vector<int32_t> ids = eos_ids_from_config(load_config(dir), std::nullopt);
  const auto gen = std::filesystem::path(dir) / "generation_config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(gen, ec))
    for (int32_t id : eos_ids_from_config(parse_json_file(gen.string()), std::nullopt))
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  if (ids.empty() && tokenizer_eos) ids.push_back(*tokenizer_eos);
  return ids;
}

}  // namespace hxq
