// `hxq logits`: logits of every position of a token-id file, as raw float32, for comparisons.
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "models/model.h"

namespace hxq::cli {

void add_logits(CLI::App& app) {
  struct Opts {
    std::string model, ids_file, out, lora;
    int threads = 0;
    bool exact = false;
    int64_t chunk = 512;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("logits", "Write the logits of every position of a token-id file (float32 [T, vocab])");
  sub->add_option("-m,--model", o->model, "Model directory")->required();
  sub->add_option("--ids-file", o->ids_file, "Token ids, little-endian int32")->required();
  sub->add_option("--out", o->out, "Output file (little-endian float32 [T, vocab]); default: stdout");
  sub->add_option("--chunk", o->chunk, "Tokens per forward pass (bounds memory)")->check(CLI::Range(1, 1 << 20));
  sub->add_flag("--json", o->json, "Print a JSON summary on stdout (needs --out)");
  add_lora_option(sub, o->lora);
  add_threads_option(sub, o->threads);
  add_exact_option(sub, o->exact);
  sub->callback([o] {
    if (o->out.empty() && o->json) usage_fail("logits: --json needs --out (the logits go to stdout otherwise)");
    if (o->out.empty() && isatty(STDOUT_FILENO))
      usage_fail("logits: refusing to write binary logits to a terminal; use --out FILE or redirect stdout");
    apply_threads(o->threads);
    apply_exact(o->exact);
    auto ids = read_ids_file(o->ids_file);
    if (ids.empty()) fail("{}: no token ids", o->ids_file);
    auto model = load_model(o->model, {.lora = o->lora});
    const int64_t V = model->vocab_size();
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] < 0 || ids[i] >= V) fail("{}: token id {} at position {} outside [0, {})", o->ids_file, ids[i], i, V);
    std::string tmp = o->out.empty() ? "" : o->out + ".tmp";
    FILE* f = o->out.empty() ? stdout : std::fopen(tmp.c_str(), "wb");
    if (!f) fail("{}: cannot create: {}", tmp, std::strerror(errno));
    auto st = model->new_state();
    std::vector<float> buf;
    std::vector<int32_t> argmax;
    bool ok = true;
    for (size_t b = 0; b < ids.size() && ok; b += size_t(o->chunk)) {
      size_t n = std::min(ids.size() - b, size_t(o->chunk));
      buf.resize(n * size_t(V));
      model->forward(*st, std::span(ids).subspan(b, n), 0, buf.data());
      ok = std::fwrite(buf.data(), sizeof(float), buf.size(), f) == buf.size();
      for (size_t t = 0; t < n; ++t)
        argmax.push_back(int32_t(std::max_element(buf.begin() + ptrdiff_t(t * size_t(V)),
                                                  buf.begin() + ptrdiff_t((t + 1) * size_t(V))) -
                                 (buf.begin() + ptrdiff_t(t * size_t(V)))));
    }
    if (f != stdout) {
      ok = std::fclose(f) == 0 && ok;
      if (!ok || std::rename(tmp.c_str(), o->out.c_str()) != 0) {
        std::remove(tmp.c_str());
        fail("{}: write failed", o->out);
      }
    } else {
      ok = std::fflush(stdout) == 0 && ok;
      if (!ok) fail("stdout: write failed");
    }
    if (o->json) {
      nlohmann::json j{{"tokens", ids.size()}, {"vocab", V}, {"out", o->out}, {"argmax", argmax}};
      std::printf("%s\n", j.dump().c_str());
    } else if (!o->out.empty()) {
      std::fprintf(stderr, "wrote %zu x %lld float32 logits to %s\n", ids.size(), (long long)V, o->out.c_str());
    }
  });
}

}  // namespace hxq::cli
