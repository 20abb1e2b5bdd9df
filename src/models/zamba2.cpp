#include "models/zamba2.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <mutex>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "models/blocks.h"
#include "models/weights.h"

namespace hxq {

namespace {

// A LoRA adapter x ↦ up(down(x)) (transformers' nn.Sequential of two bias-free Linears).
struct Lora {
  Linear down, up;
  bool present() const { return up.out_features() > 0; }
};

// One shared transformer block (Zamba2AttentionDecoderLayer) and, per invocation j, its adapters.
struct SharedBlock {
  std::string prefix;             // where its tensors are stored
  std::vector<float> in_norm;     // [2·hidden]
  std::vector<float> pre_ff_norm;  // [hidden]
  Linear q, k, v, o, gate_up, down;
};

// The adapters of invocation j (of the block j mod num_mem_blocks).
struct Invocation {
  Lora q, k, v, gate_up;
};

struct Layer {
  std::vector<float> norm_w;  // the Mamba layer's input_layernorm [hidden]
  Mamba2Mixer mixer;
  Linear linear;              // hybrid layers: shared block output → Mamba input [hidden, hidden]
  int64_t invocation = -1;    // hybrid layers: index into hybrid_ids
};

// Buffers of a pass over the layers (not part of the state proper).
struct Zamba2Buffers {
  std::vector<float> emb, h, xn, xin, out, logits, cat, xa, q, k, v, att, o, f, gu, m, dn, tr, lora_t, lora_y, cos, sin;
  Mamba2Scratch scratch;
  // decode_batch: per sequence, one layer's conv window and SSM state, its KV cache and position
  std::vector<float*> conv, ssm;
  std::vector<const KVCache*> kv;
  std::vector<int64_t> pos;
};

class Zamba2State final : public ModelState {
 public:
  Zamba2State(const Zamba2Config& c)
      : cache(c.mamba), kv(int64_t(c.hybrid_ids.size()), c.kv_heads, c.head_dim, c.max_position) {}
  Zamba2State(const Zamba2State& o)  // the state proper (the KV cache up to pos), not the buffers
      : cache(o.cache), kv(o.kv.layers, o.kv.kvh, o.kv.hd, o.kv.max_ctx), pos(o.pos) {
    kv.copy_prefix(o.kv, o.pos);
  }
  void reset() override {
    cache.reset();
    pos = 0;
  }
  int64_t position() const override { return pos; }
  size_t bytes() const override { return cache.bytes() + kv.bytes(); }
  std::unique_ptr<ModelState> clone() const override { return std::make_unique<Zamba2State>(*this); }
  void copy_from(const ModelState& other) override {
    const auto& o = state_as<Zamba2State>(other, "copy_from");
    if (o.cache.conv.size() != cache.conv.size() || o.cache.ssm.size() != cache.ssm.size() ||
        o.kv.layers != kv.layers || o.kv.kvh != kv.kvh || o.kv.hd != kv.hd)
      fail("copy_from: a state of another model");
    cache.conv = o.cache.conv;  // same sizes: no allocation
    cache.ssm = o.cache.ssm;
    kv.copy_prefix(o.kv, o.pos);
    pos = o.pos;
  }

  Mamba2Cache cache;
  KVCache kv;  // one layer per invocation of a shared block
  int64_t pos = 0;
  Zamba2Buffers buf;
};

float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * float(M_SQRT1_2))); }
float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
float silu(float x) { return x / (1.0f + std::exp(-x)); }

class Zamba2Model final : public Model {
 public:
  Zamba2Model(const std::string& dir, Zamba2Config cfg) : cfg_(std::move(cfg)), store_(TensorStore::open(dir)) {
    const auto& c = cfg_;
    const int64_t D = c.hidden, AD = c.attn_dim(), qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
    io_ = EmbeddingHead::load(store_, {"model.embed_tokens"}, c.vocab, D, c.tie_embeddings, EmbeddingHead::kTieWins);
    final_norm_ = load_vector(store_, "model.final_layernorm.weight", D);
    const int64_t J = int64_t(c.hybrid_ids.size());
    // Block b is stored under the first hybrid layer that uses it (transformers saves tied
    // modules once); a checkpoint with a copy under every hybrid layer reads the same.
    for (int64_t b = 0; b < std::min(c.mem_blocks, std::max<int64_t>(J, 1)) && J > 0; ++b) {
      SharedBlock B;
      for (int64_t j = b; j < J && B.prefix.empty(); j += c.mem_blocks) {
        const std::string p = "model.layers." + std::to_string(c.hybrid_ids[size_t(j)]) + ".shared_transformer.";
        if (store_.contains(p + "input_layernorm.weight")) B.prefix = p;
      }
      if (B.prefix.empty())
        fail("{}: missing tensor 'model.layers.{}.shared_transformer.input_layernorm.weight' (shared block {} of "
             "num_mem_blocks = {})", store_.location(), c.hybrid_ids[size_t(b)], b, c.mem_blocks);
      const std::string& p = B.prefix;
      B.in_norm = load_vector(store_, p + "input_layernorm.weight", AD);
      B.pre_ff_norm = load_vector(store_, p + "pre_ff_layernorm.weight", D);
      B.q = load_linear_checked(store_, p + "self_attn.q_proj", qd, AD);
      B.k = load_linear_checked(store_, p + "self_attn.k_proj", kvd, AD);
      B.v = load_linear_checked(store_, p + "self_attn.v_proj", kvd, AD);
      B.o = load_linear_checked(store_, p + "self_attn.o_proj", D, qd);
      B.gate_up = load_linear_checked(store_, p + "feed_forward.gate_up_proj", 2 * c.intermediate, D, c.bias);
      B.down = load_linear_checked(store_, p + "feed_forward.down_proj", D, c.intermediate, c.bias);
      blocks_.push_back(std::move(B));
    }
    for (int64_t j = 0; j < J; ++j) {
      const SharedBlock& B = blocks_[size_t(c.block_of(j))];
      const std::string js = std::to_string(j);
      Invocation inv;
      if (c.attn_adapter) {
        inv.q = lora(B.prefix + "self_attn.linear_q_adapter_list." + js + ".", AD, qd);
        inv.k = lora(B.prefix + "self_attn.linear_k_adapter_list." + js + ".", AD, kvd);
        inv.v = lora(B.prefix + "self_attn.linear_v_adapter_list." + js + ".", AD, kvd);
      }
      // transformers' Zamba2MLP always adds its adapters; checkpoints without use_shared_mlp_adapter
      // and without the tensors run without them.
      const std::string mp = B.prefix + "feed_forward.gate_up_proj_adapter_list." + js + ".";
      if (c.mlp_adapter || has_linear(store_, mp + "0")) inv.gate_up = lora(mp, D, 2 * c.intermediate);
      invocations_.push_back(std::move(inv));
    }
    for (int64_t i = 0; i < c.layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      Layer L;
      const std::string mp = c.hybrid[size_t(i)] ? p + "mamba_decoder." : p;
      L.norm_w = load_vector(store_, mp + "input_layernorm.weight", D);
      L.mixer = Mamba2Mixer::load(store_, mp + "mamba.", c.mamba);
      if (c.hybrid[size_t(i)]) {
        L.linear = load_linear_checked(store_, p + "linear", D, D);
        L.invocation = int64_t(std::find(c.hybrid_ids.begin(), c.hybrid_ids.end(), i) - c.hybrid_ids.begin());
      }
      layers_.push_back(std::move(L));
    }
    if (c.rope_on) inv_freq_ = c.rope.inv_freq(c.max_position);
  }

  ModelSummary summary() const override {
    ModelSummary s;
    s.arch = "zamba2";
    s.layers = cfg_.layers;
    s.hidden = cfg_.hidden;
    s.vocab = cfg_.vocab;
    s.weight_bytes = store_.total_bytes();
    io_.count(s);
    auto count = [&](const Linear& l) {
      s.params += l.in_features() * l.out_features() + (l.has_bias() ? l.out_features() : 0);
      if (l.compressed()) s.hxq_modules++;
      if (l.fast_decode_kernel()) s.hxq_fast_modules++;
    };
    for (auto& B : blocks_) {
      for (const Linear* l : {&B.q, &B.k, &B.v, &B.o, &B.gate_up, &B.down}) count(*l);
      s.params += int64_t(B.in_norm.size() + B.pre_ff_norm.size());
    }
    for (auto& inv : invocations_)
      for (const Lora* a : {&inv.q, &inv.k, &inv.v, &inv.gate_up})
        if (a->present()) {
          count(a->down);
          count(a->up);
        }
    for (auto& L : layers_) {
      s.params += L.mixer.params() + int64_t(L.norm_w.size());
      s.hxq_modules += int64_t(L.mixer.in_proj.compressed()) + int64_t(L.mixer.out_proj.compressed());
      s.hxq_fast_modules +=
          int64_t(L.mixer.in_proj.fast_decode_kernel()) + int64_t(L.mixer.out_proj.fast_decode_kernel());
      if (L.invocation >= 0) count(L.linear);
    }
    s.params += cfg_.hidden;
    return s;
  }

  // Per token: the head, every Mamba mixer, and per invocation its shared block, adapters and linear.
  uint64_t decode_weight_bytes() const override {
    uint64_t b = io_.head().weight_bytes();
    for (auto& L : layers_) {
      b += L.mixer.weight_bytes();
      if (L.invocation < 0) continue;
      b += L.linear.weight_bytes();
      const SharedBlock& B = blocks_[size_t(cfg_.block_of(L.invocation))];
      for (const Linear* l : {&B.q, &B.k, &B.v, &B.o, &B.gate_up, &B.down}) b += l->weight_bytes();
      const Invocation& inv = invocations_[size_t(L.invocation)];
      for (const Lora* a : {&inv.q, &inv.k, &inv.v, &inv.gate_up})
        if (a->present()) b += a->down.weight_bytes() + a->up.weight_bytes();
    }
    return b;
  }

  // The shared blocks' layers once each, their per-invocation adapters, the Mamba layers' and the
  // hybrid layers' `linear`, an untied head.
  void visit_linears(FnRef<void(Linear&)> fn) override {
    for (auto& B : blocks_)
      for (Linear* l : {&B.q, &B.k, &B.v, &B.o, &B.gate_up, &B.down}) fn(*l);
    for (auto& inv : invocations_)
      for (Lora* a : {&inv.q, &inv.k, &inv.v, &inv.gate_up})
        if (a->present()) {
          fn(a->down);
          fn(a->up);
        }
    for (auto& L : layers_) {
      fn(L.mixer.in_proj);
      fn(L.mixer.out_proj);
      if (L.invocation >= 0) fn(L.linear);
    }
    if (io_.separate) fn(io_.lm_head);
  }

  std::unique_ptr<ModelState> new_state() const override { return std::make_unique<Zamba2State>(cfg_); }

  void forward(ModelState& state_base, std::span<const int32_t> ids, int64_t logits_from, float* logits,
               ForwardTrace* trace) const override {
    auto& st = dynamic_cast<Zamba2State&>(state_base);
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size()), D = c.hidden, pos0 = st.pos;
    if (T == 0) return;
    if (logits && (logits_from < 0 || logits_from > T)) fail("forward: logits_from {} outside [0, {}]", logits_from, T);
    if (pos0 + T > c.max_position)
      fail("{}: context of {} tokens exceeds the model's limit of {} (max_position_embeddings in config.json)",
           store_.location(), pos0 + T, c.max_position);
    Zamba2State* seq = &st;
    layers({&seq, 1}, ids, st.buf, trace);
    st.pos += T;
    if (logits && logits_from < T)
      head_logits(io_.head(), st.buf.xn.data() + logits_from * D, T - logits_from, c.vocab, logits, st.buf.logits);
  }

  // The layers on B rows, one token of each sequence: the linears, norms and LoRA adapters on all
  // rows, RoPE, the KV cache and attention, and the Mamba mixers' recurrences per sequence.
  void decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, float* logits) const override {
    const auto& c = cfg_;
    const int64_t B = int64_t(states.size());
    check_decode_batch(states, ids, c.vocab, c.max_position, store_.location());
    if (B == 0) return;
    std::lock_guard lock(batch_mu_);
    batch_st_.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) {
      const Zamba2State& st = *(batch_st_[size_t(b)] = &state_as<Zamba2State>(*states[size_t(b)], "decode_batch"));
      if (!st.cache.fits(c.mamba) || st.kv.layers != int64_t(c.hybrid_ids.size()) || st.kv.kvh != c.kv_heads ||
          st.kv.hd != c.head_dim || st.kv.max_ctx != c.max_position)
        fail("decode_batch: a state of another model");
    }
    layers(batch_st_, ids, batch_, nullptr);
    for (Zamba2State* st : batch_st_) st->pos += 1;
    if (logits) head_logits(io_.head(), batch_.xn.data(), B, c.vocab, logits, batch_.logits);
  }

 private:
  Lora lora(const std::string& p, int64_t in, int64_t out) const {
    Lora a;
    a.down = load_linear_checked(store_, p + "0", cfg_.adapter_rank, in);
    a.up = load_linear_checked(store_, p + "1", out, cfg_.adapter_rank);
    return a;
  }

  // y [T, out] += up(down(x [T, in])) when the adapter is present.
  void add_lora(const Lora& a, const float* x, int64_t T, float* y, Zamba2Buffers& w) const {
    if (!a.present()) return;
    float* t = grow(w.lora_t, T * a.down.out_features());
    float* u = grow(w.lora_y, T * a.up.out_features());
    a.down.forward(x, T, t);
    a.up.forward(t, T, u);
    for (int64_t i = 0; i < T * a.up.out_features(); ++i) y[i] += u[i];
  }

  // The final-norm output of the T = ids.size() rows in w.xn [T, hidden]. The rows are the tokens
  // of one sequence when seqs has one state, else row t is one token of sequence seqs[t].
  void layers(std::span<Zamba2State* const> seqs, std::span<const int32_t> ids, Zamba2Buffers& w,
              ForwardTrace* trace) const {
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size()), D = c.hidden, half = c.head_dim / 2;
    const bool one = seqs.size() == 1;
    float* emb = grow(w.emb, T * D);  // the original embedding, an input of every shared block
    float* h = grow(w.h, T * D);
    float* xn = grow(w.xn, T * D);
    float* xin = grow(w.xin, T * D);
    float* out = grow(w.out, T * D);
    io_.embed(ids, c.vocab, emb);
    std::copy_n(emb, T * D, h);
    for (Zamba2State* st : seqs)
      if (!c.hybrid_ids.empty()) st->kv.reserve(st->pos + (one ? T : 1), st->pos);
    if (c.rope_on) {  // cos/sin row t: row t's position
      if (one) {
        rope_tables(inv_freq_, seqs[0]->pos, T, w.cos, w.sin);
      } else {
        grow(w.cos, T * half);
        grow(w.sin, T * half);
        for (int64_t t = 0; t < T; ++t)
          rope_table_row(inv_freq_, seqs[size_t(t)]->pos, w.cos.data() + t * half, w.sin.data() + t * half);
      }
    }
    if (!one) {
      w.conv.resize(seqs.size());
      w.ssm.resize(seqs.size());
      w.kv.resize(seqs.size());
      w.pos.resize(seqs.size());
      for (size_t b = 0; b < seqs.size(); ++b) {
        w.kv[b] = &seqs[b]->kv;
        w.pos[b] = seqs[b]->pos;
      }
    }
    for (int64_t li = 0; li < c.layers; ++li) {
      // transformers records each layer's input (entry 0 = the embedding)
      if (trace) trace->hidden_states.emplace_back(h, h + T * D);
      const Layer& L = layers_[size_t(li)];
      const float* mamba_in = h;
      if (L.invocation >= 0) {  // hybrid: h + linear(shared_block(concat(h, emb)))
        shared_block(L.invocation, seqs, w, h, emb, T);
        L.linear.forward(w.dn.data(), T, w.tr.data());
        for (int64_t i = 0; i < T * D; ++i) xin[i] = h[i] + w.tr[size_t(i)];
        mamba_in = xin;
      }
      add_rmsnorm_rows(const_cast<float*>(mamba_in), nullptr, T, D, L.norm_w.data(), c.rms_eps, xn);
      if (one) {
        L.mixer.forward(c.mamba, seqs[0]->cache.conv_at(li), seqs[0]->cache.ssm_at(li), xn, T, out, w.scratch);
      } else {
        for (size_t b = 0; b < seqs.size(); ++b) {
          w.conv[b] = seqs[b]->cache.conv_at(li);
          w.ssm[b] = seqs[b]->cache.ssm_at(li);
        }
        L.mixer.decode(c.mamba, w.conv.data(), w.ssm.data(), xn, T, out, w.scratch);
      }
      for (int64_t i = 0; i < T * D; ++i) h[i] += out[i];  // residual: the layer's input h, not mamba_in
    }
    add_rmsnorm_rows(h, nullptr, T, D, final_norm_.data(), c.rms_eps, xn);
    if (trace) trace->hidden_states.emplace_back(xn, xn + T * D);  // and the final-norm output last
  }

  // Invocation j of its shared block on (h, emb) [T, hidden] (rows as layers() describes them);
  // the result (before the layer's `linear`) in w.dn [T, hidden]:
  //   x = rmsnorm(concat(h, emb));  q, k, v = proj(x) + adapter_j(x);  rope(q, k)
  //   a = o_proj(softmax(q·Kᵀ / sqrt(head_dim / 2)) · V)       (KV cache of invocation j)
  //   f = rmsnorm(a);  (g, u) = gate_up(f) + adapter_j(f);  dn = down(act(g) · u)
  void shared_block(int64_t j, std::span<Zamba2State* const> seqs, Zamba2Buffers& w, const float* h, const float* emb,
                    int64_t T) const {
    const auto& c = cfg_;
    const SharedBlock& B = blocks_[size_t(c.block_of(j))];
    const Invocation& inv = invocations_[size_t(j)];
    const int64_t D = c.hidden, AD = c.attn_dim(), H = c.heads, G = c.kv_heads, hd = c.head_dim, I = c.intermediate;
    const int64_t qd = H * hd, kvd = G * hd;
    const bool one = seqs.size() == 1;
    float* cat = grow(w.cat, T * AD);
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(h + t * D, D, cat + t * AD);
      std::copy_n(emb + t * D, D, cat + t * AD + D);
    }
    float* xa = grow(w.xa, T * AD);
    add_rmsnorm_rows(cat, nullptr, T, AD, B.in_norm.data(), c.rms_eps, xa);
    float* q = grow(w.q, T * qd);
    float* k = grow(w.k, T * kvd);
    float* v = grow(w.v, T * kvd);
    B.q.forward(xa, T, q);
    B.k.forward(xa, T, k);
    B.v.forward(xa, T, v);
    add_lora(inv.q, xa, T, q, w);
    add_lora(inv.k, xa, T, k, w);
    add_lora(inv.v, xa, T, v, w);
    const int64_t half = hd / 2;
    for (int64_t t = 0; t < T; ++t) {
      if (c.rope_on) {
        rope_apply(q + t * qd, H, half, w.cos.data() + t * half, w.sin.data() + t * half);
        rope_apply(k + t * kvd, G, half, w.cos.data() + t * half, w.sin.data() + t * half);
      }
      KVCache& kv = seqs[one ? 0 : size_t(t)]->kv;
      const int64_t p = one ? seqs[0]->pos + t : seqs[size_t(t)]->pos;
      for (int64_t g = 0; g < G; ++g) {
        std::copy_n(k + t * kvd + g * hd, hd, kv.k_at(j, g, p));
        std::copy_n(v + t * kvd + g * hd, hd, kv.v_at(j, g, p));
      }
    }
    float* att = grow(w.att, T * qd);
    const float scale = float(std::pow(double(hd) / 2.0, -0.5));
    if (one) causal_attention(q, T, H, seqs[0]->kv, j, seqs[0]->pos, scale, att);
    else decode_attention(q, T, H, w.kv.data(), w.pos.data(), j, scale, att);
    float* o = grow(w.o, T * D);
    B.o.forward(att, T, o);
    float* f = grow(w.f, T * D);
    add_rmsnorm_rows(o, nullptr, T, D, B.pre_ff_norm.data(), c.rms_eps, f);
    float* gu = grow(w.gu, T * 2 * I);
    B.gate_up.forward(f, T, gu);
    add_lora(inv.gate_up, f, T, gu, w);
    float* m = grow(w.m, T * I);
    for (int64_t t = 0; t < T; ++t) {
      const float* g = gu + t * 2 * I;
      float* mr = m + t * I;
      switch (c.act) {
        case Zamba2Config::Act::Gelu: for (int64_t i = 0; i < I; ++i) mr[i] = gelu(g[i]) * g[I + i]; break;
        case Zamba2Config::Act::GeluTanh: for (int64_t i = 0; i < I; ++i) mr[i] = gelu_tanh(g[i]) * g[I + i]; break;
        case Zamba2Config::Act::Silu: for (int64_t i = 0; i < I; ++i) mr[i] = silu(g[i]) * g[I + i]; break;
      }
    }
    grow(w.dn, T * D);
    grow(w.tr, T * D);
    B.down.forward(m, T, w.dn.data());
  }

  Zamba2Config cfg_;
  TensorStore store_;
  EmbeddingHead io_;
  std::vector<float> final_norm_;
  std::vector<SharedBlock> blocks_;
  std::vector<Invocation> invocations_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;
  // decode_batch's buffers, reused from call to call (one caller at a time).
  mutable std::mutex batch_mu_;
  mutable std::vector<Zamba2State*> batch_st_;
  mutable Zamba2Buffers batch_;
};

// transformers' default layers_block_type (the Zamba2-2.7B layout).
std::vector<std::string> default_block_types() {
  std::vector<std::string> v{"mamba"};
  for (int r = 0; r < 7; ++r) {
    for (int i = 0; i < 5; ++i) v.push_back("mamba");
    v.push_back("hybrid");
  }
  for (int i = 0; i < 4; ++i) v.push_back("mamba");
  v.push_back("hybrid");
  for (int i = 0; i < 3; ++i) v.push_back("mamba");
  v.push_back("hybrid");
  for (int i = 0; i < 2; ++i) v.push_back("mamba");
  return v;
}

}  // namespace

Zamba2Config Zamba2Config::from_json(const json& j, const std::string& path) {
  Zamba2Config c;
  c.hidden = json_int(j, "hidden_size", path);
  c.layers = json_int(j, "num_hidden_layers", path);
  c.vocab = json_int(j, "vocab_size", path);
  c.intermediate = json_int_or(j, "intermediate_size", 4 * c.hidden, path);
  c.heads = json_int_or(j, "num_attention_heads", 32, path);
  c.kv_heads = json_int_or(j, "num_key_value_heads", c.heads, path);
  c.mem_blocks = json_int_or(j, "num_mem_blocks", 1, path);
  c.adapter_rank = json_int_or(j, "adapter_rank", 128, path);
  c.max_position = json_int_or(j, "max_position_embeddings", 4096, path);
  c.rms_eps = j.contains("rms_norm_eps") && !j["rms_norm_eps"].is_null()
                  ? json_float(j["rms_norm_eps"], path + ": rms_norm_eps")
                  : 1e-5;
  c.mlp_adapter = json_bool_or(j, "use_shared_mlp_adapter", false, path);
  c.attn_adapter = json_bool_or(j, "use_shared_attention_adapter", false, path);
  c.rope_on = json_bool_or(j, "use_mem_rope", false, path);
  c.bias = json_bool_or(j, "add_bias_linear", false, path);
  c.tie_embeddings = json_bool_or(j, "tie_word_embeddings", true, path);
  if (json_bool_or(j, "use_long_context", false, path))
    fail("{}: use_long_context=true (rescaled RoPE) is not supported", path);
  const std::string act = j.contains("hidden_act") && j["hidden_act"].is_string() ? j["hidden_act"].get<std::string>()
                                                                                  : "gelu";
  if (act == "gelu") c.act = Act::Gelu;
  else if (act == "gelu_pytorch_tanh" || act == "gelu_new" || act == "gelu_fast") c.act = Act::GeluTanh;
  else if (act == "silu" || act == "swish") c.act = Act::Silu;
  else fail("{}: hidden_act \"{}\" is not supported (gelu, gelu_pytorch_tanh, silu)", path, act);

  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0 || v > (int64_t(1) << 24)) fail("{}: {} = {} is out of range", path, what, v);
  };
  positive(c.hidden, "hidden_size");
  positive(c.layers, "num_hidden_layers");
  positive(c.vocab, "vocab_size");
  positive(c.intermediate, "intermediate_size");
  positive(c.heads, "num_attention_heads");
  positive(c.kv_heads, "num_key_value_heads");
  positive(c.mem_blocks, "num_mem_blocks");
  positive(c.adapter_rank, "adapter_rank");
  positive(c.max_position, "max_position_embeddings");
  if ((2 * c.hidden) % c.heads) fail("{}: 2 × hidden_size {} is not a multiple of num_attention_heads {}", path, c.hidden, c.heads);
  c.head_dim = 2 * c.hidden / c.heads;
  if (j.contains("attention_head_dim") && json_int(j, "attention_head_dim", path) != c.head_dim)
    fail("{}: attention_head_dim {} != 2 × hidden_size / num_attention_heads = {}", path,
         json_int(j, "attention_head_dim", path), c.head_dim);
  if (c.head_dim % 2) fail("{}: attention head_dim {} is odd", path, c.head_dim);
  if (c.heads % c.kv_heads)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", path, c.heads, c.kv_heads);

  std::vector<std::string> types;
  if (j.contains("layers_block_type") && !j["layers_block_type"].is_null()) {
    const auto& lt = j["layers_block_type"];
    if (!lt.is_array()) fail("{}: layers_block_type must be a list", path);
    for (auto& t : lt) {
      if (!t.is_string()) fail("{}: layers_block_type entry {} is not a string", path, t.dump());
      types.push_back(t.get<std::string>());
    }
  } else {
    types = default_block_types();
  }
  if (int64_t(types.size()) != c.layers)
    fail("{}: layers_block_type has {} entries, num_hidden_layers is {}", path, types.size(), c.layers);
  for (int64_t i = 0; i < c.layers; ++i) {
    const auto& t = types[size_t(i)];
    // transformers 5 writes the Mamba layers as "linear_attention", earlier releases "mamba"
    if (t != "hybrid" && t != "mamba" && t != "linear_attention")
      fail("{}: unknown layers_block_type \"{}\" at layer {} (expected \"mamba\" or \"hybrid\")", path, t, i);
    c.hybrid.push_back(t == "hybrid");
    if (t == "hybrid") c.hybrid_ids.push_back(i);
  }
  if (j.contains("hybrid_layer_ids") && j["hybrid_layer_ids"].is_array()) {
    std::vector<int64_t> ids;
    for (auto& v : j["hybrid_layer_ids"]) ids.push_back(v.is_number_integer() ? v.get<int64_t>() : -1);
    if (ids != c.hybrid_ids) fail("{}: hybrid_layer_ids {} contradicts layers_block_type", path, j["hybrid_layer_ids"].dump());
  }
  if (c.rope_on) {
    c.rope = RopeConfig::from_json(j, c.head_dim, c.max_position, path);
    if (c.rope.type == RopeConfig::Type::Dynamic) fail("{}: \"dynamic\" RoPE is not supported for zamba2", path);
  }

  Mamba2Config& m = c.mamba;  // Zamba2MambaMixer
  m.d_model = c.hidden;
  m.n_layer = c.layers;
  m.vocab = c.vocab;
  m.d_state = json_int_or(j, "mamba_d_state", 64, path);
  m.d_conv = json_int_or(j, "mamba_d_conv", 4, path);
  m.d_inner = json_int_or(j, "mamba_expand", 2, path) * c.hidden;
  m.n_heads = json_int_or(j, "n_mamba_heads", 8, path);
  positive(m.n_heads, "n_mamba_heads");
  m.head_dim = json_int_or(j, "mamba_headdim", m.d_inner / m.n_heads, path);
  m.n_groups = json_int_or(j, "mamba_ngroups", 1, path);
  m.chunk_size = json_int_or(j, "chunk_size", 256, path);
  m.norm_eps = c.rms_eps;
  m.gnorm_eps = 1e-5;      // Zamba2RMSNormGated(eps=1e-5)
  m.grouped_norm = true;   // group_size = intermediate_size / n_groups
  m.conv_bias = true;      // its Conv1d always has a bias (and the prefill path uses it)
  m.proj_bias = c.bias;
  // torch_forward clamps dt from below by time_step_min only (time_step_limit is a CUDA-kernel option)
  m.dt_min = j.contains("time_step_min") && !j["time_step_min"].is_null()
                 ? json_float(j["time_step_min"], path + ": time_step_min")
                 : 0.001;
  m.dt_max = std::numeric_limits<double>::infinity();
  m.tie_embeddings = c.tie_embeddings;
  m.validate(path);
  return c;
}

std::unique_ptr<Model> load_zamba2(const std::string& dir, const json& cfg, const LoadOptions&) {
  auto c = Zamba2Config::from_json(cfg, (std::filesystem::path(dir) / "config.json").string());
  return std::make_unique<Zamba2Model>(dir, std::move(c));
}

}  // namespace hxq
