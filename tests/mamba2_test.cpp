// Mamba2 against transformers' references in ../shared: logits, hidden states, decode, greedy.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "io/safetensors.h"
#include "models/model.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;

namespace {

std::vector<int32_t> ids_of(const TensorInfo& t) {
  std::vector<int32_t> v;
  EXPECT_EQ(t.dtype, DType::I64);
  const auto* p = reinterpret_cast<const int64_t*>(t.data);
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(int32_t(p[i]));
  return v;
}

std::vector<float> floats_of(const TensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

int32_t argmax(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

class Mamba2Ref : public ::testing::TestWithParam<std::string> {};

TEST_P(Mamba2Ref, LogitsHiddenDecodeGreedy) {
  const std::string rel = GetParam();
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
    for (int64_t l = 0; l < nl; ++l) {
      float e = max_abs_diff(trace.hidden_states[size_t(l)].data(), hv.data() + l * T * D, size_t(T * D));
      EXPECT_LE(e, tol::kHiddenAbs) << "hidden state " << l;
    }
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

  // Greedy generation with the recurrent state reproduces gen_ids.
  auto gen = ids_of(ref.get("gen_ids"));
  std::vector<int32_t> prompt;
  if (auto* gp = ref.find("gen_prompt_ids")) {
    prompt = ids_of(*gp);
  } else {
    prompt.assign(gen.begin(), gen.begin() + (int64_t(gen.size()) - 48));  // 48 generated tokens
  }
  st->reset();
  model->forward(*st, prompt, int64_t(prompt.size()) - 1, step.data());
  std::vector<int32_t> out = prompt;
  const auto* scores = ref.find("gen_scores");
  std::vector<float> sc = scores ? floats_of(*scores) : std::vector<float>{};
  while (out.size() < gen.size()) {
    size_t k = out.size() - prompt.size();
    if (scores) {
      // gen_scores are the processed scores: transformers' min_new_tokens sets EOS to -inf.
      float e = 0;
      for (int64_t v = 0; v < V; ++v) {
        float r = sc[k * size_t(V) + size_t(v)];
        if (std::isfinite(r)) e = std::max(e, std::fabs(step[size_t(v)] - r));
      }
      EXPECT_LE(e, tol::kLogitAbs) << "generation step " << k;
    }
    int32_t next = argmax(step.data(), V);
    out.push_back(next);
    model->forward(*st, std::span(&next, 1), 0, step.data());
  }
  EXPECT_EQ(out, gen);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Mamba2Ref,
                         ::testing::Values("fixtures/hf/mamba2-tiny", "fixtures/hf/mamba2-tiny-bf16",
                                           "models/mamba2-neox-17m"),
                         [](const auto& info) {
                           std::string s = info.param.substr(info.param.rfind('/') + 1);
                           for (auto& ch : s) if (!isalnum(ch)) ch = '_';
                           return s;
                         });

TEST(Mamba2, GroupedNormMissesTransformersFixture) {
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/reference.safetensors");
  const std::string dir = test::data_path("fixtures/hf/mamba2-tiny");
  LoadOptions o;
  o.grouped_norm = 1;
  auto model = load_model(dir, o);
  auto ref = TensorStore::open(dir + "/reference.safetensors");
  auto ids = ids_of(ref.get("input_ids"));
  auto want = floats_of(ref.get("logits"));
  std::vector<float> logits(want.size());
  auto st = model->new_state();
  model->forward(*st, ids, 0, logits.data());
  EXPECT_GT(max_abs_diff(logits.data(), want.data(), want.size()), 1.0f);  // the other convention
}

TEST(Mamba2, ConfigErrors) {
  auto dir = test::temp_dir("cfg");
  test::write_file(dir + "/config.json", R"({"model_type": "gpt_bigcode"})");
  try {
    load_model(dir);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("unsupported model_type \"gpt_bigcode\""), std::string::npos) << m;
    EXPECT_NE(m.find("mamba2"), std::string::npos) << m;
  }
  test::write_file(dir + "/config.json", R"({"model_type": "mamba2", "hidden_size": 64})");
  EXPECT_THROW(load_model(dir), Error);
  test::write_file(dir + "/config.json", R"({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 1,
    "vocab_size": 16, "time_step_limit": [0.0, Infinity]})");
  try {
    load_model(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
}

}  // namespace
