// A switchable per-operation profile: wall time, calls and bytes accumulated by label on the
// thread that runs a model's forward (ops parallelise inside; their wall time is what counts).
// Off by default; `hxq bench --profile` turns it on for the decode steps.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hxq {

struct OpStat {
  std::string label;
  int64_t calls = 0;
  double seconds = 0;
  uint64_t bytes = 0;  // weight bytes read, summed over calls
};

bool op_profile_enabled();
// Starts or pauses recording; clear() forgets what was recorded.
void op_profile_enable(bool on);
void op_profile_clear();
void op_profile_add(const std::string& label, double seconds, uint64_t bytes);
// What was recorded, largest time first.
std::vector<OpStat> op_profile_stats();

}  // namespace hxq
