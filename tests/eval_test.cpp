// Perplexity / KL: window arithmetic, and transformers' reference numbers for mamba2-neox-17m.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "core/error.h"
#include "codec/compress.h"
#include "eval/perplexity.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"
#include "io/json.h"
#include "test_util.h"

using namespace hxq;

namespace {

// Every target index 1..n-1 scored exactly once, windows no longer than ctx.
void expect_each_token_once(const std::vector<EvalWindow>& w, int64_t n, int64_t ctx) {
  std::vector<int> hits(size_t(n), 0);
  for (auto& x : w) {
    EXPECT_LE(x.end - x.begin, ctx);
    EXPECT_GT(x.first, x.begin);
    for (int64_t t = x.first; t < x.end; ++t) hits[size_t(t)]++;
  }
  EXPECT_EQ(hits[0], 0);
  for (int64_t t = 1; t < n; ++t) EXPECT_EQ(hits[size_t(t)], 1) << t;
}

TEST(EvalWindows, HuggingFaceRecipe) {
  auto w = hf_windows(287159, 2048, 512);
  expect_each_token_once(w, 287159, 2048);
  ASSERT_GE(w.size(), 3u);
  EXPECT_EQ(w[0].begin, 0);
  EXPECT_EQ(w[0].end, 2048);
  EXPECT_EQ(w[0].count(), 2047);
  EXPECT_EQ(w[1].begin, 512);
  EXPECT_EQ(w[1].count(), 512);
  EXPECT_EQ(w.back().end, 287159);
  // file shorter than ctx: one window
  w = hf_windows(100, 2048, 512);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].count(), 99);
  expect_each_token_once(w, 100, 2048);
  // stride == ctx: disjoint windows; as in transformers' recipe the first token of each window has
  // no context in it and is not scored, every other token once.
  w = hf_windows(1000, 256, 256);
  ASSERT_EQ(w.size(), 4u);
  int64_t scored = 0;
  for (auto& x : w) {
    EXPECT_EQ(x.first, x.begin + 1);
    scored += x.count();
  }
  EXPECT_EQ(scored, 1000 - 4);
  // n == ctx + 1, odd strides
  for (int64_t n : {2, 3, 257, 2049, 5000})
    for (int64_t stride : {1, 7, 128, 255}) expect_each_token_once(hf_windows(n, 256, stride), n, 256);
  EXPECT_TRUE(hf_windows(1, 256, 128).empty());
  EXPECT_THROW(hf_windows(100, 256, 0), UsageError);
  EXPECT_THROW(hf_windows(100, 256, 300), UsageError);
}

TEST(EvalWindows, LlamaCppRecipe) {
  auto w = llamacpp_windows(2000, 512, true);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[1].begin, 512);
  EXPECT_EQ(w[1].first, 512 + 257);
  EXPECT_EQ(w[1].count(), 255);  // llama-perplexity scores n_ctx - 1 - n_ctx/2 tokens per chunk
  EXPECT_TRUE(w[0].bos_first);
  EXPECT_TRUE(llamacpp_windows(511, 512, false).empty());
}

TEST(EvalWindows, PlanAsTheCliAndPythonChooseThem) {
  auto hf = plan_windows(5000, "hf", 0, 512, std::nullopt, "t");  // ctx 0: the protocol's default
  ASSERT_EQ(hf.size(), hf_windows(5000, 2048, 512).size());
  EXPECT_EQ(hf.back().end, 5000);
  auto lc = plan_windows(2000, "llamacpp", 0, 512, 1, "t");
  ASSERT_EQ(lc.size(), 3u);
  EXPECT_TRUE(lc[0].bos_first);
  EXPECT_FALSE(plan_windows(2000, "llamacpp", 0, 512, std::nullopt, "t")[0].bos_first);
  EXPECT_THROW(plan_windows(100, "hf", 64, 65, std::nullopt, "t"), UsageError);
  EXPECT_THROW(plan_windows(2000, "llamacpp", 0, 256, std::nullopt, "t"), UsageError);
  EXPECT_THROW(plan_windows(2000, "gguf", 0, 512, std::nullopt, "t"), UsageError);
  try {
    plan_windows(100, "llamacpp", 512, 512, std::nullopt, "text.txt");
    FAIL();
  } catch (const UsageError&) {
    FAIL() << "too few tokens is a data error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "text.txt: 100 tokens is less than one chunk of 512 tokens");
  }
  EXPECT_THROW(plan_windows(1, "hf", 0, 512, std::nullopt, "t"), Error);  // nothing to score
}

std::vector<int32_t> golden_ids(int64_t n) {
  std::ifstream f(test::data_path("data/tokenizer-goldens/wiki.test.raw.gpt-neox-20b.i32"), std::ios::binary);
  std::vector<int32_t> v(static_cast<size_t>(n));
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * 4));
  v.resize(size_t(f.gcount() / 4));
  return v;
}

TEST(Perplexity, ReproducesTransformersFirst8192Tokens) {
  HXQ_REQUIRE_DATA("models/mamba2-neox-17m/reference.json");
  HXQ_REQUIRE_DATA("data/tokenizer-goldens/wiki.test.raw.gpt-neox-20b.i32");
  auto ref = parse_json_file(test::data_path("models/mamba2-neox-17m/reference.json"));
  auto model = load_model(test::data_path("models/mamba2-neox-17m"));
  auto ids = golden_ids(8192);
  auto r = perplexity(*model, ids, hf_windows(int64_t(ids.size()), 2048, 512), std::nullopt);
  const double want = ref["ppl_dense_first8192"].get<double>();
  std::printf("PPL first 8192 tokens: %.4f (transformers %.4f)\n", r.ppl, want);
  EXPECT_NEAR(r.ppl / want, 1.0, 2e-4);  // issue requirement: within 0.02 %
  // The windows of the first 8192 tokens are also the first windows of the whole-file run,
  // except the last one, which ends at 8192 here.
  const auto& wd = ref["windows_dense"];
  for (size_t i = 0; i + 1 < r.windows.size(); ++i) {
    EXPECT_EQ(r.windows[i].w.begin, wd[i][0].get<int64_t>());
    EXPECT_EQ(r.windows[i].w.count(), wd[i][3].get<int64_t>());
    EXPECT_NEAR(r.windows[i].nll / wd[i][2].get<double>(), 1.0, 1e-4) << "window " << i;
  }
}

TEST(KlDivergence, IdenticalModelsGiveZero) {
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/model.safetensors");
  auto a = load_model(test::data_path("fixtures/hf/mamba2-tiny"));
  auto b = load_model(test::data_path("fixtures/hf/mamba2-tiny"));
  std::vector<int32_t> ids;
  for (int i = 0; i < 300; ++i) ids.push_back((i * 37 + 11) % 1024);
  auto k = kl_divergence(*a, *b, ids, hf_windows(300, 64, 32), std::nullopt);
  EXPECT_EQ(k.kl_mean, 0.0);
  EXPECT_EQ(k.kl_max, 0.0);
  EXPECT_EQ(k.top1_agreement, 1.0);
  EXPECT_DOUBLE_EQ(k.base.ppl, k.other.ppl);
  EXPECT_EQ(k.base.count, 299);
  auto p = perplexity(*a, ids, hf_windows(300, 64, 32), std::nullopt);
  EXPECT_NEAR(p.nll, k.base.nll, 1e-9 * std::fabs(p.nll));
}

// --stepwise scores through one-token forwards (the generation path): the same numbers as the
// windowed prefill up to float32 reassociation (recurrent step vs chunked scan).
TEST(Perplexity, StepwiseMatchesPrefill) {
  HXQ_REQUIRE_DATA("models/mamba2-neox-17m/reference.json");
  HXQ_REQUIRE_DATA("data/tokenizer-goldens/wiki.test.raw.gpt-neox-20b.i32");
  auto model = load_model(test::data_path("models/mamba2-neox-17m"));
  auto ids = golden_ids(700);
  const auto w = hf_windows(int64_t(ids.size()), 256, 128);
  auto a = perplexity(*model, ids, w, std::nullopt);
  EvalOptions step;
  step.stepwise = true;
  auto b = perplexity(*model, ids, w, std::nullopt, {}, step);
  EXPECT_EQ(a.count, b.count);
  EXPECT_NEAR(b.nll / a.nll, 1.0, 1e-5);  // per-token log-probs agree to ~1e-6
}

// The fast HXQ decode kernels (16-bit integer codebook and activations) against exact float32
// codebook math on the same compressed 17M model, scored the way generation runs. Measured on the
// first 8,192 WikiText-2 tokens: mean KL 1.1e-8 nats, vs 4.3e-5 for the compression itself
// (docs/PERFORMANCE.md); the bound leaves 100× margin and is still 40× below the codec's KL.
TEST(KlDivergence, FastHxqDecodeKernelsAgreeWithExact) {
  HXQ_REQUIRE_DATA("models/mamba2-neox-17m/reference.json");
  HXQ_REQUIRE_DATA("data/tokenizer-goldens/wiki.test.raw.gpt-neox-20b.i32");
  if (!hxq_fast_available()) GTEST_SKIP() << "no fast HXQ kernel on this CPU";
  const auto tmp = test::temp_dir("klfast");
  CompressOptions o;
  o.fsync = false;
  o.embeddings = true;  // the tied LM head runs through the HXQ kernels too
  compress_checkpoint(test::data_path("models/mamba2-neox-17m"), tmp + "/hxq", o);
  auto a = load_model(tmp + "/hxq");
  auto b = load_model(tmp + "/hxq");
  auto ids = golden_ids(600);
  EvalOptions opt;
  opt.stepwise = true;
  opt.math = HxqMath::Exact;
  opt.other_math = HxqMath::Fast;
  auto k = kl_divergence(*a, *b, ids, hf_windows(int64_t(ids.size()), 256, 128), std::nullopt, {}, opt);
  std::printf("fast vs exact HXQ decode: mean KL %.3g, max %.3g, top-1 %.4f\n", k.kl_mean, k.kl_max, k.top1_agreement);
  EXPECT_GT(k.kl_mean, 0.0);  // really two different computations
  EXPECT_LT(k.kl_mean, 1e-6);
  EXPECT_GE(k.top1_agreement, 0.99);
}

// The same for HXQ v2's fast decode (hxq2_gemm.h: AVX2 integer kernels at 4-6 bits, AVX-512 at
// 8 bits) on the 17M model at 4 bits, group 16, and at 8 bits, group 32 (every linear, the tied
// head included), scored the way generation runs. Measured (AVX-512 kernels): 4 bits mean KL
// 3.2e-8 nats, 8 bits 3.1e-8, top-1 agreement 1.0 (AVX2, 4 bits: 3.1e-8); the bound is the same
// as for the helix kernels above, still far below the codec's own KL (4 bits ~4e-3, 8 bits
// ~3e-5, docs/QUALITY.md).
class FastHxq2Kl : public ::testing::TestWithParam<int> {};
TEST_P(FastHxq2Kl, DecodeKernelsAgreeWithExact) {
  HXQ_REQUIRE_DATA("models/mamba2-neox-17m/reference.json");
  HXQ_REQUIRE_DATA("data/tokenizer-goldens/wiki.test.raw.gpt-neox-20b.i32");
  const int bits = GetParam();
  if (!hxq2_fast_available(bits)) GTEST_SKIP() << "no fast HXQ v2 kernel for " << bits << " bits on this CPU";
  const auto tmp = test::temp_dir("klfast2");
  CompressOptions o;
  o.fsync = false;
  o.format = CompressFormat::V2;
  o.bits = bits;
  o.group = bits == 8 ? 32 : 16;
  o.embeddings = true;
  compress_checkpoint(test::data_path("models/mamba2-neox-17m"), tmp + "/hxq", o);
  auto a = load_model(tmp + "/hxq");
  auto b = load_model(tmp + "/hxq");
  auto ids = golden_ids(600);
  EvalOptions opt;
  opt.stepwise = true;
  opt.math = HxqMath::Exact;
  opt.other_math = HxqMath::Fast;
  auto k = kl_divergence(*a, *b, ids, hf_windows(int64_t(ids.size()), 256, 128), std::nullopt, {}, opt);
  std::printf("fast vs exact HXQ v2 %d-bit decode: mean KL %.3g, max %.3g, top-1 %.4f\n", bits, k.kl_mean, k.kl_max,
              k.top1_agreement);
  EXPECT_GT(k.kl_mean, 0.0);  // really two different computations
  EXPECT_LT(k.kl_mean, 1e-6);
  EXPECT_GE(k.top1_agreement, 0.99);
}
INSTANTIATE_TEST_SUITE_P(KlDivergence, FastHxq2Kl, ::testing::Values(4, 8));

}  // namespace
