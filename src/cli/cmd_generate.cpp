// `hxq generate`: streams a continuation of a prompt to stdout, greedy or sampled.
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "models/generate.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

namespace hxq::cli {

void add_generate(CLI::App& app) {
  struct Opts {
    std::string model, prompt, lora;
    int64_t n = 128;
    SamplingOptions s;
    int threads = 0;
    bool exact = false;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("generate", "Generate text from a prompt (streams to stdout)");
  sub->add_option("-m,--model", o->model, "Model directory (dense or HXQ)")->required();
  sub->add_option("-p,--prompt", o->prompt, "Prompt text (empty: start from BOS)")->required();
  sub->add_option("-n,--max-tokens", o->n, "Maximum new tokens (default 128)")->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  sub->add_option("--temperature", o->s.temperature, "Sampling temperature; 0 = greedy (default)");
  sub->add_option("--top-k", o->s.top_k, "Keep the k most likely tokens (0 = off)");
  sub->add_option("--top-p", o->s.top_p, "Nucleus sampling mass (1 = off)");
  sub->add_option("--min-p", o->s.min_p, "Drop tokens below min-p x the top probability (0 = off)");
  sub->add_option("--seed", o->s.seed, "Random seed for sampling (default 0)");
  sub->add_flag("--json", o->json, "Print one JSON object instead of streaming text");
  add_lora_option(sub, o->lora);
  add_threads_option(sub, o->threads);
  add_exact_option(sub, o->exact);
  sub->callback([o] {
    Sampler sampler(o->s);  // validates the sampling options (usage errors) before loading
    apply_threads(o->threads);
    apply_exact(o->exact);
    auto tok = Tokenizer::load(o->model);
    auto model = load_model(o->model, {.lora = o->lora});
    std::vector<int32_t> prompt;
    if (tok.add_bos_by_default() || o->prompt.empty())
      if (auto b = tok.bos_id()) prompt.push_back(*b);
    auto body = tok.encode(o->prompt, false);
    prompt.insert(prompt.end(), body.begin(), body.end());
    if (prompt.empty()) usage_fail("generate: empty prompt and the tokenizer has no BOS token");
    auto eos = eos_token_ids(o->model, tok.eos_id());
    auto st = model->new_state();
    StreamDecoder stream(tok);
    if (!o->json) {
      std::fputs(o->prompt.c_str(), stdout);
      std::fflush(stdout);
    }
    auto res = generate(*model, *st, prompt, o->n, sampler, eos, [&](int32_t id) {
      if (!o->json && std::find(eos.begin(), eos.end(), id) == eos.end()) {
        std::string piece = stream.push(id);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }
      return true;
    });
    const double prefill_tps = res.prefill_seconds > 0 ? double(prompt.size()) / res.prefill_seconds : 0.0;
    const double decode_tps = res.decode_seconds > 0 ? double(res.decode_steps) / res.decode_seconds : 0.0;
    if (o->json) {
      std::vector<int32_t> text_ids;
      for (auto id : res.ids)
        if (std::find(eos.begin(), eos.end(), id) == eos.end()) text_ids.push_back(id);
      nlohmann::json j{{"prompt_ids", prompt},
                       {"ids", res.ids},
                       {"text", tok.decode(text_ids)},
                       {"prefill_tokens_per_s", prefill_tps},
                       {"decode_tokens_per_s", decode_tps},
                       {"stopped_at_eos", res.stopped_at_eos}};
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::string rest = stream.flush();
      std::fwrite(rest.data(), 1, rest.size(), stdout);
      const bool tty = isatty(STDOUT_FILENO);
      if (tty) std::fputc('\n', stdout);  // piped output is exactly the text
      std::fflush(stdout);
      // Piped, the text has no final newline: start the stats on a line of their own.
      std::fprintf(stderr, "%sprefill: %zu tokens, %.1f tokens/s | decode: %lld tokens, %.1f tokens/s%s\n",
                   tty ? "" : "\n", prompt.size(), prefill_tps, (long long)res.decode_steps, decode_tps,
                   res.stopped_at_eos ? " | stopped at EOS" : "");
    }
  });
}

}  // namespace hxq::cli
