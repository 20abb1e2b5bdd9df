// `hxq serve`: the OpenAI-compatible HTTP server (cpp-httplib) in front of the scheduler —
// /v1/chat/completions, /v1/completions, /v1/models, /health, /tokenize, /detokenize, /metrics.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace hxq::server {

struct ServerOptions {
  std::string model_dir;
  std::string lora;                   // PEFT LoRA adapter directory applied at load ("" = none)
  std::string host = "127.0.0.1";
  int port = 8080;                    // 0: any free port (printed when listening)
  std::string alias;                  // model id in responses (default: the directory's name)
  std::string api_key;                // "" = no authentication
  std::string chat_template_file;     // overrides the checkpoint's template
  int parallel = 4;                   // slots
  int queue = 64;                     // waiting requests at most
  int64_t prefill_chunk = 512;        // prompt tokens per scheduler step, at most
  double prefill_budget_ms = 250;     // while others run, a prefill step takes about this long (0: no limit)
  int64_t state_cache_mb = 2048;      // prefix states kept (0: no prefix reuse)
  int64_t ctx = 0;                    // context limit (0: max_position_embeddings, else 65536)
  int64_t default_max_tokens = 512;   // when a request gives none
  size_t max_body_bytes = size_t(8) << 20;
  double request_timeout_s = 600;     // per request, from arrival (0 = none)
  int idle_timeout_s = 30;            // a connection that sends nothing for this long is closed
  double drain_timeout_s = 30;        // SIGTERM: in-flight requests get this long to finish
  int http_threads = 0;               // 0: enough for all slots and the queue
  bool log_requests = false;          // one line per request on stderr
  bool json = false;                  // the "listening" line as JSON
};

// Runs until SIGINT/SIGTERM (then drains, and returns 0). Start-up failures (the model does
// not load, the port is taken, the chat template does not parse) throw hxq::Error.
int serve(const ServerOptions& opt);

}  // namespace hxq::server
