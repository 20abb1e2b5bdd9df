// `hxq perplexity` and `hxq kl`: quality of a model (or of a compressed model against its base)
// on a text file, with transformers' sliding-window protocol or llama.cpp's.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/mmap.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

namespace hxq::cli {

namespace {

struct EvalOpts {
  std::string model, file, ids_file, protocol = "hf", lora;
  int64_t ctx = -1, stride = 512, max_tokens = 0;
  int threads = 0;
  bool json = false, stepwise = false, exact = false, base_exact = false;
};

void add_eval_options(CLI::App* sub, EvalOpts& o) {
  sub->add_option("-f,--file", o.file, "Text file to evaluate (tokenized without BOS)");
  sub->add_option("--ids-file", o.ids_file, "Pre-tokenized input instead of -f: little-endian int32 ids");
  sub->add_option("--protocol", o.protocol, "hf (sliding windows, default) or llamacpp (halves of chunks)")
      ->check(CLI::IsMember({"hf", "llamacpp"}));
  sub->add_option("--ctx", o.ctx, "Window length in tokens (default: 2048 for hf, 512 for llamacpp)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 24));
  sub->add_option("--stride", o.stride, "hf protocol: tokens between window starts (default 512)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  sub->add_option("--max-tokens", o.max_tokens, "Evaluate only the first N tokens")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  sub->add_flag("--stepwise", o.stepwise,
                "Score as generation runs: each scored token fed alone (decode kernels, recurrent state / KV cache)");
  sub->add_flag("--json", o.json, "Print one JSON object on stdout");
  add_lora_option(sub, o.lora, "--lora", "-m's model");
  add_threads_option(sub, o.threads);
  add_exact_option(sub, o.exact);
}

EvalOptions eval_options(const EvalOpts& o) {
  EvalOptions e;
  e.stepwise = o.stepwise;
  if (o.base_exact) e.math = HxqMath::Exact;
  return e;
}

struct Prepared {
  std::vector<int32_t> ids;
  std::vector<EvalWindow> windows;
  std::optional<int32_t> bos;
};

Prepared prepare(const EvalOpts& o, const std::string& tokenizer_dir) {
  if (o.file.empty() == o.ids_file.empty()) usage_fail("give exactly one of -f FILE and --ids-file FILE");
  check_window_options(o.protocol, o.ctx, o.stride);  // before tokenizing
  Prepared p;
  auto tok = Tokenizer::load(tokenizer_dir);
  if (!o.file.empty()) {
    std::string text = read_text_file(o.file);
    p.ids = tok.encode(text, false);
  } else {
    p.ids = read_ids_file(o.ids_file);
  }
  if (o.max_tokens > 0 && int64_t(p.ids.size()) > o.max_tokens) p.ids.resize(size_t(o.max_tokens));
  if (o.protocol == "llamacpp" && tok.add_bos_by_default()) p.bos = tok.bos_id();
  p.windows = plan_windows(int64_t(p.ids.size()), o.protocol, o.ctx, o.stride, p.bos,
                           o.file.empty() ? o.ids_file : o.file);
  return p;
}

nlohmann::json windows_json(const PerplexityResult& r) {
  auto a = nlohmann::json::array();
  for (auto& w : r.windows) a.push_back({w.w.begin, w.w.end, w.nll, w.w.count()});
  return a;
}

}  // namespace

void add_perplexity(CLI::App& app) {
  auto o = std::make_shared<EvalOpts>();
  auto* sub = app.add_subcommand("perplexity", "Perplexity of a model on a text file");
  sub->add_option("-m,--model", o->model, "Model directory (dense or HXQ)")->required();
  add_eval_options(sub, *o);
  sub->callback([o] {
    apply_threads(o->threads);
    apply_exact(o->exact);
    auto p = prepare(*o, o->model);
    auto model = load_model(o->model, {.lora = o->lora});
    int64_t total = 0;
    for (auto& w : p.windows) total += w.count();
    ProgressOptions po;
    po.mode = o->json ? ProgressMode::Silent : ProgressMode::Auto;
    po.unit = "tok";
    Progress bar("perplexity", uint64_t(total), po);
    auto r = perplexity(*model, p.ids, p.windows, p.bos, [&](size_t, size_t, int64_t scored, double ppl) {
      bar.set_suffix(fmt::format("PPL {:.4f}", ppl));
      bar.set_done(uint64_t(scored));
    }, eval_options(*o));
    bar.finish();
    const double tps = double(r.count) / r.seconds;
    if (o->json) {
      nlohmann::json j{{"ppl", r.ppl},          {"ppl_stderr", r.ppl_stderr}, {"nll", r.nll},
                       {"scored_tokens", r.count}, {"tokens", p.ids.size()}, {"protocol", o->protocol},
                       {"windows", windows_json(r)}, {"tokens_per_s", tps},   {"seconds", r.seconds}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("PPL = %.4f ± %.4f over %lld scored tokens (%zu windows, %s protocol), %.1f tokens/s, %.1f s\n", r.ppl,
                  r.ppl_stderr, (long long)r.count, r.windows.size(), o->protocol.c_str(), tps, r.seconds);
    }
  });
}

void add_kl(CLI::App& app) {
  auto o = std::make_shared<EvalOpts>();
  auto other = std::make_shared<std::string>();
  auto other_lora = std::make_shared<std::string>();
  auto* sub = app.add_subcommand("kl", "KL divergence, top-1 agreement and PPL of a model against a base model");
  sub->add_option("-m,--model", o->model, "Base model directory (the reference distribution)")->required();
  sub->add_option("--other", *other, "Model to compare (e.g. its HXQ compression)")->required();
  add_eval_options(sub, *o);
  add_lora_option(sub, *other_lora, "--other-lora", "--other's model");
  sub->add_flag("--base-exact", o->base_exact,
                "Run only the base model (-m) with exact float32 HXQ math, e.g. to measure the fast decode "
                "kernels' effect with -m DIR --other DIR --stepwise");
  sub->callback([o, other, other_lora] {
    apply_threads(o->threads);
    apply_exact(o->exact);
    auto p = prepare(*o, o->model);
    auto base = load_model(o->model, {.lora = o->lora});
    auto oth = load_model(*other, {.lora = *other_lora});
    int64_t total = 0;
    for (auto& w : p.windows) total += w.count();
    ProgressOptions po;
    po.mode = o->json ? ProgressMode::Silent : ProgressMode::Auto;
    po.unit = "tok";
    Progress bar("kl", uint64_t(total), po);
    auto k = kl_divergence(*base, *oth, p.ids, p.windows, p.bos, [&](size_t, size_t, int64_t scored, double) {
      bar.set_done(uint64_t(scored));
    }, eval_options(*o));
    bar.finish();
    const double dppl = 100.0 * (k.other.ppl / k.base.ppl - 1.0);
    if (o->json) {
      nlohmann::json j{{"kl_mean", k.kl_mean},           {"kl_p99", k.kl_p99},
                       {"kl_max", k.kl_max},             {"top1_agreement", k.top1_agreement},
                       {"ppl_base", k.base.ppl},         {"ppl_other", k.other.ppl},
                       {"delta_ppl_percent", dppl},      {"scored_tokens", k.base.count},
                       {"protocol", o->protocol},        {"seconds", k.seconds}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("KL(base || other): mean %.3g, p99 %.3g, max %.3g nats/token; top-1 agreement %.2f%%\n", k.kl_mean,
                  k.kl_p99, k.kl_max, 100.0 * k.top1_agreement);
      std::printf("PPL base %.4f, other %.4f (%+.4g%%) over %lld scored tokens, %.1f s\n", k.base.ppl, k.other.ppl, dppl,
                  (long long)k.base.count, k.seconds);
    }
  });
}

}  // namespace hxq::cli
