// Mamba1 specifics (references: reference_test): the mamba_ssm checkpoint layout, Falcon-Mamba
// against a naive double-precision implementation of its equations, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "io/safetensors.h"
#include "models/model.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
using test::floats_of;
using test::ids_of;
using test::max_abs_diff;

namespace {

const char* kFixture = "fixtures/hf/mamba-tiny";

std::vector<float> logits_of(const std::string& dir, const std::vector<int32_t>& ids) {
  auto m = load_model(dir);
  std::vector<float> out(ids.size() * size_t(m->vocab_size()));
  auto st = m->new_state();
  m->forward(*st, ids, 0, out.data());
  return out;
}

// The block equations token by token in double precision, straight from the checkpoint (the
// transformers fixture's names and a tied head): an independent check of the engine's layout,
// conv window, scan and gating, with the Falcon-Mamba norms on dt, B and C when `falcon`.
std::vector<float> naive_mamba1(const std::string& dir, const std::vector<int32_t>& ids, bool falcon) {
  auto st = TensorStore::open(dir + "/model.safetensors");
  auto get = [&](const std::string& n) { return floats_of(st.get(n)); };
  const auto emb = get("backbone.embeddings.weight");
  const int64_t d = st.get("backbone.embeddings.weight").shape[1], V = st.get("backbone.embeddings.weight").shape[0];
  const auto& xp = st.get("backbone.layers.0.mixer.x_proj.weight");
  const int64_t DI = xp.shape[1], N = st.get("backbone.layers.0.mixer.A_log").shape[1];
  const int64_t R = xp.shape[0] - 2 * N, K = st.get("backbone.layers.0.mixer.conv1d.weight").shape[2];
  int64_t L = 0;
  while (st.contains("backbone.layers." + std::to_string(L) + ".norm.weight")) ++L;
  const int64_t T = int64_t(ids.size());
  auto rms = [](std::vector<double>& v, const std::vector<float>* w, double eps) {
    double ss = 0;
    for (double x : v) ss += x * x;
    const double inv = 1.0 / std::sqrt(ss / double(v.size()) + eps);
    for (size_t i = 0; i < v.size(); ++i) v[i] *= inv * (w ? (*w)[i] : 1.0);
  };
  auto matvec = [](const std::vector<float>& W, const std::vector<double>& x, int64_t out) {
    std::vector<double> y(static_cast<size_t>(out), 0.0);
    for (int64_t o = 0; o < out; ++o)
      for (size_t i = 0; i < x.size(); ++i) y[size_t(o)] += double(W[size_t(o) * x.size() + i]) * x[i];
    return y;
  };
  auto silu = [](double x) { return x / (1.0 + std::exp(-x)); };
  std::vector<std::vector<double>> h(static_cast<size_t>(T), std::vector<double>(static_cast<size_t>(d)));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < d; ++i) h[size_t(t)][size_t(i)] = emb[size_t(ids[size_t(t)] * d + i)];
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    const auto nw = get(p + "norm.weight"), win = get(p + "mixer.in_proj.weight"), wx = get(p + "mixer.x_proj.weight"),
               wdt = get(p + "mixer.dt_proj.weight"), bdt = get(p + "mixer.dt_proj.bias"),
               wout = get(p + "mixer.out_proj.weight"), cw = get(p + "mixer.conv1d.weight"),
               cb = get(p + "mixer.conv1d.bias"), alog = get(p + "mixer.A_log"), D = get(p + "mixer.D");
    std::vector<std::vector<double>> xs(static_cast<size_t>(T)), zs(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      auto xn = h[size_t(t)];
      rms(xn, &nw, 1e-5);
      auto xz = matvec(win, xn, 2 * DI);
      xs[size_t(t)].assign(xz.begin(), xz.begin() + DI);
      zs[size_t(t)].assign(xz.begin() + DI, xz.end());
    }
    std::vector<double> S(static_cast<size_t>(DI * N), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> xc(static_cast<size_t>(DI));
      for (int64_t c = 0; c < DI; ++c) {
        double a = cb[size_t(c)];
        for (int64_t j = 0; j < K; ++j) {
          const int64_t s = t - (K - 1) + j;
          if (s >= 0) a += double(cw[size_t(c * K + j)]) * xs[size_t(s)][size_t(c)];
        }
        xc[size_t(c)] = silu(a);
      }
      auto xdb = matvec(wx, xc, R + 2 * N);
      std::vector<double> dtr(xdb.begin(), xdb.begin() + R), B(xdb.begin() + R, xdb.begin() + R + N),
          C(xdb.begin() + R + N, xdb.end());
      if (falcon) {
        rms(dtr, nullptr, 1e-6);
        rms(B, nullptr, 1e-6);
        rms(C, nullptr, 1e-6);
      }
      auto dt = matvec(wdt, dtr, DI);
      std::vector<double> y(static_cast<size_t>(DI));
      for (int64_t c = 0; c < DI; ++c) {
        const double delta = std::log1p(std::exp(dt[size_t(c)] + bdt[size_t(c)]));
        double acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          double& s = S[size_t(c * N + n)];
          s = std::exp(-delta * std::exp(double(alog[size_t(c * N + n)]))) * s + delta * B[size_t(n)] * xc[size_t(c)];
          acc += s * C[size_t(n)];
        }
        y[size_t(c)] = (acc + D[size_t(c)] * xc[size_t(c)]) * silu(zs[size_t(t)][size_t(c)]);
      }
      auto o = matvec(wout, y, d);
      for (int64_t i = 0; i < d; ++i) h[size_t(t)][size_t(i)] += o[size_t(i)];
    }
  }
  const auto nf = get("backbone.norm_f.weight");
  std::vector<float> logits(size_t(T * V));
  for (int64_t t = 0; t < T; ++t) {
    auto xn = h[size_t(t)];
    rms(xn, &nf, 1e-5);
    auto lg = matvec(emb, xn, V);
    for (int64_t v = 0; v < V; ++v) logits[size_t(t * V + v)] = float(lg[size_t(v)]);
  }
  return logits;
}

TEST(Mamba1, NaiveEquationsMatchTransformersAndFalconNormsMatchThem) {
  HXQ_REQUIRE_DATA(std::string(kFixture) + "/reference.safetensors");
  const std::string src = test::data_path(kFixture);
  auto ref = TensorStore::open(src + "/reference.safetensors");
  auto ids = ids_of(ref.get("input_ids"));
  ids.resize(20);
  const auto want = floats_of(ref.get("logits"));
  // The naive equations are transformers' (so they are a valid reference for Falcon-Mamba too).
  const auto naive = naive_mamba1(src, ids, false);
  EXPECT_LE(max_abs_diff(naive.data(), want.data(), naive.size()), tol::kLogitAbs);

  const auto dir = test::temp_dir("falcon");
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"model_type": "falcon_mamba",
      "architectures": ["FalconMambaForCausalLM"], "mixer_rms_eps": 1e-6})"), nullptr);
  const auto got = logits_of(dir, ids), falcon = naive_mamba1(src, ids, true);
  const float err = max_abs_diff(got.data(), falcon.data(), got.size());
  std::printf("[ falcon_mamba ] max |logit - naive| = %.3g\n", err);
  EXPECT_LE(err, tol::kLogitAbs);
  EXPECT_GT(max_abs_diff(got.data(), naive.data(), got.size()), 0.1f);  // the norms do change the model
  EXPECT_EQ(load_model(dir)->summary().arch, "falcon_mamba");
}

TEST(Mamba1, MambaSsmLayoutMatchesReference) {
  HXQ_REQUIRE_DATA(std::string(kFixture) + "/reference.safetensors");
  const std::string src = test::data_path(kFixture);
  const auto dir = test::temp_dir("mamba-ssm");
  // state-spaces/mamba-* style: mamba_ssm's MambaConfig, backbone.embedding, a stored (tied) lm_head.
  const auto src_store = TensorStore::open(src + "/model.safetensors");
  const auto& e = src_store.get("backbone.embeddings.weight");
  test::write_edited_checkpoint(
      src, dir,
      R"({"d_model": 64, "n_layer": 2, "vocab_size": 1021, "ssm_cfg": {}, "rms_norm": true,
          "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8, "tie_embeddings": true})",
      [&](test::EditedTensor& t) {
        if (t.name == "backbone.embeddings.weight") t.name = "backbone.embedding.weight";
        return true;
      },
      {{"lm_head.weight", e.shape, floats_of(e)}});
  auto ref = TensorStore::open(src + "/reference.safetensors");
  const auto ids = ids_of(ref.get("input_ids"));
  const auto want = floats_of(ref.get("logits"));
  auto m = load_model(dir);
  EXPECT_EQ(m->summary().arch, "mamba");
  EXPECT_EQ(m->vocab_size(), 1024);  // 1021 padded to a multiple of 8
  const auto got = logits_of(dir, ids);
  EXPECT_LE(max_abs_diff(got.data(), want.data(), want.size()), tol::kLogitAbs);
}

// A one-line error naming `what` (and config.json where the config is to blame).
void expect_error(const std::string& dir, const std::vector<std::string>& parts) {
  try {
    load_model(dir);
    FAIL() << "no error for " << dir;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    for (auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
  }
}

TEST(Mamba1, BadInputErrorsNameTheTensorOrConfig) {
  HXQ_REQUIRE_DATA(std::string(kFixture) + "/model.safetensors");
  const std::string src = test::data_path(kFixture);
  const auto dir = test::temp_dir("mamba1-bad");
  auto drop = [&](const std::string& name) {
    return [name](test::EditedTensor& t) { return t.name != name; };
  };
  const std::string cfg = test::patched_config(src, "{}");
  test::write_edited_checkpoint(src, dir, cfg, drop("backbone.layers.1.mixer.x_proj.weight"));
  expect_error(dir, {"backbone.layers.1.mixer.x_proj.weight"});
  test::write_edited_checkpoint(src, dir, cfg, drop("backbone.layers.0.mixer.dt_proj.bias"));
  expect_error(dir, {"backbone.layers.0.mixer.dt_proj.bias"});
  test::write_edited_checkpoint(src, dir, cfg, drop("backbone.norm_f.weight"));
  expect_error(dir, {"backbone.norm_f.weight"});
  // Shapes that contradict the config: d_inner, dt rank, state size.
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"intermediate_size": 96})"), nullptr);
  expect_error(dir, {"in_proj", "config.json"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"time_step_rank": 6})"), nullptr);
  expect_error(dir, {"x_proj", "config.json"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"state_size": 8})"), nullptr);
  expect_error(dir, {"x_proj", "config.json"});
  // A_log of the wrong shape with a consistent x_proj.
  test::write_edited_checkpoint(src, dir, cfg, [](test::EditedTensor& t) {
    if (t.name == "backbone.layers.0.mixer.A_log") t.shape = {64, 32};
    return true;
  });
  expect_error(dir, {"backbone.layers.0.mixer.A_log", "config.json"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"hidden_act": "gelu"})"), nullptr);
  expect_error(dir, {"config.json", "hidden_act"});
  test::write_edited_checkpoint(src, dir, test::patched_config(src, R"({"num_hidden_layers": 0})"), nullptr);
  expect_error(dir, {"config.json"});
  // The CLI: exit 1 and the message on one line.
  const int32_t ids[3] = {1, 2, 3};
  test::write_file(dir + "/ids.i32", std::string(reinterpret_cast<const char*>(ids), sizeof ids));
  auto r = test::run_cli({"logits", "-m", dir, "--ids-file", dir + "/ids.i32", "--out", dir + "/out.f32"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("config.json"), std::string::npos) << r.err;
  EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

}  // namespace
