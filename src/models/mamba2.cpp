#include "models/mamba2.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"
#include "models/weights.h"

namespace hxq {

namespace {

int64_t get_int(const json& j, const char* key, const std::string& path) {
  if (!j.contains(key)) fail("{}: missing \"{}\"", path, key);
  const auto& v = j[key];
  if (!v.is_number_integer()) fail("{}: \"{}\" must be an integer, got {}", path, key, v.dump());
  return v.get<int64_t>();
}

int64_t get_int_or(const json& j, const char* key, int64_t dflt, const std::string& path) {
  return j.contains(key) && !j[key].is_null() ? get_int(j, key, path) : dflt;
}

bool get_bool_or(const json& j, const char* key, bool dflt, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) fail("{}: \"{}\" must be true or false, got {}", path, key, j[key].dump());
  return j[key].get<bool>();
}

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

inline float softplus(float x) {  // torch.nn.functional.softplus, beta=1, threshold=20
  return x > 20.0f ? x : std::log1p(std::exp(x));
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// y[r] = w ⊙ x[r] / sqrt(mean(x[r]²) + eps) for each row r of x [T, n].
void rmsnorm_rows(const float* x, int64_t T, int64_t n, const float* w, double eps, float* y) {
  pool().parallel_for(T, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const float* xr = x + t * n;
      float* yr = y + t * n;
      float ss = dot(xr, xr, n);
      float inv = 1.0f / std::sqrt(ss / float(n) + float(eps));
      for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
  }, 8);
}

struct Layer {
  std::vector<float> norm_w;  // [d_model]
  Linear in_proj, out_proj;
  std::vector<float> conv_w;  // [conv_dim, d_conv]
  std::vector<float> conv_b;  // [conv_dim] (zeros without bias)
  std::vector<float> A;       // -exp(A_log) [n_heads]
  std::vector<float> D, dt_bias;
  std::vector<float> gnorm_w;  // [d_inner]
};

class Mamba2State final : public ModelState {
 public:
  Mamba2State(const Mamba2Config& c)
      : conv_stride(c.d_conv - 1),
        conv(size_t(c.n_layer * (c.d_conv - 1) * c.conv_dim()), 0.0f),
        ssm(size_t(c.n_layer * c.n_heads * c.head_dim * c.d_state), 0.0f) {}
  void reset() override {
    std::fill(conv.begin(), conv.end(), 0.0f);
    std::fill(ssm.begin(), ssm.end(), 0.0f);
    pos = 0;
  }
  int64_t position() const override { return pos; }
  size_t bytes() const override { return (conv.size() + ssm.size()) * sizeof(float); }

  int64_t conv_stride;
  std::vector<float> conv;  // [layer][d_conv-1][conv_dim]: the last inputs of the conv, oldest first
  std::vector<float> ssm;   // [layer][head][head_dim][d_state]
  int64_t pos = 0;
};

class Mamba2Model final : public Model {
 public:
  Mamba2Model(const std::string& dir, Mamba2Config cfg) : cfg_(std::move(cfg)), store_(TensorStore::open(dir)) {
    const auto& c = cfg_;
    const std::string loc = store_.location();
    auto present = [&](const std::string& m) { return store_.contains(m + ".weight") || is_hxq_module(store_, m); };
    // transformers names it backbone.embeddings, mamba_ssm and helix-substrate backbone.embedding
    const std::string emb = present("backbone.embeddings") ? "backbone.embeddings" : "backbone.embedding";
    if (!present(emb)) fail("{}: missing tensor 'backbone.embeddings.weight' (or 'backbone.embedding.weight')", loc);
    embedding_ = load_linear(store_, emb);
    if (embedding_.out_features() < c.vocab || embedding_.in_features() != c.d_model)
      fail("{}: embedding shape [{}, {}] does not match vocab_size {} / hidden_size {}", loc,
           embedding_.out_features(), embedding_.in_features(), c.vocab, c.d_model);
    const bool has_head = present("lm_head");
    if (has_head) {
      lm_head_ = load_linear(store_, "lm_head");
      separate_head_ = true;
      if (lm_head_.in_features() != c.d_model || lm_head_.out_features() < c.vocab)
        fail("{}: lm_head shape [{}, {}] does not match vocab_size {} / hidden_size {}", loc,
             lm_head_.out_features(), lm_head_.in_features(), c.vocab, c.d_model);
    } else if (!c.tie_embeddings) {
      fail("{}: config says tie_word_embeddings=false but there is no lm_head.weight", loc);
    }
    norm_f_ = load_vector(store_, "backbone.norm_f.weight", c.d_model);
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string p = "backbone.layers." + std::to_string(i) + ".";
      Layer L;
      L.norm_w = load_vector(store_, p + "norm.weight", c.d_model);
      L.in_proj = load_linear(store_, p + "mixer.in_proj", c.proj_bias);
      L.out_proj = load_linear(store_, p + "mixer.out_proj", c.proj_bias);
      check_linear(L.in_proj, p + "mixer.in_proj", c.in_proj_dim(), c.d_model);
      check_linear(L.out_proj, p + "mixer.out_proj", c.d_model, c.d_inner);
      const auto& cw = store_.get(p + "mixer.conv1d.weight");
      if (cw.numel() != c.conv_dim() * c.d_conv || cw.shape.empty() || cw.shape[0] != c.conv_dim())
        fail("{}: tensor '{}' has shape {}, expected [{}, 1, {}]", cw.file, cw.name, cw.shape_str(), c.conv_dim(),
             c.d_conv);
      L.conv_w = load_vector(store_, p + "mixer.conv1d.weight", c.conv_dim() * c.d_conv);
      L.conv_b = c.conv_bias ? load_vector(store_, p + "mixer.conv1d.bias", c.conv_dim())
                             : std::vector<float>(size_t(c.conv_dim()), 0.0f);
      auto a_log = load_vector(store_, p + "mixer.A_log", c.n_heads);
      L.A.resize(a_log.size());
      for (size_t h = 0; h < a_log.size(); ++h) L.A[h] = -std::exp(a_log[h]);
      L.D = load_vector(store_, p + "mixer.D", c.n_heads);
      L.dt_bias = load_vector(store_, p + "mixer.dt_bias", c.n_heads);
      L.gnorm_w = load_vector(store_, p + "mixer.norm.weight", c.d_inner);
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
    auto count = [&](const Linear& l) {
      s.params += l.in_features() * l.out_features();
      if (l.kind() == Linear::Kind::Hxq) s.hxq_modules++;
    };
    count(embedding_);
    if (separate_head_) count(lm_head_);
    for (auto& L : layers_) {
      count(L.in_proj);
      count(L.out_proj);
      s.params += int64_t(L.norm_w.size() + L.conv_w.size() + L.conv_b.size() + 3 * L.A.size() + L.gnorm_w.size());
    }
    s.params += cfg_.d_model;
    return s;
  }

  uint64_t decode_weight_bytes() const override {
    uint64_t b = head().weight_bytes();
    for (auto& L : layers_) b += L.in_proj.weight_bytes() + L.out_proj.weight_bytes();
    return b;
  }

  std::unique_ptr<ModelState> new_state() const override { return std::make_unique<Mamba2State>(cfg_); }

  void forward(ModelState& state_base, std::span<const int32_t> ids, int64_t logits_from, float* logits,
               ForwardTrace* trace) const override {
    auto& st = dynamic_cast<Mamba2State&>(state_base);
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size()), d = c.d_model;
    if (T == 0) return;
    if (logits && (logits_from < 0 || logits_from > T)) fail("forward: logits_from {} outside [0, {}]", logits_from, T);
    std::vector<float> h(size_t(T * d));
    for (int64_t t = 0; t < T; ++t) {
      int32_t id = ids[size_t(t)];
      if (id < 0 || id >= c.vocab) fail("token id {} outside the vocabulary [0, {})", id, c.vocab);
      embedding_.row(id, h.data() + t * d);
    }
    std::vector<float> xn(size_t(T * d)), out(size_t(T * d));
    Scratch s;
    for (int64_t li = 0; li < c.n_layer; ++li) {
      const Layer& L = layers_[size_t(li)];
      rmsnorm_rows(h.data(), T, d, L.norm_w.data(), c.norm_eps, xn.data());
      mixer(L, li, st, xn.data(), T, out.data(), s);
      for (size_t i = 0; i < h.size(); ++i) h[i] += out[i];
      if (trace) trace->hidden_states.push_back(h);
    }
    rmsnorm_rows(h.data(), T, d, norm_f_.data(), c.norm_eps, xn.data());
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
    std::vector<float> zxbcdt, xbc, dt, y, cb;
  };

  const Linear& head() const { return separate_head_ ? lm_head_ : embedding_; }

  void check_linear(const Linear& l, const std::string& m, int64_t out, int64_t in) const {
    if (l.out_features() != out || l.in_features() != in)
      fail("{}: '{}' has shape [{}, {}], expected [{}, {}] from config.json", store_.location(), m, l.out_features(),
           l.in_features(), out, in);
  }

  void mixer(const Layer& L, int64_t li, Mamba2State& st, const float* xn, int64_t T, float* out, Scratch& s) const {
    const auto& c = cfg_;
    const int64_t P = c.in_proj_dim(), CD = c.conv_dim(), DI = c.d_inner, H = c.n_heads, K = c.d_conv;
    s.zxbcdt.resize(size_t(T * P));
    L.in_proj.forward(xn, T, s.zxbcdt.data());

    // Causal depthwise conv over xBC (with the previous K-1 inputs from the state), then SiLU.
    s.xbc.resize(size_t(T * CD));
    float* cstate = st.conv.data() + li * (K - 1) * CD;
    pool().parallel_for(CD, [&](int64_t c0, int64_t c1, int) {
      std::vector<float> win(size_t(K - 1 + T));
      for (int64_t ch = c0; ch < c1; ++ch) {
        for (int64_t j = 0; j < K - 1; ++j) win[size_t(j)] = cstate[j * CD + ch];
        for (int64_t t = 0; t < T; ++t) win[size_t(K - 1 + t)] = s.zxbcdt[size_t(t * P + DI + ch)];
        const float* w = L.conv_w.data() + ch * K;
        for (int64_t t = 0; t < T; ++t) {
          float acc = L.conv_b[size_t(ch)];
          for (int64_t j = 0; j < K; ++j) acc += w[j] * win[size_t(t + j)];
          s.xbc[size_t(t * CD + ch)] = silu(acc);
        }
        for (int64_t j = 0; j < K - 1; ++j) cstate[j * CD + ch] = win[size_t(T + j)];
      }
    }, 16);

    // dt = clamp(softplus(dt_raw + dt_bias), time_step_limit)
    s.dt.resize(size_t(T * H));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t hh = 0; hh < H; ++hh) {
        float v = softplus(s.zxbcdt[size_t(t * P + DI + CD + hh)] + L.dt_bias[size_t(hh)]);
        s.dt[size_t(t * H + hh)] = float(std::clamp(double(v), c.dt_min, c.dt_max));
      }

    s.y.resize(size_t(T * DI));
    ssd(L, li, st, T, s);

    // Gated RMSNorm: y * silu(z), normalised over d_inner (or per group), times its weight.
    const int64_t gsize = c.grouped_norm ? DI / c.n_groups : DI;
    pool().parallel_for(T, [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; ++t) {
        float* y = s.y.data() + t * DI;
        const float* z = s.zxbcdt.data() + t * P;
        for (int64_t i = 0; i < DI; ++i) y[i] *= silu(z[i]);
        for (int64_t g0 = 0; g0 < DI; g0 += gsize) {
          float ss = dot(y + g0, y + g0, gsize);
          float inv = 1.0f / std::sqrt(ss / float(gsize) + float(c.norm_eps));
          for (int64_t i = g0; i < g0 + gsize; ++i) y[i] = L.gnorm_w[size_t(i)] * (y[i] * inv);
        }
      }
    }, 4);
    L.out_proj.forward(s.y.data(), T, out);
  }

  // State-space dual (chunked) scan for every head; writes s.y = SSM output + D skip.
  // Per chunk of L tokens (cum = inclusive cumsum of dt·A within the chunk):
  //   Y    = exp(cum) ⊙ (C · Sᵀ)                       contribution of the state entering the chunk
  //        + ((C · Bᵀ) ⊙ exp(cum[t] − cum[u]) ⊙ dt[u] ⊙ [u ≤ t]) · X      within the chunk
  //   S    = exp(cum[L−1]) S + (X ⊙ exp(cum[L−1] − cum) dt)ᵀ · B
  // as matrix products (the recurrent step for single tokens).
  void ssd(const Layer& L, int64_t li, Mamba2State& st, int64_t T, Scratch& s) const {
    const auto& c = cfg_;
    const int64_t CD = c.conv_dim(), DI = c.d_inner, H = c.n_heads, HD = c.head_dim, N = c.d_state;
    const int64_t G = c.n_groups, heads_per_group = H / G, CS = std::max<int64_t>(1, c.chunk_size);
    float* ssm = st.ssm.data() + li * H * HD * N;
    auto xrow = [&](int64_t t) { return s.xbc.data() + t * CD; };
    if (T == 1) {  // decode: S = exp(dt A) S + dt x ⊗ B;  y = S · C + D x
      pool().parallel_for(H, [&](int64_t h0, int64_t h1, int) {
        for (int64_t hh = h0; hh < h1; ++hh) {
          const int64_t g = hh / heads_per_group;
          const float dt = s.dt[size_t(hh)], decay = std::exp(dt * L.A[size_t(hh)]);
          const float *x = xrow(0) + hh * HD, *B = xrow(0) + DI + g * N, *C = xrow(0) + DI + G * N + g * N;
          float* S = ssm + hh * HD * N;
          float* y = s.y.data() + hh * HD;
          for (int64_t p = 0; p < HD; ++p) {
            float* sp = S + p * N;
            const float coef = dt * x[p];
            for (int64_t n = 0; n < N; ++n) sp[n] = sp[n] * decay + coef * B[n];
            y[p] = dot(sp, C, N) + L.D[size_t(hh)] * x[p];
          }
        }
      });
      return;
    }
    const int64_t nchunks = (T + CS - 1) / CS;
    // C·Bᵀ of every (group, chunk), shared by the heads of the group.
    s.cb.resize(size_t(G * nchunks * CS * CS));
    pool().parallel_for(G * nchunks, [&](int64_t j0, int64_t j1, int) {
      std::vector<float> Bc(static_cast<size_t>(CS * N)), Cc(static_cast<size_t>(CS * N));
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t g = j / nchunks, c0 = (j % nchunks) * CS, Lc = std::min(CS, T - c0);
        for (int64_t t = 0; t < Lc; ++t) {
          std::copy_n(xrow(c0 + t) + DI + g * N, N, Bc.data() + t * N);
          std::copy_n(xrow(c0 + t) + DI + G * N + g * N, N, Cc.data() + t * N);
        }
        gemm_dense(Cc.data(), Lc, N, Bc.data(), DType::F32, Lc, s.cb.data() + j * CS * CS);
      }
    });
    pool().parallel_for(H, [&](int64_t h0, int64_t h1, int) {
      const size_t cs = static_cast<size_t>(CS), hd = static_cast<size_t>(HD), n = static_cast<size_t>(N);
      std::vector<float> Xt(hd * cs), Xw(hd * cs), Bt(n * cs), C(cs * n), cum(cs), dtc(cs), M(cs * cs), Y(cs * hd),
          Y2(cs * hd), dS(hd * n);
      for (int64_t hh = h0; hh < h1; ++hh) {
        const int64_t g = hh / heads_per_group;
        const float A = L.A[size_t(hh)], Dh = L.D[size_t(hh)];
        float* S = ssm + hh * HD * N;  // [HD][N]
        for (int64_t ci = 0; ci < nchunks; ++ci) {
          const int64_t c0 = ci * CS, Lc = std::min(CS, T - c0);
          float acc = 0;
          for (int64_t t = 0; t < Lc; ++t) {
            const float* row = xrow(c0 + t);
            for (int64_t p = 0; p < HD; ++p) Xt[size_t(p * Lc + t)] = row[hh * HD + p];
            for (int64_t k = 0; k < N; ++k) Bt[size_t(k * Lc + t)] = row[DI + g * N + k];
            std::copy_n(row + DI + G * N + g * N, N, C.data() + t * N);
            dtc[size_t(t)] = s.dt[size_t((c0 + t) * H + hh)];
            acc += dtc[size_t(t)] * A;
            cum[size_t(t)] = acc;
          }
          // M = (C·Bᵀ) ⊙ decay ⊙ dt, lower triangular
          const float* cb = s.cb.data() + (g * nchunks + ci) * CS * CS;
          for (int64_t t = 0; t < Lc; ++t) {
            float* m = M.data() + t * Lc;
            const float* cbt = cb + t * Lc;
            for (int64_t u = 0; u <= t; ++u) m[u] = cbt[u] * std::exp(cum[size_t(t)] - cum[size_t(u)]) * dtc[size_t(u)];
            for (int64_t u = t + 1; u < Lc; ++u) m[u] = 0.0f;
          }
          gemm_dense(M.data(), Lc, Lc, Xt.data(), DType::F32, HD, Y.data());   // [Lc, HD] intra-chunk
          gemm_dense(C.data(), Lc, N, S, DType::F32, HD, Y2.data());            // [Lc, HD] C · Sᵀ
          for (int64_t t = 0; t < Lc; ++t) {
            const float e = std::exp(cum[size_t(t)]);
            float* yo = s.y.data() + (c0 + t) * DI + hh * HD;
            const float* x = xrow(c0 + t) + hh * HD;
            for (int64_t p = 0; p < HD; ++p) yo[p] = Y[size_t(t * HD + p)] + e * Y2[size_t(t * HD + p)] + Dh * x[p];
          }
          // S = exp(cum[L-1]) S + (X ⊙ w)ᵀ · B with w[u] = exp(cum[L-1] - cum[u]) dt[u]
          const float last = cum[size_t(Lc - 1)];
          for (int64_t u = 0; u < Lc; ++u) M[size_t(u)] = std::exp(last - cum[size_t(u)]) * dtc[size_t(u)];
          for (int64_t p = 0; p < HD; ++p)
            for (int64_t u = 0; u < Lc; ++u) Xw[size_t(p * Lc + u)] = Xt[size_t(p * Lc + u)] * M[size_t(u)];
          gemm_dense(Xw.data(), HD, Lc, Bt.data(), DType::F32, N, dS.data());  // [HD, N]
          const float decay = std::exp(last);
          for (int64_t i = 0; i < HD * N; ++i) S[i] = S[i] * decay + dS[size_t(i)];
        }
      }
    });
  }

  Mamba2Config cfg_;
  TensorStore store_;
  Linear embedding_, lm_head_;
  bool separate_head_ = false;
  std::vector<float> norm_f_;
  std::vector<Layer> layers_;
};

}  // namespace

Mamba2Config Mamba2Config::from_json(const json& j, const std::string& path) {
  Mamba2Config c;
  const bool ssm_style = j.contains("d_model") && !j.contains("hidden_size");
  if (ssm_style) {  // mamba_ssm MambaConfig: defaults of its Mamba2 layer
    const json ssm = j.contains("ssm_cfg") && j["ssm_cfg"].is_object() ? j["ssm_cfg"] : json::object();
    if (ssm.contains("layer") && ssm["layer"] != "Mamba2")
      fail("{}: ssm_cfg.layer is {}, only Mamba2 is supported here", path, ssm["layer"].dump());
    c.d_model = get_int(j, "d_model", path);
    c.n_layer = get_int(j, "n_layer", path);
    int64_t v = get_int(j, "vocab_size", path);
    int64_t mult = get_int_or(j, "pad_vocab_size_multiple", 8, path);
    c.vocab = mult > 0 ? (v + mult - 1) / mult * mult : v;
    c.d_state = get_int_or(ssm, "d_state", 128, path);
    c.d_conv = get_int_or(ssm, "d_conv", 4, path);
    int64_t expand = get_int_or(ssm, "expand", 2, path);
    c.head_dim = get_int_or(ssm, "headdim", 64, path);
    c.n_groups = get_int_or(ssm, "ngroups", 1, path);
    c.chunk_size = get_int_or(ssm, "chunk_size", 256, path);
    c.d_inner = expand * c.d_model;
    if (c.head_dim <= 0 || c.d_inner % c.head_dim) fail("{}: d_inner {} not divisible by headdim {}", path, c.d_inner, c.head_dim);
    c.n_heads = c.d_inner / c.head_dim;
    c.norm_eps = j.contains("norm_epsilon") ? json_float(j["norm_epsilon"], path + ": norm_epsilon") : 1e-5;
    c.tie_embeddings = get_bool_or(j, "tie_embeddings", true, path);
    c.conv_bias = get_bool_or(ssm, "conv_bias", true, path);
    c.proj_bias = get_bool_or(ssm, "bias", false, path);
    c.dt_min = 0.0;
    c.dt_max = std::numeric_limits<double>::infinity();
    if (ssm.contains("dt_limit") && ssm["dt_limit"].is_array() && ssm["dt_limit"].size() == 2) {
      c.dt_min = json_float(ssm["dt_limit"][0], path + ": dt_limit");
      c.dt_max = json_float(ssm["dt_limit"][1], path + ": dt_limit");
    }
    c.grouped_norm = true;
  } else {
    c.d_model = get_int(j, "hidden_size", path);
    c.n_layer = get_int(j, "num_hidden_layers", path);
    c.vocab = get_int(j, "vocab_size", path);
    c.d_state = get_int_or(j, "state_size", 128, path);
    c.d_conv = get_int_or(j, "conv_kernel", 4, path);
    int64_t expand = get_int_or(j, "expand", 2, path);
    c.head_dim = get_int_or(j, "head_dim", 64, path);
    c.n_groups = get_int_or(j, "n_groups", 1, path);
    c.chunk_size = get_int_or(j, "chunk_size", 256, path);
    c.d_inner = expand * c.d_model;
    c.n_heads = get_int_or(j, "num_heads", c.head_dim > 0 ? c.d_inner / c.head_dim : 0, path);
    c.norm_eps = j.contains("layer_norm_epsilon") ? json_float(j["layer_norm_epsilon"], path + ": layer_norm_epsilon")
                                                  : 1e-5;
    c.tie_embeddings = get_bool_or(j, "tie_word_embeddings", true, path);
    c.conv_bias = get_bool_or(j, "use_conv_bias", true, path);
    c.proj_bias = get_bool_or(j, "use_bias", false, path);
    c.dt_min = 0.0;
    c.dt_max = std::numeric_limits<double>::infinity();
    if (j.contains("time_step_limit") && !j["time_step_limit"].is_null()) {
      const auto& tl = j["time_step_limit"];
      if (!tl.is_array() || tl.size() != 2) fail("{}: time_step_limit must be a pair [min, max]", path);
      c.dt_min = json_float(tl[0], path + ": time_step_limit");
      c.dt_max = json_float(tl[1], path + ": time_step_limit");
    }
    if (get_bool_or(j, "rms_norm", true, path) == false)
      fail("{}: rms_norm=false (LayerNorm Mamba2) is not supported", path);
    c.grouped_norm = false;
  }
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
  return c;
}

std::unique_ptr<Model> load_mamba2(const std::string& dir, const json& cfg, const LoadOptions& opt) {
  auto c = Mamba2Config::from_json(cfg, (std::filesystem::path(dir) / "config.json").string());
  if (opt.grouped_norm >= 0) c.grouped_norm = opt.grouped_norm == 1;
  return std::make_unique<Mamba2Model>(dir, std::move(c));
}

}  // namespace hxq
