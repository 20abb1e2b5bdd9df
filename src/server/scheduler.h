// Continuous batching: N slots, a bounded FIFO queue and one scheduler thread that owns the
// model. Each step prefills one chunk of a waiting prompt (so running streams never stall for a
// long prompt), then advances every decoding slot by one token in one batched forward
// (Model::decode_batch: weights read once for all slots). Among the prompts being prefilled, the
// one with the fewest tokens left goes first (a short question is not stuck behind a long
// document), except that a prompt passed over `parallel` times in a row gets the next chunk (so
// none waits forever, and a short one waits for at most one chunk); while other requests run, a
// chunk is sized to take about --prefill-budget-ms at the prefill speed measured so far.
// Requests talk to the HTTP side through a small event channel (text pieces, the end, an error); a request whose client went away is
// cancelled within one step and frees its slot.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "models/model.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/state_cache.h"
#include "tokenizer/tokenizer.h"

namespace hxq::server {

using Clock = std::chrono::steady_clock;

struct Event {
  enum class Kind { Text, Done, Error };
  Kind kind = Kind::Text;
  std::string text;                    // Text: newly generated text (may be empty with logprobs)
  std::vector<TokenLogprob> logprobs;  // Text: the tokens behind it (when requested)
  std::string finish_reason;           // Done: "stop", "length" (or "cancelled": nobody listens)
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  json timings;                        // Done: the "hxq" object of the response
  ApiError error;                      // Error
};

// One generation, shared by the HTTP handler (which waits on its events) and the scheduler.
class Request {
 public:
  GenerationParams params;
  std::vector<int32_t> prompt;  // token ids to prefill (BOS / template applied)
  int64_t max_tokens = 0;       // resolved against the context
  Clock::time_point arrival = Clock::now();
  std::optional<Clock::time_point> deadline;  // per-request timeout

  std::atomic<bool> cancelled{false};
  void cancel() { cancelled = true; }

  // Scheduler side.
  void push(Event e);
  // HTTP side: the next event, or nullopt after `wait` without one.
  std::optional<Event> pop(std::chrono::milliseconds wait);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
};

// The scheduling policy as pure functions (tested without a model).
struct PrefillCandidate {
  int64_t remaining = 0;  // prompt tokens still to prefill
  uint64_t order = 0;     // admission order
  int skipped = 0;        // steps since its last chunk in which another prompt was prefilled
};
// The prompt to prefill next: the earliest admitted among those passed over `max_skips` times or
// more since their last chunk (no prompt waits forever), else the fewest tokens left (then the
// earliest). c not empty.
size_t pick_prefill(const std::vector<PrefillCandidate>& c, int max_skips);
// Tokens of the next prefill chunk: all that is left up to `max_chunk`; while other requests run
// (`busy`) and a speed is known (ms_per_token > 0), only as many as fit `budget_ms`, at least
// kMinBusyChunk (small chunks run at decode speed: fewer would cost more steps than they save).
inline constexpr int64_t kMinBusyChunk = 16;
int64_t prefill_chunk_tokens(int64_t remaining, int64_t max_chunk, bool busy, double budget_ms, double ms_per_token);

class Scheduler {
 public:
  struct Options {
    int parallel = 4;               // slots
    int queue = 64;                 // requests waiting for a slot, at most
    int64_t prefill_chunk = 512;    // prompt tokens per step, at most
    double prefill_budget_ms = 250; // while other requests run, a prefill step takes about this long (0: no limit)
    size_t state_cache_bytes = size_t(2) << 30;
    int64_t prefix_snapshot_min = 64;  // snapshot a prompt's end state when it prefilled this many tokens
  };

  Scheduler(const Model& model, const Tokenizer& tok, std::vector<int32_t> eos_ids, Options opt, Metrics& metrics);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; throws ApiException 429 (queue full) or 503 (shutting down).
  void submit(std::shared_ptr<Request> r);
  // Stop accepting new requests (SIGTERM): submit() answers 503 from now on.
  void stop_accepting();
  // Cancels everything queued or running.
  void cancel_all();
  // Whether nothing is queued or running.
  bool idle() const;

  int64_t queue_depth() const;
  int64_t active_slots() const;
  int slots() const { return opt_.parallel; }
  const StateCache& state_cache() const { return cache_; }

 private:
  struct Slot;
  void run();
  void admit(Slot& s, std::shared_ptr<Request> r);
  void prefill_step(Slot& s, bool busy);  // busy: other requests are running or waiting
  void decode_step(std::vector<Slot*>& active);
  void on_logits(Slot& s, const float* logits);
  void finish(Slot& s, const std::string& reason);
  void fail_slot(Slot& s, const std::string& message);
  void release(Slot& s);  // back to idle (the state stays for reuse unless moved out)
  void emit(Slot& s, std::string text, std::optional<TokenLogprob> lp);

  const Model& model_;
  Tokenizer tok_;
  std::vector<int32_t> eos_;
  Options opt_;
  Metrics& metrics_;
  StateCache cache_;
  int64_t vocab_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Request>> queue_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::atomic<int64_t> active_{0};
  bool accepting_ = true, quit_ = false;
  std::atomic<bool> cancel_running_{false};  // cancel_all(): the scheduler thread cancels its slots
  std::vector<float> logits_;
  std::vector<int32_t> order_;  // token order for top_logprobs
  double prefill_ms_per_token_ = 0;  // running mean of measured prefill chunks (0: none yet)
  std::thread thread_;
};

}  // namespace hxq::server
