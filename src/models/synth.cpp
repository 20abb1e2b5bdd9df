#include "models/synth.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

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

// state-spaces' Mamba (v1) releases (mamba-130m ... mamba-2.8b): d_state 16, expand 2, d_conv 4,
// dt_rank = ceil(d_model / 16), vocab 50277 padded to 50280.
constexpr Mamba2Shape kMamba1[] = {
    {"tiny", 64, 2}, {"130m", 768, 24}, {"370m", 1024, 48}, {"790m", 1536, 48}, {"1.4b", 2048, 48}, {"2.8b", 2560, 64}};

// Zyphra's Zamba2 releases. 2.7b: Zyphra/Zamba2 config.json (54 layers, hidden 2560, state 64,
// 2 shared blocks, LoRA rank 128, 32 heads, vocab 32000, hybrid layers as transformers' default
// layers_block_type) with transformers' defaults for the rest (intermediate 4·hidden, mamba head
// dim 64, GELU MLP, MLP adapters only, no RoPE). 1.2b: Zamba2-1.2B as its model card describes it
// (38 layers, hidden 2048, hybrid layers 5, 11, ..., 35, one shared block, LoRA rank 128 on MLP and
// q/k/v, RoPE, state 64, 32 heads, intermediate 8192, mamba head dim 64, vocab 32000); its
// config.json could not be read offline, so these shapes are not checked value by value.
struct Zamba2Shape {
  const char* name;
  int64_t hidden, layers, mem_blocks, heads, intermediate, rank, state, mamba_head_dim, vocab;
  bool attn_adapter, rope;
  std::vector<int64_t> (*hybrid)();
};
std::vector<int64_t> hybrid_tiny() { return {1, 3}; }
std::vector<int64_t> hybrid_1_2b() { return {5, 11, 17, 23, 29, 35}; }
std::vector<int64_t> hybrid_2_7b() { return {6, 12, 18, 24, 30, 36, 42, 47, 51}; }
const Zamba2Shape kZamba2[] = {
    {"tiny", 64, 4, 2, 4, 128, 8, 16, 16, 512, true, true, hybrid_tiny},
    {"1.2b", 2048, 38, 1, 32, 8192, 128, 64, 64, 32000, true, true, hybrid_1_2b},
    {"2.7b", 2560, 54, 2, 32, 10240, 128, 64, 64, 32000, false, false, hybrid_2_7b},
};

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
  if (arch == "mamba")
    for (auto& s : kMamba1) v.push_back(s.name);
  if (arch == "zamba2")
    for (auto& s : kZamba2) v.push_back(s.name);
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

// softplus⁻¹ of dt log-uniform in [1e-3, 1e-1] (transformers' dt_bias initialisation)
float inv_softplus_dt(uint64_t seed, uint64_t s, int64_t i) {
  const float dt = std::exp(std::log(1e-3f) + uniform01(seed, s, uint64_t(i)) * (std::log(1e-1f) - std::log(1e-3f)));
  return dt + std::log(-std::expm1(-dt));
}

int64_t write_mamba1(const std::string& dir, const Mamba2Shape& t, const SynthOptions& o) {
  const bool tiny = std::string(t.name) == "tiny";
  const int64_t D = t.d_model, NL = t.n_layer, V = tiny ? 512 : 50280, N = 16, DI = 2 * D, R = (D + 15) / 16;
  json cfg = {{"architectures", {"MambaForCausalLM"}}, {"model_type", "mamba"}, {"hidden_size", D},
              {"num_hidden_layers", NL}, {"vocab_size", V}, {"state_size", N}, {"intermediate_size", DI},
              {"expand", 2}, {"conv_kernel", 4}, {"time_step_rank", R}, {"use_bias", false},
              {"use_conv_bias", true}, {"hidden_act", "silu"}, {"residual_in_fp32", true},
              {"layer_norm_epsilon", 1e-5}, {"tie_word_embeddings", true}, {"bos_token_id", 0},
              {"eos_token_id", 0}, {"pad_token_id", 0}, {"dtype", dtype_config_name(o.dtype)},
              {"hxq_synthetic", {{"preset", o.preset}, {"seed", o.seed}}}};
  write_file_checked(dir + "/config.json", cfg.dump(2) + "\n");
  CheckpointWriter w(dir, o.max_shard_bytes);
  uint64_t stream = 0;
  int64_t params = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shp, auto f) {
    emit(w, name, o.dtype, shp, f);
    int64_t n = 1;
    for (auto d : shp) n *= d;
    params += n;
  };
  auto one = [](int64_t) { return 1.0f; };
  add("backbone.embeddings.weight", {V, D}, normal_gen(o.seed, stream++, 0.02f));
  for (int64_t l = 0; l < NL; ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".mixer.";
    const uint64_t s0 = stream;
    stream += 8;
    add(p + "A_log", {DI, N}, [N](int64_t i) { return std::log(float(1 + i % N)); });  // S4D-real
    add(p + "D", {DI}, one);
    add(p + "conv1d.bias", {DI}, normal_gen(o.seed, s0 + 1, 0.1f));
    add(p + "conv1d.weight", {DI, 1, 4}, normal_gen(o.seed, s0 + 2, 0.25f));
    add(p + "dt_proj.bias", {DI}, [&, s0](int64_t i) { return inv_softplus_dt(o.seed, s0 + 3, i); });
    add(p + "dt_proj.weight", {DI, R}, normal_gen(o.seed, s0 + 4, 1.0f / std::sqrt(float(R))));
    add(p + "in_proj.weight", {2 * DI, D}, normal_gen(o.seed, s0 + 5, 1.0f / std::sqrt(float(D))));
    add(p + "out_proj.weight", {D, DI}, normal_gen(o.seed, s0 + 6, 1.0f / std::sqrt(float(DI)) / std::sqrt(float(NL))));
    add(p + "x_proj.weight", {R + 2 * N, DI}, normal_gen(o.seed, s0 + 7, 1.0f / std::sqrt(float(DI))));
    add("backbone.layers." + std::to_string(l) + ".norm.weight", {D}, one);
  }
  add("backbone.norm_f.weight", {D}, one);
  w.finish();
  return params;
}

int64_t write_zamba2(const std::string& dir, const Zamba2Shape& t, const SynthOptions& o) {
  const int64_t D = t.hidden, NL = t.layers, V = t.vocab, N = t.state, DI = 2 * D, MH = DI / t.mamba_head_dim;
  const int64_t AD = 2 * D, I = t.intermediate, R = t.rank, CD = DI + 2 * N, P = 2 * DI + 2 * N + MH;
  const auto hybrid = t.hybrid();
  json types = json::array();
  for (int64_t i = 0; i < NL; ++i)
    types.push_back(std::find(hybrid.begin(), hybrid.end(), i) != hybrid.end() ? "hybrid" : "mamba");
  json cfg = {{"architectures", {"Zamba2ForCausalLM"}}, {"model_type", "zamba2"}, {"hidden_size", D},
              {"num_hidden_layers", NL}, {"vocab_size", V}, {"layers_block_type", types},
              {"hybrid_layer_ids", hybrid}, {"mamba_d_state", N}, {"mamba_d_conv", 4}, {"mamba_expand", 2},
              {"mamba_ngroups", 1}, {"n_mamba_heads", MH}, {"mamba_headdim", t.mamba_head_dim},
              {"chunk_size", 256}, {"intermediate_size", I}, {"hidden_act", "gelu"},
              {"num_attention_heads", t.heads}, {"num_key_value_heads", t.heads},
              {"num_mem_blocks", t.mem_blocks}, {"use_shared_mlp_adapter", true},
              {"use_shared_attention_adapter", t.attn_adapter}, {"adapter_rank", R},
              {"use_mem_rope", t.rope}, {"rope_theta", 10000.0}, {"max_position_embeddings", 4096},
              {"rms_norm_eps", 1e-5}, {"time_step_min", 0.001}, {"add_bias_linear", false},
              {"use_conv_bias", true}, {"tie_word_embeddings", true}, {"bos_token_id", 1}, {"eos_token_id", 2},
              {"pad_token_id", 0}, {"dtype", dtype_config_name(o.dtype)},
              {"hxq_synthetic", {{"preset", o.preset}, {"seed", o.seed}}}};
  write_file_checked(dir + "/config.json", cfg.dump(2) + "\n");
  CheckpointWriter w(dir, o.max_shard_bytes);
  uint64_t stream = 0;
  int64_t params = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shp, auto f) {
    emit(w, name, o.dtype, shp, f);
    int64_t n = 1;
    for (auto d : shp) n *= d;
    params += n;
  };
  auto one = [](int64_t) { return 1.0f; };
  const float sd = 1.0f / std::sqrt(float(D)), sa = 1.0f / std::sqrt(float(AD));
  add("model.embed_tokens.weight", {V, D}, normal_gen(o.seed, stream++, 0.02f));
  const int64_t J = int64_t(hybrid.size());
  for (int64_t l = 0; l < NL; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int64_t j = std::find(hybrid.begin(), hybrid.end(), l) - hybrid.begin();
    const std::string mp = j < J ? p + "mamba_decoder." : p;
    const uint64_t s0 = stream;
    stream += 32;
    add(mp + "input_layernorm.weight", {D}, one);
    add(mp + "mamba.A_log", {MH}, [&, s0](int64_t i) { return std::log(1.0f + 15.0f * uniform01(o.seed, s0, uint64_t(i))); });
    add(mp + "mamba.D", {MH}, one);
    add(mp + "mamba.conv1d.bias", {CD}, normal_gen(o.seed, s0 + 1, 0.1f));
    add(mp + "mamba.conv1d.weight", {CD, 1, 4}, normal_gen(o.seed, s0 + 2, 0.25f));
    add(mp + "mamba.dt_bias", {MH}, [&, s0](int64_t i) { return inv_softplus_dt(o.seed, s0 + 3, i); });
    add(mp + "mamba.in_proj.weight", {P, D}, normal_gen(o.seed, s0 + 4, sd));
    add(mp + "mamba.norm.weight", {DI}, one);
    add(mp + "mamba.out_proj.weight", {D, DI}, normal_gen(o.seed, s0 + 5, 1.0f / std::sqrt(float(DI * NL))));
    if (j >= J) continue;
    add(p + "linear.weight", {D, D}, normal_gen(o.seed, s0 + 6, sd));
    // Block b is stored under the first hybrid layer that uses it (as transformers saves tied
    // modules), with the adapters of all the invocations that use it.
    if (j >= t.mem_blocks) continue;
    const std::string b = p + "shared_transformer.";
    add(b + "input_layernorm.weight", {AD}, one);
    add(b + "pre_ff_layernorm.weight", {D}, one);
    add(b + "self_attn.q_proj.weight", {AD, AD}, normal_gen(o.seed, s0 + 7, sa));
    add(b + "self_attn.k_proj.weight", {AD, AD}, normal_gen(o.seed, s0 + 8, sa));
    add(b + "self_attn.v_proj.weight", {AD, AD}, normal_gen(o.seed, s0 + 9, sa));
    add(b + "self_attn.o_proj.weight", {D, AD}, normal_gen(o.seed, s0 + 10, sa));
    add(b + "feed_forward.gate_up_proj.weight", {2 * I, D}, normal_gen(o.seed, s0 + 11, sd));
    add(b + "feed_forward.down_proj.weight", {D, I}, normal_gen(o.seed, s0 + 12, 1.0f / std::sqrt(float(I))));
    for (int64_t k = j; k < J; k += t.mem_blocks) {
      const std::string ks = std::to_string(k);
      const uint64_t s1 = stream;
      stream += 8;
      auto lora = [&](const std::string& m, int64_t in, int64_t out, uint64_t s) {
        add(m + ".0.weight", {R, in}, normal_gen(o.seed, s, 1.0f / std::sqrt(float(in))));
        add(m + ".1.weight", {out, R}, normal_gen(o.seed, s + 1, 0.1f / std::sqrt(float(R))));
      };
      lora(b + "feed_forward.gate_up_proj_adapter_list." + ks, D, 2 * I, s1);
      if (t.attn_adapter) {
        lora(b + "self_attn.linear_q_adapter_list." + ks, AD, AD, s1 + 2);
        lora(b + "self_attn.linear_k_adapter_list." + ks, AD, AD, s1 + 4);
        lora(b + "self_attn.linear_v_adapter_list." + ks, AD, AD, s1 + 6);
      }
    }
  }
  add("model.final_layernorm.weight", {D}, one);
  w.finish();
  return params;
}

}  // namespace

int64_t write_synthetic_model(const std::string& out_dir, const SynthOptions& o) {
  auto presets = synth_presets(o.arch);
  if (presets.empty())
    usage_fail("synth: unsupported --arch {} (supported: mamba, mamba2, zamba2, llama, qwen2)", o.arch);
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
  for (auto& t : kMamba1)
    if (o.arch == "mamba" && o.preset == t.name) {
      int64_t n = write_mamba1(out.path(), t, o);
      out.commit();
      return n;
    }
  for (auto& t : kZamba2)
    if (o.arch == "zamba2" && o.preset == t.name) {
      int64_t n = write_zamba2(out.path(), t, o);
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
