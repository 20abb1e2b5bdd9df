// PEFT LoRA adapters (codec/lora.h): read from adapter_config.json + adapter_model.safetensors
// written here, attached to the Linear layers of every architecture (dense and HXQ bases) and
// checked against dense checkpoints with the deltas merged by this test; `hxq compress
// --merge-lora` against compressing a checkpoint merged by this test; one-line errors; the CLI.
// Also the library calls moved out of the CLI with it (inspect_checkpoint, eos_ids_from_config).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "codec/compress.h"
#include "codec/inspect.h"
#include "codec/lora.h"
#include "core/error.h"
#include "core/mmap.h"
#include "core/op_profile.h"
#include "core/output.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "kernels/hxq_gemm.h"
#include "models/generate.h"
#include "models/linear.h"
#include "models/model.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
namespace fs = std::filesystem;

namespace {

// One adapter module as the test draws it.
struct TestModule {
  std::string name;
  int64_t rank = 0, out = 0, in = 0;
  std::vector<float> A, B;  // [rank, in], [out, rank]
};

// How an adapter is made: rank and alpha per module (PEFT's r / lora_alpha unless overridden),
// rslora, extra adapter_config.json fields (merged over the defaults).
struct Spec {
  int64_t r = 4;
  double alpha = 8;
  bool rslora = false;
  std::function<int64_t(const std::string&)> rank_of;  // null: r
  std::function<double(const std::string&)> alpha_of;  // null: alpha
  json extra = json::object();
  uint32_t seed = 1;
};

double scale_of(const Spec& s, const std::string& name, int64_t rank) {
  const double alpha = s.alpha_of ? s.alpha_of(name) : s.alpha;
  // The scale the engine uses is a float (LoraModule::scale).
  return double(float(s.rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank)));
}

// Random A and B for the modules `names` of the checkpoint in model_dir (shapes from its
// `name.weight`). The delta s·B·A has entries of ~0.02, a sizeable change of the tiny models'
// weights (initializer_range 0.1), so a mis-applied adapter moves the logits by far more than
// any tolerance here.
std::vector<TestModule> draw_modules(const std::string& model_dir, const std::vector<std::string>& names,
                                     const Spec& s) {
  auto store = TensorStore::open(model_dir);
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> na(0.0f, 0.1f), nb(0.0f, 0.05f);
  std::vector<TestModule> v;
  for (auto& n : names) {
    const auto& w = store.get(n + ".weight");
    TestModule m;
    m.name = n;
    m.rank = s.rank_of ? s.rank_of(n) : s.r;
    m.out = w.shape[0];
    m.in = w.shape[1];
    for (int64_t i = 0; i < m.rank * m.in; ++i) m.A.push_back(na(rng));
    for (int64_t i = 0; i < m.out * m.rank; ++i) m.B.push_back(nb(rng));
    v.push_back(std::move(m));
  }
  return v;
}

std::string last_part(const std::string& n) { return n.substr(n.rfind('.') + 1); }

// adapter_config.json as PEFT writes it (the fields that matter here), with spec.extra merged over.
json adapter_config(const Spec& s, const std::vector<TestModule>& mods) {
  std::set<std::string> targets;
  for (auto& m : mods) targets.insert(last_part(m.name));
  json c = {{"peft_type", "LORA"},         {"task_type", "CAUSAL_LM"},     {"r", s.r},
            {"lora_alpha", s.alpha},       {"use_rslora", s.rslora},       {"target_modules", targets},
            {"fan_in_fan_out", false},     {"bias", "none"},               {"modules_to_save", nullptr},
            {"use_dora", false},           {"rank_pattern", json::object()}, {"alpha_pattern", json::object()},
            {"lora_dropout", 0.0},         {"inference_mode", true},       {"base_model_name_or_path", "test"}};
  c.merge_patch(s.extra);
  return c;
}

// Writes dir/adapter_config.json (`config` as text) and dir/adapter_model.safetensors with PEFT's
// tensor names, in `dtype`, plus whatever `extra` adds.
void write_adapter(const std::string& dir, const std::string& config, const std::vector<TestModule>& mods,
                   const std::function<void(SafetensorsWriter&)>& extra = {}, DType dtype = DType::F32) {
  fs::create_directories(dir);
  test::write_file(dir + "/adapter_config.json", config);
  SafetensorsWriter::Options o;
  o.fsync = false;
  SafetensorsWriter w(dir + "/adapter_model.safetensors", o);
  auto put = [&](const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& v) {
    if (dtype == DType::F32) return w.add(name, DType::F32, shape, v.data(), v.size() * 4);
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t b;
      std::memcpy(&b, &v[i], 4);
      h[i] = uint16_t(b >> 16);  // BF16 by truncation: the reader must widen it exactly
    }
    w.add(name, DType::BF16, shape, h.data(), h.size() * 2);
  };
  for (auto& m : mods) {
    put("base_model.model." + m.name + ".lora_A.weight", {m.rank, m.in}, m.A);
    put("base_model.model." + m.name + ".lora_B.weight", {m.out, m.rank}, m.B);
  }
  if (extra) extra(w);
  w.finish();
}

std::string make_adapter(const std::string& dir, const std::string& model_dir, const std::vector<std::string>& names,
                         const Spec& s, std::vector<TestModule>* out = nullptr) {
  auto mods = draw_modules(model_dir, names, s);
  write_adapter(dir, adapter_config(s, mods).dump(2), mods);
  if (out) *out = mods;
  return dir;
}

// W [out, in] += scale · B · A, written out here (double sums, r ascending, one rounding).
void merge_ref(std::vector<float>& W, const TestModule& m, double scale) {
  for (int64_t o = 0; o < m.out; ++o)
    for (int64_t i = 0; i < m.in; ++i) {
      double acc = 0;
      for (int64_t r = 0; r < m.rank; ++r) acc += double(m.B[size_t(o * m.rank + r)]) * double(m.A[size_t(r * m.in + i)]);
      float& w = W[size_t(o * m.in + i)];
      w = float(double(w) + scale * acc);
    }
}

// A dense F32 copy of src (a checkpoint directory) with the adapter's deltas merged by merge_ref.
void write_merged(const std::string& src, const std::string& dst, const std::vector<TestModule>& mods, const Spec& s) {
  std::map<std::string, const TestModule*> by_weight;
  for (auto& m : mods) by_weight[m.name + ".weight"] = &m;
  test::write_edited_checkpoint(src, dst, read_text_file(src + "/config.json"), [&](test::EditedTensor& t) {
    if (auto it = by_weight.find(t.name); it != by_weight.end())
      merge_ref(t.data, *it->second, scale_of(s, it->second->name, it->second->rank));
    return true;
  });
}

std::vector<int32_t> ref_ids(const std::string& model_dir) {
  auto ref = TensorStore::open(model_dir + "/reference.safetensors");
  return test::ids_of(ref.get("input_ids"));
}

std::vector<float> prefill_logits(const Model& m, const std::vector<int32_t>& ids) {
  std::vector<float> out(ids.size() * size_t(m.vocab_size()));
  auto st = m.new_state();
  m.forward(*st, ids, 0, out.data());
  return out;
}

std::unique_ptr<Model> load_with(const std::string& dir, const std::string& lora) {
  LoadOptions o;
  o.lora = lora;
  return load_model(dir, o);
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Every linear module of a fixture that the tests adapt: weights whose names end in one of `suffixes`.
std::vector<std::string> modules_of(const std::string& model_dir, const std::vector<std::string>& suffixes) {
  std::vector<std::string> v;
  for (auto& n : TensorStore::open(model_dir).names())
    for (auto& s : suffixes)
      if (n.size() > s.size() + 7 && n.compare(n.size() - s.size() - 7, s.size() + 7, s + ".weight") == 0)
        v.push_back(n.substr(0, n.size() - 7));
  return v;
}

struct Arch {
  std::string name, fixture;
  std::vector<std::string> suffixes;  // which linears get an adapter
};

std::vector<Arch> archs() {
  return {
      {"llama", "fixtures/hf/llama-tiny",
       {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
        "mlp.down_proj"}},
      {"mamba2", "fixtures/hf/mamba2-tiny", {"mixer.in_proj", "mixer.out_proj"}},
      // its Mamba layers (plain and inside hybrid layers), the hybrid layers' linear, the shared block
      {"zamba2", "fixtures/hf/zamba2-tiny",
       {"mamba.in_proj", "mamba.out_proj", ".linear", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
        "self_attn.o_proj", "feed_forward.gate_up_proj", "feed_forward.down_proj"}},
      {"mamba", "fixtures/hf/mamba-tiny", {"mixer.in_proj", "mixer.x_proj", "mixer.dt_proj", "mixer.out_proj"}},
      {"qwen2", "fixtures/hf/qwen2-tiny", {"self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"}},
  };
}

void PrintTo(const Arch& a, std::ostream* os) { *os << a.name; }

class LoraArch : public ::testing::TestWithParam<Arch> {};

// Base + adapter (not merged) == the dense checkpoint with W + s·B·A written as F32; the adapter
// is attached to exactly its modules, and moves the logits far beyond the tolerance.
TEST_P(LoraArch, AdapterEqualsMergedDense) {
  const auto& a = GetParam();
  HXQ_REQUIRE_DATA(a.fixture + "/reference.safetensors");
  const auto src = test::data_path(a.fixture);
  const auto tmp = test::temp_dir("lora-" + a.name);
  const auto names = modules_of(src, a.suffixes);
  ASSERT_GE(names.size(), a.name == "zamba2" ? 13u : 4u);
  Spec s;
  std::vector<TestModule> mods;
  make_adapter(tmp + "/adapter", src, names, s, &mods);
  write_merged(src, tmp + "/merged", mods, s);

  const auto ids = ref_ids(src);
  auto m = load_with(src, tmp + "/adapter");
  EXPECT_EQ(m->lora_layers(), int64_t(names.size()));
  EXPECT_EQ(m->lora_dir(), tmp + "/adapter");
  const auto got = prefill_logits(*m, ids);
  const auto want = prefill_logits(*load_model(tmp + "/merged"), ids);
  const auto base = prefill_logits(*load_model(src), ids);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), tol::kLoraVsMergedAbs);
  EXPECT_GT(test::max_abs_diff(base.data(), want.data(), got.size()), 100 * tol::kLoraVsMergedAbs);
}

// One token at a time (the decode path: recurrent step / KV cache, decode kernels) with the
// adapter equals the prefill with it.
TEST_P(LoraArch, DecodeEqualsPrefill) {
  const auto& a = GetParam();
  HXQ_REQUIRE_DATA(a.fixture + "/reference.safetensors");
  const auto src = test::data_path(a.fixture);
  const auto tmp = test::temp_dir("lora-dec-" + a.name);
  make_adapter(tmp + "/adapter", src, modules_of(src, a.suffixes), Spec{});
  auto m = load_with(src, tmp + "/adapter");
  auto ids = ref_ids(src);
  ids.resize(20);
  const auto full = prefill_logits(*m, ids);
  const int64_t V = m->vocab_size();
  auto st = m->new_state();
  std::vector<float> step(static_cast<size_t>(V));
  float worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    m->forward(*st, std::span(ids).subspan(t, 1), 0, step.data());
    worst = std::max(worst, test::max_abs_diff(step.data(), full.data() + t * size_t(V), size_t(V)));
  }
  EXPECT_LE(worst, tol::kDecodeVsPrefillAbs);
}

// decode_batch with the adapter: every row equals its sequence's own one-token forward.
TEST_P(LoraArch, DecodeBatchRowsEqualSingleForwards) {
  const auto& a = GetParam();
  HXQ_REQUIRE_DATA(a.fixture + "/reference.safetensors");
  const auto src = test::data_path(a.fixture);
  const auto tmp = test::temp_dir("lora-batch-" + a.name);
  make_adapter(tmp + "/adapter", src, modules_of(src, a.suffixes), Spec{});
  auto m = load_with(src, tmp + "/adapter");
  const int64_t V = m->vocab_size();
  const auto ids = ref_ids(src);
  constexpr int B = 3;
  std::vector<std::unique_ptr<ModelState>> batch, single;
  std::vector<ModelState*> ptrs;
  for (int b = 0; b < B; ++b) {
    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 3 + 4 * b);  // positions 3, 7, 11
    batch.push_back(m->new_state());
    single.push_back(m->new_state());
    m->forward(*batch.back(), prompt, int64_t(prompt.size()), nullptr);
    m->forward(*single.back(), prompt, int64_t(prompt.size()), nullptr);
    ptrs.push_back(batch.back().get());
  }
  std::vector<float> got(size_t(B * V)), one(static_cast<size_t>(V));
  float worst = 0;
  for (int s = 0; s < 3; ++s) {
    const std::vector<int32_t> next{ids[size_t(30 + s)], ids[size_t(34 + s)], ids[size_t(38 + s)]};
    m->decode_batch(ptrs, next, got.data());
    for (int b = 0; b < B; ++b) {
      m->forward(*single[size_t(b)], std::span(next).subspan(size_t(b), 1), 0, one.data());
      worst = std::max(worst, test::max_abs_diff(got.data() + b * V, one.data(), size_t(V)));
    }
  }
  EXPECT_LE(worst, tol::kBatchVsSingleAbs);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraArch, ::testing::ValuesIn(archs()),
                         [](const auto& info) { return info.param.name; });

// The library's merge equals the one written out here, bit for bit (F32 and BF16-stored
// adapters; the BF16 values widen exactly), and the scale is lora_alpha / r as a float.
TEST(LoraMerge, MatchesDoubleReferenceBitForBit) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/config.json");
  const auto src = test::data_path("fixtures/hf/llama-tiny");
  for (DType dt : {DType::F32, DType::BF16}) {
    const auto tmp = test::temp_dir("lora-merge");
    Spec s;
    s.r = 3;
    s.alpha = 5;
    auto mods = draw_modules(src, {"model.layers.0.mlp.down_proj"}, s);
    if (dt == DType::BF16)
      for (auto* v : {&mods[0].A, &mods[0].B})
        for (auto& x : *v) x = bf16_to_f32(uint16_t(std::bit_cast<uint32_t>(x) >> 16));
    write_adapter(tmp, adapter_config(s, mods).dump(), mods, {}, dt);
    const auto a = LoraAdapter::load(tmp);
    ASSERT_EQ(a.modules.size(), 1u);
    const LoraModule& m = *a.modules[0];
    EXPECT_EQ(m.scale, float(5.0 / 3.0));
    EXPECT_EQ(m.A, mods[0].A);
    EXPECT_EQ(m.B, mods[0].B);
    auto store = TensorStore::open(src);
    auto w = test::floats_of(store.get("model.layers.0.mlp.down_proj.weight"));
    auto ref = w;
    lora_merge(m, w.data());
    merge_ref(ref, mods[0], double(m.scale));
    EXPECT_EQ(0, std::memcmp(w.data(), ref.data(), w.size() * 4));
  }
}

// use_rslora: s = lora_alpha / sqrt(r), and the model follows it.
TEST(Lora, RsloraScaling) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/reference.safetensors");
  const auto src = test::data_path("fixtures/hf/llama-tiny");
  const auto tmp = test::temp_dir("lora-rs");
  Spec s;
  s.r = 3;
  s.alpha = 6;
  s.rslora = true;
  std::vector<TestModule> mods;
  make_adapter(tmp + "/adapter", src, modules_of(src, {"q_proj", "v_proj", "down_proj"}), s, &mods);
  const auto a = LoraAdapter::load(tmp + "/adapter");
  for (auto& m : a.modules) EXPECT_EQ(m->scale, float(6.0 / std::sqrt(3.0))) << m->name;
  ASSERT_NE(a.find("model.layers.1.mlp.down_proj"), nullptr);
  EXPECT_EQ(a.find("model.layers.1.mlp.down_proj")->rank, 3);
  EXPECT_EQ(a.find("model.layers.1.mlp.up_proj"), nullptr);
  write_merged(src, tmp + "/merged", mods, s);
  const auto ids = ref_ids(src);
  const auto got = prefill_logits(*load_with(src, tmp + "/adapter"), ids);
  const auto want = prefill_logits(*load_model(tmp + "/merged"), ids);
  EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), tol::kLoraVsMergedAbs);
}

// rank_pattern / alpha_pattern as PEFT reads them: the first key (in file order) matching the end
// of the module name at a '.' boundary, as a regex; other modules keep r / lora_alpha.
TEST(Lora, RankAndAlphaPattern) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/reference.safetensors");
  const auto src = test::data_path("fixtures/hf/llama-tiny");
  const auto tmp = test::temp_dir("lora-pat");
  Spec s;
  s.r = 4;
  s.alpha = 8;
  // "layers.1.mlp.down_proj" before "down_proj": layer 1's down_proj takes 6, layer 0's 2; "proj"
  // matches no module (it must match a whole trailing part); "self_attn\\.[qk]_proj" is a regex.
  s.rank_of = [](const std::string& n) -> int64_t {
    if (n == "model.layers.1.mlp.down_proj") return 6;
    if (n.ends_with("down_proj")) return 2;
    if (n.ends_with("q_proj") || n.ends_with("k_proj")) return 5;
    return 4;
  };
  s.alpha_of = [](const std::string& n) { return n.ends_with("v_proj") ? 3.0 : 8.0; };
  s.extra = json::parse(R"({"rank_pattern": {"layers.1.mlp.down_proj": 6, "down_proj": 2, "proj": 7,
                                             "self_attn\\.[qk]_proj": 5},
                            "alpha_pattern": {"v_proj": 3}})");
  std::vector<TestModule> mods;
  auto names = modules_of(src, {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"});
  auto draws = draw_modules(src, names, s);
  // adapter_config.json with rank_pattern's keys in the order above (json::dump would sort them)
  std::string cfg = adapter_config(s, draws).dump(2);
  const auto key_pos = cfg.find("\"rank_pattern\"");
  ASSERT_NE(key_pos, std::string::npos);
  const auto open = cfg.find('{', key_pos), close = cfg.find('}', open);
  cfg.replace(open, close - open + 1,
              R"({"layers.1.mlp.down_proj": 6, "down_proj": 2, "proj": 7, "self_attn\\.[qk]_proj": 5})");
  write_adapter(tmp + "/adapter", cfg, draws);
  const auto a = LoraAdapter::load(tmp + "/adapter");
  ASSERT_EQ(a.modules.size(), names.size());
  for (auto& m : a.modules) {
    EXPECT_EQ(m->rank, s.rank_of(m->name)) << m->name;
    EXPECT_EQ(m->scale, float(s.alpha_of(m->name) / double(m->rank))) << m->name;
  }
  write_merged(src, tmp + "/merged", draws, s);
  const auto ids = ref_ids(src);
  const auto got = prefill_logits(*load_with(src, tmp + "/adapter"), ids);
  const auto want = prefill_logits(*load_model(tmp + "/merged"), ids);
  EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), tol::kLoraVsMergedAbs);

  // In the other order "down_proj" comes first and gives layer 1's down_proj rank 2: its rank-6
  // tensors are then refused, naming rank_pattern.
  std::string swapped = cfg;
  const std::string first = R"("layers.1.mlp.down_proj": 6, "down_proj": 2)";
  const auto p2 = swapped.find(first);
  ASSERT_NE(p2, std::string::npos);
  swapped.replace(p2, first.size(), R"("down_proj": 2, "layers.1.mlp.down_proj": 6)");
  write_adapter(tmp + "/swapped", swapped, draws);
  const auto e = error_of([&] { LoraAdapter::load(tmp + "/swapped"); });
  EXPECT_NE(e.find("model.layers.1.mlp.down_proj.lora_A.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("rank_pattern"), std::string::npos) << e;
}

// An HXQ base with the adapter equals the HXQ base's decoded weights with the delta merged:
// identical weights on both sides, the codebook products against dense ones (prefill: exact math).
TEST(Lora, HxqBaseEqualsDecodedPlusMerged) {
  // Exact codebook math (as tolerances.h says): a 45-token prefill is in the fast kernels' range.
  HxqMathScope exact(HxqMath::Exact);
  for (const char* f : {"fixtures/hf/llama-tiny", "fixtures/hf/zamba2-tiny"}) {
    HXQ_REQUIRE_DATA(std::string(f) + "/reference.safetensors");
    const auto src = test::data_path(f);
    const auto tmp = test::temp_dir("lora-hxq");
    CompressOptions co;
    co.format = CompressFormat::V2;
    co.fsync = false;
    compress_checkpoint(src, tmp + "/hxq", co);
    decompress_checkpoint(tmp + "/hxq", tmp + "/decoded");
    const auto arch = std::string(f).find("llama") != std::string::npos ? archs()[0] : archs()[2];
    Spec s;
    std::vector<TestModule> mods;
    make_adapter(tmp + "/adapter", src, modules_of(src, arch.suffixes), s, &mods);
    write_merged(tmp + "/decoded", tmp + "/merged", mods, s);
    const auto ids = ref_ids(src);
    auto m = load_with(tmp + "/hxq", tmp + "/adapter");
    EXPECT_EQ(m->lora_layers(), int64_t(mods.size()));
    EXPECT_GT(m->summary().hxq_modules, 0);
    const auto got = prefill_logits(*m, ids);
    const auto want = prefill_logits(*load_model(tmp + "/merged"), ids);
    EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), tol::kLoraHxqVsDecodedMergedAbs) << f;
  }
}

// The layer knows its adapter: name, bytes, profile label; a model's decode bytes count it.
TEST(Lora, LinearNameBytesAndLabel) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/config.json");
  const auto src = test::data_path("fixtures/hf/llama-tiny");
  const auto tmp = test::temp_dir("lora-lin");
  make_adapter(tmp + "/adapter", src, {"model.layers.0.self_attn.q_proj"}, Spec{});
  auto base = load_model(src);
  auto m = load_with(src, tmp + "/adapter");
  EXPECT_EQ(base->lora_layers(), 0);
  EXPECT_EQ(m->lora_layers(), 1);
  const size_t adapter_bytes = (4 * 64 + 64 * 4) * sizeof(float);
  EXPECT_EQ(m->decode_weight_bytes(), base->decode_weight_bytes() + adapter_bytes);
  int seen = 0;
  m->visit_linears([&](Linear& l) {
    EXPECT_FALSE(l.name().empty());
    if (l.name() != "model.layers.0.self_attn.q_proj") {
      EXPECT_EQ(l.lora(), nullptr) << l.name();
      return;
    }
    ++seen;
    ASSERT_NE(l.lora(), nullptr);
    EXPECT_EQ(l.weight_bytes(), size_t(64 * 64 * 4) + adapter_bytes);
    EXPECT_EQ(l.profile_label(1), "dense F32 64x64 +LoRA r=4");
    EXPECT_EQ(l.profile_label(7), "dense F32 64x64 +LoRA r=4 T=7");
    // set_lora checks the shape, naming both
    auto other = std::make_shared<LoraModule>(*l.lora());
    other->name = "x.k_proj";
    other->out = 32;
    const auto e = error_of([&] { l.set_lora(other); });
    EXPECT_NE(e.find("x.k_proj"), std::string::npos) << e;
    EXPECT_NE(e.find("model.layers.0.self_attn.q_proj"), std::string::npos) << e;
  });
  EXPECT_EQ(seen, 1);
  // The untied lm_head is a visited linear, the embedding is not.
  std::set<std::string> names;
  m->visit_linears([&](Linear& l) { names.insert(l.name()); });
  EXPECT_TRUE(names.count("lm_head"));
  EXPECT_FALSE(names.count("model.embed_tokens"));
}

// Forwards of one model with an adapter on several threads at once (the per-thread scratch)
// give the single-threaded results.
TEST(Lora, ConcurrentForwardsAgree) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/reference.safetensors");
  const auto src = test::data_path("fixtures/hf/llama-tiny");
  const auto tmp = test::temp_dir("lora-conc");
  make_adapter(tmp + "/adapter", src, modules_of(src, archs()[0].suffixes), Spec{});
  auto m = load_with(src, tmp + "/adapter");
  const auto ids = ref_ids(src);
  const auto want = prefill_logits(*m, ids);
  std::vector<std::vector<float>> got(3);
  std::vector<std::thread> th;
  for (size_t i = 0; i < got.size(); ++i)
    th.emplace_back([&, i] {
      for (int rep = 0; rep < 3; ++rep) got[i] = prefill_logits(*m, ids);
    });
  for (auto& t : th) t.join();
  for (auto& g : got) EXPECT_EQ(test::max_abs_diff(g.data(), want.data(), want.size()), 0.0f);
}

// compress --merge-lora == compressing a checkpoint merged here, tensor for tensor: helix on
// llama, v2 with a mixed plan on mamba2 (the plan and the shared codebooks see the merged
// weights); a merged module left uncompressed (--skip, and lm_head without --embeddings) is
// written as F32, and the receipt says so.
TEST(LoraCompress, MergeLoraEqualsCompressingMergedCheckpoint) {
  struct C {
    const char* fixture;
    CompressFormat format;
    std::vector<std::string> suffixes;
    std::string skip;
  };
  for (const C& c : {C{"fixtures/hf/llama-tiny", CompressFormat::Helix, archs()[0].suffixes, "model.layers.1.mlp.up_proj"},
                     C{"fixtures/hf/mamba2-tiny", CompressFormat::V2, archs()[1].suffixes,
                       "backbone.layers.1.mixer.out_proj"}}) {
    HXQ_REQUIRE_DATA(std::string(c.fixture) + "/config.json");
    const auto src = test::data_path(c.fixture);
    const auto tmp = test::temp_dir("lora-cmp");
    auto names = modules_of(src, c.suffixes);
    names.push_back("lm_head");
    Spec s;
    std::vector<TestModule> mods;
    make_adapter(tmp + "/adapter", src, names, s, &mods);
    write_merged(src, tmp + "/merged", mods, s);
    CompressOptions co;
    co.format = c.format;
    co.fsync = false;
    if (c.format == CompressFormat::V2) co.bpw = 5.5;
    co.skip = {c.skip};
    const auto want_rc = compress_checkpoint(tmp + "/merged", tmp + "/want", co);
    co.merge_lora = tmp + "/adapter";
    const auto rc = compress_checkpoint(src, tmp + "/got", co);
    const json j = rc.to_json();
    ASSERT_TRUE(j.contains("merged_lora")) << c.fixture;
    EXPECT_EQ(j["merged_lora"]["adapter"], tmp + "/adapter");
    EXPECT_EQ(j["merged_lora"]["modules"], int64_t(names.size()));
    std::vector<std::string> dense = j["merged_lora"]["dense_f32"], want_dense{"lm_head", c.skip};
    std::sort(dense.begin(), dense.end());
    std::sort(want_dense.begin(), want_dense.end());
    EXPECT_EQ(dense, want_dense);
    EXPECT_FALSE(want_rc.to_json().contains("merged_lora"));
    EXPECT_EQ(rc.modules.size(), want_rc.modules.size());
    EXPECT_EQ(rc.modules.size() + 2, names.size());  // all but lm_head and the skipped one
    auto a = TensorStore::open(tmp + "/got"), b = TensorStore::open(tmp + "/want");
    ASSERT_EQ(a.names(), b.names());
    for (auto& n : a.names()) {
      const auto &x = a.get(n), &y = b.get(n);
      EXPECT_EQ(x.dtype, y.dtype) << n;
      EXPECT_EQ(x.shape, y.shape) << n;
      ASSERT_EQ(x.nbytes, y.nbytes) << n;
      EXPECT_EQ(0, std::memcmp(x.data, y.data, x.nbytes)) << n;
    }
    EXPECT_EQ(a.get("lm_head.weight").dtype, DType::F32);
    EXPECT_EQ(read_text_file(tmp + "/got/config.json"), read_text_file(tmp + "/want/config.json"));
  }
}

// --merge-lora refuses, before writing anything: a module the checkpoint lacks, a compressed
// source module, a shape mismatch.
TEST(LoraCompress, MergeErrorsWriteNothing) {
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/config.json");
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/config.json");
  const auto m2 = test::data_path("fixtures/hf/mamba2-tiny");
  const auto llama = test::data_path("fixtures/hf/llama-tiny");
  const auto tmp = test::temp_dir("lora-cmperr");
  make_adapter(tmp + "/llama-adapter", llama, {"model.layers.0.self_attn.q_proj"}, Spec{});
  CompressOptions co;
  co.fsync = false;
  co.format = CompressFormat::V2;
  co.merge_lora = tmp + "/llama-adapter";
  auto e = error_of([&] { compress_checkpoint(m2, tmp + "/out1", co); });
  EXPECT_NE(e.find(tmp + "/llama-adapter"), std::string::npos) << e;
  EXPECT_NE(e.find("'model.layers.0.self_attn.q_proj'"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp + "/out1"));

  co.merge_lora.clear();
  compress_checkpoint(llama, tmp + "/hxq", co);
  co.merge_lora = tmp + "/llama-adapter";
  e = error_of([&] { compress_checkpoint(tmp + "/hxq", tmp + "/out2", co); });
  EXPECT_NE(e.find("cannot merge a LoRA adapter into a compressed weight"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.0.self_attn.q_proj"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp + "/out2"));

  // q_proj's weight exists but the adapter's module is [32, 64]: another base model
  auto mods = draw_modules(llama, {"model.layers.0.self_attn.k_proj"}, Spec{});
  mods[0].name = "model.layers.0.self_attn.q_proj";  // k_proj's [32, 64] under q_proj's [64, 64] name
  write_adapter(tmp + "/wrong", adapter_config(Spec{}, mods).dump(), mods);
  co.merge_lora = tmp + "/wrong";
  e = error_of([&] { compress_checkpoint(llama, tmp + "/out3", co); });
  EXPECT_NE(e.find("[32, 64]"), std::string::npos) << e;
  EXPECT_NE(e.find("[64, 64]"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp + "/out3"));
}

// Each refusal is one hxq::Error line naming the file or directory and the module or field.
TEST(LoraErrors, OneLineNamingFileAndModule) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/config.json");
  HXQ_REQUIRE_DATA("fixtures/hf/qwen2-tiny/config.json");
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/config.json");
  const auto llama = test::data_path("fixtures/hf/llama-tiny");
  const auto qwen = test::data_path("fixtures/hf/qwen2-tiny");
  const auto m2 = test::data_path("fixtures/hf/mamba2-tiny");
  const auto tmp = test::temp_dir("lora-err");
  const Spec s;
  const auto mods = draw_modules(llama, {"model.layers.0.self_attn.q_proj", "lm_head"}, s);
  const std::vector<TestModule> q_only(mods.begin(), mods.begin() + 1);
  int n = 0;
  // Writes an adapter (config patched by `patch`), then expects `load` to fail with all `parts`.
  auto expect = [&](const std::string& what, const json& patch, const std::vector<TestModule>& ms,
                    const std::function<void(SafetensorsWriter&)>& extra, const std::vector<std::string>& parts,
                    const std::string& model = "") {
    const auto dir = tmp + "/a" + std::to_string(n++);
    json cfg = adapter_config(s, ms);
    cfg.merge_patch(patch);
    write_adapter(dir, cfg.dump(2), ms, extra);
    const auto e = error_of([&] {
      if (model.empty()) LoraAdapter::load(dir);
      else load_with(model, dir);
    });
    EXPECT_EQ(e.find('\n'), std::string::npos) << what << ": " << e;
    EXPECT_NE(e, "<no error>") << what;
    for (auto& p : parts) {
      const std::string want = p.rfind("DIR", 0) == 0 ? dir + p.substr(3) : p;  // "DIR..." = the adapter dir
      EXPECT_NE(e.find(want), std::string::npos) << what << ": " << e;
    }
  };
  const json none = json::object();
  expect("missing lora_B", none, q_only,
         [&](SafetensorsWriter& w) {
           const auto& m = mods[1];
           w.add("base_model.model.lm_head.lora_A.weight", DType::F32, {m.rank, m.in}, m.A.data(), m.A.size() * 4);
         },
         {"DIR/adapter_model.safetensors", "'lm_head'", "base_model.model.lm_head.lora_B.weight"});
  expect("rank other than r", json{{"r", 8}}, q_only, {},
         {"DIR/adapter_model.safetensors", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "rank 8"});
  expect("embedding adapter", none, q_only,
         [&](SafetensorsWriter& w) {
           std::vector<float> z(4 * 1024);
           w.add("base_model.model.model.embed_tokens.lora_embedding_A", DType::F32, {4, 1024}, z.data(), z.size() * 4);
         },
         {"DIR/adapter_model.safetensors", "lora_embedding_A", "embedding adapters"});
  expect("unexpected tensor", none, q_only,
         [&](SafetensorsWriter& w) {
           std::vector<float> z(64);
           w.add("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", DType::F32, {64}, z.data(),
                 z.size() * 4);
         },
         {"DIR/adapter_model.safetensors", "lora_magnitude_vector", "unexpected"});
  expect("not in target_modules", json{{"target_modules", {"v_proj"}}}, q_only, {},
         {"DIR/adapter_model.safetensors", "'model.layers.0.self_attn.q_proj'", "target_modules"});
  expect("fan_in_fan_out", json{{"fan_in_fan_out", true}}, q_only, {}, {"DIR/adapter_config.json", "fan_in_fan_out"});
  expect("DoRA", json{{"use_dora", true}}, q_only, {}, {"DIR/adapter_config.json", "DoRA"});
  expect("modules_to_save", json{{"modules_to_save", {"lm_head"}}}, q_only, {},
         {"DIR/adapter_config.json", "modules_to_save"});
  expect("peft_type", json{{"peft_type", "IA3"}}, q_only, {}, {"DIR/adapter_config.json", "IA3"});
  expect("bias", json{{"bias", "all"}}, q_only, {}, {"DIR/adapter_config.json", "bias"});
  expect("bad rank_pattern regex", json{{"rank_pattern", {{"q_proj(", 2}}}}, q_only, {},
         {"DIR/adapter_config.json", "rank_pattern", "q_proj("});
  // At model load: an adapter for another base model, a tied lm_head, a wrong shape.
  expect("unknown module", none, q_only, {}, {"DIR", "'model.layers.0.self_attn.q_proj'", "mamba2"}, m2);
  expect("tied lm_head", none, mods, {}, {"DIR", "'lm_head'", "tied"}, qwen);
  {
    auto wrong = draw_modules(llama, {"model.layers.0.self_attn.k_proj"}, s);
    wrong[0].name = "model.layers.0.self_attn.q_proj";
    expect("wrong shape", none, wrong, {}, {"DIR", "'model.layers.0.self_attn.q_proj'", "[32, 64]", "[64, 64]"}, llama);
  }
  {
    auto emb = draw_modules(llama, {"model.embed_tokens"}, s);
    expect("embedding as a linear", none, emb, {}, {"DIR", "'model.embed_tokens'", "embeddings"}, llama);
  }
  // Files: bad JSON, no weights, only a pickle, no directory.
  const auto d1 = tmp + "/badjson";
  write_adapter(d1, "{\"r\": 4, ", q_only);
  auto e = error_of([&] { LoraAdapter::load(d1); });
  EXPECT_NE(e.find(d1 + "/adapter_config.json: invalid JSON"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
  const auto d2 = tmp + "/noweights";
  fs::create_directories(d2);
  test::write_file(d2 + "/adapter_config.json", adapter_config(s, q_only).dump());
  e = error_of([&] { LoraAdapter::load(d2); });
  EXPECT_NE(e.find(d2 + "/adapter_model.safetensors: missing"), std::string::npos) << e;
  test::write_file(d2 + "/adapter_model.bin", "pickle");
  e = error_of([&] { LoraAdapter::load(d2); });
  EXPECT_NE(e.find(d2 + "/adapter_model.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("safetensors"), std::string::npos) << e;
  e = error_of([&] { load_with(llama, tmp + "/nowhere"); });
  EXPECT_NE(e.find(tmp + "/nowhere"), std::string::npos) << e;
}

// The CLI (on stories260K, which has a tokenizer): --lora on logits equals the library, generate
// and kl take it; errors exit 1 with one "hxq: " line; a missing option argument exits 2;
// compress --merge-lora prints the merge and refuses a module the checkpoint lacks.
TEST(LoraCli, LogitsGenerateKlCompressAndExitCodes) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/reference.safetensors");
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/config.json");
  const auto src = test::data_path("models/stories260K-hf");
  const auto m2 = test::data_path("fixtures/hf/mamba2-tiny");
  const auto tmp = test::temp_dir("lora-cli");
  make_adapter(tmp + "/adapter", src, modules_of(src, archs()[0].suffixes), Spec{});
  auto ids = ref_ids(src);
  ids.resize(10);
  test::write_file(tmp + "/ids.bin", std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * 4));
  auto r = test::run_cli({"logits", "-m", src, "--lora", tmp + "/adapter", "--ids-file", tmp + "/ids.bin", "--out",
                          tmp + "/l.bin"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto got = test::read_f32_file(tmp + "/l.bin");
  const auto want = prefill_logits(*load_with(src, tmp + "/adapter"), ids);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(test::max_abs_diff(got.data(), want.data(), got.size()), 0.0f);

  r = test::run_cli({"generate", "-m", src, "--lora", tmp + "/adapter", "-p", "Once upon a time", "-n", "6", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto gen = json::parse(r.out)["ids"];
  EXPECT_TRUE(gen.size() == 6u || (!gen.empty() && gen.back() == 2)) << r.out;  // 6 tokens or up to EOS
  r = test::run_cli({"kl", "-m", src, "--other", src, "--other-lora", tmp + "/adapter", "--ids-file", tmp + "/ids.bin",
                     "--ctx", "10", "--stride", "5", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_GT(json::parse(r.out)["kl_mean"].get<double>(), 1e-4) << r.out;

  r = test::run_cli({"logits", "-m", m2, "--lora", tmp + "/adapter", "--ids-file", tmp + "/ids.bin", "--out",
                     tmp + "/l2.bin"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("hxq: " + tmp + "/adapter: adapter module '", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(tmp + "/l2.bin"));
  r = test::run_cli({"logits", "-m", src, "--ids-file", tmp + "/ids.bin", "--out", tmp + "/l3.bin", "--lora"});
  EXPECT_EQ(r.code, 2) << r.err;

  r = test::run_cli({"compress", src, tmp + "/merged-hxq", "--merge-lora", tmp + "/adapter", "--no-fsync"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("LoRA merged      : 35 modules from " + tmp + "/adapter\n"), std::string::npos) << r.out;
  r = test::run_cli({"compress", m2, tmp + "/bad", "--merge-lora", tmp + "/adapter", "--no-fsync"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("has no weight"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(tmp + "/bad"));
}

// The library calls the CLI uses: inspect_checkpoint's keys, eos_ids_from_config's rules.
TEST(LoraLibrary, InspectCheckpointAndEosIds) {
  HXQ_REQUIRE_DATA("fixtures/hf/llama-tiny/config.json");
  const auto src = test::data_path("fixtures/hf/llama-tiny");
  const auto tmp = test::temp_dir("lora-insp");
  json d = inspect_checkpoint(src);
  EXPECT_EQ(d["format"], "dense");
  EXPECT_EQ(d["model_type"], "llama");
  EXPECT_EQ(d["total_keys"], 21);
  EXPECT_EQ(d["hxq_modules"], 0);
  EXPECT_FALSE(d.contains("quant_method"));
  EXPECT_EQ(d["dtypes"]["F32"]["tensors"], 21);
  CompressOptions co;
  co.format = CompressFormat::V2;
  co.fsync = false;
  compress_checkpoint(src, tmp + "/hxq", co);
  json h = inspect_checkpoint(tmp + "/hxq");
  EXPECT_EQ(h["format"], "hxq_v2");
  EXPECT_EQ(h["quant_method"], "hxq_v2");
  EXPECT_EQ(h["hxq_modules"], 14);
  EXPECT_EQ(h["modules_by_bits"]["8"], 14);
  for (auto k : {"dir", "files", "file_bytes", "dense_params", "hxq_weights", "hxq_bytes", "hxq_bits_per_weight",
                 "sidecar_entries"})
    EXPECT_TRUE(h.contains(k)) << k;
  const auto r = test::run_cli({"inspect", tmp + "/hxq", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), h);

  EXPECT_EQ(eos_ids_from_config(json{{"eos_token_id", 2}}, 7), std::vector<int32_t>{2});
  EXPECT_EQ(eos_ids_from_config(json{{"eos_token_id", {5, "x", 6}}}, 7), (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(eos_ids_from_config(json{{"eos_token_id", nullptr}}, 7), std::vector<int32_t>{7});
  EXPECT_EQ(eos_ids_from_config(json::object(), std::nullopt), std::vector<int32_t>{});
  // eos_token_ids: config.json's, then generation_config.json's (no repeats), else the tokenizer's
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("hxq-eos-{}", ::getpid());
  std::filesystem::create_directories(dir);
  write_file_checked((dir / "config.json").string(), R"({"eos_token_id": 2})");
  EXPECT_EQ(eos_token_ids(dir.string(), 9), std::vector<int32_t>{2});
  write_file_checked((dir / "generation_config.json").string(), R"({"eos_token_id": [7, 2]})");
  EXPECT_EQ(eos_token_ids(dir.string(), 9), (std::vector<int32_t>{2, 7}));
  write_file_checked((dir / "config.json").string(), R"({"model_type": "llama"})");
  write_file_checked((dir / "generation_config.json").string(), R"({"do_sample": true})");
  EXPECT_EQ(eos_token_ids(dir.string(), 9), std::vector<int32_t>{9});
  write_file_checked((dir / "generation_config.json").string(), R"({"eos_token_id": )");
  EXPECT_THROW(eos_token_ids(dir.string(), 9), Error);
  std::filesystem::remove_all(dir);
}

}  // namespace
