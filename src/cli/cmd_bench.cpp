// `hxq bench`: prefill / decode speed of a model against the machine's memory-bandwidth ceiling,
// or (--membw) just the machine's measured read bandwidth and peak FMA rate.
#include <algorithm>
#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "eval/bench.h"
#include "kernels/cpu_features.h"
#include "kernels/hxq_gemm.h"
#include "kernels/membw.h"
#include "models/model.h"

namespace hxq::cli {

namespace {

nlohmann::json summary_json(const ModelSummary& s) {
  return {{"arch", s.arch},     {"layers", s.layers},           {"hidden", s.hidden},
          {"vocab", s.vocab},   {"params", s.params},            {"weight_bytes", s.weight_bytes},
          {"hxq_modules", s.hxq_modules}, {"hxq_fast_modules", s.hxq_fast_modules}};
}

// "fast" (16-bit integer decode kernels for every compressed layer), "fast for N of M layers",
// "exact", or "exact (no fast kernel on this CPU)" (e.g. 8-bit v2 layers, helix layers without
// AVX-512 VBMI + VNNI).
std::string hxq_math_name(const ModelSummary& m) {
  if (m.hxq_modules == 0) return "none (no HXQ layers)";
  if (hxq_math() == HxqMath::Exact) return "exact";
  if (m.hxq_fast_modules == 0) return "exact (no fast kernel on this CPU)";
  if (m.hxq_fast_modules == m.hxq_modules) return "fast";
  return fmt::format("fast for {} of {} layers", m.hxq_fast_modules, m.hxq_modules);
}

void print_table(const std::string& dir, const BenchResult& r, double load_s, const Model& model) {
  const auto& m = r.model;
  std::printf("model    %s: %s, %lld layers, hidden %lld, %.1fM params, %.1f MB weights (loaded in %.2f s)\n",
              dir.c_str(), m.arch.c_str(), (long long)m.layers, (long long)m.hidden, double(m.params) / 1e6,
              double(m.weight_bytes) / 1e6, load_s);
  if (model.lora_layers() > 0)
    std::printf("lora     %s: adapter on %lld linear layers (not merged)\n", model.lora_dir().c_str(),
                (long long)model.lora_layers());
  std::printf("machine  %d thread%s, %s kernels, ", r.threads, r.threads == 1 ? "" : "s",
              std::string(isa_name(kernel_isa())).c_str());
  if (m.hxq_modules > 0) std::printf("HXQ decode %s, ", hxq_math_name(m).c_str());
  if (r.membw_gb_per_s > 0)
    std::printf("read bandwidth %.1f GB/s (median of %zu, %.1f-%.1f)\n", r.membw_gb_per_s, r.membw_runs.size(),
                *std::min_element(r.membw_runs.begin(), r.membw_runs.end()),
                *std::max_element(r.membw_runs.begin(), r.membw_runs.end()));
  else std::printf("read bandwidth not measured\n");
  std::printf("\n%-9s %8s %12s %12s %9s\n", "phase", "tokens", "tokens/s", "ceiling", "of ceil.");
  if (r.prompt > 0) std::printf("%-9s %8lld %12.1f %12s %9s\n", "prefill", (long long)r.prompt, r.prefill_tokens_per_s, "-", "-");
  if (r.gen > 0) {
    if (r.ceiling_tokens_per_s > 0)
      std::printf("%-9s %8lld %12.1f %12.1f %8.0f%%\n", "decode", (long long)r.gen, r.decode_tokens_per_s,
                  r.ceiling_tokens_per_s, 100.0 * r.ceiling_fraction);
    else
      std::printf("%-9s %8lld %12.1f %12s %9s\n", "decode", (long long)r.gen, r.decode_tokens_per_s, "-", "-");
  }
  std::printf("\nper decoded token: %.2f MB (weights %.2f MB + state %.2f MB), achieved %.1f GB/s\n",
              double(r.bytes.total()) / 1e6, double(r.bytes.weights) / 1e6, double(r.bytes.state) / 1e6,
              r.bandwidth_gb_per_s);
  if (r.ceiling_fraction_runs.size() > 1)
    std::printf("decode / ceiling per repeat (bandwidth probed after each): %.0f-%.0f %%\n",
                100.0 * *std::min_element(r.ceiling_fraction_runs.begin(), r.ceiling_fraction_runs.end()),
                100.0 * *std::max_element(r.ceiling_fraction_runs.begin(), r.ceiling_fraction_runs.end()));
  std::printf("peak RSS %.1f MB; medians of %d repeats\n", double(r.peak_rss_bytes) / 1e6, r.repeats);
  if (r.profile_tokens > 0) {
    const double tok = double(r.profile_tokens), total = r.profile_decode_seconds;
    std::printf("\ndecode profile: linear layers by storage and shape, %lld tokens (all repeats)\n",
                (long long)r.profile_tokens);
    std::printf("%-34s %11s %9s %7s %8s\n", "op", "calls/tok", "ms/tok", "share", "GB/s");
    double in_ops = 0;
    for (const OpStat& o : r.profile) {
      in_ops += o.seconds;
      std::printf("%-34s %11.1f %9.3f %6.1f%% %8.1f\n", o.label.c_str(), double(o.calls) / tok, 1e3 * o.seconds / tok,
                  total > 0 ? 100.0 * o.seconds / total : 0.0, o.seconds > 0 ? double(o.bytes) / o.seconds / 1e9 : 0.0);
    }
    const double rest = std::max(0.0, total - in_ops);
    std::printf("%-34s %11s %9.3f %6.1f%% %8s\n", "rest (attention, norms, scans, ...)", "-", 1e3 * rest / tok,
                total > 0 ? 100.0 * rest / total : 0.0, "-");
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  struct Opts {
    std::string model, lora;
    BenchOptions b;
    int threads = 0;
    bool exact = false;
    bool json = false, membw_only = false;
    double membw_mb = 512;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("bench", "Measure prefill/decode speed against the memory-bandwidth ceiling");
  sub->add_option("-m,--model", o->model, "Model directory (dense or HXQ)");
  sub->add_option("--prompt", o->b.prompt, "Prefill length in tokens (default 512; 0 = skip)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  sub->add_option("--gen", o->b.gen, "Decode steps per repeat (default 128; 0 = skip)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  sub->add_option("--repeats", o->b.repeats, "Timed repeats; figures are medians (default 3)")->check(CLI::Range(1, 1000));
  sub->add_option("--seed", o->b.seed, "Seed of the random token ids (default 1)");
  sub->add_option("--membw-mb", o->membw_mb, "Buffer of the bandwidth test in MiB (default 512; 0 = skip)")
      ->check(CLI::Range(0.0, 1e6));
  sub->add_flag("--membw", o->membw_only, "Only measure the machine's read bandwidth and peak FMA rate");
  sub->add_flag("--profile", o->b.profile,
                "Also time the linear layers during decode, by storage and shape (ms/token, share, GB/s)");
  sub->add_flag("--json", o->json, "Print one JSON object");
  add_lora_option(sub, o->lora);
  add_threads_option(sub, o->threads);
  add_exact_option(sub, o->exact);
  sub->callback([o] {
    if (!o->membw_only && o->model.empty()) usage_fail("bench: --model is required (or --membw)");
    apply_threads(o->threads);
    apply_exact(o->exact);
    const size_t membw_bytes = size_t(o->membw_mb * double(1 << 20));
    if (o->membw_only) {
      const double bw = membw_bytes ? measure_read_bandwidth_gbps(membw_bytes, pool(), std::max(7, o->b.repeats)) : 0.0;
      const double fma = measure_peak_fma_gflops(pool(), kernel_isa());
      if (o->json) {
        nlohmann::json j{{"threads", pool().size()}, {"isa", std::string(isa_name(kernel_isa()))},
                         {"membw_gb_per_s", bw}, {"peak_fma_gflops", fma}};
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("read bandwidth %.1f GB/s, peak FMA %.1f GFLOP/s (%d thread%s, %s)\n", bw, fma, pool().size(),
                    pool().size() == 1 ? "" : "s", std::string(isa_name(kernel_isa())).c_str());
      }
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto model = load_model(o->model, {.lora = o->lora});
    const double load_s = seconds_since(t0);
    o->b.membw_bytes = membw_bytes;
    BenchResult r = run_bench(*model, o->model, o->b);
    if (o->json) {
      nlohmann::json j{{"model", o->model},
                       {"summary", summary_json(r.model)},
                       {"lora", model->lora_layers() > 0 ? nlohmann::json{{"dir", model->lora_dir()},
                                                                          {"layers", model->lora_layers()}}
                                                         : nlohmann::json(nullptr)},
                       {"threads", r.threads},
                       {"isa", std::string(isa_name(kernel_isa()))},
                       {"hxq_math", hxq_math_name(r.model)},
                       {"prompt_tokens", r.prompt},
                       {"gen_tokens", r.gen},
                       {"repeats", r.repeats},
                       {"load_seconds", load_s},
                       {"prefill_tokens_per_s", r.prefill_tokens_per_s},
                       {"prefill_runs", r.prefill_runs},
                       {"decode_tokens_per_s", r.decode_tokens_per_s},
                       {"decode_runs", r.decode_runs},
                       {"bytes_per_token", r.bytes.total()},
                       {"weight_bytes_per_token", r.bytes.weights},
                       {"state_bytes_per_token", r.bytes.state},
                       {"state_context", r.bytes.context},
                       {"bandwidth_gb_per_s", r.bandwidth_gb_per_s},
                       {"membw_gb_per_s", r.membw_gb_per_s},
                       {"membw_runs", r.membw_runs},
                       {"ceiling_tokens_per_s", r.ceiling_tokens_per_s},
                       {"ceiling_fraction", r.ceiling_fraction},
                       {"ceiling_fraction_runs", r.ceiling_fraction_runs},
                       {"peak_rss_bytes", r.peak_rss_bytes}};
      if (r.profile_tokens > 0) {
        nlohmann::json ops = nlohmann::json::array();
        for (const OpStat& op : r.profile)
          ops.push_back({{"op", op.label}, {"calls", op.calls}, {"seconds", op.seconds}, {"weight_bytes", op.bytes}});
        j["profile"] = {{"tokens", r.profile_tokens}, {"decode_seconds", r.profile_decode_seconds}, {"ops", ops}};
      }
      std::printf("%s\n", j.dump().c_str());
    } else {
      print_table(o->model, r, load_s, *model);
    }
  });
}

}  // namespace hxq::cli
