// hxq compress end to end: every fixture round-trips (compress -> load -> logits equal the dense
// model rebuilt from the decoded weights), bit budget, helix-substrate anchors, failure safety.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "codec/compress.h"
#include "codec/hxq_config.h"
#include "codec/hxq_weight.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/mmap.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "kernels/hxq_gemm.h"
#include "models/generate.h"
#include "models/model.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
namespace fs = std::filesystem;

namespace {

std::vector<int32_t> ref_ids(const std::string& model_dir) {
  auto ref = TensorStore::open(model_dir + "/reference.safetensors");
  const auto& t = ref.get("input_ids");
  std::vector<int32_t> v;
  for (int64_t i = 0; i < std::min<int64_t>(t.numel(), 64); ++i) v.push_back(int32_t(reinterpret_cast<const int64_t*>(t.data)[i]));
  return v;
}

std::vector<float> logits_of(const std::string& dir, const std::vector<int32_t>& ids) {
  auto m = load_model(dir);
  std::vector<float> out(ids.size() * size_t(m->vocab_size()));
  auto st = m->new_state();
  m->forward(*st, ids, 0, out.data());
  return out;
}

// Logits of an HXQ checkpoint and of its decoded dense copy (hxq decompress) on the same ids:
// the largest difference and the largest |logit| of the dense model.
struct LogitDiff {
  float err = 0, scale = 0;
};
LogitDiff hxq_vs_decoded(const std::string& hxq_dir, const std::string& scratch, const std::vector<int32_t>& ids) {
  decompress_checkpoint(hxq_dir, scratch + "/dense");
  auto a = logits_of(hxq_dir, ids), b = logits_of(scratch + "/dense", ids);
  EXPECT_EQ(a.size(), b.size());
  LogitDiff d;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    d.err = std::max(d.err, std::fabs(a[i] - b[i]));
    d.scale = std::max(d.scale, std::fabs(b[i]));
  }
  fs::remove_all(scratch + "/dense");
  return d;
}

struct Case {
  std::string dir;
  bool embeddings;
};

class CompressRoundTrip : public ::testing::TestWithParam<Case> {};

TEST_P(CompressRoundTrip, HxqLogitsEqualDecodedDense) {
  const auto& c = GetParam();
  HXQ_REQUIRE_DATA(c.dir + "/reference.safetensors");
  const auto src = test::data_path(c.dir);
  const auto tmp = test::temp_dir("rt");
  CompressOptions o;
  o.embeddings = c.embeddings;
  o.fsync = false;
  auto rc = compress_checkpoint(src, tmp + "/hxq", o);
  EXPECT_GT(rc.modules.size(), 0u);
  for (auto& m : rc.modules) {
    // 8 bits per index + the 256-entry codebook; the sidecar may use what is left up to 8.1
    // bits/weight. Tiny fixture tensors spend more than 0.1 bit/weight on the codebook alone:
    // they get no sidecar at all.
    const double codebook_bits = 8.0 + 256.0 * 32.0 / double(m.rows * m.cols);
    if (codebook_bits > kMaxBitsPerWeight) {
      EXPECT_EQ(m.sidecar, 0) << m.module;
      EXPECT_NEAR(m.bits_per_weight, codebook_bits, 1e-9) << m.module;
    } else {
      EXPECT_LE(m.bits_per_weight, kMaxBitsPerWeight + 1e-9) << m.module;
    }
    EXPECT_GT(m.sqnr_db, 20.0) << m.module;
  }
  EXPECT_LT(rc.output_bytes, rc.input_bytes);
  // The config lists exactly the compressed modules, readable by the HXQ config parser.
  auto q = read_hxq_config(tmp + "/hxq");
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->compressed_modules.size(), rc.modules.size());
  EXPECT_EQ(q->quant_method, "hxq");

  auto ids = ref_ids(src);
  const auto [err, scale] = hxq_vs_decoded(tmp + "/hxq", tmp, ids);
  std::printf("[ %s%s ] HXQ vs decoded dense: max |Δlogit| = %.3g (max |logit| %.3g), %zu modules, %.4f bits/weight\n",
              c.dir.c_str(), c.embeddings ? " +emb" : "", err, scale, rc.modules.size(), rc.bits_per_weight());
  EXPECT_LE(err, tol::kHxqVsDecodedAbs * std::max(1.0f, scale));

  // Compressed models still track the original closely: argmax mostly equal.
  auto orig = logits_of(src, ids), a = logits_of(tmp + "/hxq", ids);
  const int64_t V = int64_t(orig.size() / ids.size());
  int same = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    auto am = [&](const std::vector<float>& v) {
      return std::max_element(v.begin() + ptrdiff_t(t * V), v.begin() + ptrdiff_t((t + 1) * V)) - v.begin();
    };
    same += am(orig) == am(a);
  }
  EXPECT_GE(same, int(ids.size()) * 8 / 10);
  fs::remove_all(tmp);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CompressRoundTrip,
                         ::testing::Values(Case{"fixtures/hf/mamba2-tiny", false}, Case{"fixtures/hf/mamba2-tiny", true},
                                           Case{"fixtures/hf/mamba2-tiny-bf16", true},
                                           Case{"models/mamba2-neox-17m", false}, Case{"models/mamba2-neox-17m", true},
                                           Case{"fixtures/hf/llama-tiny", true}, Case{"fixtures/hf/qwen2-tiny", true},
                                           Case{"fixtures/hf/mamba-tiny", false}, Case{"fixtures/hf/mamba-tiny", true},
                                           Case{"fixtures/hf/zamba2-tiny", false}, Case{"fixtures/hf/zamba2-tiny", true},
                                           Case{"models/stories260K-hf", false}),
                         [](const auto& info) {
                           std::string s = info.param.dir.substr(info.param.dir.rfind('/') + 1) +
                                           (info.param.embeddings ? "_emb" : "");
                           for (auto& ch : s)
                             if (!isalnum(ch)) ch = '_';
                           return s;
                         });

TEST(Compress, CompressedMamba2GeneratesLikeTheOriginal) {
  HXQ_REQUIRE_DATA("models/mamba2-neox-17m/reference.safetensors");
  const auto src = test::data_path("models/mamba2-neox-17m");
  const auto tmp = test::temp_dir("gen");
  CompressOptions o;
  o.fsync = false;
  compress_checkpoint(src, tmp + "/hxq", o);
  auto m = load_model(tmp + "/hxq");
  EXPECT_EQ(m->summary().hxq_modules, 20);
  auto ref = TensorStore::open(src + "/reference.safetensors");
  const auto& g = ref.get("gen_ids");
  std::vector<int32_t> prompt;
  for (int i = 0; i < 5; ++i) prompt.push_back(int32_t(reinterpret_cast<const int64_t*>(g.data)[i]));
  Sampler s({});
  auto st = m->new_state();
  auto r = generate(*m, *st, prompt, 48, s, {});
  ASSERT_EQ(r.ids.size(), 48u);
  int same = 0;
  for (size_t i = 0; i < 48; ++i) same += r.ids[i] == int32_t(reinterpret_cast<const int64_t*>(g.data)[5 + i]);
  std::printf("compressed mamba2-neox-17m: %d of 48 greedy tokens equal to transformers' dense ones\n", same);
  EXPECT_GE(same, 10);
  fs::remove_all(tmp);
}

TEST(Compress, AnchorCheckpointsLoadAndRun) {
  for (std::string a : {"fixtures/anchor-hxq/mamba2-tiny", "fixtures/anchor-hxq/stories260K-hf",
                        "fixtures/anchor-hxq/mamba2-neox-17m"}) {
    if (!test::have_data(a + "/model.safetensors")) GTEST_SKIP() << "no " << a;
    const auto dir = test::data_path(a);
    const auto tmp = test::temp_dir("anchor");
    std::vector<int32_t> ids;
    for (int i = 0; i < 40; ++i) ids.push_back((i * 131 + 7) % 500);
    const auto [err, scale] = hxq_vs_decoded(dir, tmp, ids);
    EXPECT_LE(err, tol::kHxqVsDecodedAbs * std::max(1.0f, scale)) << a;
    auto m = load_model(dir);
    EXPECT_GT(m->summary().hxq_modules, 0) << a;
    fs::remove_all(tmp);
  }
}

TEST(Compress, RefusesUnsafeOutputsAndLeavesNothingOnFailure) {
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/model.safetensors");
  const auto src = test::data_path("fixtures/hf/mamba2-tiny");
  const auto tmp = test::temp_dir("unsafe");
  CompressOptions o;
  o.fsync = false;
  compress_checkpoint(src, tmp + "/out", o);
  EXPECT_THROW(compress_checkpoint(src, tmp + "/out", o), Error);  // exists, no overwrite
  o.overwrite = true;
  EXPECT_NO_THROW(compress_checkpoint(src, tmp + "/out", o));
  EXPECT_THROW(compress_checkpoint(tmp + "/out", tmp + "/again", o), Error);  // already HXQ
  EXPECT_FALSE(fs::exists(tmp + "/again"));
  CompressOptions none = o;
  none.only = {"no.such.module*"};
  EXPECT_THROW(compress_checkpoint(src, tmp + "/none", none), Error);
  EXPECT_FALSE(fs::exists(tmp + "/none"));
  // A truncated input fails cleanly and leaves no output.
  fs::create_directories(tmp + "/broken");
  fs::copy_file(src + "/config.json", tmp + "/broken/config.json");
  std::string bytes;
  {
    auto f = MappedFile(src + "/model.safetensors");
    bytes.assign(reinterpret_cast<const char*>(f.data()), f.size() - 100);
  }
  test::write_file(tmp + "/broken/model.safetensors", bytes);
  EXPECT_THROW(compress_checkpoint(tmp + "/broken", tmp + "/bout", o), Error);
  EXPECT_FALSE(fs::exists(tmp + "/bout"));
  for (auto& e : fs::directory_iterator(tmp)) EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos);
  fs::remove_all(tmp);
}

TEST(Compress, GlobAndDefaultSelection) {
  EXPECT_TRUE(glob_match("*.in_proj", "backbone.layers.3.mixer.in_proj"));
  EXPECT_FALSE(glob_match("*.in_proj", "backbone.layers.3.mixer.out_proj"));
  EXPECT_TRUE(glob_match("model.layers.?.mlp.*", "model.layers.1.mlp.up_proj"));
  EXPECT_TRUE(is_default_linear("backbone.layers.0.mixer.in_proj.weight", {10, 4}, false));
  EXPECT_FALSE(is_default_linear("backbone.layers.0.mixer.conv1d.weight", {10, 1, 4}, false));
  EXPECT_FALSE(is_default_linear("backbone.layers.0.mixer.norm.weight", {10}, false));
  EXPECT_FALSE(is_default_linear("backbone.embeddings.weight", {10, 4}, false));
  EXPECT_TRUE(is_default_linear("backbone.embeddings.weight", {10, 4}, true));
  EXPECT_TRUE(is_default_linear("lm_head.weight", {10, 4}, true));
  EXPECT_FALSE(is_default_linear("model.norm.weight", {4}, true));
  // Mamba1: every projection; Zamba2: the shared block and per-layer linear, not its LoRA adapters.
  for (const char* n : {"backbone.layers.0.mixer.x_proj.weight", "backbone.layers.0.mixer.dt_proj.weight",
                        "model.layers.1.linear.weight", "model.layers.1.shared_transformer.self_attn.q_proj.weight",
                        "model.layers.1.shared_transformer.feed_forward.gate_up_proj.weight"})
    EXPECT_TRUE(is_default_linear(n, {10, 4}, false)) << n;
  EXPECT_FALSE(is_default_linear("backbone.layers.0.mixer.A_log", {10, 4}, false));
  EXPECT_FALSE(is_default_linear("model.layers.1.shared_transformer.self_attn.linear_q_adapter_list.0.0.weight",
                                 {8, 128}, false));
  EXPECT_FALSE(is_default_linear(
      "model.layers.1.shared_transformer.feed_forward.gate_up_proj_adapter_list.1.1.weight", {256, 8}, false));
  EXPECT_FALSE(is_default_linear("model.layers.0.self_attn.q_proj.lora_A.weight", {8, 64}, false));
}

}  // namespace

// --codebook-precision bf16: every codebook entry is a BF16 value, entries ascending, every
// index the nearest rounded centroid, the Error sidecar the largest new errors; for F32, BF16 and
// Lloyd sources alike.
TEST(CompressBf16Codebook, CodebookExactIndicesNearestSidecarLargest) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  const int64_t R = 37, C = 211;
  std::vector<float> w(size_t(R * C));
  for (auto& x : w) x = nd(rng);
  std::vector<float> wb(w.size());  // BF16-representable copy
  for (size_t i = 0; i < w.size(); ++i) wb[i] = bf16_to_f32(f32_to_bf16(w[i]));
  for (int variant = 0; variant < 3; ++variant) {
    EncodeOptions o;
    o.codebook_precision = CodebookPrecision::Bf16;
    o.sidecar_fraction = 0.01;
    const std::vector<float>& src = variant == 1 ? wb : w;
    if (variant == 1) o.source_dtype = DType::BF16;
    if (variant == 2) o.codebook = CodebookMethod::Lloyd;
    const HxqTensor t = encode(src.data(), R, C, o);
    ASSERT_EQ(t.codebook.size(), 256u);
    EXPECT_TRUE(codebook_is_bf16_exact(t.codebook.data(), 256)) << variant;
    int k = 1;  // distinct entries (the tail repeats the last one)
    while (k < 256 && t.codebook[size_t(k)] != t.codebook[size_t(k - 1)]) ++k;
    for (int j = k; j < 256; ++j) EXPECT_EQ(t.codebook[size_t(j)], t.codebook[size_t(k - 1)]);
    EXPECT_TRUE(std::is_sorted(t.codebook.begin(), t.codebook.end()));
    std::vector<double> err(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      ASSERT_LT(int(t.indices[i]), k);
      ASSERT_EQ(t.indices[i], nearest_index(src[i], t.codebook.data(), k)) << variant << " element " << i;
      err[i] = std::fabs(double(src[i]) - double(t.codebook[t.indices[i]]));
    }
    const size_t budget = size_t(std::floor(o.sidecar_fraction * double(src.size())));
    ASSERT_EQ(t.sidecar_pos.size(), budget) << variant;
    double min_in = 1e300, max_out = 0;
    std::vector<bool> in(src.size(), false);
    for (size_t s = 0; s < budget; ++s) {
      in[size_t(t.sidecar_pos[s])] = true;
      EXPECT_EQ(t.sidecar_val[s], src[size_t(t.sidecar_pos[s])]);
      if (s) EXPECT_LT(t.sidecar_pos[s - 1], t.sidecar_pos[s]);
      min_in = std::min(min_in, err[size_t(t.sidecar_pos[s])]);
    }
    for (size_t i = 0; i < src.size(); ++i)
      if (!in[i]) max_out = std::max(max_out, err[i]);
    EXPECT_GE(min_in, max_out) << variant;
    // The weight built from it takes the two-plane kernel path.
    EXPECT_TRUE(HxqWeight::from_tensor(t)->view().codebook_bf16_exact);
    // Default precision is unchanged and not flagged (these normal weights are not BF16-exact).
    EncodeOptions d = o;
    d.codebook_precision = CodebookPrecision::F32;
    if (variant == 0) EXPECT_FALSE(HxqWeight::from_tensor(encode(src.data(), R, C, d))->view().codebook_bf16_exact);
  }
}

// End to end: a bf16-codebook checkpoint records the precision, loads with BF16-exact views and
// its logits equal those of the decoded dense model (same tolerance as the default round trip).
TEST(CompressBf16Codebook, RoundTripLogitsEqualDecodedDense) {
  for (const char* rel : {"fixtures/hf/mamba2-tiny", "models/mamba2-neox-17m"}) {
    HXQ_REQUIRE_DATA(std::string(rel) + "/reference.safetensors");
    const auto src = test::data_path(rel);
    const auto tmp = test::temp_dir("b16");
    CompressOptions o;
    o.fsync = false;
    o.encode.codebook_precision = CodebookPrecision::Bf16;
    auto rc = compress_checkpoint(src, tmp + "/hxq", o);
    ASSERT_GT(rc.modules.size(), 0u);
    auto cfg = parse_json_file(tmp + "/hxq/config.json");
    EXPECT_EQ(cfg["quantization_config"]["hxq_codebook_precision"], "bf16");
    auto q = read_hxq_config(tmp + "/hxq");
    ASSERT_TRUE(q.has_value());
    auto store = TensorStore::open(tmp + "/hxq");
    for (auto& m : rc.modules) {
      auto hw = HxqWeight::load(store, m.module);
      EXPECT_TRUE(hw->view().codebook_bf16_exact) << m.module;
    }
    const auto [err, scale] = hxq_vs_decoded(tmp + "/hxq", tmp, ref_ids(src));
    EXPECT_LE(err, tol::kHxqVsDecodedAbs * std::max(1.0f, scale)) << rel;
    fs::remove_all(tmp);
  }
}
