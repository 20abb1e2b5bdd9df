#include "core/op_profile.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>

namespace hxq {

namespace {
std::atomic<bool> g_on{false};
std::mutex g_mu;
std::map<std::string, OpStat>& table() {
  static std::map<std::string, OpStat> t;
  return t;
}
}  // namespace

bool op_profile_enabled() { return g_on.load(std::memory_order_relaxed); }

void op_profile_enable(bool on) { g_on.store(on, std::memory_order_relaxed); }

void op_profile_clear() {
  std::lock_guard<std::mutex> lock(g_mu);
  table().clear();
}

void op_profile_add(const std::string& label, double seconds, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  OpStat& s = table()[label];
  s.label = label;
  ++s.calls;
  s.seconds += seconds;
  s.bytes += bytes;
}

std::vector<OpStat> op_profile_stats() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<OpStat> v;
  for (const auto& [k, s] : table()) v.push_back(s);
  std::stable_sort(v.begin(), v.end(), [](const OpStat& a, const OpStat& b) { return a.seconds > b.seconds; });
  return v;
}

}  // namespace hxq
