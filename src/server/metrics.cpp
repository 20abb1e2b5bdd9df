#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace hxq::server {

namespace {
// Latency buckets in seconds: 1 ms .. 60 s, roughly ×2 apart.
std::vector<double> latency_bounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60};
}
}  // namespace

void Histogram::observe(double v) {
  std::lock_guard lk(mu_);
  size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  counts_[i]++;
  sum_ += v;
  n_++;
}

void Histogram::render(std::string& out, const std::string& name) const {
  std::lock_guard lk(mu_);
  uint64_t acc = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    acc += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], acc);
  }
  acc += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, acc, name, sum_, name, n_);
}

Metrics::Metrics() : ttft(latency_bounds()), inter_token(latency_bounds()), queue_wait(latency_bounds()) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lk(mu_);
  requests_[{endpoint, status}]++;
}

std::string Metrics::render(int64_t queue_depth, int64_t active_slots, int64_t slots, int64_t cached_states,
                            int64_t cache_bytes) const {
  std::string o;
  o += "# HELP hxq_requests_total HTTP requests answered, by endpoint and status.\n";
  o += "# TYPE hxq_requests_total counter\n";
  {
    std::lock_guard lk(mu_);
    for (auto& [k, n] : requests_)
      o += fmt::format("hxq_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first, k.second, n);
  }
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
  };
  auto gauge = [&](const char* name, const char* help, int64_t v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, v);
  };
  counter("hxq_prompt_tokens_total", "Prompt tokens of finished requests (cached ones included).", prompt_tokens.load());
  counter("hxq_prompt_tokens_cached_total", "Prompt tokens served from a cached prefix state.",
          cached_prompt_tokens.load());
  counter("hxq_generated_tokens_total", "Tokens generated.", generated_tokens.load());
  counter("hxq_prefix_cache_hits_total", "Requests that started from a cached prefix state.", prefix_hits.load());
  counter("hxq_prefix_cache_misses_total", "Requests prefilled from the start.", prefix_misses.load());
  counter("hxq_requests_cancelled_total", "Generations cancelled (client gone, timeout, shutdown).", cancelled.load());
  gauge("hxq_queue_depth", "Requests waiting for a slot.", queue_depth);
  gauge("hxq_active_slots", "Slots prefilling or decoding.", active_slots);
  gauge("hxq_slots", "Slots (--parallel).", slots);
  gauge("hxq_prefix_cache_states", "Prefix states held.", cached_states);
  gauge("hxq_prefix_cache_bytes", "Bytes held by prefix states.", cache_bytes);
  o += "# HELP hxq_time_to_first_token_seconds From request arrival to its first generated token.\n";
  o += "# TYPE hxq_time_to_first_token_seconds histogram\n";
  ttft.render(o, "hxq_time_to_first_token_seconds");
  o += "# HELP hxq_inter_token_seconds Time between consecutive generated tokens of a request.\n";
  o += "# TYPE hxq_inter_token_seconds histogram\n";
  inter_token.render(o, "hxq_inter_token_seconds");
  o += "# HELP hxq_queue_wait_seconds Time a request waited for a slot.\n";
  o += "# TYPE hxq_queue_wait_seconds histogram\n";
  queue_wait.render(o, "hxq_queue_wait_seconds");
  return o;
}

}  // namespace hxq::server
