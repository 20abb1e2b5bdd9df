// `hxq synth`: writes a random-weight checkpoint with the real shapes of a model release.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "models/synth.h"

namespace hxq::cli {

void add_synth(CLI::App& app) {
  struct Opts {
    SynthOptions s;
    std::string out, dtype = "bf16";
    int threads = 0;
    bool json = false;
    double shard_gb = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("synth", "Write a random-weight checkpoint with the shapes of a real model (for benchmarks)");
  sub->add_option("--arch", o->s.arch, "Architecture: mamba, mamba2, zamba2, llama or qwen2")->capture_default_str();
  sub->add_option("--preset", o->s.preset, "mamba: 130m, 370m, 790m, 1.4b, 2.8b; mamba2: 130m, 370m, 780m, 1.3b, 2.7b; zamba2: 1.2b, 2.7b; llama: tinyllama-1.1b; qwen2: qwen2.5-3b; each arch: tiny (tests)")->required();
  sub->add_option("--dtype", o->dtype, "bf16 (default), f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  sub->add_option("--seed", o->s.seed, "Random seed (default 1)");
  sub->add_option("--shard-gb", o->shard_gb, "Split into shards of at most this many GB (default: one file)")
      ->check(CLI::Range(0.0, 1e6));
  sub->add_option("-o,--out", o->out, "Output directory")->required();
  sub->add_flag("--overwrite", o->s.overwrite, "Replace an existing checkpoint directory");
  sub->add_flag("--json", o->json, "Print a JSON summary");
  add_threads_option(sub, o->threads);
  sub->callback([o] {
    apply_threads(o->threads);
    o->s.dtype = o->dtype == "f32" ? DType::F32 : o->dtype == "f16" ? DType::F16 : DType::BF16;
    o->s.max_shard_bytes = uint64_t(o->shard_gb * 1e9);
    auto t0 = std::chrono::steady_clock::now();
    int64_t params = write_synthetic_model(o->out, o->s);
    double secs = seconds_since(t0);
    if (o->json) {
      nlohmann::json j{{"out", o->out}, {"arch", o->s.arch}, {"preset", o->s.preset}, {"dtype", o->dtype},
                       {"params", params}, {"seconds", secs}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("wrote %s: %s %s, %.1fM parameters, %s, in %.1f s\n", o->out.c_str(), o->s.arch.c_str(),
                  o->s.preset.c_str(), double(params) / 1e6, o->dtype.c_str(), secs);
    }
  });
}

}  // namespace hxq::cli
