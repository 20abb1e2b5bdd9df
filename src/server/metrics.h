// Server metrics in Prometheus' text exposition format: counters, gauges and latency histograms
// (cumulative buckets, _sum, _count), safe to update from any thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace hxq::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // Lines "<name>_bucket{le=...} n", "<name>_sum", "<name>_count".
  void render(std::string& out, const std::string& name) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t n_ = 0;
};

struct Metrics {
  Metrics();
  void count_request(const std::string& endpoint, int status);
  std::string render(int64_t queue_depth, int64_t active_slots, int64_t slots, int64_t cached_states,
                     int64_t cache_bytes) const;

  std::atomic<uint64_t> prompt_tokens{0}, generated_tokens{0}, cached_prompt_tokens{0};
  std::atomic<uint64_t> prefix_hits{0}, prefix_misses{0}, cancelled{0};
  Histogram ttft, inter_token, queue_wait;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
};

}  // namespace hxq::server
