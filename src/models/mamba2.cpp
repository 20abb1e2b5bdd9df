#include "models/mamba2.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <mutex>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"
#include "kernels/ssd.h"
#include "models/blocks.h"
#include "models/weights.h"

namespace hxq {

namespace {

// Chunk length of the prefill scan (at most the config's chunk_size; the result does not depend
// on it beyond rounding). The intra-chunk product costs T·chunk·head_dim per head, the rest of the
// scan T·d_state·head_dim: 128 measured ~5% faster prefill than 256 (synthetic 370m, 512 tokens).
constexpr int64_t kScanChunk = 128;

class Mamba2State final : public ModelState {
 public:
  explicit Mamba2State(const Mamba2Config& c) : cache(c) {}
  void reset() override {
    cache.reset();
    pos = 0;
  }
  int64_t position() const override { return pos; }
  size_t bytes() const override { return cache.bytes(); }
  std::unique_ptr<ModelState> clone() const override { return std::make_unique<Mamba2State>(cache, pos); }
  void copy_from(const ModelState& other) override {
    const auto& o = state_as<Mamba2State>(other, "copy_from");
    if (o.cache.conv.size() != cache.conv.size() || o.cache.ssm.size() != cache.ssm.size())
      fail("copy_from: a state of another model");
    cache.conv = o.cache.conv;  // same sizes: no allocation
    cache.ssm = o.cache.ssm;
    pos = o.pos;
  }

  Mamba2State(const Mamba2Cache& c, int64_t p) : cache(c), pos(p) {}
  Mamba2Cache cache;
  int64_t pos = 0;
  // Buffers (not part of the state proper: bytes() does not count them).
  std::vector<float> h, xn, out, logits;  // residual stream, normed input, block output, padded logits
  Mamba2Scratch scratch;
};

struct Layer {
  std::vector<float> norm_w;  // [d_model]
  Mamba2Mixer mixer;
};

class Mamba2Model final : public Model {
 public:
  Mamba2Model(const std::string& dir, Mamba2Config cfg) : cfg_(std::move(cfg)), store_(TensorStore::open(dir)) {
    const auto& c = cfg_;
    io_ = EmbeddingHead::load(store_, {"backbone.embeddings", "backbone.embedding"}, c.vocab, c.d_model,
                              c.tie_embeddings, EmbeddingHead::kStoredHeadWins);
    norm_f_ = load_vector(store_, "backbone.norm_f.weight", c.d_model);
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string p = "backbone.layers." + std::to_string(i) + ".";
      Layer L;
      L.norm_w = load_vector(store_, p + "norm.weight", c.d_model);
      L.mixer = Mamba2Mixer::load(store_, p + "mixer.", c);
      layers_.push_back(std::move(L));
    }
  }

  ModelSummary summary() const override {
    ModelSummary s;
    s.arch = "mamba2";
    s.layers = cfg_.n_layer;
    s.hidden = cfg_.d_model;
    s.vocab = cfg_.vocab;
    s.weight_bytes = store_.total_bytes();
    io_.count(s);
    for (auto& L : layers_) {
      s.params += L.mixer.params() + int64_t(L.norm_w.size());
      s.hxq_modules += int64_t(L.mixer.in_proj.compressed()) + int64_t(L.mixer.out_proj.compressed());
      s.hxq_fast_modules +=
          int64_t(L.mixer.in_proj.fast_decode_kernel()) + int64_t(L.mixer.out_proj.fast_decode_kernel());
    }
    s.params += cfg_.d_model;
    return s;
  }

  uint64_t decode_weight_bytes() const override {
    uint64_t b = io_.head().weight_bytes();
    for (auto& L : layers_) b += L.mixer.weight_bytes();
    return b;
  }

  void visit_linears(FnRef<void(Linear&)> fn) override {
    for (auto& L : layers_) {
      fn(L.mixer.in_proj);
      fn(L.mixer.out_proj);
    }
    if (io_.separate) fn(io_.lm_head);
  }

  std::unique_ptr<ModelState> new_state() const override { return std::make_unique<Mamba2State>(cfg_); }

  void forward(ModelState& state_base, std::span<const int32_t> ids, int64_t logits_from, float* logits,
               ForwardTrace* trace) const override {
    auto& st = dynamic_cast<Mamba2State&>(state_base);
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size()), d = c.d_model;
    if (T == 0) return;
    if (logits && (logits_from < 0 || logits_from > T)) fail("forward: logits_from {} outside [0, {}]", logits_from, T);
    float* h = grow(st.h, T * d);
    float* xn = grow(st.xn, T * d);
    float* out = grow(st.out, T * d);
    io_.embed(ids, c.vocab, h);
    add_rmsnorm_rows(h, nullptr, T, d, layers_[0].norm_w.data(), c.norm_eps, xn);
    for (int64_t li = 0; li < c.n_layer; ++li) {
      layers_[size_t(li)].mixer.forward(c, st.cache.conv_at(li), st.cache.ssm_at(li), xn, T, out, st.scratch);
      // h += out, then the next layer's norm (or the final norm) of h into xn.
      const float* next_w = li + 1 < c.n_layer ? layers_[size_t(li + 1)].norm_w.data() : norm_f_.data();
      add_rmsnorm_rows(h, out, T, d, next_w, c.norm_eps, xn);
      if (trace) trace->hidden_states.emplace_back(h, h + T * d);
    }
    if (trace) trace->hidden_states.emplace_back(xn, xn + T * d);
    st.pos += T;
    if (logits && logits_from < T) head_logits(io_.head(), xn + logits_from * d, T - logits_from, c.vocab, logits, st.logits);
  }

  // forward()'s layer loop on B rows, one token of each sequence: the norms, in_proj/out_proj and
  // the head on all rows, each mixer's conv and SSM step on each sequence's own state.
  void decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, float* logits) const override {
    const auto& c = cfg_;
    const int64_t B = int64_t(states.size()), d = c.d_model;
    check_decode_batch(states, ids, c.vocab);
    if (B == 0) return;
    std::lock_guard lock(batch_.mu);
    Batch& w = batch_;
    w.st.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) {
      w.st[size_t(b)] = &state_as<Mamba2State>(*states[size_t(b)], "decode_batch");
      if (!w.st[size_t(b)]->cache.fits(c)) fail("decode_batch: a state of another model");
    }
    float* h = grow(w.h, B * d);
    float* xn = grow(w.xn, B * d);
    float* out = grow(w.out, B * d);
    io_.embed(ids, c.vocab, h);
    add_rmsnorm_rows(h, nullptr, B, d, layers_[0].norm_w.data(), c.norm_eps, xn);
    w.conv.resize(size_t(B));
    w.ssm.resize(size_t(B));
    for (int64_t li = 0; li < c.n_layer; ++li) {
      for (int64_t b = 0; b < B; ++b) {
        w.conv[size_t(b)] = w.st[size_t(b)]->cache.conv_at(li);
        w.ssm[size_t(b)] = w.st[size_t(b)]->cache.ssm_at(li);
      }
      layers_[size_t(li)].mixer.decode(c, w.conv.data(), w.ssm.data(), xn, B, out, w.scratch);
      const float* next_w = li + 1 < c.n_layer ? layers_[size_t(li + 1)].norm_w.data() : norm_f_.data();
      add_rmsnorm_rows(h, out, B, d, next_w, c.norm_eps, xn);
    }
    for (Mamba2State* st : w.st) st->pos += 1;
    if (logits) head_logits(io_.head(), xn, B, c.vocab, logits, w.logits);
  }

 private:
  // decode_batch's buffers, reused from call to call (one caller at a time).
  struct Batch {
    std::mutex mu;
    std::vector<Mamba2State*> st;
    std::vector<float*> conv, ssm;  // one layer's windows and SSM states, per sequence
    std::vector<float> h, xn, out, logits;
    Mamba2Scratch scratch;
  };

  Mamba2Config cfg_;
  TensorStore store_;
  EmbeddingHead io_;
  std::vector<float> norm_f_;
  std::vector<Layer> layers_;
  mutable Batch batch_;
};

void check_linear(const TensorStore& store, const Linear& l, const std::string& m, int64_t out, int64_t in) {
  if (l.out_features() != out || l.in_features() != in)
    fail("{}: '{}' has shape [{}, {}], expected [{}, {}] from config.json", store.location(), m, l.out_features(),
         l.in_features(), out, in);
}

}  // namespace

Mamba2Mixer Mamba2Mixer::load(const TensorStore& store, const std::string& p, const Mamba2Config& c) {
  Mamba2Mixer L;
  L.in_proj = load_linear(store, p + "in_proj", c.proj_bias);
  L.out_proj = load_linear(store, p + "out_proj", c.proj_bias);
  check_linear(store, L.in_proj, p + "in_proj", c.in_proj_dim(), c.d_model);
  check_linear(store, L.out_proj, p + "out_proj", c.d_model, c.d_inner);
  L.conv_w = load_conv_weight(store, p + "conv1d.weight", c.conv_dim(), c.d_conv);
  L.conv_wt = transpose_taps(L.conv_w, c.conv_dim(), c.d_conv);
  L.conv_b = c.conv_bias ? load_vector(store, p + "conv1d.bias", c.conv_dim())
                         : std::vector<float>(size_t(c.conv_dim()), 0.0f);
  auto a_log = load_vector(store, p + "A_log", c.n_heads);
  L.A.resize(a_log.size());
  for (size_t h = 0; h < a_log.size(); ++h) L.A[h] = -std::exp(a_log[h]);
  L.D = load_vector(store, p + "D", c.n_heads);
  L.dt_bias = load_vector(store, p + "dt_bias", c.n_heads);
  L.gnorm_w = load_vector(store, p + "norm.weight", c.d_inner);
  return L;
}

int64_t Mamba2Mixer::params() const {
  return in_proj.in_features() * in_proj.out_features() + out_proj.in_features() * out_proj.out_features() +
         int64_t(conv_w.size() + conv_b.size() + 3 * A.size() + gnorm_w.size());
}

void Mamba2Mixer::forward(const Mamba2Config& c, float* cstate, float* ssm_state, const float* xn, int64_t T,
                          float* out, Mamba2Scratch& s) const {
  if (T == 1) return decode(c, &cstate, &ssm_state, xn, 1, out, s);
  const int64_t P = c.in_proj_dim(), CD = c.conv_dim(), DI = c.d_inner, H = c.n_heads;
  float* zxbcdt = grow(s.zxbcdt, T * P);
  in_proj.forward(xn, T, zxbcdt);

  // Causal depthwise conv over xBC (with the previous K-1 inputs from the state), then SiLU.
  float* xbc = grow(s.xbc, T * CD);
  causal_conv_silu(zxbcdt + DI, P, T, cstate, conv_wt.data(), conv_b.data(), CD, c.d_conv, xbc, s.conv_tail);

  // dt = clamp(softplus(dt_raw + dt_bias), time_step_limit)
  float* dt = grow(s.dt, T * H);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hh = 0; hh < H; ++hh) {
      float v = softplus(zxbcdt[t * P + DI + CD + hh] + dt_bias[size_t(hh)]);
      dt[t * H + hh] = float(std::clamp(double(v), c.dt_min, c.dt_max));
    }

  float* y = grow(s.y, T * DI);
  scan(c, ssm_state, T, s);
  gated_norm(c, y, zxbcdt, T);
  out_proj.forward(y, T, out);
}

void Mamba2Mixer::decode(const Mamba2Config& c, float* const* conv_state, float* const* ssm_state, const float* xn,
                         int64_t B, float* out, Mamba2Scratch& s) const {
  const int64_t P = c.in_proj_dim(), CD = c.conv_dim(), DI = c.d_inner, H = c.n_heads;
  float* zxbcdt = grow(s.zxbcdt, B * P);
  in_proj.forward(xn, B, zxbcdt);
  float* xbc = grow(s.xbc, B * CD);
  float* dt = grow(s.dt, B * H);
  float* y = grow(s.y, B * DI);
  for (int64_t b = 0; b < B; ++b) conv_dt_step(c, conv_state[b], zxbcdt + b * P, xbc + b * CD, dt + b * H);
  // Item i = (sequence i / H, head i % H); at least 64 KiB of state per task: less is not worth a
  // second thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(64) << 10) / (c.head_dim * c.d_state * int64_t(sizeof(float))));
  pool().parallel_for(B * H, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1;) {
      const int64_t b = i / H, h0 = i % H, h1 = std::min(H, h0 + (i1 - i));
      ssm_step_heads(c, ssm_state[b], xbc + b * CD, dt + b * H, h0, h1, y + b * DI);
      i += h1 - h0;
    }
  }, grain);
  gated_norm(c, y, zxbcdt, B);
  out_proj.forward(y, B, out);
}

void Mamba2Mixer::conv_dt_step(const Mamba2Config& c, float* conv_state, const float* zxbcdt, float* xbc,
                               float* dt) const {
  const int64_t CD = c.conv_dim(), DI = c.d_inner;
  ssd::conv_step(zxbcdt + DI, conv_state, conv_wt.data(), conv_b.data(), CD, c.d_conv, xbc);
  for (int64_t hh = 0; hh < c.n_heads; ++hh) {
    const float v = softplus(zxbcdt[DI + CD + hh] + dt_bias[size_t(hh)]);
    dt[hh] = float(std::clamp(double(v), c.dt_min, c.dt_max));
  }
}

void Mamba2Mixer::ssm_step_heads(const Mamba2Config& c, float* ssm, const float* xbc, const float* dt, int64_t h0,
                                 int64_t h1, float* y) const {
  const int64_t DI = c.d_inner, HD = c.head_dim, N = c.d_state, G = c.n_groups, heads_per_group = c.n_heads / G;
  for (int64_t hh = h0; hh < h1; ++hh) {
    const int64_t g = hh / heads_per_group;
    const float dth = dt[hh], decay = std::exp(dth * A[size_t(hh)]);
    ssd::ssm_step(ssm + hh * HD * N, HD, N, xbc + hh * HD, xbc + DI + g * N, xbc + DI + G * N + g * N, dth, decay,
                  D[size_t(hh)], y + hh * HD);
  }
}

// Gated RMSNorm: y * silu(z), normalised over d_inner (or per group), times its weight.
void Mamba2Mixer::gated_norm(const Mamba2Config& c, float* y, const float* zxbcdt, int64_t T) const {
  const int64_t P = c.in_proj_dim(), DI = c.d_inner;
  const int64_t gsize = c.grouped_norm ? DI / c.n_groups : DI;
  pool().parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float* yr = y + t * DI;
      const float* z = zxbcdt + t * P;
      for (int64_t g0 = 0; g0 < DI; g0 += gsize) {
        const float ss = ssd::gate_silu_sumsq(yr + g0, z + g0, gsize);
        const float inv = 1.0f / std::sqrt(ss / float(gsize) + float(c.gnorm_eps));
        ssd::scale_mul(yr + g0, gnorm_w.data() + g0, inv, gsize, yr + g0);
      }
    }
  }, row_grain(DI));
}

// State-space dual (chunked) scan for every head; writes s.y = SSM output + D skip.
// Per chunk of L tokens (cum = inclusive cumsum of dt·A within the chunk):
//   Y    = exp(cum) ⊙ (C · Sᵀ)                       contribution of the state entering the chunk
//        + ((C · Bᵀ) ⊙ exp(cum[t] − cum[u]) ⊙ dt[u] ⊙ [u ≤ t]) · X      within the chunk
//   S    = exp(cum[L−1]) S + (X ⊙ exp(cum[L−1] − cum) dt)ᵀ · B
// as matrix products (T > 1; single tokens take the recurrent step of decode()). Both terms of Y come from one
// product: [M | exp(cum) ⊙ C] · [X | S]ᵀ with M the masked decay matrix.
void Mamba2Mixer::scan(const Mamba2Config& c, float* ssm, int64_t T, Mamba2Scratch& s) const {
  const Mamba2Mixer& L = *this;
  const int64_t CD = c.conv_dim(), DI = c.d_inner, H = c.n_heads, HD = c.head_dim, N = c.d_state;
  const int64_t G = c.n_groups, heads_per_group = H / G, CS = std::min<int64_t>(kScanChunk, std::max<int64_t>(1, c.chunk_size));
  const float* xbc = s.xbc.data();
  const float* dt = s.dt.data();
  float* y = s.y.data();
  const int64_t nchunks = (T + CS - 1) / CS;
  // Per (group, chunk), shared by the heads of the group: C·Bᵀ, Bᵀ and C.
  float* cb = grow(s.cb, G * nchunks * CS * CS);
  float* bt = grow(s.bt, G * nchunks * N * CS);
  float* cc = grow(s.cc, G * nchunks * CS * N);
  s.share.resize(std::max<size_t>(s.share.size(), size_t(pool().size())));
  pool().parallel_for(G * nchunks, [&](int64_t j0, int64_t j1, int share) {
    float* Bc = grow(s.share[size_t(share)].bc, CS * N);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t g = j / nchunks, c0 = (j % nchunks) * CS, Lc = std::min(CS, T - c0);
      float* Bt = bt + j * N * CS;
      float* Cc = cc + j * CS * N;
      for (int64_t t = 0; t < Lc; ++t) {
        const float* row = xbc + (c0 + t) * CD;
        std::copy_n(row + DI + g * N, N, Bc + t * N);
        std::copy_n(row + DI + G * N + g * N, N, Cc + t * N);
        for (int64_t k = 0; k < N; ++k) Bt[k * Lc + t] = row[DI + g * N + k];
      }
      gemm_dense(Cc, Lc, N, Bc, DType::F32, Lc, cb + j * CS * CS);
    }
  });
  pool().parallel_for(H, [&](int64_t h0, int64_t h1, int share) {
    Mamba2Scratch::Share& w = s.share[size_t(share)];
    const int64_t KC = CS + N;
    float* A = grow(w.a, CS * KC);  // [Lc][Lc + N]: [M | exp(cum) ⊙ C]
    float* Wc = grow(w.w, HD * KC);  // [HD][Lc + N]: [Xᵀ | S]
    float* Xw = grow(w.xw, HD * CS);
    float* Y = grow(w.y, CS * HD);
    float* dS = grow(w.ds, HD * N);
    float* cum = grow(w.cum, CS);
    float* dtc = grow(w.dtc, CS);
    float* wts = grow(w.wts, CS);
    for (int64_t hh = h0; hh < h1; ++hh) {
      const int64_t g = hh / heads_per_group;
      const float Ah = L.A[size_t(hh)], Dh = L.D[size_t(hh)];
      float* S = ssm + hh * HD * N;  // [HD][N]
      for (int64_t ci = 0; ci < nchunks; ++ci) {
        const int64_t c0 = ci * CS, Lc = std::min(CS, T - c0), kc = Lc + N, j = g * nchunks + ci;
        float acc = 0;
        for (int64_t t = 0; t < Lc; ++t) {
          dtc[t] = dt[(c0 + t) * H + hh];
          acc += dtc[t] * Ah;
          cum[t] = acc;
        }
        for (int64_t t = 0; t < Lc; ++t) {
          const float* xr = xbc + (c0 + t) * CD + hh * HD;
          for (int64_t p = 0; p < HD; ++p) Wc[p * kc + t] = xr[p];
        }
        for (int64_t p = 0; p < HD; ++p) std::copy_n(S + p * N, N, Wc + p * kc + Lc);
        const float* cbj = cb + j * CS * CS;
        const float* Cc = cc + j * CS * N;
        for (int64_t t = 0; t < Lc; ++t) {
          float* ar = A + t * kc;
          ssd::decay_row(cbj + t * Lc, cum, dtc, cum[t], t + 1, ar);
          std::fill(ar + t + 1, ar + Lc, 0.0f);
          ssd::scale(Cc + t * N, std::exp(cum[t]), ar + Lc, N);
        }
        gemm_dense(A, Lc, kc, Wc, DType::F32, HD, Y);  // [Lc, HD]
        for (int64_t t = 0; t < Lc; ++t) {
          float* yo = y + (c0 + t) * DI + hh * HD;
          std::copy_n(Y + t * HD, HD, yo);
          ssd::axpby(Dh, xbc + (c0 + t) * CD + hh * HD, 1.0f, yo, HD);
        }
        // S = exp(cum[L-1]) S + (X ⊙ w)ᵀ · B with w[u] = exp(cum[L-1] - cum[u]) dt[u]
        const float last = cum[Lc - 1];
        ssd::decay_row(nullptr, cum, dtc, last, Lc, wts);
        for (int64_t p = 0; p < HD; ++p) ssd::mul(Wc + p * kc, wts, Xw + p * Lc, Lc);
        gemm_dense(Xw, HD, Lc, bt + j * N * CS, DType::F32, N, dS);  // [HD, N]
        ssd::axpby(1.0f, dS, std::exp(last), S, HD * N);
      }
    }
  });
}

Mamba2Config Mamba2Config::from_json(const json& j, const std::string& path) {
  Mamba2Config c;
  const bool ssm_style = j.contains("d_model") && !j.contains("hidden_size");
  if (ssm_style) {  // mamba_ssm MambaConfig: defaults of its Mamba2 layer
    const json ssm = j.contains("ssm_cfg") && j["ssm_cfg"].is_object() ? j["ssm_cfg"] : json::object();
    if (ssm.contains("layer") && ssm["layer"] != "Mamba2")
      fail("{}: ssm_cfg.layer is {}, only Mamba2 is supported here", path, ssm["layer"].dump());
    c.d_model = json_int(j, "d_model", path);
    c.n_layer = json_int(j, "n_layer", path);
    int64_t v = json_int(j, "vocab_size", path);
    int64_t mult = json_int_or(j, "pad_vocab_size_multiple", 8, path);
    c.vocab = mult > 0 ? (v + mult - 1) / mult * mult : v;
    c.d_state = json_int_or(ssm, "d_state", 128, path);
    c.d_conv = json_int_or(ssm, "d_conv", 4, path);
    int64_t expand = json_int_or(ssm, "expand", 2, path);
    c.head_dim = json_int_or(ssm, "headdim", 64, path);
    c.n_groups = json_int_or(ssm, "ngroups", 1, path);
    c.chunk_size = json_int_or(ssm, "chunk_size", 256, path);
    c.d_inner = expand * c.d_model;
    if (c.head_dim <= 0 || c.d_inner % c.head_dim) fail("{}: d_inner {} not divisible by headdim {}", path, c.d_inner, c.head_dim);
    c.n_heads = c.d_inner / c.head_dim;
    c.norm_eps = j.contains("norm_epsilon") ? json_float(j["norm_epsilon"], path + ": norm_epsilon") : 1e-5;
    c.tie_embeddings = json_bool_or(j, "tie_embeddings", true, path);
    c.conv_bias = json_bool_or(ssm, "conv_bias", true, path);
    c.proj_bias = json_bool_or(ssm, "bias", false, path);
    c.dt_min = 0.0;
    c.dt_max = std::numeric_limits<double>::infinity();
    if (ssm.contains("dt_limit") && ssm["dt_limit"].is_array() && ssm["dt_limit"].size() == 2) {
      c.dt_min = json_float(ssm["dt_limit"][0], path + ": dt_limit");
      c.dt_max = json_float(ssm["dt_limit"][1], path + ": dt_limit");
    }
    c.grouped_norm = true;
  } else {
    c.d_model = json_int(j, "hidden_size", path);
    c.n_layer = json_int(j, "num_hidden_layers", path);
    c.vocab = json_int(j, "vocab_size", path);
    c.d_state = json_int_or(j, "state_size", 128, path);
    c.d_conv = json_int_or(j, "conv_kernel", 4, path);
    int64_t expand = json_int_or(j, "expand", 2, path);
    c.head_dim = json_int_or(j, "head_dim", 64, path);
    c.n_groups = json_int_or(j, "n_groups", 1, path);
    c.chunk_size = json_int_or(j, "chunk_size", 256, path);
    c.d_inner = expand * c.d_model;
    c.n_heads = json_int_or(j, "num_heads", c.head_dim > 0 ? c.d_inner / c.head_dim : 0, path);
    c.norm_eps = j.contains("layer_norm_epsilon") ? json_float(j["layer_norm_epsilon"], path + ": layer_norm_epsilon")
                                                  : 1e-5;
    c.tie_embeddings = json_bool_or(j, "tie_word_embeddings", true, path);
    c.conv_bias = json_bool_or(j, "use_conv_bias", true, path);
    c.proj_bias = json_bool_or(j, "use_bias", false, path);
    c.dt_min = 0.0;
    c.dt_max = std::numeric_limits<double>::infinity();
    if (j.contains("time_step_limit") && !j["time_step_limit"].is_null()) {
      const auto& tl = j["time_step_limit"];
      if (!tl.is_array() || tl.size() != 2) fail("{}: time_step_limit must be a pair [min, max]", path);
      c.dt_min = json_float(tl[0], path + ": time_step_limit");
      c.dt_max = json_float(tl[1], path + ": time_step_limit");
    }
    if (json_bool_or(j, "rms_norm", true, path) == false)
      fail("{}: rms_norm=false (LayerNorm Mamba2) is not supported", path);
    c.grouped_norm = false;
  }
  c.gnorm_eps = c.norm_eps;
  c.validate(path);
  return c;
}

void Mamba2Config::validate(const std::string& path) const {
  const Mamba2Config& c = *this;
  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0 || v > (int64_t(1) << 24)) fail("{}: {} = {} is out of range", path, what, v);
  };
  positive(c.d_model, "hidden size");
  positive(c.n_layer, "number of layers");
  positive(c.vocab, "vocab_size");
  positive(c.d_state, "state size");
  positive(c.d_conv, "conv kernel");
  positive(c.head_dim, "head_dim");
  positive(c.n_groups, "n_groups");
  positive(c.n_heads, "num_heads");
  positive(c.chunk_size, "chunk_size");
  if (c.n_heads * c.head_dim != c.d_inner)
    fail("{}: num_heads {} × head_dim {} != expand × hidden_size {}", path, c.n_heads, c.head_dim, c.d_inner);
  if (c.n_heads % c.n_groups) fail("{}: num_heads {} is not a multiple of n_groups {}", path, c.n_heads, c.n_groups);
  if (c.d_inner % c.n_groups) fail("{}: d_inner {} is not a multiple of n_groups {}", path, c.d_inner, c.n_groups);
  if (!(c.dt_min <= c.dt_max)) fail("{}: time_step_limit min {} > max {}", path, c.dt_min, c.dt_max);
}

std::unique_ptr<Model> load_mamba2(const std::string& dir, const json& cfg, const LoadOptions& opt) {
  auto c = Mamba2Config::from_json(cfg, (std::filesystem::path(dir) / "config.json").string());
  if (opt.grouped_norm >= 0) c.grouped_norm = opt.grouped_norm == 1;
  return std::make_unique<Mamba2Model>(dir, std::move(c));
}

}  // namespace hxq
