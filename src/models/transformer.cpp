#include "models/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "models/weights.h"

namespace hxq {

namespace {

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// exp(x) for x <= 0 (softmax after subtracting the maximum), written so that loops over it
// vectorise: x = k ln2 + f with |f| <= ln2/2, exp(f) by its degree-7 Taylor polynomial (remainder
// < 6e-9 relative), times 2^k built in the exponent bits. Relative error < 1e-7 (measured over
// [-87, 0]), like libm's expf; below -87 it returns exp(-87) ~ 1.6e-38 rather than less, which is
// harmless next to the maximum's weight of 1.
inline float exp_nonpos(float x) {
  // Clamp x >= -87 on the bits (for x <= 0, a larger bit pattern is a more negative float):
  // an integer select vectorises where a float compare (which may trap) does not.
  uint32_t xb;
  std::memcpy(&xb, &x, 4);
  xb = xb > 0xC2AE0000u ? 0xC2AE0000u : xb;  // 0xC2AE0000 = -87.0f
  std::memcpy(&x, &xb, 4);
  const float kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  float f = x - kf * 0.693145751953125f;  // ln2 split in a high part exact in float ...
  f = f - kf * 1.428606820309417e-06f;   // ... and the rest
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t k = int32_t(kf);
  const uint32_t bits = uint32_t(k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// x[j] = exp(x[j] - mx) for j < n; returns their sum.
float exp_shifted(float* x, int64_t n, float mx) {
  for (int64_t j = 0; j < n; ++j) x[j] = exp_nonpos(x[j] - mx);
  float acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int i = 0; i < 8; ++i) acc[i] += x[j + i];
  float s = 0;
  for (; j < n; ++j) s += x[j];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// y[r] = w ⊙ x[r] / sqrt(mean(x[r]²) + eps) for each row r of x [T, n] (transformers' RMSNorm).
void rmsnorm_rows(const float* x, int64_t T, int64_t n, const float* w, double eps, float* y) {
  auto rows = [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const float* xr = x + t * n;
      float* yr = y + t * n;
      float ss = dot(xr, xr, n);
      float inv = 1.0f / std::sqrt(ss / float(n) + float(eps));
      for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
  };
  if (T * n < (int64_t(1) << 15)) rows(0, T, 0);  // not worth waking the pool
  else pool().parallel_for(T, rows, 8);
}

struct Layer {
  std::vector<float> in_norm, post_norm;  // [hidden]
  Linear q, k, v, o, gate, up, down;
};

// K/V cache: float32 [layer][kv_head][position][head_dim], capacity grown geometrically.
class KVCacheState final : public ModelState {
 public:
  KVCacheState(const TransformerConfig& c, std::vector<float> inv0)
      : layers(c.layers), kvh(c.kv_heads), hd(c.head_dim), max_ctx(c.max_context()), inv_freq0(std::move(inv0)) {
    reset();
  }
  void reset() override {
    pos = 0;
    inv_freq = inv_freq0;
    rope_len = -1;
  }
  int64_t position() const override { return pos; }
  size_t bytes() const override { return (k.size() + v.size()) * sizeof(float); }

  // Makes room for n positions, keeping the first `pos`.
  void reserve(int64_t n) {
    if (n <= cap) return;
    int64_t nc = std::min(max_ctx, std::max({n, 2 * cap, int64_t(64)}));
    const size_t total = size_t(layers * kvh * nc * hd);
    std::vector<float> nk(total), nv(total);
    for (int64_t s = 0; s < layers * kvh; ++s) {
      std::copy_n(k.data() + s * cap * hd, pos * hd, nk.data() + s * nc * hd);
      std::copy_n(v.data() + s * cap * hd, pos * hd, nv.data() + s * nc * hd);
    }
    k.swap(nk);
    v.swap(nv);
    cap = nc;
  }
  float* k_at(int64_t l, int64_t g, int64_t p) { return k.data() + ((l * kvh + g) * cap + p) * hd; }
  float* v_at(int64_t l, int64_t g, int64_t p) { return v.data() + ((l * kvh + g) * cap + p) * hd; }

  const int64_t layers, kvh, hd, max_ctx;
  int64_t cap = 0, pos = 0;
  std::vector<float> k, v;
  // Rotary frequencies in use ("dynamic" RoPE recomputes them as the sequence grows, like
  // transformers' dynamic_rope_update with max_seq_len_cached = rope_len).
  const std::vector<float> inv_freq0;
  std::vector<float> inv_freq;
  int64_t rope_len = -1;
};

class TransformerModel final : public Model {
 public:
  TransformerModel(const std::string& dir, TransformerConfig cfg)
      : cfg_(std::move(cfg)), store_(TensorStore::open(dir)) {
    const auto& c = cfg_;
    const std::string loc = store_.location();
    embedding_ = load_linear(store_, "model.embed_tokens");
    if (embedding_.out_features() < c.vocab || embedding_.in_features() != c.hidden)
      fail("{}: model.embed_tokens shape [{}, {}] does not match vocab_size {} / hidden_size {}", loc,
           embedding_.out_features(), embedding_.in_features(), c.vocab, c.hidden);
    // transformers ties lm_head to the embedding when tie_word_embeddings is true (a stored
    // lm_head.weight is then ignored); without a stored lm_head the embedding is the only choice.
    const bool has_head = store_.contains("lm_head.weight") || is_hxq_module(store_, "lm_head");
    if (has_head && !c.tie_embeddings) {
      lm_head_ = load_linear(store_, "lm_head");
      separate_head_ = true;
      if (lm_head_.in_features() != c.hidden || lm_head_.out_features() < c.vocab)
        fail("{}: lm_head shape [{}, {}] does not match vocab_size {} / hidden_size {}", loc, lm_head_.out_features(),
             lm_head_.in_features(), c.vocab, c.hidden);
    }
    norm_ = load_vector(store_, "model.norm.weight", c.hidden);
    const int64_t qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
    for (int64_t i = 0; i < c.layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      Layer L;
      L.in_norm = load_vector(store_, p + "input_layernorm.weight", c.hidden);
      L.post_norm = load_vector(store_, p + "post_attention_layernorm.weight", c.hidden);
      L.q = linear(p + "self_attn.q_proj", c.qkv_bias, qd, c.hidden);
      L.k = linear(p + "self_attn.k_proj", c.qkv_bias, kvd, c.hidden);
      L.v = linear(p + "self_attn.v_proj", c.qkv_bias, kvd, c.hidden);
      L.o = linear(p + "self_attn.o_proj", c.o_bias, c.hidden, qd);
      L.gate = linear(p + "mlp.gate_proj", c.mlp_bias, c.intermediate, c.hidden);
      L.up = linear(p + "mlp.up_proj", c.mlp_bias, c.intermediate, c.hidden);
      L.down = linear(p + "mlp.down_proj", c.mlp_bias, c.hidden, c.intermediate);
      layers_.push_back(std::move(L));
    }
    inv_freq0_ = c.rope.inv_freq(c.max_position);
  }

  ModelSummary summary() const override {
    ModelSummary s;
    s.arch = cfg_.arch;
    s.layers = cfg_.layers;
    s.hidden = cfg_.hidden;
    s.vocab = cfg_.vocab;
    s.weight_bytes = store_.total_bytes();
    auto count = [&](const Linear& l) {
      s.params += l.in_features() * l.out_features() + (l.has_bias() ? l.out_features() : 0);
      if (l.compressed()) s.hxq_modules++;
    };
    count(embedding_);
    if (separate_head_) count(lm_head_);
    for (auto& L : layers_) {
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) count(*l);
      s.params += int64_t(L.in_norm.size() + L.post_norm.size());
    }
    s.params += cfg_.hidden;
    return s;
  }

  uint64_t decode_weight_bytes() const override {
    uint64_t b = head().weight_bytes();
    for (auto& L : layers_)
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) b += l->weight_bytes();
    return b;
  }

  std::unique_ptr<ModelState> new_state() const override {
    return std::make_unique<KVCacheState>(cfg_, inv_freq0_);
  }

  void forward(ModelState& state_base, std::span<const int32_t> ids, int64_t logits_from, float* logits,
               ForwardTrace* trace) const override {
    auto& st = dynamic_cast<KVCacheState&>(state_base);
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size()), d = c.hidden;
    if (T == 0) return;
    if (logits && (logits_from < 0 || logits_from > T)) fail("forward: logits_from {} outside [0, {}]", logits_from, T);
    const int64_t pos0 = st.pos;
    if (pos0 + T > c.max_context())
      fail("{}: context of {} tokens exceeds the model's limit of {} (max_position_embeddings in config.json)",
           store_.location(), pos0 + T, c.max_context());
    std::vector<float> h(size_t(T * d));
    for (int64_t t = 0; t < T; ++t) {
      int32_t id = ids[size_t(t)];
      if (id < 0 || id >= c.vocab) fail("token id {} outside the vocabulary [0, {})", id, c.vocab);
      embedding_.row(id, h.data() + t * d);
    }
    if (trace) trace->hidden_states.push_back(h);

    update_rope(st, pos0 + T);
    Scratch s;
    rope_tables(st.inv_freq, pos0, T, s.cos, s.sin);
    st.reserve(pos0 + T);

    std::vector<float> xn(size_t(T * d)), out(size_t(T * d));
    for (int64_t li = 0; li < c.layers; ++li) {
      const Layer& L = layers_[size_t(li)];
      rmsnorm_rows(h.data(), T, d, L.in_norm.data(), c.rms_eps, xn.data());
      attention_block(L, li, st, xn.data(), T, out.data(), s);
      for (size_t i = 0; i < h.size(); ++i) h[i] += out[i];
      rmsnorm_rows(h.data(), T, d, L.post_norm.data(), c.rms_eps, xn.data());
      mlp(L, xn.data(), T, out.data(), s);
      for (size_t i = 0; i < h.size(); ++i) h[i] += out[i];
      // transformers records each decoder layer's input (entry 0 = embeddings) and replaces the
      // last layer's output by the final-norm output.
      if (trace && li + 1 < c.layers) trace->hidden_states.push_back(h);
    }
    rmsnorm_rows(h.data(), T, d, norm_.data(), c.rms_eps, xn.data());
    if (trace) trace->hidden_states.push_back(xn);
    st.pos += T;

    if (logits && logits_from < T) {
      const Linear& head_l = head();
      const int64_t rows = T - logits_from;
      if (head_l.out_features() == c.vocab) {
        head_l.forward(xn.data() + logits_from * d, rows, logits);
      } else {  // padded embedding rows beyond vocab_size: compute all, keep the first vocab
        std::vector<float> full(size_t(rows * head_l.out_features()));
        head_l.forward(xn.data() + logits_from * d, rows, full.data());
        for (int64_t r = 0; r < rows; ++r)
          std::copy_n(full.data() + r * head_l.out_features(), c.vocab, logits + r * c.vocab);
      }
    }
  }

 private:
  struct Scratch {
    std::vector<float> cos, sin, q, k, v, att, g, u;
  };

  const Linear& head() const { return separate_head_ ? lm_head_ : embedding_; }

  Linear linear(const std::string& m, bool bias, int64_t out, int64_t in) const {
    Linear l = load_linear(store_, m, bias);
    if (bias && !l.has_bias())
      fail("{}: missing '{}.bias' (config.json asks for {} biases)", store_.location(), m, cfg_.arch);
    if (l.out_features() != out || l.in_features() != in)
      fail("{}: '{}' has shape [{}, {}], expected [{}, {}] from config.json", store_.location(), m, l.out_features(),
           l.in_features(), out, in);
    return l;
  }

  // transformers' dynamic_rope_update: grow the frequencies past the cached length, reset them
  // when a shorter sequence comes after a long one.
  void update_rope(KVCacheState& st, int64_t seq_len) const {
    const auto& c = cfg_;
    if (c.rope.type != RopeConfig::Type::Dynamic) return;
    if (st.rope_len < 0) st.rope_len = c.max_position;
    if (seq_len > st.rope_len) {
      st.inv_freq = c.rope.inv_freq(seq_len);
      st.rope_len = seq_len;
    }
    if (seq_len < c.max_position && st.rope_len > c.max_position) {
      st.inv_freq = inv_freq0_;
      st.rope_len = c.max_position;
    }
  }

  void attention_block(const Layer& L, int64_t li, KVCacheState& st, const float* xn, int64_t T, float* out,
                       Scratch& s) const {
    const auto& c = cfg_;
    const int64_t H = c.heads, G = c.kv_heads, hd = c.head_dim, half = hd / 2;
    const int64_t qd = H * hd, kvd = G * hd, pos0 = st.pos;
    s.q.resize(size_t(T * qd));
    s.k.resize(size_t(T * kvd));
    s.v.resize(size_t(T * kvd));
    L.q.forward(xn, T, s.q.data());
    L.k.forward(xn, T, s.k.data());
    L.v.forward(xn, T, s.v.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* cs = s.cos.data() + t * half;
      const float* sn = s.sin.data() + t * half;
      rope_apply(s.q.data() + t * qd, H, half, cs, sn);
      rope_apply(s.k.data() + t * kvd, G, half, cs, sn);
      for (int64_t g = 0; g < G; ++g) {
        std::copy_n(s.k.data() + t * kvd + g * hd, hd, st.k_at(li, g, pos0 + t));
        std::copy_n(s.v.data() + t * kvd + g * hd, hd, st.v_at(li, g, pos0 + t));
      }
    }

    // softmax(q·K / sqrt(hd) over keys 0..pos) · V, per head and query; head h reads kv head
    // h / (H / G) (transformers' repeat_kv). Work items: (head, block of queries).
    s.att.resize(size_t(T * qd));
    const int64_t QB = 16, nqb = (T + QB - 1) / QB, rep = H / G;
    const float scale = float(1.0 / std::sqrt(double(hd)));
    auto run = [&](int64_t i0, int64_t i1, int) {
      std::vector<float> sc(static_cast<size_t>(pos0 + T)), acc(static_cast<size_t>(hd));
      const float sscale = scale;  // locals: stores to sc[] cannot alias them
      const int64_t hdl = hd;
      for (int64_t it = i0; it < i1; ++it) {
        const int64_t hh = it / nqb, b = it % nqb, g = hh / rep;
        const float* K = st.k_at(li, g, 0);
        const float* V = st.v_at(li, g, 0);
        for (int64_t t = b * QB; t < std::min(T, (b + 1) * QB); ++t) {
          const float* q = s.q.data() + t * qd + hh * hd;
          const int64_t n = pos0 + t + 1;  // causal: keys 0 .. pos0 + t
          float mx = -INFINITY;
          for (int64_t j = 0; j < n; ++j) {
            const float v = dot(q, K + j * hdl, hdl) * sscale;
            sc[size_t(j)] = v;
            mx = std::max(mx, v);
          }
          const float sum = exp_shifted(sc.data(), n, mx);
          std::fill(acc.begin(), acc.end(), 0.0f);
          float* a = acc.data();
          int64_t j = 0;
          for (; j + 4 <= n; j += 4) {  // four keys per pass over acc
            const float w0 = sc[size_t(j)], w1 = sc[size_t(j + 1)], w2 = sc[size_t(j + 2)], w3 = sc[size_t(j + 3)];
            const float *v0 = V + j * hd, *v1 = v0 + hd, *v2 = v1 + hd, *v3 = v2 + hd;
            for (int64_t e = 0; e < hd; ++e) a[e] += (w0 * v0[e] + w1 * v1[e]) + (w2 * v2[e] + w3 * v3[e]);
          }
          for (; j < n; ++j) {
            const float w = sc[size_t(j)];
            const float* vj = V + j * hd;
            for (int64_t e = 0; e < hd; ++e) a[e] += w * vj[e];
          }
          const float inv = 1.0f / sum;
          float* o = s.att.data() + t * qd + hh * hd;
          for (int64_t e = 0; e < hd; ++e) o[e] = acc[size_t(e)] * inv;
        }
      }
    };
    // Waking the pool costs more than a few thousand multiply-adds (decode of small models).
    if (H * T * (pos0 + T) * hd < (int64_t(1) << 16)) run(0, H * nqb, 0);
    else pool().parallel_for(H * nqb, run);
    L.o.forward(s.att.data(), T, out);
  }

  void mlp(const Layer& L, const float* xn, int64_t T, float* out, Scratch& s) const {
    const int64_t I = cfg_.intermediate;
    s.g.resize(size_t(T * I));
    s.u.resize(size_t(T * I));
    L.gate.forward(xn, T, s.g.data());
    L.up.forward(xn, T, s.u.data());
    for (size_t i = 0; i < s.g.size(); ++i) s.g[i] = silu(s.g[i]) * s.u[i];
    L.down.forward(s.g.data(), T, out);
  }

  TransformerConfig cfg_;
  TensorStore store_;
  Linear embedding_, lm_head_;
  bool separate_head_ = false;
  std::vector<float> norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq0_;
};

}  // namespace

TransformerConfig TransformerConfig::from_json(const json& j, const std::string& path) {
  TransformerConfig c;
  c.arch = j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "llama";
  if (c.arch != "llama" && c.arch != "qwen2") fail("{}: model_type \"{}\" is not a llama/qwen2 model", path, c.arch);
  const bool qwen = c.arch == "qwen2";
  c.hidden = json_int(j, "hidden_size", path);
  c.layers = json_int(j, "num_hidden_layers", path);
  c.vocab = json_int(j, "vocab_size", path);
  c.intermediate = json_int(j, "intermediate_size", path);
  c.heads = json_int(j, "num_attention_heads", path);
  c.kv_heads = json_int_or(j, "num_key_value_heads", c.heads, path);
  c.head_dim = json_int_or(j, "head_dim", c.heads > 0 ? c.hidden / c.heads : 0, path);
  c.max_position = json_int_or(j, "max_position_embeddings", qwen ? 32768 : 2048, path);
  c.rms_eps = j.contains("rms_norm_eps") && !j["rms_norm_eps"].is_null()
                  ? json_float(j["rms_norm_eps"], path + ": rms_norm_eps")
                  : 1e-6;
  if (!(c.rms_eps >= 0) || !std::isfinite(c.rms_eps)) fail("{}: rms_norm_eps {} is out of range", path, c.rms_eps);
  c.tie_embeddings = json_bool_or(j, "tie_word_embeddings", false, path);
  if (j.contains("hidden_act") && !j["hidden_act"].is_null()) {
    const auto& a = j["hidden_act"];
    if (!a.is_string() || (a != "silu" && a != "swish"))
      fail("{}: hidden_act {} is not supported (only \"silu\")", path, a.dump());
  }
  if (qwen) {
    c.qkv_bias = true;  // Qwen2Attention: biased q/k/v, unbiased o_proj
    // Sliding-window layers exist only with use_sliding_window and a sliding_window size.
    const bool sw = json_bool_or(j, "use_sliding_window", false, path) && j.contains("sliding_window") &&
                    !j["sliding_window"].is_null();
    if (sw) {
      bool any = false;
      if (j.contains("layer_types") && j["layer_types"].is_array()) {
        for (auto& t : j["layer_types"]) any |= t == "sliding_attention";
      } else {
        any = json_int_or(j, "max_window_layers", 28, path) < c.layers;
      }
      if (any) fail("{}: sliding-window attention (use_sliding_window) is not supported", path);
    }
  } else {
    c.qkv_bias = c.o_bias = json_bool_or(j, "attention_bias", false, path);
    c.mlp_bias = json_bool_or(j, "mlp_bias", false, path);
  }
  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0 || v > (int64_t(1) << 24)) fail("{}: {} = {} is out of range", path, what, v);
  };
  positive(c.hidden, "hidden_size");
  positive(c.layers, "num_hidden_layers");
  positive(c.vocab, "vocab_size");
  positive(c.intermediate, "intermediate_size");
  positive(c.heads, "num_attention_heads");
  positive(c.kv_heads, "num_key_value_heads");
  positive(c.head_dim, "head_dim");
  if (c.max_position <= 0 || c.max_position > (int64_t(1) << 30))
    fail("{}: max_position_embeddings = {} is out of range", path, c.max_position);
  if (c.heads % c.kv_heads)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", path, c.heads, c.kv_heads);
  c.rope = RopeConfig::from_json(j, c.head_dim, c.max_position, path);
  return c;
}

int64_t TransformerConfig::max_context() const {
  if (rope.type == RopeConfig::Type::Dynamic)
    return int64_t(std::min(std::floor(double(max_position) * rope.factor), double(int64_t(1) << 40)));
  return max_position;
}

std::unique_ptr<Model> load_transformer(const std::string& dir, const json& cfg, const LoadOptions&) {
  auto c = TransformerConfig::from_json(cfg, (std::filesystem::path(dir) / "config.json").string());
  return std::make_unique<TransformerModel>(dir, std::move(c));
}

}  // namespace hxq
