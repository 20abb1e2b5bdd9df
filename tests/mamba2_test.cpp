// Mamba2 specifics: the norm-grouping convention and config errors (references: reference_test).
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
