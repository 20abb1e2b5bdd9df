#include "server/server.h"

#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/output.h"
#include "io/json.h"
#include "models/generate.h"
#include "models/model.h"
#include "server/api.h"
#include "server/chat_template.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace hxq::server {

namespace {

// Everything that exists once the model has loaded (handlers answer 503 before).
struct Loaded {
  std::unique_ptr<Model> model;
  std::optional<Tokenizer> tok;
  std::optional<ChatTemplate> chat;
  std::unique_ptr<Scheduler> sched;
  std::string model_id;
  int64_t ctx = 0, vocab = 0;
  std::time_t created = 0;
};

bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const std::string& ref = a.size() == b.size() ? b : a;  // compare something of a's length
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ ref[i]);
  return diff == 0;
}

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:012x}{:06x}", prefix, rng() & 0xffffffffffffULL, (counter++) & 0xffffff);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  if (e.retry_after > 0) res.set_header("Retry-After", std::to_string(e.retry_after));
  res.set_content(e.body().dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_json(httplib::Response& res, const json& j) {
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

ojson parse_body(const httplib::Request& req) {
  if (req.body.empty()) throw_api(400, "the request body is empty (expected a JSON object)");
  try {
    return ojson::parse(req.body);
  } catch (const ojson::parse_error& e) {
    throw_api(400, fmt::format("the request body is not valid JSON: {}", e.what()));
  }
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

class Server {
 public:
  explicit Server(const ServerOptions& o) : opt_(o) {}

  int run();

 private:
  void routes();
  const Loaded& loaded() const {
    const Loaded* l = ready_.load();
    if (!l) throw_api(503, "the model is loading", "", "loading", 2);
    return *l;
  }
  void load();
  void generation(const httplib::Request& req, httplib::Response& res, bool chat);
  std::shared_ptr<Request> build_request(const Loaded& L, GenerationParams p);

  ServerOptions opt_;
  httplib::Server http_;
  Metrics metrics_;
  std::unique_ptr<Loaded> owned_;
  std::atomic<const Loaded*> ready_{nullptr};
};

void Server::load() {
  auto L = std::make_unique<Loaded>();
  const std::string& dir = opt_.model_dir;
  json cfg = load_config(dir);
  L->tok = Tokenizer::load(dir);
  L->chat = ChatTemplate::load(dir, opt_.chat_template_file);
  LoadOptions lo;
  lo.lora = opt_.lora;
  L->model = load_model(dir, lo);
  L->vocab = L->model->vocab_size();
  L->ctx = opt_.ctx;
  if (L->ctx <= 0) {
    L->ctx = 65536;  // recurrent models have no positional limit; this bounds work per request
    if (cfg.contains("max_position_embeddings") && cfg["max_position_embeddings"].is_number_integer())
      L->ctx = cfg["max_position_embeddings"].get<int64_t>();
  }
  L->model_id = opt_.alias.empty() ? std::filesystem::path(dir).lexically_normal().filename().string() : opt_.alias;
  if (L->model_id.empty()) L->model_id = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
  L->created = std::time(nullptr);
  Scheduler::Options so;
  so.parallel = opt_.parallel;
  so.queue = opt_.queue;
  so.prefill_chunk = opt_.prefill_chunk;
  so.prefill_budget_ms = opt_.prefill_budget_ms;
  so.state_cache_bytes = size_t(std::max<int64_t>(0, opt_.state_cache_mb)) << 20;
  L->sched = std::make_unique<Scheduler>(*L->model, *L->tok, eos_token_ids(dir, L->tok->eos_id()), so, metrics_);
  owned_ = std::move(L);
  ready_ = owned_.get();
}

std::shared_ptr<Request> Server::build_request(const Loaded& L, GenerationParams p) {
  if (!p.model.empty() && p.model != L.model_id)
    throw_api(404, fmt::format("the model '{}' does not exist (this server serves '{}')", p.model, L.model_id), "model",
              "model_not_found");
  auto r = std::make_shared<Request>();
  const Tokenizer& tok = *L.tok;
  if (p.chat) {
    if (!L.chat)
      throw_api(400, "this model has no chat template (tokenizer_config.json has none); start the server with "
                     "--chat-template-file, or use /v1/completions", "messages", "no_chat_template");
    std::string text;
    try {
      text = L.chat->render(p.messages, true, p.template_kwargs);
    } catch (const Error& e) {
      throw_api(400, fmt::format("the chat template rejected the messages: {}", e.what()), "messages");
    }
    r->prompt = tok.encode(text, false);
  } else if (p.prompt_text) {
    // As `hxq generate`: BOS when the tokenizer adds one by default, or for an empty prompt.
    if (tok.add_bos_by_default() || p.prompt_text->empty())
      if (auto b = tok.bos_id()) r->prompt.push_back(*b);
    auto body = tok.encode(*p.prompt_text, false);
    r->prompt.insert(r->prompt.end(), body.begin(), body.end());
  } else {
    for (int32_t id : p.prompt_ids)
      if (id >= L.vocab) throw_api(400, fmt::format("'prompt' holds token id {} outside the vocabulary [0, {})", id, L.vocab), "prompt");
    r->prompt = p.prompt_ids;
  }
  if (r->prompt.empty()) throw_api(400, "the prompt is empty and the tokenizer has no BOS token", "prompt");
  const int64_t n = int64_t(r->prompt.size());
  if (n >= L.ctx)
    throw_api(400, fmt::format("the prompt has {} tokens; this model's context is {} (leave room for one generated token)", n, L.ctx),
              p.chat ? "messages" : "prompt", "context_length_exceeded");
  if (p.max_tokens > 0) {
    if (n + p.max_tokens > L.ctx)
      throw_api(400, fmt::format("{} prompt tokens + max_tokens {} exceed this model's context of {}", n, p.max_tokens, L.ctx),
                "max_tokens", "context_length_exceeded");
    r->max_tokens = p.max_tokens;
  } else {
    r->max_tokens = std::min(opt_.default_max_tokens, L.ctx - n);
  }
  if (opt_.request_timeout_s > 0)
    r->deadline = r->arrival + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.request_timeout_s));
  r->params = std::move(p);
  return r;
}

void Server::generation(const httplib::Request& req, httplib::Response& res, bool chat) {
  const Loaded& L = loaded();
  GenerationParams p = parse_generation(parse_body(req), chat);
  auto r = build_request(L, std::move(p));
  L.sched->submit(r);  // 429 / 503 here, before any byte is sent

  const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
  const std::time_t created = std::time(nullptr);
  const std::string model_id = L.model_id;
  const auto& P = r->params;

  if (P.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider("text/event-stream", [r, id, created, model_id, chat](size_t, httplib::DataSink& sink) {
      const auto& P = r->params;
      auto chunk = [&](json choice, const json* usage) {
        json j{{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
               {"model", model_id}, {"choices", json::array({std::move(choice)})}};
        if (P.include_usage) j["usage"] = usage ? *usage : json(nullptr);
        std::string s = "data: " + dump(j) + "\n\n";
        return sink.write(s.data(), s.size());
      };
      auto choice = [&](json delta_or_text, json logprobs, json finish) {
        json c{{"index", 0}, {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish)}};
        if (chat) c["delta"] = std::move(delta_or_text);
        else c["text"] = std::move(delta_or_text);
        return c;
      };
      if (chat && !chunk(choice(json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr), nullptr)) {
        r->cancel();
        return false;
      }
      size_t offset = 0;
      for (;;) {
        auto ev = r->pop(std::chrono::milliseconds(200));
        if (!ev) {
          // A comment line: ignored by SSE clients, and a failed write tells us the client left.
          if (!sink.write(": keep-alive\n\n", 14)) {
            r->cancel();
            return false;
          }
          continue;
        }
        if (ev->kind == Event::Kind::Text) {
          json lp = nullptr;
          if (P.logprobs >= 0)
            lp = chat ? chat_logprobs_json(ev->logprobs) : completion_logprobs_json(ev->logprobs, offset);
          offset += ev->text.size();
          json d = chat ? json{{"content", ev->text}} : json(ev->text);
          if (!chunk(choice(std::move(d), std::move(lp), nullptr), nullptr)) {
            r->cancel();
            return false;
          }
          continue;
        }
        if (ev->kind == Event::Kind::Error) {
          std::string s = "data: " + dump(ev->error.body()) + "\n\n";
          sink.write(s.data(), s.size());
          break;
        }
        // Done
        const std::string reason = ev->finish_reason == "cancelled" ? "length" : ev->finish_reason;
        json usage{{"prompt_tokens", ev->prompt_tokens},
                   {"completion_tokens", ev->completion_tokens},
                   {"total_tokens", ev->prompt_tokens + ev->completion_tokens},
                   {"prompt_tokens_details", {{"cached_tokens", ev->cached_tokens}}}};
        json last = choice(chat ? json::object() : json(""), nullptr, reason);
        json j{{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
               {"model", model_id}, {"choices", json::array({last})}, {"hxq", ev->timings}};
        if (P.include_usage) j["usage"] = nullptr;
        std::string s = "data: " + dump(j) + "\n\n";
        if (!sink.write(s.data(), s.size())) return false;
        if (P.include_usage) {
          json u{{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                 {"model", model_id}, {"choices", json::array()}, {"usage", usage}};
          s = "data: " + dump(u) + "\n\n";
          if (!sink.write(s.data(), s.size())) return false;
        }
        break;
      }
      static const std::string done = "data: [DONE]\n\n";
      sink.write(done.data(), done.size());
      sink.done();
      return true;
    });
    return;
  }

  // Not streamed: the whole answer in one JSON body. While waiting, a space now and then (JSON
  // allows leading whitespace) tells us whether the client is still there.
  res.set_chunked_content_provider("application/json", [r, id, created, model_id, chat](size_t, httplib::DataSink& sink) {
    const auto& P = r->params;
    std::string text;
    std::vector<TokenLogprob> lps;
    auto probe = Clock::now();
    for (;;) {
      auto ev = r->pop(std::chrono::milliseconds(250));
      if (Clock::now() - probe > std::chrono::seconds(1)) {
        probe = Clock::now();
        if (!sink.write(" ", 1)) {
          r->cancel();
          return false;
        }
      }
      if (!ev) continue;
      if (ev->kind == Event::Kind::Text) {
        text += ev->text;
        for (auto& t : ev->logprobs) lps.push_back(std::move(t));
        continue;
      }
      std::string body;
      if (ev->kind == Event::Kind::Error) {
        body = dump(ev->error.body());
      } else {
        const std::string reason = ev->finish_reason == "cancelled" ? "length" : ev->finish_reason;
        json lp = nullptr;
        if (P.logprobs >= 0) lp = chat ? chat_logprobs_json(lps) : completion_logprobs_json(lps, 0);
        json c{{"index", 0}, {"logprobs", lp}, {"finish_reason", reason}};
        if (chat) c["message"] = json{{"role", "assistant"}, {"content", text}, {"refusal", nullptr}};
        else c["text"] = text;
        json j{{"id", id},
               {"object", chat ? "chat.completion" : "text_completion"},
               {"created", created},
               {"model", model_id},
               {"choices", json::array({c})},
               {"usage",
                {{"prompt_tokens", ev->prompt_tokens},
                 {"completion_tokens", ev->completion_tokens},
                 {"total_tokens", ev->prompt_tokens + ev->completion_tokens},
                 {"prompt_tokens_details", {{"cached_tokens", ev->cached_tokens}}}}},
               {"hxq", ev->timings}};
        body = dump(j);
      }
      body += "\n";
      sink.write(body.data(), body.size());
      sink.done();
      return true;
    }
  });
}

void Server::routes() {
  auto guarded = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const ApiException& e) {
        send_error(res, e.err);
      } catch (const Error& e) {  // engine errors caused by the request's content
        ApiError a;
        a.message = e.what();
        send_error(res, a);
      }
    };
  };
  http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (!ready_.load()) {
      res.status = 503;
      res.set_header("Retry-After", "2");
      send_json(res, json{{"status", "loading"}});
      return;
    }
    const Loaded& L = *ready_.load();
    send_json(res, json{{"status", "ok"},
                        {"slots", L.sched->slots()},
                        {"slots_active", L.sched->active_slots()},
                        {"queue", L.sched->queue_depth()}});
  });
  http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    const Loaded* L = ready_.load();
    std::string body = metrics_.render(L ? L->sched->queue_depth() : 0, L ? L->sched->active_slots() : 0,
                                       L ? L->sched->slots() : 0, L ? int64_t(L->sched->state_cache().size()) : 0,
                                       L ? int64_t(L->sched->state_cache().bytes()) : 0);
    res.set_content(body, "text/plain; version=0.0.4");
  });
  http_.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
    const Loaded& L = loaded();
    json m{{"id", L.model_id}, {"object", "model"}, {"created", L.created}, {"owned_by", "hxq"},
           {"meta", {{"context_length", L.ctx}, {"vocab_size", L.vocab}, {"arch", L.model->summary().arch},
                     {"chat_template", L.chat.has_value()}}}};
    send_json(res, json{{"object", "list"}, {"data", json::array({m})}});
  }));
  http_.Post("/v1/chat/completions",
             guarded([this](const httplib::Request& q, httplib::Response& s) { generation(q, s, true); }));
  http_.Post("/v1/completions",
             guarded([this](const httplib::Request& q, httplib::Response& s) { generation(q, s, false); }));
  http_.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
    const Loaded& L = loaded();
    ojson b = parse_body(req);
    if (!b.is_object() || !b.contains("content") || !b["content"].is_string())
      throw_api(400, "'content' must be a string", "content");
    bool special = false, pieces = false;
    if (b.contains("add_special") && !b["add_special"].is_null()) {
      if (!b["add_special"].is_boolean()) throw_api(400, "'add_special' must be a boolean", "add_special");
      special = b["add_special"].get<bool>();
    }
    if (b.contains("with_pieces") && !b["with_pieces"].is_null()) {
      if (!b["with_pieces"].is_boolean()) throw_api(400, "'with_pieces' must be a boolean", "with_pieces");
      pieces = b["with_pieces"].get<bool>();
    }
    auto ids = L.tok->encode(b["content"].get<std::string>(), special);
    json out = json::array();
    for (int32_t id : ids)
      if (pieces) out.push_back({{"id", id}, {"piece", L.tok->decode(std::span(&id, 1))}});
      else out.push_back(id);
    send_json(res, json{{"tokens", out}});
  }));
  http_.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
    const Loaded& L = loaded();
    ojson b = parse_body(req);
    if (!b.is_object() || !b.contains("tokens") || !b["tokens"].is_array())
      throw_api(400, "'tokens' must be a list of token ids", "tokens");
    std::vector<int32_t> ids;
    for (auto& x : b["tokens"]) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= L.vocab)
        throw_api(400, fmt::format("'tokens' holds {} (token ids are integers in [0, {}))", x.dump(), L.vocab), "tokens");
      ids.push_back(x.get<int32_t>());
    }
    send_json(res, json{{"content", L.tok->decode(ids)}});
  }));

  // Authentication (all but /health), and a JSON body for every error httplib answers itself
  // (404 unknown path, 413 body over the cap, 400 malformed HTTP, ...).
  http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opt_.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string want = "Bearer " + opt_.api_key;
    if (constant_time_equal(auth, want)) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e;
    e.status = 401;
    e.type = "authentication_error";
    e.code = "invalid_api_key";
    e.message = auth.empty() ? "missing API key (send 'Authorization: Bearer <key>')" : "invalid API key";
    send_error(res, e);
    res.set_header("WWW-Authenticate", "Bearer");
    return httplib::Server::HandlerResponse::Handled;
  });
  http_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e;
    e.status = res.status;
    switch (res.status) {
      case 404: e.message = fmt::format("no such endpoint: {} {}", req.method, req.path); e.type = "not_found_error"; break;
      case 413: e.message = "the request body is larger than the server accepts (--max-body)"; break;
      case 414: e.message = "the request URI is too long"; break;
      case 405: e.message = fmt::format("method {} is not allowed on {}", req.method, req.path); break;
      default: e.message = fmt::format("bad request ({})", res.status); break;
    }
    if (res.status >= 500) e.type = "server_error";
    send_error(res, e);
  });
  http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    ApiError e;
    e.status = 500;
    e.type = "server_error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::bad_alloc&) {
      e.status = 503;
      e.message = "out of memory";
    } catch (const std::exception& x) {
      e.message = fmt::format("internal error: {}", x.what());
    } catch (...) {
      e.message = "internal error";
    }
    send_error(res, e);
  });
  http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics_.count_request(req.path.size() <= 32 ? req.path : "other", res.status);
    if (opt_.log_requests) std::fprintf(stderr, "%s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
  });
}

int Server::run() {
  routes();
  http_.set_payload_max_length(opt_.max_body_bytes);
  http_.set_tcp_nodelay(true);  // small SSE chunks go out at once (no Nagle / delayed-ACK stalls)
  http_.set_read_timeout(opt_.idle_timeout_s, 0);
  http_.set_write_timeout(opt_.idle_timeout_s, 0);
  http_.set_keep_alive_timeout(std::max(1, std::min(opt_.idle_timeout_s, 30)));
  const int threads = opt_.http_threads > 0 ? opt_.http_threads : opt_.parallel + opt_.queue + 8;
  http_.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };

  int port = opt_.port;
  if (port == 0) port = http_.bind_to_any_port(opt_.host);
  else if (!http_.bind_to_port(opt_.host, port)) port = -1;
  if (port <= 0) fail("serve: cannot listen on {}:{} (address in use, or not an address of this machine)", opt_.host, opt_.port);
  std::thread listener([this] { http_.listen_after_bind(); });
  // stop() before the loop runs would be lost: wait until it does.
  for (int i = 0; i < 2000 && !http_.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (opt_.json)
    std::printf("%s\n", dump(json{{"event", "listening"}, {"host", opt_.host}, {"port", port}}).c_str());
  else
    std::printf("hxq serve: listening on http://%s:%d (loading %s)\n", opt_.host.c_str(), port, opt_.model_dir.c_str());
  std::fflush(stdout);

  try {
    load();
  } catch (...) {
    http_.stop();
    listener.join();
    throw;
  }
  if (opt_.json) std::printf("%s\n", dump(json{{"event", "ready"}, {"model", owned_->model_id}}).c_str());
  else std::printf("hxq serve: ready: model '%s', %d slots, context %lld\n", owned_->model_id.c_str(), opt_.parallel,
                   (long long)owned_->ctx);
  std::fflush(stdout);

  while (!interrupted()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // SIGTERM / SIGINT: no new requests; running ones get drain_timeout_s, then are cancelled.
  Scheduler& sched = *owned_->sched;
  sched.stop_accepting();
  const auto t0 = Clock::now();
  while (!sched.idle() && std::chrono::duration<double>(Clock::now() - t0).count() < opt_.drain_timeout_s)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!sched.idle()) sched.cancel_all();
  while (!sched.idle() && std::chrono::duration<double>(Clock::now() - t0).count() < opt_.drain_timeout_s + 5)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  http_.stop();
  listener.join();
  ready_ = nullptr;
  owned_.reset();
  std::fprintf(stderr, "hxq serve: stopped\n");
  return 0;
}

}  // namespace

int serve(const ServerOptions& opt) {
  if (opt.parallel < 1 || opt.parallel > 256) usage_fail("serve: --parallel must be in [1, 256]");
  if (opt.queue < 0) usage_fail("serve: --queue must be >= 0");
  if (opt.port < 0 || opt.port > 65535) usage_fail("serve: --port must be in [0, 65535]");
  ::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a signal
  Server s(opt);
  return s.run();
}

}  // namespace hxq::server
