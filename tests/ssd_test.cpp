// The Mamba2 mixer kernels (kernels/ssd.h): every instruction set against the scalar reference,
// tails of every length, exp at the extremes, and the whole Mamba2 forward on each ISA and
// thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/cpu_features.h"
#include "kernels/ssd.h"
#include "models/model.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
namespace sd = hxq::ssd::detail;

namespace {

// SIMD vs scalar: FMA contraction, another summation order (sums of <= 300 terms of O(1)
// values) and the polynomial exp (< 2e-7 relative vs libm's < 1 ulp) each change results by a few
// ulp; 1e-5 relative to the magnitude of the terms (~80 ulp) leaves room for their accumulation
// and is far below any real bug (wrong tap, lane or tail: errors of O(1)).
constexpr float kRel = 1e-5f;

struct IsaGuard {
  Isa saved = kernel_isa();
  ~IsaGuard() { set_kernel_isa(saved); }
};

std::vector<Isa> simd_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

const sd::SsdKernels& table(Isa isa) {
  return isa == Isa::Avx512 ? sd::ssd_kernels_avx512() : isa == Isa::Avx2 ? sd::ssd_kernels_avx2()
                                                                          : sd::ssd_kernels_scalar();
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, float scale, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::fabs(got[i] - want[i]), kRel * (scale + std::fabs(want[i]))) << what << " at " << i;
}

TEST(SsdKernels, ReductionsAndElementwiseMatchScalar) {
  const auto& ref = sd::ssd_kernels_scalar();
  std::mt19937 rng(1);
  for (Isa isa : simd_isas()) {
    const auto& k = table(isa);
    const std::string tag = std::string(isa_name(isa));
    for (int64_t n : {1, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257}) {
      const std::string w = tag + " n=" + std::to_string(n);
      auto x = randn(size_t(n), rng), a = randn(size_t(n), rng), z = randn(size_t(n), rng, 4.0f);
      const float ss = ref.sumsq(x.data(), n);
      EXPECT_NEAR(k.sumsq(x.data(), n), ss, kRel * ss) << w;
      auto h1 = x, h2 = x;
      const float s1 = k.add_sumsq(h1.data(), a.data(), n), s2 = ref.add_sumsq(h2.data(), a.data(), n);
      EXPECT_NEAR(s1, s2, kRel * s2) << w;
      expect_close(h1, h2, 1.0f, w + " add");
      auto y1 = x, y2 = x;
      const float g1 = k.gate_silu_sumsq(y1.data(), z.data(), n), g2 = ref.gate_silu_sumsq(y2.data(), z.data(), n);
      EXPECT_NEAR(g1, g2, kRel * g2 + 1e-30f) << w;
      expect_close(y1, y2, 1.0f, w + " gate");
      std::vector<float> o1(size_t(n) + 1, 7.0f), o2 = o1;  // one sentinel past the end
      k.scale_mul(x.data(), a.data(), 0.37f, n, o1.data());
      ref.scale_mul(x.data(), a.data(), 0.37f, n, o2.data());
      expect_close(o1, o2, 1.0f, w + " scale_mul");
      k.mul(x.data(), a.data(), o1.data(), n);
      ref.mul(x.data(), a.data(), o2.data(), n);
      expect_close(o1, o2, 1.0f, w + " mul");
      k.scale(x.data(), -1.5f, o1.data(), n);
      ref.scale(x.data(), -1.5f, o2.data(), n);
      expect_close(o1, o2, 1.0f, w + " scale");
      k.axpby(0.5f, x.data(), 2.0f, o1.data(), n);
      ref.axpby(0.5f, x.data(), 2.0f, o2.data(), n);
      expect_close(o1, o2, 1.0f, w + " axpby");
      EXPECT_EQ(o1[size_t(n)], 7.0f) << w << ": wrote past the end";
    }
  }
}

// Decode attention (kernels/ssd.h attn_scores / attn_accumulate): every key count around the
// 4-key blocks, head sizes around the vector width and the 8-register accumulator, against the
// scalar loops; each output within kRel of the sum of its terms' magnitudes; nothing written
// past the n scores or the hd accumulators.
TEST(SsdKernels, AttentionScoresAndAccumulateMatchScalar) {
  const auto& ref = sd::ssd_kernels_scalar();
  std::mt19937 rng(9);
  for (Isa isa : simd_isas()) {
    const auto& k = table(isa);
    for (int64_t hd : {1, 8, 15, 16, 48, 64, 100, 128, 129, 256})
      for (int64_t n : {1, 3, 4, 5, 9, 64, 130}) {
        const std::string w = std::string(isa_name(isa)) + " hd=" + std::to_string(hd) + " n=" + std::to_string(n);
        const auto q = randn(size_t(hd), rng), K = randn(size_t(n * hd), rng), V = randn(size_t(n * hd), rng);
        std::vector<float> s1(size_t(n) + 1, 7.0f), s2 = s1;
        k.attn_scores(q.data(), K.data(), n, hd, 0.125f, s1.data());
        ref.attn_scores(q.data(), K.data(), n, hd, 0.125f, s2.data());
        for (int64_t j = 0; j < n; ++j) {
          double mag = 0;
          for (int64_t e = 0; e < hd; ++e) mag += std::fabs(double(q[size_t(e)]) * K[size_t(j * hd + e)]);
          ASSERT_LE(std::fabs(s1[size_t(j)] - s2[size_t(j)]), kRel * 0.125 * mag + 1e-30) << w << " key " << j;
        }
        EXPECT_EQ(s1[size_t(n)], 7.0f) << w << ": wrote past the scores";
        auto p = randn(size_t(n), rng);
        for (auto& x : p) x = std::fabs(x);
        std::vector<float> a1 = randn(size_t(hd), rng), a2 = a1;
        a1.push_back(7.0f);
        a2.push_back(7.0f);
        k.attn_accumulate(p.data(), V.data(), n, hd, a1.data());
        ref.attn_accumulate(p.data(), V.data(), n, hd, a2.data());
        for (int64_t e = 0; e < hd; ++e) {
          double mag = std::fabs(a2[size_t(e)]);
          for (int64_t j = 0; j < n; ++j) mag += std::fabs(double(p[size_t(j)]) * V[size_t(j * hd + e)]);
          ASSERT_LE(std::fabs(a1[size_t(e)] - a2[size_t(e)]), kRel * mag) << w << " lane " << e;
        }
        EXPECT_EQ(a1[size_t(hd)], 7.0f) << w << ": wrote past the accumulator";
      }
  }
}

TEST(SsdKernels, ConvStepAndRowsMatchScalar) {
  const auto& ref = sd::ssd_kernels_scalar();
  std::mt19937 rng(2);
  for (Isa isa : simd_isas()) {
    const auto& k = table(isa);
    for (int64_t K : {1, 2, 4}) {
      for (int64_t C : {5, 16, 40, 67}) {
        const std::string w = std::string(isa_name(isa)) + " K=" + std::to_string(K) + " C=" + std::to_string(C);
        auto wt = randn(size_t(K * C), rng, 0.5f), bias = randn(size_t(C), rng, 0.1f);
        auto st0 = randn(size_t(std::max<int64_t>(1, K - 1) * C), rng);
        // One step: output and the shifted window.
        auto x = randn(size_t(C), rng);
        auto s1 = st0, s2 = st0;
        std::vector<float> o1(static_cast<size_t>(C)), o2(static_cast<size_t>(C));
        k.conv_step(x.data(), s1.data(), wt.data(), bias.data(), C, K, o1.data());
        ref.conv_step(x.data(), s2.data(), wt.data(), bias.data(), C, K, o2.data());
        expect_close(o1, o2, 1.0f, w + " step out");
        EXPECT_EQ(s1, s2) << w << " step window";  // pure copies
        // Rows of a sequence with ld > C, the first rows reading the window.
        const int64_t T = 6, ld = C + 3;
        auto in = randn(size_t(T * ld), rng);
        std::vector<float> r1(size_t(T * C)), r2(r1.size());
        k.conv_rows(in.data(), ld, st0.data(), wt.data(), bias.data(), C, K, 0, 4, r1.data(), C);
        k.conv_rows(in.data(), ld, st0.data(), wt.data(), bias.data(), C, K, 4, T, r1.data(), C);
        ref.conv_rows(in.data(), ld, st0.data(), wt.data(), bias.data(), C, K, 0, T, r2.data(), C);
        expect_close(r1, r2, 1.0f, w + " rows");
      }
    }
  }
}

TEST(SsdKernels, SsmStepMatchesScalar) {
  const auto& ref = sd::ssd_kernels_scalar();
  std::mt19937 rng(3);
  for (Isa isa : simd_isas()) {
    const auto& k = table(isa);
    for (int64_t N : {8, 16, 20, 64, 128}) {
      const int64_t P = 5;
      const std::string w = std::string(isa_name(isa)) + " N=" + std::to_string(N);
      auto S0 = randn(size_t(P * N), rng), x = randn(size_t(P), rng), B = randn(size_t(N), rng),
           C = randn(size_t(N), rng);
      auto S1 = S0, S2 = S0;
      std::vector<float> y1(static_cast<size_t>(P)), y2(static_cast<size_t>(P));
      k.ssm_step(S1.data(), P, N, x.data(), B.data(), C.data(), 0.3f, 0.9f, 1.1f, y1.data());
      ref.ssm_step(S2.data(), P, N, x.data(), B.data(), C.data(), 0.3f, 0.9f, 1.1f, y2.data());
      expect_close(S1, S2, 1.0f, w + " state");
      // y sums N products of O(1) terms: compare relative to sqrt(N), their typical size.
      expect_close(y1, y2, std::sqrt(float(N)), w + " y");
    }
  }
}

TEST(SsdKernels, DecayRowAndExpExtremes) {
  const auto& ref = sd::ssd_kernels_scalar();
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-60.0f, 0.0f);
  for (Isa isa : simd_isas()) {
    const auto& k = table(isa);
    const std::string tag(isa_name(isa));
    for (int64_t n : {1, 9, 16, 23, 130}) {
      std::vector<float> cum(static_cast<size_t>(n)), dt = randn(size_t(n), rng), cb = randn(size_t(n), rng);
      for (auto& c : cum) c = u(rng);
      std::vector<float> o1(static_cast<size_t>(n)), o2(static_cast<size_t>(n));
      for (const float* cbp : {static_cast<const float*>(nullptr), static_cast<const float*>(cb.data())}) {
        k.decay_row(cbp, cum.data(), dt.data(), -0.5f, n, o1.data());
        ref.decay_row(cbp, cum.data(), dt.data(), -0.5f, n, o2.data());
        for (int64_t i = 0; i < n; ++i)  // relative: the values span e^-60 .. e^60
          ASSERT_LE(std::fabs(o1[size_t(i)] - o2[size_t(i)]), 2 * kRel * std::fabs(o2[size_t(i)]) + 1e-37f)
              << tag << " n=" << n << " i=" << i;
      }
    }
    // exp(0 - cum[u]) with dt = 1: exp at chosen points.
    const float inf = std::numeric_limits<float>::infinity();
    const std::vector<float> xs{-1e4f, -200.0f, -104.0f, -87.0f, -80.0f, -10.0f, -1e-3f, 0.0f,
                                1e-3f, 1.0f,    10.0f,   80.0f,  88.0f,  200.0f, inf,    -inf};
    std::vector<float> cum(xs.size()), ones(xs.size(), 1.0f), out(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) cum[i] = -xs[i];
    k.decay_row(nullptr, cum.data(), ones.data(), 0.0f, int64_t(xs.size()), out.data());
    for (size_t i = 0; i < xs.size(); ++i) {
      const float x = xs[i], e = std::exp(x);
      if (x >= -80.0f && x <= 88.0f) EXPECT_NEAR(out[i], e, 2e-7f * 4 * e) << tag << " exp(" << x << ")";
      else if (x < -80.0f) EXPECT_LE(out[i], 1e-37f) << tag << " exp(" << x << ")";
      else EXPECT_GE(out[i], 1e38f) << tag << " exp(" << x << ")";
      EXPECT_FALSE(std::isnan(out[i])) << tag << " exp(" << x << ")";
    }
    cum[0] = std::numeric_limits<float>::quiet_NaN();
    k.decay_row(nullptr, cum.data(), ones.data(), 0.0f, 1, out.data());
    EXPECT_TRUE(std::isnan(out[0])) << tag << ": NaN must propagate";
  }
}

TEST(SsdKernels, SelectiveScanMatchesScalar) {
  const auto& ref = sd::ssd_kernels_scalar();
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> udt(-12.0f, 24.0f);  // softplus below, across and above its threshold
  for (Isa isa : simd_isas()) {
    const auto& k = table(isa);
    for (int64_t C : {1, 7, 8, 16, 21, 40}) {
      for (int64_t N : {1, 5, 16}) {
        for (bool gate : {false, true}) {
          const int64_t T = 9, ld = C + 2, ldbc = 2 * N + 3;
          const std::string w = std::string(isa_name(isa)) + " C=" + std::to_string(C) + " N=" + std::to_string(N) +
                                (gate ? " gated" : "");
          auto S0 = randn(size_t(N * C), rng), A = randn(size_t(N * C), rng), D = randn(size_t(C), rng);
          for (auto& a : A) a = -std::fabs(a) * 0.3f;  // A = -exp(A_log) < 0, dt·A moderate
          auto x = randn(size_t(T * ld), rng), z = randn(size_t(T * ld), rng, 3.0f), bc = randn(size_t(T * ldbc), rng);
          std::vector<float> dt(size_t(T * ld));
          for (auto& v : dt) v = udt(rng) * 0.25f;
          dt[0] = 21.0f;  // past softplus' threshold: used as is
          dt[1] = -30.0f;
          ssd::ScanArgs a;
          a.C = C, a.N = N, a.T = T, a.A = A.data(), a.D = D.data();
          a.x = x.data(), a.ldx = ld, a.dt = dt.data(), a.lddt = ld, a.z = gate ? z.data() : nullptr, a.ldz = ld;
          a.B = bc.data(), a.Cm = bc.data() + N, a.ldbc = ldbc, a.ldy = C;
          std::vector<float> y1(size_t(T * C) + 1, 7.0f), y2 = y1;  // one sentinel past the end
          auto S1 = S0, S2 = S0;
          a.S = S1.data();
          a.y = y1.data();
          k.selective_scan(a, 0, C / 2);  // two pieces: any split gives the same result
          k.selective_scan(a, C / 2, C);
          a.S = S2.data();
          a.y = y2.data();
          ref.selective_scan(a, 0, C);
          expect_close(S1, S2, 1.0f, w + " state");
          // y sums N products of O(1) terms (times a gate of O(1)): relative to sqrt(N).
          expect_close(y1, y2, std::sqrt(float(N)), w + " y");
          EXPECT_EQ(y1.back(), 7.0f) << w << ": wrote past the end";
        }
      }
    }
  }
}

TEST(SsdKernels, Mamba1ForwardOnEveryIsaAndThreadCount) {
  const std::string rel = "fixtures/hf/mamba-tiny";
  HXQ_REQUIRE_DATA(rel + "/reference.safetensors");
  IsaGuard guard;
  const std::string dir = test::data_path(rel);
  auto model = load_model(dir);
  auto ref = TensorStore::open(dir + "/reference.safetensors");
  const auto ids = test::ids_of(ref.get("input_ids"));
  const auto want = test::floats_of(ref.get("logits"));
  const int64_t V = model->vocab_size(), T = int64_t(ids.size());
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    set_kernel_isa(isa);
    std::vector<float> by_threads[2];
    for (int th : {1, 3}) {
      set_num_threads(th);
      auto st = model->new_state();
      std::vector<float> logits(size_t(T * V));
      model->forward(*st, std::span(ids).first(30), 0, logits.data());  // prefill, then decode
      for (int64_t t = 30; t < T; ++t) model->forward(*st, std::span(ids).subspan(size_t(t), 1), 0, logits.data() + t * V);
      EXPECT_LE(test::max_abs_diff(logits.data(), want.data(), want.size()), tol::kLogitAbs)
          << isa_name(isa) << " threads=" << th;
      by_threads[th == 1 ? 0 : 1] = std::move(logits);
    }
    set_num_threads(0);
    // Work is split over channels / rows / output columns only: bit-identical for any thread count.
    EXPECT_EQ(by_threads[0], by_threads[1]) << isa_name(isa);
  }
}

TEST(SsdKernels, Mamba2ForwardOnEveryIsaAndThreadCount) {
  const std::string rel = "fixtures/hf/mamba2-tiny";
  HXQ_REQUIRE_DATA(rel + "/reference.safetensors");
  IsaGuard guard;
  const std::string dir = test::data_path(rel);
  auto model = load_model(dir);
  auto ref = TensorStore::open(dir + "/reference.safetensors");
  const auto& in = ref.get("input_ids");
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < in.numel(); ++i) ids.push_back(int32_t(reinterpret_cast<const int64_t*>(in.data)[i]));
  const auto& lt = ref.get("logits");
  std::vector<float> want(size_t(lt.numel()));
  to_f32(lt.dtype, lt.data, want.data(), want.size());
  const int64_t V = model->vocab_size(), T = int64_t(ids.size());
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    set_kernel_isa(isa);
    std::vector<float> by_threads[2];
    for (int th : {1, 3}) {
      set_num_threads(th);
      auto st = model->new_state();
      std::vector<float> logits(size_t(T * V));
      model->forward(*st, std::span(ids).first(30), 0, logits.data());  // prefill, then decode
      for (int64_t t = 30; t < T; ++t) model->forward(*st, std::span(ids).subspan(size_t(t), 1), 0, logits.data() + t * V);
      float err = 0;
      for (size_t i = 0; i < want.size(); ++i) err = std::max(err, std::fabs(logits[i] - want[i]));
      EXPECT_LE(err, tol::kLogitAbs) << isa_name(isa) << " threads=" << th;
      by_threads[th == 1 ? 0 : 1] = std::move(logits);
    }
    set_num_threads(0);
    // Work is split over heads / rows / output columns only: bit-identical for any thread count.
    EXPECT_EQ(by_threads[0], by_threads[1]) << isa_name(isa);
  }
}

}  // namespace
