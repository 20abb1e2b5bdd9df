// The speed benchmark engine (eval/bench.h) and `hxq bench`: sane, positive figures and
// consistent byte counts on the tiny fixtures. Nothing here asserts on speed.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/op_profile.h"
#include "core/threadpool.h"
#include "eval/bench.h"
#include "models/model.h"
#include "test_util.h"

using namespace hxq;

namespace {

constexpr const char* kMamba = "fixtures/hf/mamba2-tiny";
constexpr const char* kLlama = "fixtures/hf/llama-tiny";

BenchOptions small_options() {
  BenchOptions o;
  o.prompt = 20;  // crosses the fixture's chunk_size of 16
  o.gen = 6;
  o.repeats = 2;
  o.membw_bytes = size_t(8) << 20;
  o.membw_repeats = 1;
  return o;
}

bool positive_finite(double v) { return std::isfinite(v) && v > 0; }

// Figures derived from others must agree up to floating-point rounding of the products.
constexpr double kRel = 1e-9;

TEST(BenchEngine, TinyMamba2GivesSaneFigures) {
  HXQ_REQUIRE_DATA(std::string(kMamba) + "/model.safetensors");
  const std::string dir = test::data_path(kMamba);
  auto model = load_model(dir);
  const BenchOptions o = small_options();
  const BenchResult r = run_bench(*model, dir, o);

  EXPECT_EQ(r.model.arch, "mamba2");
  EXPECT_EQ(r.threads, pool().size());
  EXPECT_EQ(r.prompt, o.prompt);
  EXPECT_EQ(r.gen, o.gen);
  ASSERT_EQ(r.prefill_runs.size(), size_t(o.repeats));
  ASSERT_EQ(r.decode_runs.size(), size_t(o.repeats));
  ASSERT_EQ(r.membw_runs.size(), size_t(o.repeats));
  for (double v : r.prefill_runs) EXPECT_TRUE(positive_finite(v));
  for (double v : r.decode_runs) EXPECT_TRUE(positive_finite(v));
  for (double v : r.membw_runs) EXPECT_TRUE(positive_finite(v));
  EXPECT_TRUE(positive_finite(r.prefill_tokens_per_s));
  EXPECT_TRUE(positive_finite(r.decode_tokens_per_s));
  EXPECT_TRUE(positive_finite(r.membw_gb_per_s));
  EXPECT_TRUE(positive_finite(r.ceiling_tokens_per_s));
  EXPECT_TRUE(positive_finite(r.ceiling_fraction));
  ASSERT_EQ(r.ceiling_fraction_runs.size(), size_t(o.repeats));
  for (size_t i = 0; i < r.ceiling_fraction_runs.size(); ++i)  // each repeat's decode over its own probe
    EXPECT_NEAR(r.ceiling_fraction_runs[i], r.decode_runs[i] * double(r.bytes.total()) / (r.membw_runs[i] * 1e9), 1e-9);

  // Byte counts: weights from the model, the whole recurrent state read and written.
  EXPECT_EQ(r.bytes.weights, model->decode_weight_bytes());
  EXPECT_GT(r.bytes.weights, 0u);
  EXPECT_LE(r.bytes.weights, r.model.weight_bytes);
  EXPECT_EQ(r.bytes.state, 2 * uint64_t(model->new_state()->bytes()));
  EXPECT_EQ(r.bytes.total(), r.bytes.weights + r.bytes.state);
  EXPECT_NEAR(r.bandwidth_gb_per_s, double(r.bytes.total()) * r.decode_tokens_per_s * 1e-9,
              kRel * r.bandwidth_gb_per_s);
  EXPECT_NEAR(r.ceiling_tokens_per_s, r.membw_gb_per_s * 1e9 / double(r.bytes.total()),
              kRel * r.ceiling_tokens_per_s);
  // A recurrent model's bytes do not depend on the context.
  EXPECT_EQ(decode_bytes_per_token(*model, dir, 0).total(), decode_bytes_per_token(*model, dir, 5000).total());

  // The mapped weights are resident after the runs.
  EXPECT_GE(r.peak_rss_bytes, r.bytes.weights);
  EXPECT_GE(peak_rss_bytes(), r.peak_rss_bytes);
}

TEST(BenchEngine, TransformerCountsTheKvCacheAtTheContext) {
  HXQ_REQUIRE_DATA(std::string(kLlama) + "/model.safetensors");
  const std::string dir = test::data_path(kLlama);
  auto model = load_model(dir);
  const json cfg = load_config(dir);
  // float32 K and V per position: layers × kv heads × head_dim × 2 × 4 bytes.
  const uint64_t per_pos = cfg["num_hidden_layers"].get<uint64_t>() * cfg["num_key_value_heads"].get<uint64_t>() *
                           cfg["head_dim"].get<uint64_t>() * 2 * 4;
  const DecodeBytes b0 = decode_bytes_per_token(*model, dir, 0), b100 = decode_bytes_per_token(*model, dir, 100);
  EXPECT_EQ(b0.weights, model->decode_weight_bytes());
  EXPECT_EQ(b100.weights, b0.weights);
  EXPECT_EQ(b100.state - b0.state, 100 * per_pos);
  EXPECT_EQ(b0.state, 2 * per_pos);  // the new token's K/V read back and written

  BenchOptions o = small_options();
  o.membw_bytes = 0;  // not measured: ceiling figures stay 0
  const BenchResult r = run_bench(*model, dir, o);
  EXPECT_EQ(r.bytes.context, o.prompt + o.gen / 2);
  EXPECT_EQ(r.bytes.state, decode_bytes_per_token(*model, dir, r.bytes.context).state);
  EXPECT_TRUE(positive_finite(r.decode_tokens_per_s));
  EXPECT_TRUE(positive_finite(r.prefill_tokens_per_s));
  EXPECT_TRUE(r.membw_runs.empty());
  EXPECT_EQ(r.membw_gb_per_s, 0.0);
  EXPECT_EQ(r.ceiling_tokens_per_s, 0.0);
  EXPECT_EQ(r.ceiling_fraction, 0.0);
}

TEST(BenchEngine, EmptyPhasesAndBadOptions) {
  HXQ_REQUIRE_DATA(std::string(kMamba) + "/model.safetensors");
  const std::string dir = test::data_path(kMamba);
  auto model = load_model(dir);
  BenchOptions o = small_options();
  o.membw_bytes = 0;
  o.prompt = 0;  // decode from an empty state
  BenchResult r = run_bench(*model, dir, o);
  EXPECT_TRUE(r.prefill_runs.empty());
  EXPECT_EQ(r.prefill_tokens_per_s, 0.0);
  EXPECT_TRUE(positive_finite(r.decode_tokens_per_s));
  o.prompt = 5;
  o.gen = 0;
  r = run_bench(*model, dir, o);
  EXPECT_TRUE(r.decode_runs.empty());
  EXPECT_EQ(r.decode_tokens_per_s, 0.0);
  EXPECT_EQ(r.bandwidth_gb_per_s, 0.0);
  EXPECT_TRUE(positive_finite(r.prefill_tokens_per_s));
  o.repeats = 0;
  EXPECT_THROW(run_bench(*model, dir, o), Error);
  o.repeats = 1;
  o.gen = -1;
  EXPECT_THROW(run_bench(*model, dir, o), Error);
}

// --profile: the decode steps' linear layers, each forward counted once with its weight bytes
// (for Mamba2 every weight byte a decode step reads is a linear layer's), inside the decode time.
TEST(BenchEngine, ProfileCountsEveryLinearForwardOfDecode) {
  for (const char* fixture : {kMamba, kLlama}) {
    HXQ_REQUIRE_DATA(std::string(fixture) + "/model.safetensors");
    const std::string dir = test::data_path(fixture);
    auto model = load_model(dir);
    BenchOptions o = small_options();
    o.profile = true;
    const BenchResult r = run_bench(*model, dir, o);
    ASSERT_FALSE(r.profile.empty()) << fixture;
    EXPECT_EQ(r.profile_tokens, o.gen * o.repeats);
    double secs = 0;
    uint64_t bytes = 0;
    for (const OpStat& op : r.profile) {
      EXPECT_GT(op.calls, 0) << op.label;
      EXPECT_EQ(op.calls % r.profile_tokens, 0) << op.label;  // the same layers every step
      EXPECT_EQ(op.label.find(" T="), std::string::npos) << op.label;  // one row of X each
      secs += op.seconds;
      bytes += op.bytes;
    }
    EXPECT_LE(secs, r.profile_decode_seconds);
    if (std::string(fixture) == kMamba) EXPECT_EQ(bytes, uint64_t(r.profile_tokens) * model->decode_weight_bytes());
    EXPECT_FALSE(op_profile_enabled());  // recording stops with the decode steps
  }
  // Off by default: nothing recorded.
  HXQ_REQUIRE_DATA(std::string(kMamba) + "/model.safetensors");
  auto model = load_model(test::data_path(kMamba));
  const BenchResult r = run_bench(*model, test::data_path(kMamba), small_options());
  EXPECT_TRUE(r.profile.empty());
  EXPECT_EQ(r.profile_tokens, 0);
}

TEST(BenchCli, JsonSmoke) {
  HXQ_REQUIRE_DATA(std::string(kMamba) + "/model.safetensors");
  auto r = test::run_cli({"bench", "-m", test::data_path(kMamba), "--prompt", "17", "--gen", "4", "--repeats", "1",
                          "--threads", "2", "--membw-mb", "8", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"prefill_tokens_per_s", "decode_tokens_per_s", "ceiling_tokens_per_s", "bandwidth_gb_per_s",
                        "membw_gb_per_s", "ceiling_fraction"})
    EXPECT_TRUE(positive_finite(j.at(k).get<double>())) << k;
  EXPECT_GT(j.at("bytes_per_token").get<uint64_t>(), 0u);
  EXPECT_EQ(j.at("bytes_per_token").get<uint64_t>(),
            j.at("weight_bytes_per_token").get<uint64_t>() + j.at("state_bytes_per_token").get<uint64_t>());
  EXPECT_GT(j.at("peak_rss_bytes").get<uint64_t>(), 0u);
  EXPECT_EQ(j.at("threads").get<int>(), 2);
  EXPECT_EQ(j.at("summary").at("arch").get<std::string>(), "mamba2");
  EXPECT_EQ(j.at("prompt_tokens").get<int64_t>(), 17);

  // Human-readable table.
  r = test::run_cli({"bench", "-m", test::data_path(kMamba), "--prompt", "8", "--gen", "2", "--repeats", "1",
                     "--membw-mb", "8"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("decode"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("prefill"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("decode profile"), std::string::npos) << r.out;

  // --profile: the table in text, the ops in JSON.
  r = test::run_cli({"bench", "-m", test::data_path(kMamba), "--prompt", "8", "--gen", "2", "--repeats", "1",
                     "--membw-mb", "0", "--profile"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("decode profile"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rest (attention"), std::string::npos) << r.out;
  r = test::run_cli({"bench", "-m", test::data_path(kMamba), "--prompt", "8", "--gen", "2", "--repeats", "1",
                     "--membw-mb", "0", "--profile", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto jp = nlohmann::json::parse(r.out);
  EXPECT_EQ(jp.at("profile").at("tokens").get<int64_t>(), 2);
  ASSERT_FALSE(jp.at("profile").at("ops").empty());
  EXPECT_GT(jp.at("profile").at("ops")[0].at("weight_bytes").get<uint64_t>(), 0u);
}

TEST(BenchCli, MembwOnlyAndUsageErrors) {
  auto r = test::run_cli({"bench", "--membw", "--membw-mb", "8", "--threads", "1", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(positive_finite(j.at("membw_gb_per_s").get<double>()));
  EXPECT_TRUE(positive_finite(j.at("peak_fma_gflops").get<double>()));

  r = test::run_cli({"bench"});  // neither a model nor --membw
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;
  r = test::run_cli({"bench", "-m", "x", "--repeats", "0"});
  EXPECT_EQ(r.code, 2) << r.err;
  r = test::run_cli({"bench", "-m", test::temp_dir("bench-missing") + "/nope", "--membw-mb", "0"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

}  // namespace
