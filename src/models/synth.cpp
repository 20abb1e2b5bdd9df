#include "models/synth.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/output.h"
#include "core/threadpool.h"
#include "io/checkpoint_writer.h"
#include "io/json.h"

namespace hxq {

namespace {

struct Mamba2Shape {
  const char* name;
  int64_t d_model, n_layer;
};
constexpr Mamba2Shape kMamba2[] = {
    {"tiny", 64, 2}, {"130m", 768, 24}, {"370m", 1024, 48}, {"780m", 1536, 48}, {"1.3b", 2048, 48}, {"2.7b", 2560, 64}};

// Shapes of the public releases (config.json of TinyLlama-1.1B-Chat and Qwen2.5-3B); "tiny"
// presets exist for tests.
struct TransformerShape {
  const char* arch;
  const char* name;
  int64_t hidden, intermediate, layers, heads, kv_heads, vocab, max_pos;
  double rope_theta;
  bool tied, qkv_bias;
};
constexpr TransformerShape kTransformers[] = {
    {"llama", "tiny", 64, 160, 2, 4, 2, 512, 256, 10000.0, false, false},
    {"qwen2", "tiny", 64, 160, 2, 4, 2, 512, 256, 1000000.0, true, true},
    {"llama", "tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000, 2048, 10000.0, false, false},
    {"qwen2", "qwen2.5-3b", 2048, 11008, 36, 16, 2, 151936, 32768, 1000000.0, true, true},
};

// Counter-based generator: value i of stream s depends only on (seed, s, i), so tensors can be
// generated in parallel blocks and the result does not depend on the thread count.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline float uniform01(uint64_t seed, uint64_t stream, uint64_t i) {
  return float((mix(seed ^ mix(stream * 0x100000001b3ull + i)) >> 40) * (1.0 / 16777216.0));
}

// Writes a tensor of n values f(i) in `dtype`, generated in parallel blocks.
template <typename F>
void emit(CheckpointWriter& w, const std::string& name, DType dtype, const std::vector<int64_t>& shape, F&& f) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  w.begin_tensor(name, dtype, shape);
  const int64_t block = int64_t(1) << 22;
  std::vector<char> buf;
  for (int64_t b = 0; b < n; b += block) {
    const int64_t m = std::min(block, n - b);
    buf.resize(size_t(m) * dtype_size(dtype));
    pool().parallel_for(m, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) {
        float v = f(b + i);
        switch (dtype) {
          case DType::F32: std::memcpy(buf.data() + i * 4, &v, 4); break;
          case DType::BF16: { uint16_t h = f32_to_bf16(v); std::memcpy(buf.data() + i * 2, &h, 2); break; }
          case DType::F16: { uint16_t h = f32_to_f16(v); std::memcpy(buf.data() + i * 2, &h, 2); break; }
          default: break;
        }
      }
    }, 1 << 14);
    w.write(buf.data(), buf.size());
    check_interrupted();
  }
  w.end_tensor();
}

}  // namespace

std::vector<std::string> synth_presets(const std::string& arch) {
  std::vector<std::string> v;
  if (arch == "mamba2")
    for (auto& s : kMamba2) v.push_back(s.name);
  for (auto& s : kTransformers)
    if (arch == s.arch) v.push_back(s.name);
  return v;
}

namespace {

const char* dtype_config_name(DType t) {
  return t == DType::F32 ? "float32" : t == DType::F16 ? "float16" : "bfloat16";
}

// Irwin–Hall(4) approximation of a normal distribution, as a function of the element index.
auto normal_gen(uint64_t seed, uint64_t s, float stddev) {
  return [=](int64_t i) {
    float a = 0;
    for (int k = 0; k < 4; ++k) a += uniform01(seed, s, uint64_t(i) * 4 + uint64_t(k));
    return (a - 2.0f) * 1.7320508f * stddev;
  };
}

int64_t write_transformer(const std::string& dir, const TransformerShape& t, const SynthOptions& o) {
  const int64_t D = t.hidden, F = t.intermediate, HD = D / t.heads, KV = t.kv_heads * HD;
  json cfg = {{"architectures", {t.arch == std::string("llama") ? "LlamaForCausalLM" : "Qwen2ForCausalLM"}},
              {"model_type", t.arch}, {"hidden_size", D}, {"intermediate_size", F},
              {"num_hidden_layers", t.layers}, {"num_attention_heads", t.heads},
              {"num_key_value_heads", t.kv_heads}, {"vocab_size", t.vocab},
              {"max_position_embeddings", t.max_pos}, {"rope_theta", t.rope_theta}, {"rms_norm_eps", 1e-6},
              {"tie_word_embeddings", t.tied}, {"hidden_act", "silu"}, {"bos_token_id", 1}, {"eos_token_id", 2},
              {"dtype", dtype_config_name(o.dtype)},
              {"hxq_synthetic", {{"preset", o.preset}, {"seed", o.seed}}}};
  write_file_checked(dir + "/config.json", cfg.dump(2) + "\n");
  CheckpointWriter w(dir, o.max_shard_bytes);
  int64_t params = 0;
  uint64_t stream = 1000;
  auto add = [&](const std::string& name, std::vector<int64_t> shp, auto f) {
    emit(w, name, o.dtype, shp, f);
    int64_t n = 1;
    for (auto d : shp) n *= d;
    params += n;
  };
  auto one = [](int64_t) { return 1.0f; };
  add("model.embed_tokens.weight", {t.vocab, D}, normal_gen(o.seed, stream++, 0.02f));
  for (int64_t l = 0; l < t.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const uint64_t s0 = stream;
    stream += 16;
    const float sd = 1.0f / std::sqrt(float(D)), sf = 1.0f / std::sqrt(float(F));
    add(p + "input_layernorm.weight", {D}, one);
    add(p + "self_attn.q_proj.weight", {D, D}, normal_gen(o.seed, s0, sd));
    add(p + "self_attn.k_proj.weight", {KV, D}, normal_gen(o.seed, s0 + 1, sd));
    add(p + "self_attn.v_proj.weight", {KV, D}, normal_gen(o.seed, s0 + 2, sd));
    if (t.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {D}, normal_gen(o.seed, s0 + 3, 0.1f));
      add(p + "self_attn.k_proj.bias", {KV}, normal_gen(o.seed, s0 + 4, 0.1f));
      add(p + "self_attn.v_proj.bias", {KV}, normal_gen(o.seed, s0 + 5, 0.1f));
    }
    add(p + "self_attn.o_proj.weight", {D, D}, normal_gen(o.seed, s0 + 6, sd / std::sqrt(float(t.layers))));
    add(p + "post_attention_layernorm.weight", {D}, one);
    add(p + "mlp.gate_proj.weight", {F, D}, normal_gen(o.seed, s0 + 7, sd));
    add(p + "mlp.up_proj.weight", {F, D}, normal_gen(o.seed, s0 + 8, sd));
    add(p + "mlp.down_proj.weight", {D, F}, normal_gen(o.seed, s0 + 9, sf / std::sqrt(float(t.layers))));
  }
  add("model.norm.weight", {D}, one);
  if (!t.tied) add("lm_head.weight", {t.vocab, D}, normal_gen(o.seed, stream++, 0.02f));
  w.finish();
  return params;
}

}  // namespace

int64_t write_synthetic_model(const std::string& out_dir, const SynthOptions& o) {
  auto presets = synth_presets(o.arch);
  if (presets.empty()) usage_fail("synth: unsupported --arch {} (supported: mamba2, llama, qwen2)", o.arch);
  if (std::find(presets.begin(), presets.end(), o.preset) == presets.end()) {
    std::string list;
    for (auto& p : presets) list += (list.empty() ? "" : ", ") + p;
    usage_fail("synth: unknown --preset {} for {} (choose one of {})", o.preset, o.arch, list);
  }
  if (o.dtype != DType::BF16 && o.dtype != DType::F32 && o.dtype != DType::F16)
    usage_fail("synth: --dtype must be bf16, f16 or f32");
  AtomicOutputDir out(out_dir, o.overwrite);
  for (auto& t : kTransformers)
    if (o.arch == t.arch && o.preset == t.name) {
      int64_t n = write_transformer(out.path(), t, o);
      out.commit();
      return n;
    }
  const Mamba2Shape* shape = nullptr;
  for (auto& s : kMamba2)
    if (o.preset == s.name) shape = &s;

  const bool tiny = std::string(shape->name) == "tiny";
  const int64_t D = shape->d_model, NL = shape->n_layer, V = tiny ? 512 : 50288, N = tiny ? 16 : 128, HD = tiny ? 16 : 64, DI = 2 * D, H = DI / HD, G = 1;
  const int64_t CD = DI + 2 * G * N, P = 2 * DI + 2 * G * N + H;
  json cfg = {{"architectures", {"Mamba2ForCausalLM"}}, {"model_type", "mamba2"}, {"hidden_size", D},
              {"num_hidden_layers", NL}, {"vocab_size", V}, {"state_size", N}, {"head_dim", HD},
              {"num_heads", H}, {"expand", 2}, {"n_groups", G}, {"conv_kernel", 4}, {"chunk_size", tiny ? 16 : 256},
              {"use_bias", false}, {"use_conv_bias", true}, {"rms_norm", true}, {"residual_in_fp32", true},
              {"layer_norm_epsilon", 1e-5}, {"tie_word_embeddings", true}, {"bos_token_id", 0},
              {"eos_token_id", 0}, {"pad_token_id", 0},
              {"time_step_limit", {0.0, {{"__float__", "Infinity"}}}},
              {"dtype", dtype_config_name(o.dtype)},
              {"hxq_synthetic", {{"preset", o.preset}, {"seed", o.seed}}}};
  write_file_checked(out.file("config.json"), cfg.dump(2) + "\n");

  CheckpointWriter w(out.path(), o.max_shard_bytes);
  uint64_t stream = 0;
  int64_t params = 0;
  auto normal = [&](uint64_t s, float stddev) { return normal_gen(o.seed, s, stddev); };
  auto add = [&](const std::string& name, std::vector<int64_t> shp, auto f) {
    emit(w, name, o.dtype, shp, f);
    int64_t n = 1;
    for (auto d : shp) n *= d;
    params += n;
  };
  add("backbone.embeddings.weight", {V, D}, normal(stream++, 0.02f));
  for (int64_t l = 0; l < NL; ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    const uint64_t s0 = stream;
    stream += 8;
    add(p + "mixer.A_log", {H}, [&, s0](int64_t i) { return std::log(1.0f + 15.0f * uniform01(o.seed, s0, uint64_t(i))); });
    add(p + "mixer.D", {H}, [](int64_t) { return 1.0f; });
    add(p + "mixer.conv1d.bias", {CD}, normal(s0 + 1, 0.1f));
    add(p + "mixer.conv1d.weight", {CD, 1, 4}, normal(s0 + 2, 0.25f));
    add(p + "mixer.dt_bias", {H}, [&, s0](int64_t i) {  // softplus⁻¹ of dt log-uniform in [1e-3, 1e-1]
      float dt = std::exp(std::log(1e-3f) + uniform01(o.seed, s0 + 3, uint64_t(i)) * (std::log(1e-1f) - std::log(1e-3f)));
      return dt + std::log(-std::expm1(-dt));
    });
    add(p + "mixer.in_proj.weight", {P, D}, normal(s0 + 4, 1.0f / std::sqrt(float(D))));
    add(p + "mixer.norm.weight", {DI}, [](int64_t) { return 1.0f; });
    add(p + "mixer.out_proj.weight", {D, DI}, normal(s0 + 5, 1.0f / std::sqrt(float(DI)) / std::sqrt(float(NL))));
    add(p + "norm.weight", {D}, [](int64_t) { return 1.0f; });
  }
  add("backbone.norm_f.weight", {D}, [](int64_t) { return 1.0f; });
  w.finish();
  out.commit();
  return params;
}

}  // namespace hxq
