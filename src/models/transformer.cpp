#include "models/transformer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <mutex>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "models/blocks.h"
#include "models/weights.h"

namespace hxq {

namespace {

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

// y[r] = w ⊙ x[r] / sqrt(mean(x[r]²) + eps) for each row r of x [T, n] (transformers' RMSNorm).
void rmsnorm_rows(const float* x, int64_t T, int64_t n, const float* w, double eps, float* y) {
  auto rows = [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const float* xr = x + t * n;
      float* yr = y + t * n;
      float ss = dot8(xr, xr, n);
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

// Per-sequence state: the K/V cache and the rotary frequencies in use.
class KVCacheState final : public ModelState {
 public:
  KVCacheState(const TransformerConfig& c, std::vector<float> inv0)
      : kv(c.layers, c.kv_heads, c.head_dim, c.max_context()), inv_freq0(std::move(inv0)) {
    reset();
  }
  KVCacheState(const KVCacheState& o)  // the cache up to pos only, not its capacity
      : kv(o.kv.layers, o.kv.kvh, o.kv.hd, o.kv.max_ctx),
        pos(o.pos),
        inv_freq0(o.inv_freq0),
        inv_freq(o.inv_freq),
        rope_len(o.rope_len) {
    kv.copy_prefix(o.kv, o.pos);
  }
  void reset() override {
    pos = 0;
    inv_freq = inv_freq0;
    rope_len = -1;
  }
  int64_t position() const override { return pos; }
  size_t bytes() const override { return kv.bytes(); }
  std::unique_ptr<ModelState> clone() const override { return std::make_unique<KVCacheState>(*this); }
  void copy_from(const ModelState& other) override {
    const auto& o = state_as<KVCacheState>(other, "copy_from");
    if (o.kv.layers != kv.layers || o.kv.kvh != kv.kvh || o.kv.hd != kv.hd || o.kv.max_ctx != kv.max_ctx ||
        o.inv_freq0 != inv_freq0)
      fail("copy_from: a state of another model");
    kv.copy_prefix(o.kv, o.pos);
    pos = o.pos;
    inv_freq = o.inv_freq;
    rope_len = o.rope_len;
  }
  bool can_truncate() const override { return true; }
  // Positions n.. are dropped (the cache keeps its memory); the rotary state stays.
  bool truncate(int64_t n) override {
    if (n < 0 || n > pos) return false;
    pos = n;
    return true;
  }

  KVCache kv;
  int64_t pos = 0;
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
      if (l.fast_decode_kernel()) s.hxq_fast_modules++;
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

  void visit_linears(FnRef<void(Linear&)> fn) override {
    for (auto& L : layers_)
      for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) fn(*l);
    if (separate_head_) fn(lm_head_);
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
    Buffers w;  // a prompt's buffers live for this call only (states hold none)
    KVCacheState* seq = &st;
    layers({&seq, 1}, ids, w, trace);
    st.pos += T;
    if (logits && logits_from < T) head_logits(head(), w.xn.data() + logits_from * d, T - logits_from, c.vocab, logits, w.logits);
  }

  // The layers on B rows, one token of each sequence: the linears and norms on all rows; RoPE at
  // each sequence's position, its KV cache and attention per sequence.
  void decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, float* logits) const override {
    const auto& c = cfg_;
    const int64_t B = int64_t(states.size());
    check_decode_batch(states, ids, c.vocab, c.max_context(), store_.location());
    if (B == 0) return;
    std::lock_guard lock(batch_mu_);
    batch_st_.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) {
      const KVCacheState& st = *(batch_st_[size_t(b)] = &state_as<KVCacheState>(*states[size_t(b)], "decode_batch"));
      if (st.kv.layers != c.layers || st.kv.kvh != c.kv_heads || st.kv.hd != c.head_dim ||
          st.kv.max_ctx != c.max_context() || st.inv_freq0 != inv_freq0_)
        fail("decode_batch: a state of another model");
    }
    layers(batch_st_, ids, batch_, nullptr);
    for (KVCacheState* st : batch_st_) st->pos += 1;
    if (logits) head_logits(head(), batch_.xn.data(), B, c.vocab, logits, batch_.logits);
  }

 private:
  struct Buffers {
    std::vector<float> h, xn, out, logits, cos, sin, q, k, v, att, g, u;
    // decode_batch: per sequence its KV cache and position
    std::vector<const KVCache*> kv;
    std::vector<int64_t> pos;
  };

  // The final-norm output of the T = ids.size() rows in w.xn [T, hidden]. The rows are the tokens
  // of one sequence when seqs has one state, else row t is one token of sequence seqs[t].
  void layers(std::span<KVCacheState* const> seqs, std::span<const int32_t> ids, Buffers& w,
              ForwardTrace* trace) const {
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size()), d = c.hidden, half = c.head_dim / 2, n = T * d;
    const bool one = seqs.size() == 1;
    w.h.resize(size_t(n));
    float* h = w.h.data();
    for (int64_t t = 0; t < T; ++t) {
      int32_t id = ids[size_t(t)];
      if (id < 0 || id >= c.vocab) fail("token id {} outside the vocabulary [0, {})", id, c.vocab);
      embedding_.row(id, h + t * d);
    }
    if (trace) trace->hidden_states.push_back(w.h);

    for (KVCacheState* st : seqs) update_rope(*st, st->pos + (one ? T : 1));
    if (one) {
      rope_tables(seqs[0]->inv_freq, seqs[0]->pos, T, w.cos, w.sin);
    } else {  // row t: sequence t's frequencies at its position
      w.cos.resize(size_t(T * half));
      w.sin.resize(size_t(T * half));
      for (int64_t t = 0; t < T; ++t)
        rope_table_row(seqs[size_t(t)]->inv_freq, seqs[size_t(t)]->pos, w.cos.data() + t * half, w.sin.data() + t * half);
      w.kv.resize(seqs.size());
      w.pos.resize(seqs.size());
      for (size_t b = 0; b < seqs.size(); ++b) {
        w.kv[b] = &seqs[b]->kv;
        w.pos[b] = seqs[b]->pos;
      }
    }
    for (KVCacheState* st : seqs) st->kv.reserve(st->pos + (one ? T : 1), st->pos);

    w.xn.resize(size_t(n));
    w.out.resize(size_t(n));
    float* xn = w.xn.data();
    float* out = w.out.data();
    for (int64_t li = 0; li < c.layers; ++li) {
      const Layer& L = layers_[size_t(li)];
      rmsnorm_rows(h, T, d, L.in_norm.data(), c.rms_eps, xn);
      attention_block(L, li, seqs, xn, T, out, w);
      for (int64_t i = 0; i < n; ++i) h[i] += out[i];
      rmsnorm_rows(h, T, d, L.post_norm.data(), c.rms_eps, xn);
      mlp(L, xn, T, out, w);
      for (int64_t i = 0; i < n; ++i) h[i] += out[i];
      // transformers records each decoder layer's input (entry 0 = embeddings) and replaces the
      // last layer's output by the final-norm output.
      if (trace && li + 1 < c.layers) trace->hidden_states.push_back(w.h);
    }
    rmsnorm_rows(h, T, d, norm_.data(), c.rms_eps, xn);
    if (trace) trace->hidden_states.push_back(w.xn);
  }

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

  // out [T, hidden] = o_proj(attention(q, k, v)) of layer li, the rows as layers() describes them.
  void attention_block(const Layer& L, int64_t li, std::span<KVCacheState* const> seqs, const float* xn, int64_t T,
                       float* out, Buffers& s) const {
    const auto& c = cfg_;
    const int64_t H = c.heads, G = c.kv_heads, hd = c.head_dim, half = hd / 2;
    const int64_t qd = H * hd, kvd = G * hd;
    const bool one = seqs.size() == 1;
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
      KVCache& kv = seqs[one ? 0 : size_t(t)]->kv;
      const int64_t p = one ? seqs[0]->pos + t : seqs[size_t(t)]->pos;
      for (int64_t g = 0; g < G; ++g) {
        std::copy_n(s.k.data() + t * kvd + g * hd, hd, kv.k_at(li, g, p));
        std::copy_n(s.v.data() + t * kvd + g * hd, hd, kv.v_at(li, g, p));
      }
    }

    // softmax(q·K / sqrt(hd) over keys 0..pos) · V, per head and query.
    s.att.resize(size_t(T * qd));
    const float scale = float(1.0 / std::sqrt(double(hd)));
    if (one) causal_attention(s.q.data(), T, H, seqs[0]->kv, li, seqs[0]->pos, scale, s.att.data());
    else decode_attention(s.q.data(), T, H, s.kv.data(), s.pos.data(), li, scale, s.att.data());
    L.o.forward(s.att.data(), T, out);
  }

  void mlp(const Layer& L, const float* xn, int64_t T, float* out, Buffers& s) const {
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
  // decode_batch's buffers, reused from call to call (one caller at a time).
  mutable std::mutex batch_mu_;
  mutable std::vector<KVCacheState*> batch_st_;
  mutable Buffers batch_;
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
