#include "server/scheduler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "models/sampling.h"

namespace hxq::server {

void Request::push(Event e) {
  {
    std::lock_guard lk(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_one();
}

std::optional<Event> Request::pop(std::chrono::milliseconds wait) {
  std::unique_lock lk(mu_);
  if (!cv_.wait_for(lk, wait, [&] { return !events_.empty(); })) return std::nullopt;
  Event e = std::move(events_.front());
  events_.pop_front();
  return e;
}

struct Scheduler::Slot {
  enum class Phase { Idle, Prefill, Decode };
  Phase phase = Phase::Idle;
  std::shared_ptr<Request> req;
  std::unique_ptr<ModelState> state;  // the running sequence (or a spare one while idle)
  std::vector<int32_t> consumed;      // the tokens `state` has consumed
  int64_t next_prompt = 0;            // index of the next prompt token to prefill
  int64_t cached = 0;                 // prompt tokens that came from the prefix cache
  uint64_t order = 0;                 // admission order
  int skipped = 0;                    // prefill steps given to another prompt since its last chunk
  int32_t pending = -1;               // sampled token to feed at the next decode step
  int64_t generated = 0;
  std::optional<Sampler> sampler;
  std::optional<StreamDecoder> decoder;
  std::optional<StopMatcher> stop;
  Clock::time_point admitted, first_token, last_token;
};

namespace {
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

size_t pick_prefill(const std::vector<PrefillCandidate>& c, int max_skips) {
  size_t best = c.size();
  for (size_t i = 0; i < c.size(); ++i)  // a prompt passed over too often: the earliest of those
    if (c[i].skipped >= max_skips && (best == c.size() || c[i].order < c[best].order)) best = i;
  if (best != c.size()) return best;
  best = 0;
  for (size_t i = 1; i < c.size(); ++i)
    if (c[i].remaining < c[best].remaining || (c[i].remaining == c[best].remaining && c[i].order < c[best].order))
      best = i;
  return best;
}

int64_t prefill_chunk_tokens(int64_t remaining, int64_t max_chunk, bool busy, double budget_ms, double ms_per_token) {
  int64_t n = std::min(remaining, max_chunk);
  if (busy && budget_ms > 0 && ms_per_token > 0) {
    const double fit = std::floor(budget_ms / ms_per_token);
    n = std::min(n, std::max(kMinBusyChunk, fit >= double(max_chunk) ? max_chunk : int64_t(fit)));
  }
  return std::max<int64_t>(1, n);
}

Scheduler::Scheduler(const Model& model, const Tokenizer& tok, std::vector<int32_t> eos_ids, Options opt,
                     Metrics& metrics)
    : model_(model), tok_(tok), eos_(std::move(eos_ids)), opt_(opt), metrics_(metrics),
      cache_(opt.state_cache_bytes), vocab_(model.vocab_size()) {
  if (opt_.parallel < 1) fail("--parallel must be at least 1");
  if (opt_.prefill_chunk < 1) fail("--prefill-chunk must be at least 1");
  if (!(opt_.prefill_budget_ms >= 0)) fail("--prefill-budget-ms must be at least 0");
  for (int i = 0; i < opt_.parallel; ++i) slots_.push_back(std::make_unique<Slot>());
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lk(mu_);
    quit_ = true;
    accepting_ = false;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Whoever still waits gets an answer.
  for (auto& r : queue_) {
    ApiError e;
    e.status = 503;
    e.type = "server_overloaded";
    e.message = "the server is shutting down";
    Event ev;
    ev.kind = Event::Kind::Error;
    ev.error = e;
    r->push(std::move(ev));
  }
  for (auto& s : slots_)
    if (s->phase != Slot::Phase::Idle) fail_slot(*s, "the server is shutting down");
}

void Scheduler::submit(std::shared_ptr<Request> r) {
  {
    std::lock_guard lk(mu_);
    if (!accepting_) throw_api(503, "the server is shutting down", "", "", 5);
    if (int64_t(queue_.size()) >= opt_.queue)
      throw_api(429, fmt::format("all {} slots are busy and {} requests are queued (--queue); retry later",
                                 opt_.parallel, opt_.queue), "", "queue_full", 1);
    queue_.push_back(std::move(r));
  }
  cv_.notify_all();
}

void Scheduler::stop_accepting() {
  std::lock_guard lk(mu_);
  accepting_ = false;
}

void Scheduler::cancel_all() {
  std::lock_guard lk(mu_);
  for (auto& r : queue_) r->cancel();
  cancel_running_ = true;
  cv_.notify_all();
}

bool Scheduler::idle() const {
  std::lock_guard lk(mu_);
  return queue_.empty() && active_ == 0;
}

int64_t Scheduler::queue_depth() const {
  std::lock_guard lk(mu_);
  return int64_t(queue_.size());
}

int64_t Scheduler::active_slots() const { return active_.load(); }

void Scheduler::run() {
  uint64_t order = 0;
  for (;;) {
    std::vector<std::pair<Slot*, std::shared_ptr<Request>>> admitted;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return quit_ || !queue_.empty() || active_ > 0; });
      if (quit_) return;
      for (auto& s : slots_) {
        if (queue_.empty()) break;
        if (s->phase != Slot::Phase::Idle) continue;
        admitted.emplace_back(s.get(), std::move(queue_.front()));
        queue_.pop_front();
        s->phase = Slot::Phase::Prefill;  // reserved
        s->order = order++;
        active_++;
      }
    }
    for (auto& [s, r] : admitted) admit(*s, std::move(r));

    // A request whose client left, or whose time is up, ends before any more work is spent on it.
    const auto now = Clock::now();
    const bool cancel_running = cancel_running_.exchange(false);
    for (auto& s : slots_) {
      if (s->phase == Slot::Phase::Idle) continue;
      if (cancel_running) s->req->cancel();
      if (s->req->cancelled) finish(*s, "cancelled");
      else if (s->req->deadline && now > *s->req->deadline) finish(*s, "length");
    }

    // One prompt chunk (pick_prefill chooses the prompt), then one token for every decoding slot
    // (the prompt that ends in this chunk included).
    std::vector<Slot*> pre;
    std::vector<PrefillCandidate> cand;
    bool decoding = false;
    for (auto& s : slots_) {
      if (s->phase == Slot::Phase::Prefill) {
        pre.push_back(s.get());
        cand.push_back({int64_t(s->req->prompt.size()) - s->next_prompt, s->order, s->skipped});
      }
      decoding |= s->phase == Slot::Phase::Decode;
    }
    if (!pre.empty()) {
      Slot* p = pre[pick_prefill(cand, opt_.parallel)];
      for (Slot* s : pre) s->skipped = s == p ? 0 : s->skipped + 1;  // an overdue prompt gets one chunk
      prefill_step(*p, decoding || pre.size() > 1);
    }
    std::vector<Slot*> dec;
    for (auto& s : slots_)
      if (s->phase == Slot::Phase::Decode) dec.push_back(s.get());
    if (!dec.empty()) decode_step(dec);
  }
}

void Scheduler::admit(Slot& s, std::shared_ptr<Request> r) {
  s.req = std::move(r);
  s.admitted = Clock::now();
  metrics_.queue_wait.observe(std::chrono::duration<double>(s.admitted - s.req->arrival).count());
  s.generated = 0;
  s.pending = -1;
  s.cached = 0;
  s.consumed.clear();
  const auto& p = s.req->params;
  s.sampler.emplace(p.sampling);
  s.decoder.emplace(tok_);
  s.stop.emplace(p.stop);
  if (p.cache_prompt) {
    auto [st, n] = cache_.lookup(s.req->prompt);
    if (st) {
      s.state = std::move(st);
      s.cached = n;
      s.consumed.assign(s.req->prompt.begin(), s.req->prompt.begin() + n);
      metrics_.prefix_hits++;
      metrics_.cached_prompt_tokens += uint64_t(n);
    } else {
      metrics_.prefix_misses++;
    }
  }
  if (s.cached == 0) {
    if (s.state) s.state->reset();
    else s.state = model_.new_state();
  }
  s.next_prompt = s.cached;
  s.skipped = 0;
  s.phase = Slot::Phase::Prefill;
}

void Scheduler::prefill_step(Slot& s, bool busy) {
  const auto& prompt = s.req->prompt;
  const int64_t total = int64_t(prompt.size());
  // A prompt worth remembering is snapshotted before its last token: the text a next turn appends
  // may merge with that token into another one (" " + "The" -> " The"), and a recurrent state
  // cannot be rewound. So its last chunk is split into [.., n-1) and the last token.
  const bool snapshot = s.req->params.cache_prompt && cache_.max_bytes() > 0 && total - s.cached >= opt_.prefix_snapshot_min;
  const int64_t end = snapshot && s.next_prompt < total - 1 ? total - 1 : total;
  const int64_t n = prefill_chunk_tokens(end - s.next_prompt, opt_.prefill_chunk, busy, opt_.prefill_budget_ms,
                                         prefill_ms_per_token_);
  const bool last = s.next_prompt + n == total;
  std::span<const int32_t> chunk(prompt.data() + s.next_prompt, size_t(n));
  logits_.resize(size_t(vocab_));
  const auto t0 = Clock::now();
  try {
    model_.forward(*s.state, chunk, last ? n - 1 : n, last ? logits_.data() : nullptr);
  } catch (const std::exception& e) {
    return fail_slot(s, e.what());
  }
  // The speed of chunks of at least kMinBusyChunk tokens (a 1-token forward runs at decode speed
  // and says little about a chunk), weighted towards the recent ones.
  if (n >= kMinBusyChunk) {
    const double ms = ms_between(t0, Clock::now()) / double(n);
    prefill_ms_per_token_ = prefill_ms_per_token_ > 0 ? 0.7 * prefill_ms_per_token_ + 0.3 * ms : ms;
  }
  s.consumed.insert(s.consumed.end(), chunk.begin(), chunk.end());
  s.next_prompt += n;
  if (snapshot && s.next_prompt == total - 1) cache_.insert(s.consumed, s.state->clone());
  if (last) on_logits(s, logits_.data());
}

void Scheduler::decode_step(std::vector<Slot*>& active) {
  std::vector<ModelState*> states;
  std::vector<int32_t> ids;
  for (Slot* s : active) {
    states.push_back(s->state.get());
    ids.push_back(s->pending);
  }
  logits_.resize(active.size() * size_t(vocab_));
  try {
    model_.decode_batch(states, ids, logits_.data());
  } catch (const std::exception& e) {
    for (Slot* s : active) fail_slot(*s, e.what());
    return;
  }
  for (size_t i = 0; i < active.size(); ++i) {
    active[i]->consumed.push_back(ids[i]);
    on_logits(*active[i], logits_.data() + i * size_t(vocab_));
  }
}

void Scheduler::on_logits(Slot& s, const float* logits) {
  const auto& p = s.req->params;
  const int32_t id = s.sampler->next(logits, vocab_);
  const auto now = Clock::now();
  if (s.generated == 0) {
    s.first_token = now;
    metrics_.ttft.observe(std::chrono::duration<double>(now - s.req->arrival).count());
  } else {
    metrics_.inter_token.observe(std::chrono::duration<double>(now - s.last_token).count());
  }
  s.last_token = now;
  s.generated++;
  metrics_.generated_tokens++;
  const bool eos = !p.ignore_eos && std::find(eos_.begin(), eos_.end(), id) != eos_.end();
  if (eos) return finish(s, "stop");  // the EOS token is not part of the text

  std::string piece = s.decoder->push(id);
  std::optional<TokenLogprob> lp;
  if (p.logprobs >= 0) {
    // Exact log-softmax of the model's logits (before temperature and truncation, as OpenAI reports).
    const float mx = *std::max_element(logits, logits + vocab_);
    double sum = 0;
    for (int64_t i = 0; i < vocab_; ++i) sum += std::exp(double(logits[i] - mx));
    const double lse = double(mx) + std::log(sum);
    TokenLogprob t;
    t.token = piece;
    t.logprob = float(double(logits[id]) - lse);
    if (p.logprobs > 0) {
      std::vector<int32_t>& idx = order_;  // reused: no vocab-sized allocation per token
      idx.resize(static_cast<size_t>(vocab_));
      std::iota(idx.begin(), idx.end(), 0);
      const size_t k = std::min<size_t>(size_t(p.logprobs), idx.size());
      std::partial_sort(idx.begin(), idx.begin() + ptrdiff_t(k), idx.end(),
                        [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
      for (size_t j = 0; j < k; ++j)
        t.top.emplace_back(tok_.decode(std::span(&idx[j], 1)), float(double(logits[idx[j]]) - lse));
    }
    lp = std::move(t);
  }
  emit(s, s.stop->push(piece), std::move(lp));
  if (s.stop->stopped()) return finish(s, "stop");
  if (s.generated >= s.req->max_tokens) return finish(s, "length");
  s.pending = id;
  s.phase = Slot::Phase::Decode;
}

void Scheduler::emit(Slot& s, std::string text, std::optional<TokenLogprob> lp) {
  if (text.empty() && !lp) return;
  Event e;
  e.kind = Event::Kind::Text;
  e.text = std::move(text);
  if (lp) e.logprobs.push_back(std::move(*lp));
  s.req->push(std::move(e));
}

void Scheduler::finish(Slot& s, const std::string& reason) {
  Request& r = *s.req;
  if (reason != "cancelled") {
    std::string rest = s.stop->stopped() ? std::string() : s.stop->push(s.decoder->flush());
    rest += s.stop->flush();
    emit(s, std::move(rest), std::nullopt);
  } else {
    metrics_.cancelled++;
  }
  const auto now = Clock::now();
  Event e;
  e.kind = Event::Kind::Done;
  e.finish_reason = reason;
  e.prompt_tokens = int64_t(r.prompt.size());
  e.completion_tokens = s.generated;
  e.cached_tokens = s.cached;
  const bool have_first = s.generated > 0;
  const double prompt_ms = have_first ? ms_between(s.admitted, s.first_token) : ms_between(s.admitted, now);
  const double decode_ms = have_first ? ms_between(s.first_token, s.last_token) : 0.0;
  e.timings = json{{"queue_ms", ms_between(r.arrival, s.admitted)},
                   {"prompt_ms", prompt_ms},
                   {"ttft_ms", have_first ? ms_between(r.arrival, s.first_token) : 0.0},
                   {"decode_ms", decode_ms},
                   {"prompt_tokens", e.prompt_tokens},
                   {"cached_tokens", s.cached},
                   {"prompt_tokens_per_s", prompt_ms > 0 ? double(e.prompt_tokens - s.cached) / (prompt_ms / 1e3) : 0.0},
                   {"decode_tokens_per_s", decode_ms > 0 ? double(s.generated - 1) / (decode_ms / 1e3) : 0.0},
                   {"timed_out", reason == "length" && r.deadline && now > *r.deadline}};
  metrics_.prompt_tokens += uint64_t(e.prompt_tokens);
  r.push(std::move(e));
  // The state as it ends (prompt + generated tokens fed so far) is the prefix of the next turn.
  if (r.params.cache_prompt && !s.consumed.empty() && cache_.max_bytes() > 0 && reason != "cancelled")
    cache_.insert(std::move(s.consumed), std::move(s.state));
  release(s);
}

void Scheduler::release(Slot& s) {
  s.consumed.clear();
  s.req.reset();
  s.phase = Slot::Phase::Idle;
  active_--;
}

void Scheduler::fail_slot(Slot& s, const std::string& message) {
  Event e;
  e.kind = Event::Kind::Error;
  e.error.status = 500;
  e.error.type = "server_error";
  e.error.message = message;
  s.req->push(std::move(e));
  s.state.reset();  // its contents are unknown now
  release(s);
}

}  // namespace hxq::server
