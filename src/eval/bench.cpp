#include "eval/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/membw.h"
#include "models/transformer.h"
#include "models/zamba2.h"

namespace hxq {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

uint64_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      // "VmHWM:     123456 kB"
      unsigned long long kb = 0;
      if (std::sscanf(line.c_str() + 6, "%llu", &kb) == 1) return uint64_t(kb) * 1024;
    }
  }
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) == 0) return uint64_t(ru.ru_maxrss) * 1024;  // Linux: kB
  return 0;
}

DecodeBytes decode_bytes_per_token(const Model& model, const std::string& dir, int64_t context) {
  DecodeBytes b;
  b.weights = model.decode_weight_bytes();
  b.context = std::max<int64_t>(0, context);
  const ModelSummary s = model.summary();
  if (s.arch == "mamba2" || s.arch == "mamba" || s.arch == "falcon_mamba") {
    // The whole recurrent state (SSM state and conv window) is read and rewritten every token.
    b.state = 2 * uint64_t(model.new_state()->bytes());
  } else if (s.arch == "zamba2") {
    // The recurrent state of every Mamba layer (a fresh state holds no K/V yet), and the K/V cache
    // of every shared-block invocation as for a transformer.
    const auto path = (std::filesystem::path(dir) / "config.json").string();
    const Zamba2Config c = Zamba2Config::from_json(load_config(dir), path);
    const uint64_t per_pos =
        uint64_t(c.hybrid_ids.size()) * uint64_t(c.kv_heads) * uint64_t(c.head_dim) * 2 * sizeof(float);
    b.state = 2 * uint64_t(model.new_state()->bytes()) + per_pos * uint64_t(b.context + 1) + per_pos;
  } else if (s.arch == "llama" || s.arch == "qwen2") {
    // Float32 K and V of every cached position are read (context + the new token); the new
    // token's K and V are written.
    const auto path = (std::filesystem::path(dir) / "config.json").string();
    const TransformerConfig c = TransformerConfig::from_json(load_config(dir), path);
    const uint64_t per_pos = uint64_t(c.layers) * uint64_t(c.kv_heads) * uint64_t(c.head_dim) * 2 * sizeof(float);
    b.state = per_pos * uint64_t(b.context + 1) + per_pos;
  }
  return b;
}

BenchResult run_bench(const Model& model, const std::string& dir, const BenchOptions& opt) {
  if (opt.prompt < 0 || opt.gen < 0) fail("bench: negative prompt ({}) or gen ({}) length", opt.prompt, opt.gen);
  if (opt.repeats < 1) fail("bench: repeats must be at least 1, got {}", opt.repeats);
  BenchResult r;
  r.model = model.summary();
  r.threads = pool().size();
  r.prompt = opt.prompt;
  r.gen = opt.gen;
  r.repeats = opt.repeats;
  const int64_t V = r.model.vocab;
  if (V <= 0) fail("{}: model reports an empty vocabulary", dir);

  std::mt19937_64 rng(opt.seed);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(std::min<int64_t>(V, INT32_MAX) - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(opt.prompt)), steps(static_cast<size_t>(opt.gen));
  for (auto& id : prompt) id = pick(rng);
  for (auto& id : steps) id = pick(rng);
  std::vector<float> logits(static_cast<size_t>(V));
  auto state = model.new_state();

  // Warm-up (untimed): pages the weights in and sizes the scratch buffers.
  {
    const int32_t first = prompt.empty() ? steps.empty() ? 0 : steps[0] : prompt[0];
    std::vector<int32_t> w(8, first);
    model.forward(*state, w, int64_t(w.size()) - 1, logits.data());
    for (int i = 0; i < 2; ++i) model.forward(*state, std::span(&first, 1), 0, logits.data());
  }

  // Decode steps run at contexts prompt .. prompt + gen - 1: count the KV cache at the mean.
  r.bytes = decode_bytes_per_token(model, dir, opt.prompt + opt.gen / 2);
  // The bandwidth is measured right after each repeat's decode, so that decode and its ceiling
  // see the same machine load (on a shared machine both drift); the fraction of the ceiling is
  // the median of the per-repeat ratios.
  std::vector<double>& fractions = r.ceiling_fraction_runs;
  if (opt.profile) op_profile_clear();
  for (int rep = 0; rep < opt.repeats; ++rep) {
    state->reset();
    if (!prompt.empty()) {
      const auto t0 = Clock::now();
      model.forward(*state, prompt, int64_t(prompt.size()) - 1, logits.data());
      const double s = seconds_since(t0);
      r.prefill_runs.push_back(s > 0 ? double(prompt.size()) / s : 0.0);
    }
    double tps = 0;
    if (!steps.empty()) {
      struct Recording {  // the profile records the decode steps only, and stops on any exit
        bool on;
        explicit Recording(bool o) : on(o) { if (on) op_profile_enable(true); }
        ~Recording() { if (on) op_profile_enable(false); }
      } recording(opt.profile);
      const auto t0 = Clock::now();
      for (const int32_t& id : steps) model.forward(*state, std::span(&id, 1), 0, logits.data());
      const double s = seconds_since(t0);
      if (opt.profile) {
        r.profile_decode_seconds += s;
        r.profile_tokens += int64_t(steps.size());
      }
      tps = s > 0 ? double(steps.size()) / s : 0.0;
      r.decode_runs.push_back(tps);
    }
    if (rep == 0) r.peak_rss_bytes = peak_rss_bytes();  // before the bandwidth test allocates its buffer
    if (opt.membw_bytes > 0) {
      const double bw = measure_read_bandwidth_gbps(opt.membw_bytes, pool(), std::max(1, opt.membw_repeats));
      r.membw_runs.push_back(bw);
      if (!steps.empty() && bw > 0 && r.bytes.total() > 0) fractions.push_back(tps * double(r.bytes.total()) / (bw * 1e9));
    }
  }
  if (opt.profile) r.profile = op_profile_stats();
  r.prefill_tokens_per_s = median(r.prefill_runs);
  r.decode_tokens_per_s = median(r.decode_runs);
  r.bandwidth_gb_per_s = double(r.bytes.total()) * r.decode_tokens_per_s * 1e-9;
  r.membw_gb_per_s = median(r.membw_runs);
  if (r.membw_gb_per_s > 0 && r.bytes.total() > 0) r.ceiling_tokens_per_s = r.membw_gb_per_s * 1e9 / double(r.bytes.total());
  r.ceiling_fraction = median(fractions);
  return r;
}

}  // namespace hxq
