// Llama / Qwen2 against transformers' references in ../shared: logits, hidden states, KV-cache
// decode, greedy generation; RoPE scalings; chunked prefill; config and context-length errors.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/model.h"
#include "models/rope.h"
#include "models/transformer.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
using test::argmax;
using test::floats_of;
using test::ids_of;
using test::max_abs_diff;

namespace {

std::vector<float> prefill_logits(const Model& m, const std::vector<int32_t>& ids) {
  std::vector<float> out(ids.size() * size_t(m.vocab_size()));
  auto st = m.new_state();
  m.forward(*st, ids, 0, out.data());
  return out;
}

// Prefill in uneven pieces (logits of every piece) == one prefill of the whole sequence.
TEST(Transformer, PrefillInPiecesMatchesOnePrefill) {
  for (const char* rel : {"fixtures/hf/llama-tiny", "fixtures/hf/qwen2-tiny"}) {
    HXQ_REQUIRE_DATA(std::string(rel) + "/reference.safetensors");
    const std::string dir = test::data_path(rel);
    auto model = load_model(dir);
    auto ids = ids_of(TensorStore::open(dir + "/reference.safetensors").get("input_ids"));
    const int64_t V = model->vocab_size(), T = int64_t(ids.size());
    auto whole = prefill_logits(*model, ids);
    std::vector<float> pieces(whole.size());
    auto st = model->new_state();
    int64_t done = 0;
    for (int64_t len : {1, 7, 16, 3}) {
      model->forward(*st, std::span(ids).subspan(size_t(done), size_t(len)), 0, pieces.data() + done * V);
      done += len;
    }
    model->forward(*st, std::span(ids).subspan(size_t(done)), 0, pieces.data() + done * V);
    EXPECT_EQ(st->position(), T);
    EXPECT_LE(max_abs_diff(pieces.data(), whole.data(), whole.size()), tol::kDecodeVsPrefillAbs) << rel;
  }
}

TEST(Transformer, SummaryAndState) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/model.safetensors");
  auto model = load_model(test::data_path("models/stories260K-hf"));
  auto s = model->summary();
  EXPECT_EQ(s.arch, "llama");
  EXPECT_EQ(s.layers, 5);
  EXPECT_EQ(s.hidden, 64);
  EXPECT_EQ(s.vocab, 512);
  // embedding 512×64 (tied) + 5 × (q 64×64 + k,v 32×64 + o 64×64 + 3 × 172×64 + 2 norms) + norm
  EXPECT_EQ(s.params, 512 * 64 + 5 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 172 * 64 + 128) + 64);
  auto st = model->new_state();
  std::vector<int32_t> ids(10, 1);
  model->forward(*st, ids, 0, nullptr);
  EXPECT_EQ(st->position(), 10);
  EXPECT_GE(st->bytes(), size_t(2 * 5 * 4 * 10 * 8 * 4));  // K and V, 5 layers, 4 kv heads, hd 8
  st->reset();
  EXPECT_EQ(st->position(), 0);
}

TEST(Transformer, ContextPastMaxPositionEmbeddings) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/model.safetensors");
  auto model = load_model(test::data_path("models/stories260K-hf"));  // max_position_embeddings 512
  auto st = model->new_state();
  std::vector<int32_t> ids(500, 5);
  model->forward(*st, ids, 0, nullptr);
  std::vector<int32_t> more(13, 5);
  try {
    model->forward(*st, more, 0, nullptr);
    FAIL() << "expected an error past max_position_embeddings";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("max_position_embeddings"), std::string::npos) << m;
    EXPECT_NE(m.find("513"), std::string::npos) << m;
  }
  EXPECT_EQ(st->position(), 500);  // the failed call consumed nothing
  more.resize(12);
  model->forward(*st, more, 0, nullptr);  // exactly 512 fits
  int32_t one = 5;
  EXPECT_THROW(model->forward(*st, std::span(&one, 1), 0, nullptr), Error);
}

// A temporary checkpoint: llama-tiny's weights (symlinked, not copied) under a modified config.
std::string llama_tiny_with(const std::function<void(json&)>& edit, const std::string& tag) {
  const std::string src = test::data_path("fixtures/hf/llama-tiny");
  auto dir = test::temp_dir(tag);
  json cfg = parse_json_file(src + "/config.json");
  edit(cfg);
  test::write_file(dir + "/config.json", cfg.dump());
  std::filesystem::create_symlink(src + "/model.safetensors", dir + "/model.safetensors");
  return dir;
}

TEST(Transformer, UnsupportedRopeTypeNamesConfig) {
  auto dir = test::temp_dir("rope");
  const char* cfgs[] = {
      R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 16,
          "intermediate_size": 32, "num_attention_heads": 4, "rope_theta": 10000.0,
          "rope_scaling": {"type": "yarn", "factor": 4.0}})",
      R"({"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 16,
          "intermediate_size": 32, "num_attention_heads": 4,
          "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0}})"};
  const char* types[] = {"yarn", "longrope"};
  for (int i = 0; i < 2; ++i) {
    test::write_file(dir + "/config.json", cfgs[i]);
    try {
      load_model(dir);
      FAIL() << "expected an error for rope type " << types[i];
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("config.json"), std::string::npos) << m;
      EXPECT_NE(m.find(std::string("\"") + types[i] + "\""), std::string::npos) << m;
    }
  }
}

TEST(Transformer, ConfigErrors) {
  auto dir = test::temp_dir("tcfg");
  auto expect_error = [&](const std::string& cfg, const std::string& needle) {
    test::write_file(dir + "/config.json", cfg);
    try {
      load_model(dir);
      FAIL() << "expected an error for " << cfg;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string base = R"("hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 16, "intermediate_size": 32)";
  expect_error(R"({"model_type": "llama", "hidden_size": 64})", "num_hidden_layers");
  expect_error(R"({"model_type": "llama", )" + base + R"(, "num_attention_heads": 4, "num_key_value_heads": 3})",
               "multiple");
  expect_error(R"({"model_type": "llama", )" + base + R"(, "num_attention_heads": 4, "hidden_act": "gelu"})",
               "hidden_act");
  expect_error(R"({"model_type": "llama", )" + base +
                   R"(, "num_attention_heads": 4, "rope_scaling": {"rope_type": "linear"}})",
               "factor");
  expect_error(R"({"model_type": "qwen2", )" + base +
                   R"(, "num_attention_heads": 4, "use_sliding_window": true, "sliding_window": 8,
                     "max_window_layers": 0})",
               "sliding");
  // A valid config without weights: the error names the missing checkpoint.
  expect_error(R"({"model_type": "qwen2", )" + base + R"(, "num_attention_heads": 4})", "model.safetensors");
}

// Restated from transformers' modeling_rope_utils in double precision; the implementation works in
// float32 like transformers, so the two agree to float32 rounding (relative 1e-6).
TEST(Rope, InverseFrequenciesOfEachType) {
  json cfg = {{"rope_theta", 500000.0}};
  const int64_t dim = 128, maxp = 8192;
  auto def = RopeConfig::from_json(cfg, dim, maxp, "c").inv_freq(maxp);
  ASSERT_EQ(def.size(), size_t(dim / 2));
  std::vector<double> base(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    base[size_t(i)] = 1.0 / std::pow(500000.0, double(2 * i) / double(dim));
    EXPECT_NEAR(def[size_t(i)], base[size_t(i)], 2e-6 * base[size_t(i)]) << i;
  }

  cfg["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  auto lin = RopeConfig::from_json(cfg, dim, maxp, "c").inv_freq(maxp);
  for (size_t i = 0; i < lin.size(); ++i) EXPECT_NEAR(lin[i], base[i] / 4, 2e-6 * base[i] / 4);

  cfg["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  auto dyn_cfg = RopeConfig::from_json(cfg, dim, maxp, "c");
  auto dyn_short = dyn_cfg.inv_freq(100);  // within max_position_embeddings: unscaled
  for (size_t i = 0; i < dyn_short.size(); ++i) EXPECT_EQ(dyn_short[i], def[i]);
  auto dyn = dyn_cfg.inv_freq(3 * maxp);
  const double nb = 500000.0 * std::pow(2.0 * 3 - 1.0, double(dim) / double(dim - 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    double w = 1.0 / std::pow(nb, double(2 * i) / double(dim));
    EXPECT_NEAR(dyn[size_t(i)], w, 1e-5 * w) << i;
  }

  // Llama 3.1: factor 8, low 1, high 4, original 8192.
  cfg["rope_scaling"] = json{{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  auto l3 = RopeConfig::from_json(cfg, dim, 131072, "c").inv_freq(131072);
  int n_high = 0, n_low = 0, n_mid = 0;
  for (size_t i = 0; i < l3.size(); ++i) {
    const double wl = 2 * M_PI / base[i];
    double want;
    if (wl < 8192.0 / 4) {
      want = base[i], ++n_high;
    } else if (wl > 8192.0 / 1) {
      want = base[i] / 8, ++n_low;
    } else {
      const double s = (8192.0 / wl - 1.0) / (4.0 - 1.0);
      want = (1 - s) * base[i] / 8 + s * base[i], ++n_mid;
    }
    EXPECT_NEAR(l3[i], want, 1e-5 * want) << i;
  }
  EXPECT_GT(n_high, 0);
  EXPECT_GT(n_low, 0);
  EXPECT_GT(n_mid, 0);

  // transformers 5 layout: rope_parameters holds rope_theta.
  json v5 = {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}}}};
  auto r5 = RopeConfig::from_json(v5, 64, 256, "c");
  EXPECT_EQ(r5.theta, 1e6);
  EXPECT_EQ(r5.type, RopeConfig::Type::Default);
}

// Rotation convention: x = [a | b] -> [a cos - b sin | b cos + a sin] (rotate_half).
TEST(Rope, RotateHalfConvention) {
  std::vector<float> x = {1, 2, 3, 4};
  const float c[2] = {0.5f, 1.0f}, s[2] = {0.25f, 0.0f};
  rope_apply(x.data(), 1, 2, c, s);
  EXPECT_FLOAT_EQ(x[0], 1 * 0.5f - 3 * 0.25f);
  EXPECT_FLOAT_EQ(x[1], 2.0f);
  EXPECT_FLOAT_EQ(x[2], 3 * 0.5f + 1 * 0.25f);
  EXPECT_FLOAT_EQ(x[3], 4.0f);
}

// Scaled RoPE on real weights: linear with factor 1 and dynamic within max_position_embeddings are
// the unscaled model; dynamic past it (allowed up to factor × max_position_embeddings) differs.
TEST(Transformer, RopeScalingOnWeights) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/reference.safetensors");
  const std::string src = test::data_path("fixtures/hf/llama-tiny");
  auto ids = ids_of(TensorStore::open(src + "/reference.safetensors").get("input_ids"));  // 45 tokens
  auto plain = load_model(src);
  auto want = prefill_logits(*plain, ids);

  auto lin1 = load_model(llama_tiny_with(
      [](json& c) { c["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 1.0}, {"rope_theta", 10000.0}}; },
      "lin1"));
  EXPECT_EQ(prefill_logits(*lin1, ids), want);
  auto lin2 = load_model(llama_tiny_with(
      [](json& c) { c["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 10000.0}}; },
      "lin2"));
  EXPECT_GT(max_abs_diff(prefill_logits(*lin2, ids).data(), want.data(), want.size()), 1e-3f);

  auto dyn = load_model(llama_tiny_with(
      [](json& c) {
        c["max_position_embeddings"] = 32;
        c["rope_parameters"] = {{"rope_type", "dynamic"}, {"factor", 2.0}, {"rope_theta", 10000.0}};
      },
      "dyn"));
  const int64_t V = dyn->vocab_size();
  std::vector<int32_t> first(ids.begin(), ids.begin() + 32);
  auto short_logits = prefill_logits(*dyn, first);
  EXPECT_EQ(short_logits, std::vector<float>(want.begin(), want.begin() + 32 * V));
  auto long_logits = prefill_logits(*dyn, ids);  // 45 > 32: NTK-scaled base for every position
  EXPECT_GT(max_abs_diff(long_logits.data(), want.data(), size_t(32 * V)), 1e-3f);
  // Context limit: factor × max_position_embeddings = 64.
  auto st = dyn->new_state();
  std::vector<int32_t> many(65, 3);
  EXPECT_THROW(dyn->forward(*st, many, 0, nullptr), Error);
  many.resize(64);
  dyn->forward(*st, many, 0, nullptr);
  EXPECT_EQ(st->position(), 64);
}

// Throughput on stories260K (256-token prefill, 200 decoded tokens); printed, never asserted.
TEST(Transformer, Stories260KThroughput) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/model.safetensors");
  auto model = load_model(test::data_path("models/stories260K-hf"));
  const int64_t V = model->vocab_size();
  std::vector<int32_t> prompt(256);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(3 + (i * 37) % 500);
  std::vector<float> logits(static_cast<size_t>(V));
  auto st = model->new_state();
  using clk = std::chrono::steady_clock;
  auto t0 = clk::now();
  model->forward(*st, prompt, 255, logits.data());
  auto t1 = clk::now();
  for (int i = 0; i < 200; ++i) {
    int32_t next = argmax(logits.data(), V);
    model->forward(*st, std::span(&next, 1), 0, logits.data());
  }
  auto t2 = clk::now();
  const double pf = std::chrono::duration<double>(t1 - t0).count();
  const double dc = std::chrono::duration<double>(t2 - t1).count();
  std::printf("[ stories260K ] prefill 256 tokens: %.1f tok/s; decode 200 tokens: %.1f tok/s\n", 256 / pf, 200 / dc);
  EXPECT_EQ(st->position(), 456);
}

}  // namespace
