#include "models/sampling.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace hxq {

Sampler::Sampler(const SamplingOptions& o) : o_(o), rng_(o.seed) {
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) usage_fail("--temperature must be >= 0");
  if (o.top_k < 0) usage_fail("--top-k must be >= 0");
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) usage_fail("--top-p must be in (0, 1]");
  if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) usage_fail("--min-p must be in [0, 1]");
}

int32_t Sampler::next(const float* logits, int64_t vocab) {
  if (o_.temperature == 0.0f) return int32_t(std::max_element(logits, logits + vocab) - logits);
  cand_.clear();
  for (int64_t i = 0; i < vocab; ++i) cand_.emplace_back(logits[i] / o_.temperature, int32_t(i));
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = cand_.size();
  if (o_.top_k > 0 && size_t(o_.top_k) < keep) {
    keep = size_t(o_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + ptrdiff_t(keep), cand_.end(), by_logit);
    cand_.resize(keep);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  const float mx = cand_.front().first;
  double total = 0;
  for (auto& c : cand_) total += std::exp(double(c.first - mx));
  if (o_.top_p < 1.0f) {  // smallest prefix whose probability mass reaches top_p (at least one token)
    double acc = 0;
    size_t n = 0;
    for (; n < cand_.size(); ++n) {
      acc += std::exp(double(cand_[n].first - mx)) / total;
      if (acc >= double(o_.top_p)) {
        ++n;
        break;
      }
    }
    cand_.resize(std::max<size_t>(1, std::min(n, cand_.size())));
    total = 0;
    for (auto& c : cand_) total += std::exp(double(c.first - mx));
  }
  if (o_.min_p > 0.0f) {  // cand_ is sorted: keep the prefix with p >= min_p · p_max (the first always)
    const double floor = std::log(double(o_.min_p));
    size_t n = 1;
    while (n < cand_.size() && double(cand_[n].first - mx) >= floor) ++n;
    if (n < cand_.size()) {
      cand_.resize(n);
      total = 0;
      for (auto& c : cand_) total += std::exp(double(c.first - mx));
    }
  }
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (auto& c : cand_) {
    r -= std::exp(double(c.first - mx));
    if (r <= 0) return c.second;
  }
  return cand_.back().second;
}

}  // namespace hxq
