#include "models/mamba1.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <mutex>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/ssd.h"
#include "models/blocks.h"
#include "models/weights.h"

namespace hxq {

namespace {

// One Mamba1 block: h += out_proj(ssm(conv(in_proj(rmsnorm(h))))).
struct Layer {
  std::vector<float> norm_w;        // [d_model]
  Linear in_proj, x_proj, dt_proj, out_proj;
  std::vector<float> conv_wt;       // [d_conv, d_inner] (tap-major)
  std::vector<float> conv_b;        // [d_inner] (zeros without bias)
  std::vector<float> A;             // -exp(A_log) transposed: [d_state, d_inner]
  std::vector<float> D;             // [d_inner]
};

// Buffers of a pass over the layers (not part of the state proper).
struct Mamba1Buffers {
  std::vector<float> h, xn, out, logits, xz, xc, xdb, dtin, dt, y, conv_tail;
};

class Mamba1State final : public ModelState {
 public:
  explicit Mamba1State(const Mamba1Config& c)
      : conv_stride((c.d_conv - 1) * c.d_inner),
        ssm_stride(c.d_state * c.d_inner),
        conv(size_t(c.n_layer * conv_stride), 0.0f),
        ssm(size_t(c.n_layer * ssm_stride), 0.0f) {}
  Mamba1State(const Mamba1State& o)  // the state proper, not the buffers
      : conv_stride(o.conv_stride), ssm_stride(o.ssm_stride), conv(o.conv), ssm(o.ssm), pos(o.pos) {}
  void reset() override {
    std::fill(conv.begin(), conv.end(), 0.0f);
    std::fill(ssm.begin(), ssm.end(), 0.0f);
    pos = 0;
  }
  int64_t position() const override { return pos; }
  size_t bytes() const override { return (conv.size() + ssm.size()) * sizeof(float); }
  std::unique_ptr<ModelState> clone() const override { return std::make_unique<Mamba1State>(*this); }
  void copy_from(const ModelState& other) override {
    const auto& o = state_as<Mamba1State>(other, "copy_from");
    if (o.conv.size() != conv.size() || o.ssm.size() != ssm.size()) fail("copy_from: a state of another model");
    conv = o.conv;  // same sizes: no allocation
    ssm = o.ssm;
    pos = o.pos;
  }
  float* conv_at(int64_t l) { return conv.data() + l * conv_stride; }
  float* ssm_at(int64_t l) { return ssm.data() + l * ssm_stride; }

  const int64_t conv_stride, ssm_stride;
  std::vector<float> conv;  // [layer][d_conv-1][d_inner]: the last conv inputs, oldest first
  std::vector<float> ssm;   // [layer][d_state][d_inner]
  int64_t pos = 0;
  Mamba1Buffers buf;
};

// x [T, n] row by row: x / sqrt(mean(x²) + eps) (Falcon-Mamba's weightless rms_forward), in place
// on rows of stride ld.
void rms_rows_inplace(float* x, int64_t T, int64_t n, int64_t ld, double eps) {
  for (int64_t t = 0; t < T; ++t) {
    float* r = x + t * ld;
    const float inv = 1.0f / std::sqrt(ssd::sumsq(r, n) / float(n) + float(eps));
    for (int64_t i = 0; i < n; ++i) r[i] *= inv;
  }
}

class Mamba1Model final : public Model {
 public:
  Mamba1Model(const std::string& dir, Mamba1Config cfg) : cfg_(std::move(cfg)), store_(TensorStore::open(dir)) {
    const auto& c = cfg_;
    io_ = EmbeddingHead::load(store_, {"backbone.embeddings", "backbone.embedding"}, c.vocab, c.d_model,
                              c.tie_embeddings, EmbeddingHead::kStoredHeadWins);
    norm_f_ = load_vector(store_, "backbone.norm_f.weight", c.d_model);
    const int64_t DI = c.d_inner, N = c.d_state;
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string p = "backbone.layers." + std::to_string(i) + ".";
      const std::string m = p + "mixer.";
      Layer L;
      L.norm_w = load_vector(store_, p + "norm.weight", c.d_model);
      L.in_proj = load_linear_checked(store_, m + "in_proj", 2 * DI, c.d_model, c.proj_bias);
      L.x_proj = load_linear_checked(store_, m + "x_proj", c.x_proj_dim(), DI);
      L.dt_proj = load_linear_checked(store_, m + "dt_proj", DI, c.dt_rank, true);
      L.out_proj = load_linear_checked(store_, m + "out_proj", c.d_model, DI, c.proj_bias);
      L.conv_wt = transpose_taps(load_conv_weight(store_, m + "conv1d.weight", DI, c.d_conv), DI, c.d_conv);
      L.conv_b = c.conv_bias ? load_vector(store_, m + "conv1d.bias", DI) : std::vector<float>(size_t(DI), 0.0f);
      const auto& at = store_.get(m + "A_log");
      if (at.shape != std::vector<int64_t>{DI, N})
        fail("{}: tensor '{}' has shape {}, expected [{}, {}] (intermediate_size, state_size) from config.json",
             at.file, at.name, at.shape_str(), DI, N);
      const auto a_log = load_vector(store_, m + "A_log", DI * N);
      L.A.resize(a_log.size());
      for (int64_t ch = 0; ch < DI; ++ch)
        for (int64_t n = 0; n < N; ++n) L.A[size_t(n * DI + ch)] = -std::exp(a_log[size_t(ch * N + n)]);
      L.D = load_vector(store_, m + "D", DI);
      layers_.push_back(std::move(L));
    }
  }

  ModelSummary summary() const override {
    ModelSummary s;
    s.arch = cfg_.bcdt_norm ? "falcon_mamba" : "mamba";
    s.layers = cfg_.n_layer;
    s.hidden = cfg_.d_model;
    s.vocab = cfg_.vocab;
    s.weight_bytes = store_.total_bytes();
    io_.count(s);
    for (auto& L : layers_) {
      for (const Linear* l : {&L.in_proj, &L.x_proj, &L.dt_proj, &L.out_proj}) {
        s.params += l->in_features() * l->out_features() + (l->has_bias() ? l->out_features() : 0);
        if (l->compressed()) s.hxq_modules++;
        if (l->fast_decode_kernel()) s.hxq_fast_modules++;
      }
      s.params += int64_t(L.norm_w.size() + L.conv_wt.size() + L.conv_b.size() + L.A.size() + L.D.size());
    }
    s.params += cfg_.d_model;
    return s;
  }

  uint64_t decode_weight_bytes() const override {
    uint64_t b = io_.head().weight_bytes();
    for (auto& L : layers_)
      b += L.in_proj.weight_bytes() + L.x_proj.weight_bytes() + L.dt_proj.weight_bytes() + L.out_proj.weight_bytes();
    return b;
  }

  void visit_linears(FnRef<void(Linear&)> fn) override {
    for (auto& L : layers_)
      for (Linear* l : {&L.in_proj, &L.x_proj, &L.dt_proj, &L.out_proj}) fn(*l);
    if (io_.separate) fn(io_.lm_head);
  }

  std::unique_ptr<ModelState> new_state() const override { return std::make_unique<Mamba1State>(cfg_); }

  // Layer by layer over all T tokens: every block sees the whole prompt at once.
  void forward(ModelState& state_base, std::span<const int32_t> ids, int64_t logits_from, float* logits,
               ForwardTrace* trace) const override {
    auto& st = dynamic_cast<Mamba1State&>(state_base);
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size());
    if (T == 0) return;
    if (logits && (logits_from < 0 || logits_from > T)) fail("forward: logits_from {} outside [0, {}]", logits_from, T);
    Mamba1State* seq = &st;
    layers({&seq, 1}, ids, st.buf, trace);
    st.pos += T;
    const int64_t d = c.d_model;
    if (logits && logits_from < T)
      head_logits(io_.head(), st.buf.xn.data() + logits_from * d, T - logits_from, c.vocab, logits, st.buf.logits);
  }

  // The layers on B rows, one token of each sequence (the mixers' conv and scan per sequence).
  void decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, float* logits) const override {
    const auto& c = cfg_;
    const int64_t B = int64_t(states.size());
    check_decode_batch(states, ids, c.vocab);
    if (B == 0) return;
    std::lock_guard lock(batch_mu_);
    batch_st_.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) {
      const Mamba1State& st = *(batch_st_[size_t(b)] = &state_as<Mamba1State>(*states[size_t(b)], "decode_batch"));
      if (st.conv_stride != (c.d_conv - 1) * c.d_inner || st.ssm_stride != c.d_state * c.d_inner ||
          st.conv.size() != size_t(c.n_layer * st.conv_stride))
        fail("decode_batch: a state of another model");
    }
    layers(batch_st_, ids, batch_, nullptr);
    for (Mamba1State* st : batch_st_) st->pos += 1;
    if (logits) head_logits(io_.head(), batch_.xn.data(), B, c.vocab, logits, batch_.logits);
  }

 private:
  // The final-norm output of the T = ids.size() rows in w.xn [T, d_model]. The rows are the
  // tokens of one sequence when seqs has one state, else row t is one token of sequence seqs[t].
  void layers(std::span<Mamba1State* const> seqs, std::span<const int32_t> ids, Mamba1Buffers& w,
              ForwardTrace* trace) const {
    const auto& c = cfg_;
    const int64_t T = int64_t(ids.size()), d = c.d_model;
    float* h = grow(w.h, T * d);
    float* xn = grow(w.xn, T * d);
    float* out = grow(w.out, T * d);
    io_.embed(ids, c.vocab, h);
    add_rmsnorm_rows(h, nullptr, T, d, layers_[0].norm_w.data(), c.norm_eps, xn);
    for (int64_t li = 0; li < c.n_layer; ++li) {
      mixer(layers_[size_t(li)], li, seqs, w, xn, T, out);
      // residual (fp32) h += out, then the next layer's norm (or the final norm) of h into xn
      const float* next_w = li + 1 < c.n_layer ? layers_[size_t(li + 1)].norm_w.data() : norm_f_.data();
      add_rmsnorm_rows(h, out, T, d, next_w, c.norm_eps, xn);
      if (trace) trace->hidden_states.emplace_back(h, h + T * d);
    }
    if (trace) trace->hidden_states.emplace_back(xn, xn + T * d);
  }

  // out [T, d_model] = MambaMixer(xn) for layer li, continuing the conv windows and SSM states
  // of the rows' sequences (as layers() describes them):
  //   (x, z) = in_proj(xn);  x = silu(conv1d(x));  (dt, B, C) = x_proj(x);  dt = dt_proj(dt)
  //   y = selective_scan(x, softplus(dt), A = −exp(A_log), B, C, D) · silu(z);  out = out_proj(y)
  // The linears run on all T rows; the conv and the scan on each sequence's run of rows.
  void mixer(const Layer& L, int64_t li, std::span<Mamba1State* const> seqs, Mamba1Buffers& w, const float* xn,
             int64_t T, float* out) const {
    const auto& c = cfg_;
    const int64_t DI = c.d_inner, N = c.d_state, R = c.dt_rank, XP = c.x_proj_dim();
    const int64_t runs = int64_t(seqs.size()), run_len = runs == 1 ? T : 1;  // sequence r: rows r·run_len ...
    float* xz = grow(w.xz, T * 2 * DI);
    L.in_proj.forward(xn, T, xz);

    float* xc = grow(w.xc, T * DI);
    for (int64_t r = 0; r < runs; ++r)
      causal_conv_silu(xz + r * run_len * 2 * DI, 2 * DI, run_len, seqs[size_t(r)]->conv_at(li), L.conv_wt.data(),
                       L.conv_b.data(), DI, c.d_conv, xc + r * run_len * DI, w.conv_tail);

    float* xdb = grow(w.xdb, T * XP);  // [T][dt_rank | B | C]
    L.x_proj.forward(xc, T, xdb);
    if (c.bcdt_norm) {
      rms_rows_inplace(xdb, T, R, XP, c.bcdt_eps);
      rms_rows_inplace(xdb + R, T, N, XP, c.bcdt_eps);
      rms_rows_inplace(xdb + R + N, T, N, XP, c.bcdt_eps);
    }
    float* dtin = grow(w.dtin, T * R);
    for (int64_t t = 0; t < T; ++t) std::copy_n(xdb + t * XP, R, dtin + t * R);
    float* dt = grow(w.dt, T * DI);  // dt_proj(dt) + bias; the scan applies softplus
    L.dt_proj.forward(dtin, T, dt);

    float* y = grow(w.y, T * DI);
    // Sequence r's scan arguments (its state, its rows).
    auto scan_args = [&](int64_t r) {
      const int64_t r0 = r * run_len;
      ssd::ScanArgs a;
      a.C = DI;
      a.N = N;
      a.T = run_len;
      a.S = seqs[size_t(r)]->ssm_at(li);
      a.A = L.A.data();
      a.D = L.D.data();
      a.x = xc + r0 * DI;
      a.ldx = DI;
      a.dt = dt + r0 * DI;
      a.lddt = DI;
      a.z = xz + r0 * 2 * DI + DI;
      a.ldz = 2 * DI;
      a.B = xdb + r0 * XP + R;
      a.Cm = xdb + r0 * XP + R + N;
      a.ldbc = XP;
      a.y = y + r0 * DI;
      a.ldy = DI;
      return a;
    };
    // Tasks of whole vectors of 16 channels of one sequence, each at least ~16K state updates
    // (item i: sequence i / blocks, channel block i % blocks).
    constexpr int64_t kBlock = 16;
    const int64_t blocks = (DI + kBlock - 1) / kBlock;
    pool().parallel_for(runs * blocks, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1;) {
        const int64_t r = i / blocks, b0 = i % blocks, b1 = std::min(blocks, b0 + (i1 - i));
        ssd::selective_scan(scan_args(r), b0 * kBlock, std::min(DI, b1 * kBlock));
        i += b1 - b0;
      }
    }, row_grain(kBlock * N * run_len));
    L.out_proj.forward(y, T, out);
  }

  Mamba1Config cfg_;
  TensorStore store_;
  EmbeddingHead io_;
  std::vector<float> norm_f_;
  std::vector<Layer> layers_;
  // decode_batch's buffers, reused from call to call (one caller at a time).
  mutable std::mutex batch_mu_;
  mutable std::vector<Mamba1State*> batch_st_;
  mutable Mamba1Buffers batch_;
};

}  // namespace

Mamba1Config Mamba1Config::from_json(const json& j, const std::string& path) {
  Mamba1Config c;
  const bool ssm_style = j.contains("d_model") && !j.contains("hidden_size");
  if (ssm_style) {  // mamba_ssm MambaConfig with its Mamba (v1) layer defaults
    const json ssm = j.contains("ssm_cfg") && j["ssm_cfg"].is_object() ? j["ssm_cfg"] : json::object();
    if (ssm.contains("layer") && ssm["layer"] != "Mamba1")
      fail("{}: ssm_cfg.layer is {}, expected \"Mamba1\"", path, ssm["layer"].dump());
    c.d_model = json_int(j, "d_model", path);
    c.n_layer = json_int(j, "n_layer", path);
    const int64_t v = json_int(j, "vocab_size", path);
    const int64_t mult = json_int_or(j, "pad_vocab_size_multiple", 8, path);
    c.vocab = mult > 0 ? (v + mult - 1) / mult * mult : v;
    c.d_state = json_int_or(ssm, "d_state", 16, path);
    c.d_conv = json_int_or(ssm, "d_conv", 4, path);
    c.d_inner = json_int_or(ssm, "expand", 2, path) * c.d_model;
    c.dt_rank = (c.d_model + 15) / 16;
    if (ssm.contains("dt_rank") && !(ssm["dt_rank"].is_string() && ssm["dt_rank"] == "auto"))
      c.dt_rank = json_int(ssm, "dt_rank", path);
    c.norm_eps = j.contains("norm_epsilon") ? json_float(j["norm_epsilon"], path + ": norm_epsilon") : 1e-5;
    c.tie_embeddings = json_bool_or(j, "tie_embeddings", true, path);
    c.conv_bias = json_bool_or(ssm, "conv_bias", true, path);
    c.proj_bias = json_bool_or(ssm, "bias", false, path);
    if (!json_bool_or(j, "rms_norm", true, path)) fail("{}: rms_norm=false (LayerNorm Mamba) is not supported", path);
  } else {
    c.d_model = json_int(j, "hidden_size", path);
    c.n_layer = json_int(j, "num_hidden_layers", path);
    c.vocab = json_int(j, "vocab_size", path);
    c.d_state = json_int_or(j, "state_size", 16, path);
    c.d_conv = json_int_or(j, "conv_kernel", 4, path);
    c.d_inner = json_int_or(j, "intermediate_size", json_int_or(j, "expand", 2, path) * c.d_model, path);
    c.dt_rank = (c.d_model + 15) / 16;
    if (j.contains("time_step_rank") && !(j["time_step_rank"].is_string() && j["time_step_rank"] == "auto"))
      c.dt_rank = json_int(j, "time_step_rank", path);
    c.norm_eps = j.contains("layer_norm_epsilon") ? json_float(j["layer_norm_epsilon"], path + ": layer_norm_epsilon")
                                                  : 1e-5;
    c.tie_embeddings = json_bool_or(j, "tie_word_embeddings", true, path);
    c.conv_bias = json_bool_or(j, "use_conv_bias", true, path);
    c.proj_bias = json_bool_or(j, "use_bias", false, path);
    if (j.contains("hidden_act") && !j["hidden_act"].is_null() && j["hidden_act"] != "silu" && j["hidden_act"] != "swish")
      fail("{}: hidden_act {} is not supported (only \"silu\")", path, j["hidden_act"].dump());
    c.bcdt_norm = j.contains("model_type") && j["model_type"] == "falcon_mamba";
    if (c.bcdt_norm && j.contains("mixer_rms_eps"))
      c.bcdt_eps = json_float(j["mixer_rms_eps"], path + ": mixer_rms_eps");
  }
  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0 || v > (int64_t(1) << 24)) fail("{}: {} = {} is out of range", path, what, v);
  };
  positive(c.d_model, "hidden size");
  positive(c.n_layer, "number of layers");
  positive(c.vocab, "vocab_size");
  positive(c.d_state, "state size");
  positive(c.d_conv, "conv kernel");
  positive(c.d_inner, "intermediate_size");
  positive(c.dt_rank, "time_step_rank");
  if (!(c.norm_eps >= 0) || !std::isfinite(c.norm_eps)) fail("{}: layer_norm_epsilon {} is out of range", path, c.norm_eps);
  return c;
}

std::unique_ptr<Model> load_mamba1(const std::string& dir, const json& cfg, const LoadOptions&) {
  auto c = Mamba1Config::from_json(cfg, (std::filesystem::path(dir) / "config.json").string());
  return std::make_unique<Mamba1Model>(dir, std::move(c));
}

}  // namespace hxq
