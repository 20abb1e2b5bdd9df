// Text generation loop shared by the CLI and tests: prefill the prompt, then decode one token at
// a time from the model state, stopping at an EOS id or after max_new tokens; timed.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "models/model.h"
#include "models/sampling.h"

namespace hxq {

struct GenerateResult {
  std::vector<int32_t> ids;  // generated ids only (the EOS that stopped generation included)
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t decode_steps = 0;  // forward passes of one token
  bool stopped_at_eos = false;
};

// The ids that end generation: config.json's eos_token_id (an integer or a list of them; other
// entries are ignored), else the tokenizer's EOS when it has one, else none.
std::vector<int32_t> eos_ids_from_config(const json& cfg, std::optional<int32_t> tokenizer_eos);
// The ids that end generation for checkpoint directory `dir`, as transformers' generate() stops:
// config.json's eos_token_id, then generation_config.json's (when present; chat models often list
// their end-of-turn token only there), without repeats; the tokenizer's EOS when neither has one.
// Used by `hxq generate`, `hxq serve` and the Python package alike. Malformed JSON throws Error.
std::vector<int32_t> eos_token_ids(const std::string& dir, std::optional<int32_t> tokenizer_eos);

// on_token(id) is called as each token is chosen; return false to stop early.
GenerateResult generate(const Model& model, ModelState& state, std::span<const int32_t> prompt, int64_t max_new,
                        Sampler& sampler, const std::vector<int32_t>& eos_ids,
                        const std::function<bool(int32_t)>& on_token = {});

}  // namespace hxq
