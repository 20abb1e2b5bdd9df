// Every architecture against transformers' references in ../shared: prefill logits, hidden
// states per layer, prefill-then-decode == prefill, decode-step logits, greedy generations.
#include <gtest/gtest.h>

#include <cmath>

#include "io/safetensors.h"
#include "models/model.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
using test::argmax;
using test::floats_of;
using test::ids_of;
using test::max_abs_diff;

namespace {

struct RefCase {
  std::string dir;
  size_t prompt_len = 0;  // when the reference has no gen_prompt_ids: gen_ids' prompt length
};

class ModelRef : public ::testing::TestWithParam<RefCase> {};

TEST_P(ModelRef, LogitsHiddenDecodeGreedy) {
  const std::string rel = GetParam().dir;
  HXQ_REQUIRE_DATA(rel + "/reference.safetensors");
  const std::string dir = test::data_path(rel);
  auto model = load_model(dir);
  auto ref = TensorStore::open(dir + "/reference.safetensors");
  const int64_t V = model->vocab_size();

  // Full prefill: logits and (where present) hidden states.
  auto ids = ids_of(ref.get("input_ids"));
  auto want = floats_of(ref.get("logits"));
  const int64_t T = int64_t(ids.size());
  ASSERT_EQ(int64_t(want.size()), T * V);
  std::vector<float> logits(static_cast<size_t>(T * V));
  ForwardTrace trace;
  auto st = model->new_state();
  model->forward(*st, ids, 0, logits.data(), &trace);
  float err = max_abs_diff(logits.data(), want.data(), want.size());
  RecordProperty("max_logit_err", std::to_string(err));
  std::printf("[ %s ] max |logit - ref| = %.3g over %lld positions\n", rel.c_str(), err, (long long)T);
  EXPECT_LE(err, tol::kLogitAbs);

  if (auto* hs = ref.find("hidden_states")) {
    auto hv = floats_of(*hs);
    const int64_t nl = hs->shape[0], D = hs->shape.back();
    ASSERT_EQ(int64_t(trace.hidden_states.size()), nl);
    float worst = 0;
    for (int64_t l = 0; l < nl; ++l) {
      float e = max_abs_diff(trace.hidden_states[size_t(l)].data(), hv.data() + l * T * D, size_t(T * D));
      worst = std::max(worst, e);
      EXPECT_LE(e, tol::kHiddenAbs) << "hidden state " << l;
    }
    std::printf("[ %s ] max |hidden - ref| = %.3g over %lld entries\n", rel.c_str(), worst, (long long)nl);
  }

  // Prefill the first half, then decode token by token: same logits as the full prefill.
  st->reset();
  const int64_t half = T / 2;
  std::vector<float> step(static_cast<size_t>(V));
  model->forward(*st, std::span(ids).first(size_t(half)), half - 1, step.data());
  float derr = max_abs_diff(step.data(), logits.data() + (half - 1) * V, size_t(V));
  for (int64_t t = half; t < T; ++t) {
    model->forward(*st, std::span(ids).subspan(size_t(t), 1), 0, step.data());
    derr = std::max(derr, max_abs_diff(step.data(), logits.data() + t * V, size_t(V)));
  }
  EXPECT_EQ(st->position(), T);
  EXPECT_LE(derr, tol::kDecodeVsPrefillAbs);

  // Greedy generation with the recurrent state / KV cache reproduces gen_ids (stories260K: 200
  // tokens from BOS; mamba2-neox-17m: 48 tokens from its prompt).
  auto gen = ids_of(ref.get("gen_ids"));
  std::vector<int32_t> prompt;
  if (auto* gp = ref.find("gen_prompt_ids")) {
    prompt = ids_of(*gp);
  } else {
    ASSERT_GT(GetParam().prompt_len, 0u);
    prompt.assign(gen.begin(), gen.begin() + ptrdiff_t(GetParam().prompt_len));
  }
  st->reset();
  model->forward(*st, prompt, int64_t(prompt.size()) - 1, step.data());
  std::vector<int32_t> out = prompt;
  const auto* scores = ref.find("gen_scores");
  std::vector<float> sc = scores ? floats_of(*scores) : std::vector<float>{};
  float serr = 0;
  while (out.size() < gen.size()) {
    size_t k = out.size() - prompt.size();
    if (scores) {
      // gen_scores are the processed scores: transformers' min_new_tokens sets EOS to -inf.
      float e = 0;
      for (int64_t v = 0; v < V; ++v) {
        float r = sc[k * size_t(V) + size_t(v)];
        if (std::isfinite(r)) e = std::max(e, std::fabs(step[size_t(v)] - r));
      }
      serr = std::max(serr, e);
      EXPECT_LE(e, tol::kLogitAbs) << "generation step " << k;
    }
    int32_t next = argmax(step.data(), V);
    out.push_back(next);
    model->forward(*st, std::span(&next, 1), 0, step.data());
  }
  if (scores) std::printf("[ %s ] max |decode logit - gen_scores| = %.3g\n", rel.c_str(), serr);
  EXPECT_EQ(out, gen);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelRef,
                         ::testing::Values(RefCase{"fixtures/hf/mamba2-tiny"}, RefCase{"fixtures/hf/mamba2-tiny-bf16"},
                                           RefCase{"models/mamba2-neox-17m", 5}, RefCase{"fixtures/hf/mamba-tiny"},
                                           RefCase{"fixtures/hf/zamba2-tiny"}, RefCase{"fixtures/hf/llama-tiny"},
                                           RefCase{"fixtures/hf/qwen2-tiny"}, RefCase{"models/stories260K-hf", 1}),
                         [](const auto& info) {
                           std::string s = info.param.dir.substr(info.param.dir.rfind('/') + 1);
                           for (auto& ch : s)
                             if (!isalnum(ch)) ch = '_';
                           return s;
                         });

}  // namespace
