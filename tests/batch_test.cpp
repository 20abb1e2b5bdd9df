// Model::decode_batch (B sequences advanced by one token each in one pass) against B independent
// single-sequence forwards, for every architecture, dense and HXQ-compressed; ModelState's clone,
// copy_from and truncate; decode_batch's one-line errors, raised before any state changes.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "codec/compress.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "models/model.h"
#include "models/synth.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
using test::max_abs_diff;

namespace {

// A model under test: a synthetic "tiny" preset of `arch` (dense BF16 as written, or compressed
// with the library's helix format or HXQ v2), or a checkpoint of the shared test data.
struct Case {
  std::string name, arch, format, data;  // format: "dense", "helix", "v2"; data: a path under HXQ_TEST_DATA
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases() {
  std::vector<Case> v;
  for (const char* arch : {"mamba", "mamba2", "zamba2", "llama", "qwen2"})
    for (const char* format : {"dense", "helix", "v2"}) v.push_back({std::string(arch) + "_" + format, arch, format, ""});
  for (const char* f : {"mamba", "mamba2", "zamba2", "llama", "qwen2"})
    v.push_back({std::string("fixture_") + f + "_tiny", "", "", std::string("fixtures/hf/") + f + "-tiny"});
  v.push_back({"mamba2_neox_17m", "", "", "models/mamba2-neox-17m"});
  v.push_back({"stories260K", "", "", "models/stories260K-hf"});
  return v;
}

// Writes the case's checkpoint (synthetic ones under a fresh temporary directory), "" when its
// test data is absent. `config_patch` (a JSON object) is merged over a synthetic config.json.
std::string model_dir(const Case& c, const std::string& config_patch = "") {
  if (!c.data.empty()) return test::have_data(c.data + "/config.json") ? test::data_path(c.data) : "";
  const auto dir = test::temp_dir("batch-" + c.name);
  SynthOptions o;
  o.arch = c.arch;
  o.preset = "tiny";
  write_synthetic_model(dir + "/m", o);
  if (!config_patch.empty()) test::write_file(dir + "/m/config.json", test::patched_config(dir + "/m", config_patch));
  if (c.format == "dense") return dir + "/m";
  CompressOptions co;
  co.fsync = false;
  co.format = c.format == "v2" ? CompressFormat::V2 : CompressFormat::Helix;
  compress_checkpoint(dir + "/m", dir + "/q", co);
  return dir + "/q";
}

// n pseudo-random token ids in [0, vocab), a different sequence per seed.
std::vector<int32_t> tokens(int64_t n, uint64_t seed, int64_t vocab) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 12345;
  for (auto& t : v) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t = int32_t((x >> 33) % uint64_t(vocab));
  }
  return v;
}

// At least two pool threads whatever the machine, so that the parallel splits run (restored after).
struct TwoThreads {
  TwoThreads() { set_num_threads(2); }
  ~TwoThreads() { set_num_threads(0); }
};

// The Error message of f() ("" when it does not throw hxq::Error).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool is_transformer(const Model& m) {
  const auto a = m.summary().arch;
  return a == "llama" || a == "qwen2";
}

class BatchDecode : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    dir_ = model_dir(GetParam());
    if (dir_.empty()) GTEST_SKIP() << "test data " << GetParam().data << " absent (set HXQ_TEST_DATA)";
    m_ = load_model(dir_);
    V_ = m_->vocab_size();
  }
  // A new state that has consumed `prompt` (no logits).
  std::unique_ptr<ModelState> prefilled(const std::vector<int32_t>& prompt) const {
    auto st = m_->new_state();
    if (!prompt.empty()) m_->forward(*st, prompt, int64_t(prompt.size()), nullptr);
    return st;
  }
  // The logits of one more token on st.
  std::vector<float> step(ModelState& st, int32_t id) const {
    std::vector<float> l(static_cast<size_t>(V_));
    m_->forward(st, {&id, 1}, 0, l.data());
    return l;
  }

  std::string dir_;
  std::unique_ptr<Model> m_;
  int64_t V_ = 0;
};

// B = 1 .. 5 sequences at different positions (one fresh, at position 0), and B = 16 with prompts
// long enough that the per-sequence recurrences and attention split across the pool's threads:
// every row of decode_batch's logits is the single-sequence forward's, bit for bit at B = 1.
TEST_P(BatchDecode, RowsEqualSingleSequenceForwards) {
  TwoThreads threads;
  float worst = 0;
  for (int64_t B : {1, 2, 3, 4, 5, 16}) {
    std::vector<std::unique_ptr<ModelState>> batch, single;
    std::vector<ModelState*> ptrs;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = B == 16 ? 60 + b : (b * 5) % 9;  // 0, 5, 1, 6, 2
      const auto prompt = tokens(len, uint64_t(100 * B + b), V_);
      batch.push_back(prefilled(prompt));
      single.push_back(prefilled(prompt));
      ptrs.push_back(batch.back().get());
    }
    std::vector<float> logits(static_cast<size_t>(B * V_));
    for (int s = 0; s < 4; ++s) {
      const auto ids = tokens(B, uint64_t(7 * s + B), V_);
      const bool want_logits = s != 2;  // one step without logits
      m_->decode_batch(ptrs, ids, want_logits ? logits.data() : nullptr);
      for (int64_t b = 0; b < B; ++b) {
        ASSERT_EQ(batch[size_t(b)]->position(), single[size_t(b)]->position() + 1);
        if (!want_logits) {
          m_->forward(*single[size_t(b)], {&ids[size_t(b)], 1}, 0, nullptr);
          continue;
        }
        const auto want = step(*single[size_t(b)], ids[size_t(b)]);
        const float* got = logits.data() + b * V_;
        if (B == 1) {
          ASSERT_EQ(std::memcmp(got, want.data(), size_t(V_) * sizeof(float)), 0) << "B = 1, step " << s;
        } else {
          const float d = max_abs_diff(got, want.data(), size_t(V_));
          worst = std::max(worst, d);
          ASSERT_LE(d, tol::kBatchVsSingleAbs) << "B = " << B << ", row " << b << ", step " << s;
        }
      }
    }
  }
  std::printf("%s: largest |decode_batch - forward| over B = 2..16: %.3g\n", GetParam().name.c_str(), double(worst));
}

// A clone continues exactly as the original would, whatever happens to the original (advanced,
// then destroyed) or to another clone; copy_from makes an existing state such a copy.
TEST_P(BatchDecode, CloneAndCopyFromAreIndependentCopies) {
  const auto prompt = tokens(9, 1, V_);
  auto orig = prefilled(prompt);
  auto c1 = orig->clone(), c2 = orig->clone();
  EXPECT_EQ(c1->position(), 9);
  EXPECT_LE(c1->bytes(), orig->bytes());
  m_->forward(*orig, tokens(3, 2, V_), 3, nullptr);  // mutate, then drop the original
  orig.reset();
  auto fresh = prefilled(prompt);
  const auto a = step(*c1, 5), b = step(*c2, 5), f = step(*fresh, 5);
  EXPECT_EQ(a, f);
  EXPECT_EQ(b, f);
  // c1 moves on; c2 stays where it was.
  step(*c1, 6);
  step(*c1, 7);
  EXPECT_EQ(c2->position(), 10);
  EXPECT_EQ(step(*c2, 8), step(*fresh, 8));
  // copy_from into a state with other content, then both decode through decode_batch.
  auto d = prefilled(tokens(20, 3, V_));
  d->copy_from(*c2);
  EXPECT_EQ(d->position(), c2->position());
  std::vector<ModelState*> two{d.get(), c2.get()};
  std::vector<int32_t> ids{9, 9};
  std::vector<float> l(static_cast<size_t>(2 * V_));
  m_->decode_batch(two, ids, l.data());
  const auto want = step(*fresh, 9);
  EXPECT_LE(max_abs_diff(l.data(), want.data(), want.size()), tol::kBatchVsSingleAbs);
  EXPECT_EQ(std::vector<float>(l.begin(), l.begin() + V_), std::vector<float>(l.begin() + V_, l.end()));
}

// A KV cache rewinds to any n <= position() and continues as if only the first n tokens had been
// fed; a recurrent state rewinds only to where it is, and a refused truncate changes nothing.
TEST_P(BatchDecode, Truncate) {
  const auto ids = tokens(12, 4, V_);
  std::vector<float> full(static_cast<size_t>(12 * V_));
  auto st = m_->new_state();
  m_->forward(*st, ids, 0, full.data());
  EXPECT_FALSE(st->truncate(13));
  EXPECT_FALSE(st->truncate(-1));
  EXPECT_TRUE(st->truncate(12));
  EXPECT_EQ(st->position(), 12);
  EXPECT_EQ(st->can_truncate(), is_transformer(*m_));
  if (st->can_truncate()) {
    ASSERT_TRUE(st->truncate(7));
    EXPECT_EQ(st->position(), 7);
    std::vector<float> tail(static_cast<size_t>(5 * V_));
    m_->forward(*st, std::span(ids).subspan(7), 0, tail.data());
    EXPECT_LE(max_abs_diff(tail.data(), full.data() + 7 * V_, tail.size()), tol::kDecodeVsPrefillAbs);
    // Rewound to 5, then one decode_batch step: row 5 of the full sequence.
    ASSERT_TRUE(st->truncate(5));
    ModelState* p = st.get();
    std::vector<float> l(static_cast<size_t>(V_));
    m_->decode_batch({&p, 1}, std::span(ids).subspan(5, 1), l.data());
    EXPECT_LE(max_abs_diff(l.data(), full.data() + 5 * V_, l.size()), tol::kDecodeVsPrefillAbs);
    ASSERT_TRUE(st->truncate(0));
    std::vector<float> again(full.size());
    m_->forward(*st, ids, 0, again.data());
    EXPECT_EQ(again, full);
  } else {
    auto before = st->clone();
    EXPECT_FALSE(st->truncate(11));
    EXPECT_FALSE(st->truncate(0));
    EXPECT_EQ(st->position(), 12);
    EXPECT_EQ(step(*st, 3), step(*before, 3));  // unchanged by the refused truncates
    EXPECT_TRUE(m_->new_state()->truncate(0));
  }
}

// Bad batches fail with one-line errors (forward()'s for a bad id) before any state changes.
TEST_P(BatchDecode, BadBatchesFailBeforeChangingAnything) {
  auto s1 = prefilled(tokens(3, 5, V_)), s2 = prefilled(tokens(4, 6, V_));
  auto c1 = s1->clone();
  std::vector<float> l(static_cast<size_t>(2 * V_));
  auto decode = [&](std::vector<ModelState*> states, std::vector<int32_t> ids) {
    return error_of([&] { m_->decode_batch(states, ids, l.data()); });
  };
  auto one_line = [](const std::string& e) { return !e.empty() && e.find('\n') == std::string::npos; };
  const std::string dup = decode({s1.get(), s1.get()}, {1, 2});
  EXPECT_TRUE(one_line(dup) && dup.find("same state") != std::string::npos) << dup;
  for (int32_t bad : {int32_t(V_), -1}) {
    const std::string e = decode({s1.get(), s2.get()}, {1, bad});
    auto probe = s2->clone();
    EXPECT_EQ(e, error_of([&] { m_->forward(*probe, {&bad, 1}, 0, nullptr); }));
    EXPECT_TRUE(one_line(e) && e.find("outside the vocabulary") != std::string::npos) << e;
  }
  EXPECT_TRUE(one_line(decode({s1.get(), s2.get()}, {1})));
  EXPECT_TRUE(one_line(decode({s1.get(), nullptr}, {1, 2})));
  EXPECT_EQ(s1->position(), 3);
  EXPECT_EQ(s2->position(), 4);
  EXPECT_EQ(step(*s1, 2), step(*c1, 2));  // s1 (first in every batch) was not advanced
  m_->decode_batch({}, {}, nullptr);      // an empty batch does nothing
}

INSTANTIATE_TEST_SUITE_P(Models, BatchDecode, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// A state at the context limit fails decode_batch with forward()'s error; the other states of the
// batch are untouched.
TEST(BatchErrors, ContextLimitAsForward) {
  for (const char* arch : {"llama", "qwen2", "zamba2"}) {
    const auto dir = model_dir({arch, arch, "dense", ""}, R"({"max_position_embeddings": 8})");
    auto m = load_model(dir);
    auto full = m->new_state(), other = m->new_state();
    m->forward(*full, tokens(8, 1, m->vocab_size()), 8, nullptr);
    m->forward(*other, tokens(2, 2, m->vocab_size()), 2, nullptr);
    std::vector<ModelState*> states{other.get(), full.get()};
    std::vector<int32_t> ids{1, 1};
    const std::string e = error_of([&] { m->decode_batch(states, ids, nullptr); });
    auto probe = full->clone();
    EXPECT_EQ(e, error_of([&] { m->forward(*probe, {&ids[0], 1}, 0, nullptr); })) << arch;
    EXPECT_NE(e.find("exceeds the model's limit of 8"), std::string::npos) << e;
    EXPECT_EQ(other->position(), 2) << arch;
    EXPECT_EQ(full->position(), 8) << arch;
  }
}

// States of another model (another class, or the same class with other shapes) are refused.
TEST(BatchErrors, StateOfAnotherModel) {
  auto mamba2 = load_model(model_dir({"mamba2", "mamba2", "dense", ""}));
  auto llama = load_model(model_dir({"llama", "llama", "dense", ""}));
  auto qwen2 = load_model(model_dir({"qwen2", "qwen2", "dense", ""}));
  auto s = llama->new_state();
  ModelState* p = s.get();
  int32_t id = 1;
  for (const Model* m : {mamba2.get(), qwen2.get()}) {
    const std::string e = error_of([&] { m->decode_batch({&p, 1}, {&id, 1}, nullptr); });
    EXPECT_NE(e.find("a state of another model"), std::string::npos) << e;
  }
  EXPECT_EQ(s->position(), 0);
  auto other = mamba2->new_state();
  EXPECT_THROW(other->copy_from(*s), Error);
  EXPECT_THROW(s->copy_from(*other), Error);
}

// Model's default decode_batch (for architectures without a batched pass): forward() per
// sequence, with the same checks.
TEST(BatchFallback, DefaultRunsForwardPerSequence) {
  struct Wrapped final : Model {
    std::unique_ptr<Model> inner;
    ModelSummary summary() const override { return inner->summary(); }
    std::unique_ptr<ModelState> new_state() const override { return inner->new_state(); }
    void forward(ModelState& st, std::span<const int32_t> ids, int64_t from, float* logits,
                 ForwardTrace* trace = nullptr) const override {
      inner->forward(st, ids, from, logits, trace);
    }
    uint64_t decode_weight_bytes() const override { return inner->decode_weight_bytes(); }
  } w;
  w.inner = load_model(model_dir({"mamba2", "mamba2", "dense", ""}));
  const int64_t V = w.vocab_size();
  auto a = w.new_state(), b = w.new_state();
  w.forward(*b, tokens(4, 1, V), 4, nullptr);
  auto ra = a->clone(), rb = b->clone();
  std::vector<ModelState*> states{a.get(), b.get()};
  std::vector<int32_t> ids{3, 4};
  std::vector<float> l(static_cast<size_t>(2 * V)), want(static_cast<size_t>(V));
  w.decode_batch(states, ids, l.data());
  w.forward(*ra, {&ids[0], 1}, 0, want.data());
  EXPECT_EQ(std::vector<float>(l.begin(), l.begin() + V), want);
  w.forward(*rb, {&ids[1], 1}, 0, want.data());
  EXPECT_EQ(std::vector<float>(l.begin() + V, l.end()), want);
  std::vector<ModelState*> dup{a.get(), a.get()};
  EXPECT_THROW(w.decode_batch(dup, ids, nullptr), Error);
  ids[1] = int32_t(V);
  EXPECT_THROW(w.decode_batch(states, ids, nullptr), Error);
  EXPECT_EQ(a->position(), 1);  // not advanced by the refused batches
}

}  // namespace
