// Zamba2 specifics (references: reference_test): two shared blocks (num_mem_blocks = 2, for
// which there is no transformers fixture) and the order in which invocations use them, bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "io/safetensors.h"
#include "models/model.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
using test::floats_of;
using test::ids_of;
using test::max_abs_diff;

namespace {

const char* kFixture = "fixtures/hf/zamba2-tiny";
const std::string kBlock = "model.layers.1.shared_transformer.";  // hybrid layers 1 and 3

struct Run {
  std::vector<float> logits;
  ForwardTrace trace;
};
Run run(const std::string& dir, const std::vector<int32_t>& ids) {
  auto m = load_model(dir);
  Run r;
  r.logits.resize(ids.size() * size_t(m->vocab_size()));
  auto st = m->new_state();
  m->forward(*st, ids, 0, r.logits.data(), &r.trace);
  return r;
}

// The fixture with num_mem_blocks = 2: block 0 under layer 1 (first used there), block 1 a copy
// under layer 3; `s` multiplies the down_proj (the block's output; a scaled o_proj would be undone
// by the norm after it) of block `perturbed_block` (-1: identical blocks).
void write_two_blocks(const std::string& src, const std::string& dir, int perturbed_block, float s) {
  std::vector<test::EditedTensor> copies;
  auto store = TensorStore::open(src + "/model.safetensors");
  for (auto& n : store.names())
    if (n.rfind(kBlock, 0) == 0) {
      test::EditedTensor t{"model.layers.3.shared_transformer." + n.substr(kBlock.size()), store.get(n).shape,
                           floats_of(store.get(n))};
      if (perturbed_block == 1 && n == kBlock + "feed_forward.down_proj.weight")
        for (auto& v : t.data) v *= s;
      copies.push_back(std::move(t));
    }
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"num_mem_blocks": 2})"),
                                [&](test::EditedTensor& t) {
                                  if (perturbed_block == 0 && t.name == kBlock + "feed_forward.down_proj.weight")
                                    for (auto& v : t.data) v *= s;
                                  return true;
                                },
                                copies);
}

TEST(Zamba2, TwoIdenticalSharedBlocksGiveTheLogitsOfOne) {
  HXQ_REQUIRE_DATA(std::string(kFixture) + "/reference.safetensors");
  const std::string src = test::data_path(kFixture);
  auto ref = TensorStore::open(src + "/reference.safetensors");
  const auto ids = ids_of(ref.get("input_ids"));
  const auto one = run(src, ids);
  const auto dir = test::temp_dir("zamba2-two");
  write_two_blocks(src, dir, -1, 1.0f);
  const auto two = run(dir, ids);
  EXPECT_EQ(two.logits, one.logits);  // the same arithmetic on the same values
  const auto want = floats_of(ref.get("logits"));
  EXPECT_LE(max_abs_diff(two.logits.data(), want.data(), want.size()), tol::kLogitAbs);
}

TEST(Zamba2, InvocationsCycleThroughTheSharedBlocks) {
  HXQ_REQUIRE_DATA(std::string(kFixture) + "/reference.safetensors");
  const std::string src = test::data_path(kFixture);
  auto ref = TensorStore::open(src + "/reference.safetensors");
  const auto ids = ids_of(ref.get("input_ids"));
  const auto one = run(src, ids);
  // Hidden states: [embedding, input of layer 1, 2, 3, final norm]. transformers' rule (cycle over
  // the blocks): the first hybrid layer (1) uses block 0, the second (3) block 1. A change to block
  // 1 therefore first shows in the output of layer 3; a change to block 0 already in layer 1's.
  const auto dir = test::temp_dir("zamba2-order");
  for (int b : {0, 1}) {
    write_two_blocks(src, dir, b, 3.0f);
    const auto r = run(dir, ids);
    ASSERT_EQ(r.trace.hidden_states.size(), 5u);
    EXPECT_EQ(r.trace.hidden_states[1], one.trace.hidden_states[1]) << "block " << b;
    if (b == 1) {
      EXPECT_EQ(r.trace.hidden_states[2], one.trace.hidden_states[2]);
      EXPECT_EQ(r.trace.hidden_states[3], one.trace.hidden_states[3]);
    } else {
      EXPECT_GT(max_abs_diff(r.trace.hidden_states[2].data(), one.trace.hidden_states[2].data(),
                             one.trace.hidden_states[2].size()), 1e-3f);
    }
    EXPECT_GT(max_abs_diff(r.logits.data(), one.logits.data(), one.logits.size()), 1e-3f) << "block " << b;
  }
  // A second block that is not stored anywhere: a one-line error naming the tensor.
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"num_mem_blocks": 2})"), nullptr);
  try {
    load_model(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3.shared_transformer.input_layernorm.weight"),
              std::string::npos) << e.what();
  }
}

void expect_error(const std::string& dir, const std::vector<std::string>& parts) {
  try {
    load_model(dir);
    FAIL() << "no error for " << dir;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    for (auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
  }
}

TEST(Zamba2, BadInputErrorsNameTheTensorOrConfig) {
  HXQ_REQUIRE_DATA(std::string(kFixture) + "/model.safetensors");
  const std::string src = test::data_path(kFixture);
  const auto dir = test::temp_dir("zamba2-bad");
  const std::string cfg = test::patched_config(src, "{}");
  auto drop = [](const std::string& name) { return [name](test::EditedTensor& t) { return t.name != name; }; };
  for (const std::string& n : std::vector<std::string>{"model.layers.3.linear.weight", "model.layers.2.mamba.in_proj.weight",
                              kBlock + "self_attn.linear_k_adapter_list.1.0.weight",
                              kBlock + "feed_forward.gate_up_proj_adapter_list.0.1.weight",
                              kBlock + "pre_ff_layernorm.weight", "model.final_layernorm.weight"}) {
    test::write_edited_checkpoint(src, dir, cfg, drop(n));
    expect_error(dir, {n});
  }
  // Shapes that contradict the config: adapter rank, state size, d_inner, heads.
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"adapter_rank": 4})"), nullptr);
  expect_error(dir, {"adapter_list", "config.json"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"mamba_d_state": 8})"), nullptr);
  expect_error(dir, {"in_proj", "config.json"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"mamba_expand": 3, "mamba_headdim": 24})"),
                                nullptr);
  expect_error(dir, {"in_proj", "config.json"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"intermediate_size": 96})"), nullptr);
  expect_error(dir, {"gate_up_proj", "config.json"});
  // Config errors.
  test::write_edited_checkpoint(
      src, dir, test::patched_config(src, R"({"layers_block_type": ["mamba", "hybrid", "attention", "hybrid"]})"),
      nullptr);
  expect_error(dir, {"config.json", "unknown layers_block_type \"attention\""});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"hybrid_layer_ids": [1, 2]})"), nullptr);
  expect_error(dir, {"config.json", "hybrid_layer_ids"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"layers_block_type": ["mamba", "hybrid"]})"),
                                nullptr);
  expect_error(dir, {"config.json", "layers_block_type"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"hidden_act": "relu"})"), nullptr);
  expect_error(dir, {"config.json", "hidden_act"});
  // The old layer name ("mamba") reads like transformers 5's "linear_attention".
  test::write_edited_checkpoint(
      src, dir, test::patched_config(src, R"({"layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"]})"), nullptr);
  EXPECT_NO_THROW(load_model(dir));
  // The CLI: exit 1 with the message.
  test::write_edited_checkpoint(src, dir, cfg, drop("model.layers.3.linear.weight"));
  const int32_t ids[3] = {1, 2, 3};
  test::write_file(dir + "/ids.i32", std::string(reinterpret_cast<const char*>(ids), sizeof ids));
  auto r = test::run_cli({"logits", "-m", dir, "--ids-file", dir + "/ids.i32", "--out", dir + "/out.f32"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("model.layers.3.linear.weight"), std::string::npos) << r.err;
}

TEST(Zamba2, ContextLimitIsMaxPositionEmbeddings) {
  HXQ_REQUIRE_DATA(std::string(kFixture) + "/model.safetensors");
  auto m = load_model(test::data_path(kFixture));
  auto st = m->new_state();
  std::vector<int32_t> ids(257, 5);  // max_position_embeddings = 256
  std::vector<float> lg(size_t(m->vocab_size()));
  EXPECT_THROW(m->forward(*st, ids, int64_t(ids.size()) - 1, lg.data()), Error);
}

}  // namespace
