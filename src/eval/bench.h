// Speed benchmark of a loaded model (the engine behind `hxq bench`): prefill and decode tokens/s
// on fixed pseudo-random token ids, bytes moved per decoded token, and the ceiling that the
// machine's measured memory read bandwidth puts on decode.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/op_profile.h"
#include "models/model.h"

namespace hxq {

struct BenchOptions {
  int64_t prompt = 512;   // prefill length (0: no prefill run; decode then starts from an empty state)
  int64_t gen = 128;      // single-token decode steps per repeat (0: no decode run)
  int repeats = 3;        // timed repeats of prefill and of decode; figures are medians
  uint64_t seed = 1;      // token ids are drawn from [0, vocab) with this seed
  // Memory read bandwidth, measured after each repeat's decode (measure_read_bandwidth_gbps with
  // the engine's pool): buffer size in bytes (0: not measured, ceiling figures stay 0), repeats.
  size_t membw_bytes = size_t(512) << 20;
  int membw_repeats = 5;
  bool profile = false;  // record the linear layers' time during the decode steps (core/op_profile.h)
};

// Bytes read and written per decoded token, by origin.
struct DecodeBytes {
  uint64_t weights = 0;  // Model::decode_weight_bytes()
  uint64_t state = 0;    // recurrent state read + written (Mamba2), KV cache read + written (transformers)
  int64_t context = 0;   // context length at which `state` is counted (transformers: mean over the decode run)
  uint64_t total() const { return weights + state; }
};

struct BenchResult {
  ModelSummary model;
  int threads = 1;
  int64_t prompt = 0, gen = 0;
  int repeats = 0;
  std::vector<double> prefill_runs, decode_runs;  // tokens/s of each timed repeat
  std::vector<double> membw_runs;                 // GB/s measured after each repeat's decode
  double prefill_tokens_per_s = 0;                // medians of the runs (0 when not run)
  double decode_tokens_per_s = 0;
  DecodeBytes bytes;                      // per decoded token
  double bandwidth_gb_per_s = 0;          // achieved by decode: bytes.total() × decode tokens/s / 1e9
  double membw_gb_per_s = 0;              // median measured read bandwidth (0: not measured)
  double ceiling_tokens_per_s = 0;        // membw / bytes per token (0: not measured)
  double ceiling_fraction = 0;            // median over repeats of decode tokens/s / that repeat's ceiling
  std::vector<double> ceiling_fraction_runs;  // those per-repeat fractions (their spread: min .. max)
  uint64_t peak_rss_bytes = 0;            // VmHWM (or getrusage's maximum RSS) after the first repeat,
                                          // before the bandwidth test's buffer
  // With BenchOptions::profile: the linear layers' decode time by storage and shape, over all
  // repeats, and the decode time they were part of (the rest: attention, norms, scans, sync).
  std::vector<OpStat> profile;
  double profile_decode_seconds = 0;
  int64_t profile_tokens = 0;
};

// Runs the benchmark on `model` with the current global pool (set_num_threads beforehand).
// `dir` is the checkpoint directory the model was loaded from (its config.json gives the KV-cache
// geometry of transformers). Deterministic token ids; speed figures are wall-clock medians.
BenchResult run_bench(const Model& model, const std::string& dir, const BenchOptions& opt);

// Bytes moved per decoded token after `context` tokens (see DecodeBytes).
DecodeBytes decode_bytes_per_token(const Model& model, const std::string& dir, int64_t context);

// Peak resident set size of this process in bytes (VmHWM from /proc/self/status, else getrusage).
uint64_t peak_rss_bytes();

}  // namespace hxq
