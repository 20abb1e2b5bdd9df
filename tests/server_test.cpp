// The server's pieces below HTTP: request parsing, stop strings, the prefix-state cache, the
// scheduler (continuous batching against single-sequence generation). The HTTP server itself is
// tested end to end by tests/server/test_server.py (pytest, the real binary).
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "models/generate.h"
#include "models/model.h"
#include "server/api.h"
#include "server/scheduler.h"
#include "server/state_cache.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace hxq::server {
namespace {

int status_of(const ojson& body, bool chat, std::string* param = nullptr) {
  try {
    parse_generation(body, chat);
  } catch (const ApiException& e) {
    if (param) *param = e.err.param;
    return e.err.status;
  }
  return 200;
}

TEST(ServerApi, ParsesOpenAIFields) {
  auto p = parse_generation(ojson::parse(R"({"model":"m","prompt":"hi","max_tokens":7,"temperature":0.5,"top_p":0.9,
    "top_k":-1,"min_p":0.1,"seed":-3,"stop":["a","bc"],"stream":true,"stream_options":{"include_usage":true},
    "logprobs":2,"n":1,"unknown":{"x":1}})"), false);
  EXPECT_EQ(p.model, "m");
  EXPECT_EQ(*p.prompt_text, "hi");
  EXPECT_EQ(p.max_tokens, 7);
  EXPECT_FLOAT_EQ(p.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 0.9f);
  EXPECT_EQ(p.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(p.sampling.min_p, 0.1f);
  EXPECT_EQ(p.sampling.seed, uint64_t(int64_t(-3)));
  EXPECT_EQ(p.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(p.stream && p.include_usage);
  EXPECT_EQ(p.logprobs, 2);
  auto c = parse_generation(ojson::parse(R"({"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],
    "max_completion_tokens":3,"max_tokens":9,"logprobs":true,"top_logprobs":4,"tools":[{"type":"function"}]})"), true);
  EXPECT_EQ(c.max_tokens, 3);  // max_completion_tokens wins
  EXPECT_EQ(c.logprobs, 4);
  EXPECT_TRUE(c.template_kwargs.contains("tools"));
  auto ids = parse_generation(ojson::parse(R"({"prompt":[[1,2,3]]})"), false);
  EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
}

TEST(ServerApi, RejectsBadFieldsNamingThem) {
  std::string param;
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","n":3})"), false, &param), 400);
  EXPECT_EQ(param, "n");
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","temperature":-1})"), false, &param), 400);
  EXPECT_EQ(param, "temperature");
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","max_tokens":1.5})"), false, &param), 400);
  EXPECT_EQ(param, "max_tokens");
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","max_tokens":18446744073709551615})"), false, &param), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","stop":[""]})"), false, &param), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","stream":"yes"})"), false, &param), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":[1,-2]})"), false, &param), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":[]})"), false, &param), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","echo":true})"), false, &param), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"messages":"hi"})"), true, &param), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"messages":[{"role":"user","content":5}]})"), true, &param), 400);
  EXPECT_EQ(param, "messages[0].content");
  EXPECT_EQ(status_of(ojson::parse(R"({"messages":[{"role":"user"}],"top_logprobs":2})"), true, &param), 400);
  EXPECT_EQ(param, "top_logprobs");
  EXPECT_EQ(status_of(ojson::parse(R"([1])"), false), 400);
  EXPECT_EQ(status_of(ojson::parse(R"({"prompt":"x","max_tokens":null,"temperature":null})"), false), 200);
}

TEST(ServerApi, StopMatcherHoldsBackPartialMatches) {
  StopMatcher m({"END", "\n\n"});
  EXPECT_EQ(m.push("hello E"), "hello ");
  EXPECT_EQ(m.push("N"), "");
  EXPECT_EQ(m.push("x"), "ENx");  // not a stop after all
  EXPECT_EQ(m.push(" and\n"), " and");
  EXPECT_EQ(m.push("\nmore"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("later"), "");
  EXPECT_EQ(m.flush(), "");
  StopMatcher n({"abc"});
  EXPECT_EQ(n.push("xxab"), "xx");
  EXPECT_EQ(n.flush(), "ab");  // the end: what was held back goes out
  StopMatcher none({});
  EXPECT_EQ(none.push("anything"), "anything");
}

TEST(ServerApi, LogprobShapes) {
  std::vector<TokenLogprob> lp{{"a", -0.5f, {{"a", -0.5f}, {"b", -1.5f}}}, {"é", -0.1f, {}}};
  json c = chat_logprobs_json(lp);
  ASSERT_EQ(c["content"].size(), 2u);
  EXPECT_EQ(c["content"][1]["bytes"], json::parse("[195,169]"));
  EXPECT_EQ(c["content"][0]["top_logprobs"][1]["token"], "b");
  json l = completion_logprobs_json(lp, 10);
  EXPECT_EQ(l["text_offset"], json::parse("[10,11]"));
  EXPECT_EQ(l["tokens"], json::parse(R"(["a","é"])"));
}

// ---- scheduling policy ---------------------------------------------------------------------------

TEST(ServerPolicy, FewestTokensLeftFirstUnlessPassedOverTooOften) {
  // remaining, order, skipped
  std::vector<PrefillCandidate> c = {{900, 0, 0}, {12, 2, 0}, {12, 1, 0}, {40, 3, 0}};
  EXPECT_EQ(pick_prefill(c, 4), 2u);  // 12 tokens left, admitted before the other 12
  c[0].skipped = 3;
  EXPECT_EQ(pick_prefill(c, 4), 2u);
  c[0].skipped = 4;                   // the long prompt has waited its turn: it goes now
  EXPECT_EQ(pick_prefill(c, 4), 0u);
  c[3].skipped = 9;                   // two overdue: the earlier admitted
  EXPECT_EQ(pick_prefill(c, 4), 0u);
  EXPECT_EQ(pick_prefill({{5, 7, 0}}, 1), 0u);
}

TEST(ServerPolicy, ChunkFitsTheBudgetOnlyWhileOthersRun) {
  // Idle, or no speed measured yet: everything up to --prefill-chunk.
  EXPECT_EQ(prefill_chunk_tokens(1000, 512, false, 250, 5.0), 512);
  EXPECT_EQ(prefill_chunk_tokens(1000, 512, true, 250, 0.0), 512);
  EXPECT_EQ(prefill_chunk_tokens(30, 512, false, 250, 5.0), 30);
  // Busy: 250 ms at 5 ms/token = 50 tokens; never below kMinBusyChunk, never above what is left.
  EXPECT_EQ(prefill_chunk_tokens(1000, 512, true, 250, 5.0), 50);
  EXPECT_EQ(prefill_chunk_tokens(1000, 512, true, 250, 100.0), kMinBusyChunk);
  EXPECT_EQ(prefill_chunk_tokens(7, 512, true, 250, 100.0), 7);
  EXPECT_EQ(prefill_chunk_tokens(1000, 512, true, 250, 1e-9), 512);  // no overflow on a tiny estimate
  EXPECT_EQ(prefill_chunk_tokens(1000, 8, true, 250, 5.0), 8);
  EXPECT_EQ(prefill_chunk_tokens(1000, 512, true, 0, 5.0), 512);     // budget 0: no limit
}

// ---- scheduler against the real model ---------------------------------------------------------

std::string stories_dir() { return hxq::test::data_path("models/stories260K-hf"); }
std::string mamba_dir() { return hxq::test::data_path("models/mamba2-neox-17m"); }

std::vector<int32_t> greedy(const Model& m, const std::vector<int32_t>& prompt, int64_t n) {
  auto st = m.new_state();
  SamplingOptions so;
  Sampler s(so);
  return generate(m, *st, prompt, n, s, {}).ids;
}

// What every scheduler test starts from: a model, its tokenizer and the metrics a scheduler fills.
struct Served {
  std::unique_ptr<Model> model;
  Tokenizer tok;
  Metrics metrics;
  explicit Served(const std::string& dir) : model(load_model(dir)), tok(Tokenizer::load(dir)) {}
};

std::shared_ptr<Request> make_request(const std::vector<int32_t>& prompt, int64_t n, bool cache = true) {
  auto r = std::make_shared<Request>();
  r->params.logprobs = 0;
  r->params.ignore_eos = true;
  r->params.cache_prompt = cache;
  r->prompt = prompt;
  r->max_tokens = n;
  return r;
}

// Runs a request to its end; returns the ids behind the logprob entries (one per token) and the Done event.
std::pair<std::string, Event> drain(Request& r) {
  std::string text;
  for (;;) {
    auto e = r.pop(std::chrono::milliseconds(30000));
    if (!e) ADD_FAILURE() << "no event within 30 s";
    if (!e || e->kind != Event::Kind::Text) return {text, e ? *e : Event{}};
    text += e->text;
  }
}

TEST(ServerScheduler, ContinuousBatchingMatchesSingleSequenceGeneration) {
  const std::string dir = stories_dir();
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no test data";
  Served m(dir);
  auto& [model, tok, metrics] = m;
  Scheduler::Options o;
  o.parallel = 3;
  o.prefill_chunk = 7;  // several chunks per prompt, interleaved with the others' decoding
  Scheduler sched(*model, tok, {}, o, metrics);
  std::vector<std::vector<int32_t>> prompts;
  for (const char* p : {"Once upon a time", "Lily and Ben went to the park to play", "The dog", "One day, a little cat"}) {
    auto ids = tok.encode(p, true);
    prompts.push_back(ids);
  }
  std::vector<std::shared_ptr<Request>> reqs;
  for (auto& p : prompts) {
    reqs.push_back(make_request(p, 25, false));
    sched.submit(reqs.back());
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto [text, done] = drain(*reqs[i]);
    ASSERT_EQ(done.kind, Event::Kind::Done) << done.error.message;
    EXPECT_EQ(done.finish_reason, "length");
    EXPECT_EQ(done.completion_tokens, 25);
    auto ref = greedy(*model, prompts[i], 25);
    EXPECT_EQ(text, tok.decode(ref)) << "request " << i;
  }
  // The Done event is sent before the scheduler thread frees the slot: wait for it (bounded).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!sched.idle() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(sched.idle());
}

TEST(ServerScheduler, PrefixCacheServesTheSecondTurn) {
  const std::string dir = stories_dir();
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no test data";
  Served m(dir);
  auto& [model, tok, metrics] = m;
  Scheduler::Options o;
  o.parallel = 2;
  o.prefix_snapshot_min = 4;
  Scheduler sched(*model, tok, {}, o, metrics);
  auto p1 = tok.encode("Once upon a time there was a girl named Lily who liked to play", true);
  auto r1 = make_request(p1, 10);
  sched.submit(r1);
  auto [t1, d1] = drain(*r1);
  ASSERT_EQ(d1.kind, Event::Kind::Done);
  EXPECT_EQ(d1.cached_tokens, 0);
  auto gen = greedy(*model, p1, 10);
  std::vector<int32_t> p2 = p1;
  p2.insert(p2.end(), gen.begin(), gen.end());
  for (int32_t x : tok.encode(" with her dog", false)) p2.push_back(x);
  auto warm = make_request(p2, 8), cold = make_request(p2, 8, false);
  sched.submit(warm);
  auto [tw, dw] = drain(*warm);
  sched.submit(cold);
  auto [tc, dc] = drain(*cold);
  // The end-of-generation snapshot (prompt + 9 fed tokens) is the longest usable prefix.
  EXPECT_EQ(dw.cached_tokens, int64_t(p1.size()) + 9);
  EXPECT_EQ(dc.cached_tokens, 0);
  EXPECT_EQ(tw, tc);
  EXPECT_GE(metrics.prefix_hits.load(), 1u);
}

TEST(ServerScheduler, ShortPromptOvertakesALongOneBeingPrefilled) {
  const std::string dir = mamba_dir();  // 400 tokens in chunks of 8: 50 steps
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no test data";
  Served m(dir);
  auto& [model, tok, metrics] = m;
  Scheduler::Options o;
  o.parallel = 2;
  o.prefill_chunk = 8;
  Scheduler sched(*model, tok, {}, o, metrics);
  std::vector<int32_t> long_prompt;
  while (long_prompt.size() < 400) {
    auto ids = tok.encode(" The quick brown fox jumps over the lazy dog, and the cat sleeps on.", false);
    long_prompt.insert(long_prompt.end(), ids.begin(), ids.end());
  }
  long_prompt.resize(400);
  const auto short_prompt = tok.encode("Hello there", false);
  auto lr = make_request(long_prompt, 1, false), sr = make_request(short_prompt, 1, false);
  sched.submit(lr);
  while (sched.active_slots() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  sched.submit(sr);
  auto [ts, ds] = drain(*sr);
  ASSERT_EQ(ds.kind, Event::Kind::Done) << ds.error.message;
  // The short prompt finished while the long one was still being prefilled (FIFO would have made it
  // wait for all 50 chunks); both give what they would alone.
  EXPECT_FALSE(lr->pop(std::chrono::milliseconds(0)).has_value());
  auto [tl, dl] = drain(*lr);
  ASSERT_EQ(dl.kind, Event::Kind::Done) << dl.error.message;
  EXPECT_EQ(ts, tok.decode(greedy(*model, short_prompt, 1)));
  EXPECT_EQ(tl, tok.decode(greedy(*model, long_prompt, 1)));
}

TEST(ServerScheduler, CancelAndQueueLimits) {
  const std::string dir = mamba_dir();  // slow enough (~300 tokens/s) that requests are still running
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no test data";
  Served m(dir);
  auto& [model, tok, metrics] = m;
  Scheduler::Options o;
  o.parallel = 1;
  o.queue = 1;
  Scheduler sched(*model, tok, {}, o, metrics);
  auto p = tok.encode("The", false);
  auto a = make_request(p, 1 << 20), b = make_request(p, 1 << 20), c = make_request(p, 1 << 20);
  sched.submit(a);
  // Wait until a is running, so b is the one queued.
  while (sched.active_slots() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  sched.submit(b);
  try {
    sched.submit(c);
    ADD_FAILURE() << "a third request was accepted with the queue full";
  } catch (const ApiException& e) {
    EXPECT_EQ(e.err.status, 429);
    EXPECT_EQ(e.err.retry_after, 1);
  }
  a->cancel();
  b->cancel();
  auto [ta, da] = drain(*a);
  auto [tb, db] = drain(*b);
  EXPECT_EQ(da.finish_reason, "cancelled");
  EXPECT_EQ(db.finish_reason, "cancelled");
  EXPECT_LT(da.completion_tokens, 1 << 20);
  sched.stop_accepting();
  try {
    sched.submit(make_request(p, 1));
    ADD_FAILURE() << "accepted after stop_accepting";
  } catch (const ApiException& e) {
    EXPECT_EQ(e.err.status, 503);
  }
}

}  // namespace
}  // namespace hxq::server
