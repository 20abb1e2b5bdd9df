// Tests of the HXQ codec: optimal 1-D k-means (against a brute-force DP and against Lloyd on
// real weights), the bit-exact reimplementation of helix-substrate's quantizer (against the
// anchor checkpoints it wrote), numpy-compatible helpers, and encode/decode/stats.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "codec/helix_reference.h"
#include "codec/hxq_codec.h"
#include "codec/hxq_config.h"
#include "codec/kmeans1d.h"
#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hxq {
namespace {

namespace fs = std::filesystem;

std::vector<float> tensor_f32(const TensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

WeightedPoints random_points(std::mt19937& g, int n, bool integer_weights) {
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_int_distribution<int> wd(1, 9);
  std::vector<double> v;
  while (int(v.size()) < n) {
    v.push_back(double(float(nd(g))));
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  }
  WeightedPoints p;
  p.value = v;
  for (int i = 0; i < n; ++i) p.weight.push_back(integer_weights ? wd(g) : 1.0);
  return p;
}

// ---- optimal k-means ----------------------------------------------------------------------

TEST(CodecKMeans, OptimalEqualsBruteForceOnSmallRandomInputs) {
  std::mt19937 g(1234);
  for (int trial = 0; trial < 60; ++trial) {
    const int n = 1 + int(g() % 60);
    const int k = 1 + int(g() % 12);
    const auto p = random_points(g, n, trial % 2 == 0);
    const auto a = kmeans1d_optimal(p, k);
    const auto b = kmeans1d_bruteforce(p, k);
    ASSERT_EQ(a.starts.size(), b.starts.size());
    // Both SSEs are recomputed directly (two-pass, long double). The DP's prefix-sum costs carry
    // an absolute error of a few ulps of the total variance (~n·1e-16), so equal optimal values
    // must agree to ~1e-12 relative; distinct partitions of random data differ far more.
    EXPECT_NEAR(a.sse, b.sse, 1e-12 * (1.0 + b.sse)) << "trial " << trial << " n=" << n << " k=" << k;
    EXPECT_EQ(a.starts, b.starts) << "trial " << trial;
    for (size_t j = 1; j < a.centroids.size(); ++j) EXPECT_LT(a.centroids[j - 1], a.centroids[j]);
  }
}

TEST(CodecKMeans, LargerInputsMatchBruteForce) {
  std::mt19937 g(99);
  const auto p = random_points(g, 400, true);
  for (int k : {2, 7, 33}) {
    const auto a = kmeans1d_optimal(p, k);
    const auto b = kmeans1d_bruteforce(p, k);
    EXPECT_NEAR(a.sse, b.sse, 1e-12 * b.sse) << k;  // see the tolerance note above
  }
}

TEST(CodecKMeans, FewerPointsThanClusters) {
  WeightedPoints p;
  p.value = {-1.0, 0.5, 2.0};
  p.weight = {1, 2, 3};
  const auto r = kmeans1d_optimal(p, 256);
  ASSERT_EQ(r.centroids.size(), 3u);
  EXPECT_EQ(r.centroids[0], -1.f);
  EXPECT_EQ(r.centroids[2], 2.f);
  EXPECT_EQ(r.sse, 0.0);
  // encode pads the codebook with the last value
  std::vector<float> w = {2.f, -1.f, 0.5f, 0.5f, 2.f, 2.f};
  EncodeOptions o;
  o.sidecar = SidecarMethod::None;
  auto t = encode(w.data(), 2, 3, o);
  ASSERT_EQ(t.codebook.size(), 256u);
  EXPECT_EQ(t.codebook[0], -1.f);
  EXPECT_EQ(t.codebook[1], 0.5f);
  for (int j = 2; j < 256; ++j) EXPECT_EQ(t.codebook[size_t(j)], 2.f);
  std::vector<float> d(6);
  decode(t, d.data());
  EXPECT_EQ(d, w);
}

TEST(CodecKMeans, RejectsBadInput) {
  WeightedPoints p;
  p.value = {1.0, 1.0};
  p.weight = {1, 1};
  EXPECT_THROW(kmeans1d_optimal(p, 2), Error);
  p.value = {0.0, 1.0};
  EXPECT_THROW(kmeans1d_optimal(p, 0), Error);
  std::vector<float> w = {1.f, NAN};
  EXPECT_THROW(encode(w.data(), 1, 2, EncodeOptions{}), Error);
}

std::vector<float> random_bf16(std::mt19937& g, int64_t n, float sigma) {
  std::normal_distribution<float> nd(0.f, sigma);
  std::vector<float> w(static_cast<size_t>(n));
  for (auto& x : w) x = bf16_to_f32(f32_to_bf16(nd(g)));
  return w;
}

TEST(CodecKMeans, OptimalBeatsLloydOnRandomBf16) {
  std::mt19937 g(7);
  for (int trial = 0; trial < 3; ++trial) {
    const auto w = random_bf16(g, 256 * 300, 0.02f * float(trial + 1));
    EncodeOptions opt, lloyd;
    opt.sidecar = lloyd.sidecar = SidecarMethod::None;
    opt.source_dtype = DType::BF16;
    lloyd.codebook = CodebookMethod::Lloyd;
    const auto a = encode(w.data(), 256, 300, opt);
    const auto b = encode(w.data(), 256, 300, lloyd);
    const auto sa = encode_stats(w.data(), a), sb = encode_stats(w.data(), b);
    EXPECT_LE(sa.mse, sb.mse) << trial;
    EXPECT_GT(sa.sqnr_db, 30.0);
  }
}

// Every 2-D float weight of every model in the shared data: optimal MSE <= Lloyd MSE.
TEST(CodecKMeans, OptimalBeatsLloydOnAllSharedModels) {
  HXQ_REQUIRE_DATA("fixtures/hf");
  std::vector<std::string> files;
  for (const char* dir : {"fixtures/hf", "models"}) {
    if (!test::have_data(dir)) continue;
    for (auto& e : fs::directory_iterator(test::data_path(dir)))
      if (fs::exists(e.path() / "model.safetensors")) files.push_back((e.path() / "model.safetensors").string());
  }
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty());
  int tested = 0;
  for (const auto& f : files) {
    const auto store = TensorStore::open(f);
    for (const auto& name : store.names()) {
      const TensorInfo& t = store.get(name);
      if (t.shape.size() != 2 || (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)) continue;
      const int64_t rows = t.shape[0], cols = t.shape[1];
      EncodeOptions opt, lloyd;
      opt.sidecar = lloyd.sidecar = SidecarMethod::None;
      lloyd.codebook = CodebookMethod::Lloyd;
      const auto a = encode(t.data, t.dtype, rows, cols, opt);
      const auto b = encode(t.data, t.dtype, rows, cols, lloyd);
      const auto sa = encode_stats(t.data, t.dtype, a), sb = encode_stats(t.data, t.dtype, b);
      // Tolerance: 1e-9 relative for the rounding of the float32 centroids (both are rounded).
      EXPECT_LE(sa.mse, sb.mse * (1 + 1e-9)) << f << " " << name;
      ++tested;
    }
  }
  EXPECT_GT(tested, 50);
}

// ---- encode / decode ------------------------------------------------------------------------

TEST(CodecEncode, ErrorSidecarTakesLargestErrorsExactly) {
  std::mt19937 g(3);
  const auto w = random_bf16(g, 64 * 128, 0.05f);
  EncodeOptions o;
  o.source_dtype = DType::BF16;
  o.sidecar_fraction = 0.01;
  const auto t = encode(w.data(), 64, 128, o);
  validate(t);
  ASSERT_EQ(t.sidecar_pos.size(), size_t(std::floor(0.01 * 64 * 128)));
  // the chosen errors are >= every unchosen one; values are exact
  std::vector<double> err(w.size());
  for (size_t i = 0; i < w.size(); ++i) err[i] = std::fabs(double(w[i]) - t.codebook[t.indices[i]]);
  std::vector<char> chosen(w.size(), 0);
  double min_chosen = INFINITY;
  for (size_t s = 0; s < t.sidecar_pos.size(); ++s) {
    chosen[size_t(t.sidecar_pos[s])] = 1;
    EXPECT_EQ(t.sidecar_val[s], w[size_t(t.sidecar_pos[s])]);
    min_chosen = std::min(min_chosen, err[size_t(t.sidecar_pos[s])]);
  }
  for (size_t i = 0; i < w.size(); ++i) {
    if (!chosen[i]) {
      EXPECT_LE(err[i], min_chosen);
    }
  }
  std::vector<float> d(w.size());
  decode(t, d.data());
  const auto st = encode_stats(w.data(), t);
  double mse = 0, mx = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    mse += (double(w[i]) - d[i]) * (double(w[i]) - d[i]);
    mx = std::max(mx, std::fabs(double(w[i]) - d[i]));
  }
  EXPECT_NEAR(st.mse, mse / double(w.size()), 1e-15);
  EXPECT_EQ(st.max_abs_err, mx);
  EXPECT_LT(st.mse, st.mse_vq);
}

TEST(CodecEncode, Bf16PathEqualsRawBf16Path) {
  std::mt19937 g(5);
  const auto w = random_bf16(g, 32 * 96, 0.1f);
  std::vector<uint16_t> raw(w.size());
  for (size_t i = 0; i < w.size(); ++i) raw[i] = f32_to_bf16(w[i]);
  EncodeOptions o;
  o.source_dtype = DType::BF16;
  const auto a = encode(w.data(), 32, 96, o);
  const auto b = encode(raw.data(), DType::BF16, 32, 96, o);
  o.source_dtype = DType::F32;  // the generic F32 path must find the same optimum
  const auto c = encode(w.data(), 32, 96, o);
  EXPECT_EQ(a.codebook, b.codebook);
  EXPECT_EQ(a.indices, b.indices);
  EXPECT_EQ(a.sidecar_pos, b.sidecar_pos);
  EXPECT_EQ(a.codebook, c.codebook);
  EXPECT_EQ(a.indices, c.indices);
  EXPECT_EQ(a.sidecar_pos, c.sidecar_pos);
}

TEST(CodecEncode, F32HistogramPathIsCloseToExact) {
  std::mt19937 g(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> w(20000);
  for (auto& x : w) x = nd(g);
  EncodeOptions exact, binned;
  exact.sidecar = binned.sidecar = SidecarMethod::None;
  exact.k = binned.k = 16;
  binned.f32_exact_bound = 2000;  // forces the histogram path
  const auto a = encode(w.data(), 100, 200, exact);
  const auto b = encode(w.data(), 100, 200, binned);
  const auto sa = encode_stats(w.data(), a), sb = encode_stats(w.data(), b);
  EXPECT_LE(sa.mse, sb.mse * (1 + 1e-9));  // exact is optimal (float rounding of centroids)
  // Binned DP + Lloyd polish: within 0.1 % of the optimum here (bound in hxq_codec.h).
  EXPECT_LE(sb.mse, sa.mse * 1.001);
}

TEST(CodecEncode, DecodeRejectsMalformed) {
  HxqTensor t;
  t.rows = 2;
  t.cols = 2;
  t.codebook.assign(256, 0.f);
  t.indices = {0, 1, 2, 3};
  t.sidecar_pos = {3, 1};
  t.sidecar_val = {1.f, 2.f};
  std::vector<float> out(4);
  EXPECT_THROW(decode(t, out.data()), Error);  // not ascending
  t.sidecar_pos = {1, 4};
  EXPECT_THROW(decode(t, out.data()), Error);  // out of range
  t.sidecar_pos = {1, 3};
  EXPECT_NO_THROW(decode(t, out.data()));
  t.codebook.resize(255);
  EXPECT_THROW(decode(t, out.data()), Error);
}

// ---- numpy-compatible helpers ----------------------------------------------------------------

TEST(CodecNumpy, LegacyRandomStateMatchesNumpy) {
  // np.random.RandomState(42).permutation(10) == [8 1 5 0 7 2 9 4 3 6];
  // RandomState(42).random_sample() == 0.3745401188473625
  EXPECT_EQ(helix::np_legacy_permutation(42, 10), (std::vector<int64_t>{8, 1, 5, 0, 7, 2, 9, 4, 3, 6}));
  // np.random.RandomState(0).permutation(10) == [2 8 4 9 1 6 7 3 0 5]
  EXPECT_EQ(helix::np_legacy_permutation(0, 10), (std::vector<int64_t>{2, 8, 4, 9, 1, 6, 7, 3, 0, 5}));
  // above 500,000 elements k-means sees flat[permutation(n)[:500000]]
  std::vector<float> flat(500123);
  for (size_t i = 0; i < flat.size(); ++i) flat[i] = float(i);
  const auto sample = helix::kmeans_sample(flat.data(), int64_t(flat.size()));
  const auto perm = helix::np_legacy_permutation(42, int64_t(flat.size()));
  ASSERT_EQ(sample.size(), size_t(helix::kKmeansMaxSamples));
  for (size_t i = 0; i < sample.size(); ++i) ASSERT_EQ(sample[i], float(perm[i]));
  helix::Mt19937 g(42);
  EXPECT_EQ(g.next_double(), 0.3745401188473625);
  std::mt19937 ref(42);
  helix::Mt19937 g2(42);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(g2.next_u32(), ref());
}

TEST(CodecNumpy, PercentileAndSums) {
  std::vector<float> s = {1.f, 2.f, 4.f, 8.f};
  EXPECT_EQ(helix::np_quantile_linear(s.data(), 4, 0.5), 3.0);
  EXPECT_EQ(helix::np_quantile_linear(s.data(), 4, 1.0), 8.0);
  EXPECT_EQ(helix::np_quantile_linear(s.data(), 4, 0.0), 1.0);
  const auto q = helix::np_linspace_percent_fractions(5);
  EXPECT_EQ(q, (std::vector<double>{0.0, 0.25, 0.5, 0.75, 1.0}));
  // pairwise float32 summation is exact on small integers and differs from naive on a classic case
  std::vector<float> a(1000, 0.1f);
  float naive = 0.f;
  for (float x : a) naive += x;
  const float pw = helix::np_sum_f32(a.data(), 1000);
  EXPECT_NE(pw, naive);
  EXPECT_NEAR(pw, 100.f, 1e-4f);
  std::vector<float> ones(100000, 1.f);
  EXPECT_EQ(helix::np_sum_f32(ones.data(), 100000), 100000.f);
}

TEST(CodecNumpy, ArgsortSortsLikeNumpy) {
  std::mt19937 g(1);
  std::uniform_int_distribution<int> d(0, 20);
  for (int n : {0, 1, 5, 16, 17, 100, 1000}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = float(d(g));
    const auto idx = helix::np_argsort_quicksort(v);
    ASSERT_EQ(idx.size(), v.size());
    for (size_t i = 1; i < idx.size(); ++i) EXPECT_LE(v[size_t(idx[i - 1])], v[size_t(idx[i])]);
    auto sorted = idx;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) EXPECT_EQ(sorted[size_t(i)], i);
  }
}

TEST(CodecNumpy, Float32ArgminAssignment) {
  // lowest index on ties, float32 distances
  std::vector<float> c = {-1.f, 0.f, 0.f, 1.f};
  EXPECT_EQ(helix::assign_one_f32(0.f, c.data(), 4), 1);
  EXPECT_EQ(helix::assign_one_f32(0.5f, c.data(), 4), 1);  // tie 0 vs 1 -> lower index
  EXPECT_EQ(helix::assign_one_f32(-0.5f, c.data(), 4), 0);
  EXPECT_EQ(helix::assign_one_f32(5.f, c.data(), 4), 3);
  std::mt19937 g(2);
  std::normal_distribution<float> nd;
  std::vector<float> cb(256);
  for (auto& x : cb) x = nd(g);
  std::sort(cb.begin(), cb.end());
  for (int i = 0; i < 20000; ++i) {
    const float x = nd(g) * (i % 3 ? 1.f : 1e-3f);
    int best = 0;
    for (int j = 1; j < 256; ++j)
      if (std::fabs(x - cb[size_t(j)]) < std::fabs(x - cb[size_t(best)])) best = j;
    ASSERT_EQ(helix::assign_one_f32(x, cb.data(), 256), best);
  }
}

TEST(CodecNumpy, SidecarPolicyByModuleName) {
  EXPECT_EQ(helix::sidecar_policy_for("model.layers.3.self_attn.q_proj").percentile, 99.95);
  EXPECT_EQ(helix::sidecar_policy_for("model.layers.3.self_attn.k_proj.weight").percentile, 99.95);
  EXPECT_EQ(helix::sidecar_policy_for("model.layers.3.self_attn.v_proj").percentile, 99.9);
  EXPECT_EQ(helix::sidecar_policy_for("backbone.layers.0.mixer.in_proj").max_corrections, 512);
  EXPECT_EQ(helix::sidecar_policy_for("backbone.layers.0.mixer.x_proj").max_corrections, 256);
  EXPECT_EQ(helix::sidecar_policy_for("something.else").max_corrections, 256);
}

// ---- bit-exact reproduction of helix-substrate's anchor checkpoints ----------------------------

void check_anchor(const std::string& model) {
  const std::string dir = "fixtures/anchor-hxq/" + model;
  const auto cfg = read_hxq_config(test::data_path(dir));
  ASSERT_TRUE(cfg.has_value());
  const auto expected = parse_json_file(test::data_path(dir + "/expected.json"));
  const std::string src = (fs::path(test::data_path(dir)) / expected["source_model"].get<std::string>()).string();
  const auto anchor = TensorStore::open(test::data_path(dir + "/model.safetensors"));
  const auto source = TensorStore::open(src);
  ASSERT_FALSE(cfg->compressed_modules.empty());
  for (const auto& m : cfg->compressed_modules) {
    SCOPED_TRACE(model + " " + m);
    const TensorInfo& w = source.get(m + ".weight");
    const int64_t rows = w.shape[0], cols = w.shape[1];
    EncodeOptions o;
    o.codebook = CodebookMethod::Lloyd;
    o.sidecar = SidecarMethod::Magnitude;
    o.module = m;
    const auto t = encode(w.data, w.dtype, rows, cols, o);
    const auto cb = tensor_f32(anchor.get(m + ".codebook"));
    ASSERT_EQ(cb.size(), 256u);
    EXPECT_EQ(0, std::memcmp(cb.data(), t.codebook.data(), 1024)) << "codebook differs";
    const TensorInfo& ix = anchor.get(m + ".indices");
    ASSERT_EQ(ix.numel(), rows * cols);
    EXPECT_EQ(0, std::memcmp(ix.data, t.indices.data(), t.indices.size())) << "indices differ";
    const TensorInfo& sp = anchor.get(m + ".sidecar_positions");
    std::vector<int64_t> pos(static_cast<size_t>(sp.numel()));
    std::memcpy(pos.data(), sp.data, pos.size() * 8);
    EXPECT_EQ(pos, t.sidecar_pos);
    EXPECT_EQ(tensor_f32(anchor.get(m + ".sidecar_values")), t.sidecar_val);
  }
}

TEST(CodecHelix, ReproducesAnchorMamba2Tiny) {
  HXQ_REQUIRE_DATA("fixtures/anchor-hxq/mamba2-tiny");
  check_anchor("mamba2-tiny");
}
TEST(CodecHelix, ReproducesAnchorStories260K) {
  HXQ_REQUIRE_DATA("fixtures/anchor-hxq/stories260K-hf");
  check_anchor("stories260K-hf");
}
TEST(CodecHelix, ReproducesAnchorMamba2Neox17m) {
  HXQ_REQUIRE_DATA("fixtures/anchor-hxq/mamba2-neox-17m");
  check_anchor("mamba2-neox-17m");
}

}  // namespace
}  // namespace hxq
