// `hxq serve`: the OpenAI-compatible HTTP server (src/server).
#include "cli/commands.h"
#include "cli/common.h"
#include "server/server.h"

namespace hxq::cli {

void add_serve(CLI::App& app) {
  struct Opts {
    server::ServerOptions s;
    int threads = 0;
    bool exact = false;
    int64_t max_body_kb = 8192;
  };
  auto o = std::make_shared<Opts>();
  auto& s = o->s;
  auto* sub = app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API");
  sub->add_option("-m,--model", s.model_dir, "Model directory (dense or HXQ)")->required();
  sub->add_option("--host", s.host, "Address to bind (default 127.0.0.1: this machine only)");
  sub->add_option("--port", s.port, "Port (default 8080; 0 = any free port, printed)")->check(CLI::Range(0, 65535));
  sub->add_option("--alias", s.alias, "Model id in the API (default: the directory's name)");
  sub->add_option("--api-key", s.api_key, "Require 'Authorization: Bearer KEY' (default: none)");
  sub->add_option("--chat-template-file", s.chat_template_file, "Jinja chat template overriding the checkpoint's");
  sub->add_option("--parallel", s.parallel, "Slots decoded together (default 4)")->check(CLI::Range(1, 256));
  sub->add_option("--queue", s.queue, "Requests waiting for a slot before 429 (default 64)")->check(CLI::Range(0, 1 << 20));
  sub->add_option("--prefill-chunk", s.prefill_chunk, "Prompt tokens per scheduler step, at most (default 512)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  sub->add_option("--prefill-budget-ms", s.prefill_budget_ms,
                  "While other requests run, size prompt chunks to take about this long at the measured prefill "
                  "speed (default 250; 0 = always --prefill-chunk)")
      ->check(CLI::Range(0.0, 1e6));
  sub->add_option("--state-cache-mb", s.state_cache_mb, "Memory for prefix states (default 2048; 0 = no reuse)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  sub->add_option("--ctx-size", s.ctx, "Context limit in tokens (default: max_position_embeddings, else 65536)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  sub->add_option("--max-tokens", s.default_max_tokens, "Tokens generated when a request sets no max_tokens (default 512)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  sub->add_option("--max-body-kb", o->max_body_kb, "Largest request body in KiB (default 8192)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 22));
  sub->add_option("--timeout", s.request_timeout_s, "Seconds a request may take (default 600; 0 = none)")
      ->check(CLI::Range(0.0, 1e7));
  sub->add_option("--idle-timeout", s.idle_timeout_s, "Seconds before a silent connection is closed (default 30)")
      ->check(CLI::Range(1, 3600));
  sub->add_option("--drain-timeout", s.drain_timeout_s, "On SIGTERM, seconds running requests get to finish (default 30)")
      ->check(CLI::Range(0.0, 3600.0));
  sub->add_option("--http-threads", s.http_threads, "Connection threads (default: slots + queue + 8)")
      ->check(CLI::Range(0, 4096));
  add_lora_option(sub, s.lora);
  sub->add_flag("--log", s.log_requests, "Log one line per request on stderr");
  sub->add_flag("--json", s.json, "Print the start-up lines as JSON");
  add_threads_option(sub, o->threads);
  add_exact_option(sub, o->exact);
  sub->callback([o] {
    apply_threads(o->threads);
    apply_exact(o->exact);
    o->s.max_body_bytes = size_t(o->max_body_kb) << 10;
    server::serve(o->s);
  });
}

}  // namespace hxq::cli
