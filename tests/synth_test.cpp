// hxq synth: synthetic checkpoints load, run and compress; bad presets are usage errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "codec/compress.h"
#include "core/error.h"
#include "models/model.h"
#include "models/synth.h"
#include "test_util.h"

using namespace hxq;

TEST(Synth, TinyPresetsLoadRunAndCompress) {
  for (std::string arch : {"mamba", "mamba2", "zamba2", "llama", "qwen2"}) {
    const auto dir = test::temp_dir("synth-" + arch);
    SynthOptions o;
    o.arch = arch;
    o.preset = "tiny";
    const int64_t params = write_synthetic_model(dir + "/m", o);
    auto m = load_model(dir + "/m");
    EXPECT_EQ(m->summary().params > 0, true);
    EXPECT_GT(params, 0);
    std::vector<int32_t> ids{1, 5, 9, 33, 100, 7, 2, 300};
    std::vector<float> logits(ids.size() * size_t(m->vocab_size()));
    auto st = m->new_state();
    m->forward(*st, ids, 0, logits.data());
    for (float v : logits) ASSERT_TRUE(std::isfinite(v)) << arch;
    CompressOptions co;
    co.fsync = false;
    auto rc = compress_checkpoint(dir + "/m", dir + "/hxq", co);
    EXPECT_GT(rc.modules.size(), 0u) << arch;
    EXPECT_NO_THROW(load_model(dir + "/hxq"));
    // An existing output is refused (no --overwrite).
    EXPECT_THROW(write_synthetic_model(dir + "/m", o), Error);
    std::filesystem::remove_all(dir);
  }
}

TEST(Synth, UnknownArchOrPresetIsUsageError) {
  SynthOptions o;
  o.arch = "gpt2";
  EXPECT_THROW(write_synthetic_model(test::temp_dir("s") + "/x", o), UsageError);
  o.arch = "mamba2";
  o.preset = "7b";
  EXPECT_THROW(write_synthetic_model(test::temp_dir("s") + "/x", o), UsageError);
  EXPECT_EQ(synth_presets("qwen2").size(), 2u);
  EXPECT_EQ(synth_presets("mamba"), (std::vector<std::string>{"tiny", "130m", "370m", "790m", "1.4b", "2.8b"}));
  EXPECT_EQ(synth_presets("zamba2"), (std::vector<std::string>{"tiny", "1.2b", "2.7b"}));
}
