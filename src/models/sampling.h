// Choosing the next token from logits: greedy (temperature 0) or seeded sampling with
// temperature, top-k, top-p (nucleus) and min-p, in that order, as transformers applies them.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace hxq {

struct SamplingOptions {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off: drop tokens less likely than min_p × the most likely one
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o);
  int32_t next(const float* logits, int64_t vocab);

 private:
  SamplingOptions o_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace hxq
