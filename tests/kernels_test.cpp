// Tests of the matrix kernels: every instruction-set path (scalar reference, AVX2, AVX-512)
// against a double-precision reference on odd shapes, for F32/F16/BF16 and HXQ with sidecar.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/cpu_features.h"
#include "kernels/dispatch.h"
#include "kernels/gemm.h"
#include "kernels/hxq_gemm.h"
#include "kernels/membw.h"

using namespace hxq;

namespace {

std::vector<Isa> supported_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

// Restores the kernel ISA chosen before the test (and the automatic decode/packed choice). The
// tests that check against the worst-case float32 bound run the exact HXQ math; the fast
// (16-bit integer) decode has its own tests below.
struct IsaGuard {
  Isa saved = kernel_isa();
  HxqMathScope exact{HxqMath::Exact};
  ~IsaGuard() {
    set_kernel_isa(saved);
    detail::force_decode_max_t = -1;
  }
};

// Each SIMD ISA runs with the automatic choice of kernel, then forced through the packed-panel
// path (force 0) and through the streaming path (force large) for every shape.
struct Variant {
  Isa isa;
  int64_t force;
};
std::vector<Variant> variants() {
  std::vector<Variant> v;
  for (Isa i : supported_isas())
    for (int64_t f : {int64_t(-1), int64_t(0), int64_t(1) << 30}) {
      if (i == Isa::Scalar && f != -1) continue;
      v.push_back({i, f});
    }
  return v;
}

struct DenseW {
  std::vector<uint16_t> h;  // F16 / BF16 storage
  std::vector<float> f;     // F32 storage
  std::vector<double> exact;  // the stored values, exactly
  const void* data(DType t) const { return t == DType::F32 ? static_cast<const void*>(f.data()) : h.data(); }
};

// Random weights rounded to the dtype (integers in [-8, 8] when `integers`).
DenseW make_dense(DType t, int64_t N, int64_t K, std::mt19937& rng, bool integers) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> id(-8, 8);
  DenseW w;
  const size_t n = size_t(N * K);
  w.exact.resize(n);
  if (t == DType::F32) w.f.resize(n);
  else w.h.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const float v = integers ? float(id(rng)) : nd(rng);
    if (t == DType::F32) {
      w.f[i] = v;
      w.exact[i] = v;
    } else if (t == DType::BF16) {
      w.h[i] = f32_to_bf16(v);
      w.exact[i] = bf16_to_f32(w.h[i]);
    } else {
      w.h[i] = f32_to_f16(v);
      w.exact[i] = f16_to_f32(w.h[i]);
    }
  }
  return w;
}

std::vector<float> make_x(int64_t T, int64_t K, std::mt19937& rng, bool integers) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> id(-4, 4);
  std::vector<float> x(size_t(T * K));
  for (auto& v : x) v = integers ? float(id(rng)) : nd(rng);
  return x;
}

struct Hxq {
  std::vector<float> codebook;
  std::vector<uint8_t> idx;
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col;
  std::vector<float> delta;
  HxqView view(bool sidecar) const {
    HxqView v;
    v.rows = int64_t(row_ptr.size()) - 1;
    v.cols = v.rows > 0 ? int64_t(idx.size()) / v.rows : 0;
    v.codebook = codebook.data();
    v.indices = idx.data();
    if (sidecar) {
      v.sc_row_ptr = row_ptr.data();
      v.sc_col = col.data();
      v.sc_delta = delta.data();
    }
    return v;
  }
  // W[r, k] exactly, with or without the sidecar (the sum codebook + delta in double).
  double w(int64_t r, int64_t k, int64_t K) const { return codebook[idx[size_t(r * K + k)]]; }
};

// Every index value 0..255 occurs (rows cycle through them); about 1 in 40 weights has a sidecar
// entry; some rows have none. Integer codebook/deltas when `integers`.
Hxq make_hxq(int64_t N, int64_t K, std::mt19937& rng, bool integers) {
  Hxq h;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> id(-8, 8), ib(0, 255), i40(0, 39);
  h.codebook.resize(256);
  for (auto& c : h.codebook) c = integers ? float(id(rng)) : nd(rng) * 0.1f;
  h.idx.resize(size_t(N * K));
  for (size_t i = 0; i < h.idx.size(); ++i) h.idx[i] = uint8_t(i % 7 == 0 ? i % 256 : size_t(ib(rng)));
  h.row_ptr.push_back(0);
  for (int64_t r = 0; r < N; ++r) {
    if (r % 5 != 3)
      for (int64_t k = 0; k < K; ++k)
        if (i40(rng) == 0) {
          h.col.push_back(int32_t(k));
          h.delta.push_back(integers ? float(id(rng)) : nd(rng));
        }
    h.row_ptr.push_back(int64_t(h.col.size()));
  }
  return h;
}

// Worst-case bound for a float32 dot product of n terms in any order (with or without FMA):
// |computed - exact| <= gamma_n * sum |x_i w_i|, gamma_n = n u / (1 - n u), u = 2^-24
// (Higham, Accuracy and Stability of Numerical Algorithms, 3.1). Every kernel only reassociates
// the sum (blocked lanes, trees), so each must satisfy it; n counts the K products plus the
// final lane reductions (<= 8 levels) and, for HXQ, the sidecar terms and the rounding of
// codebook + delta when a packed panel holds their sum.
double gamma_n(double n) {
  const double u = std::ldexp(1.0, -24);
  return n * u / (1 - n * u);
}

void expect_close(const std::vector<float>& y, const std::vector<double>& ref, const std::vector<double>& mag,
                  const std::vector<double>& nterms, const std::string& what) {
  ASSERT_EQ(y.size(), ref.size());
  int bad = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double tol = gamma_n(nterms[i]) * mag[i] + 1e-30;
    if (!(std::abs(double(y[i]) - ref[i]) <= tol) && ++bad <= 5)
      ADD_FAILURE() << what << ": element " << i << " = " << y[i] << ", reference " << ref[i] << ", tolerance " << tol;
  }
  EXPECT_EQ(bad, 0) << what;
}

struct Shape {
  int64_t T, K, N;
};

// Decode (T <= 8) and prefill (T > 8) paths; K not a multiple of 16/32/64 and larger than the
// k-blocks of the packed path; N = 1 and N not a multiple of the panel widths (16, 32).
const Shape kShapes[] = {{1, 1, 1},     {1, 37, 1},    {3, 100, 33},  {1, 1000, 45}, {4, 64, 32},
                         {8, 130, 17},  {5, 257, 70},  {17, 77, 65},  {9, 300, 1},   {13, 300, 100},
                         {30, 513, 70}, {64, 160, 96}, {25, 1031, 40}};

std::string shape_str(const Shape& s, const Variant& v, const char* dt) {
  return std::string(isa_name(v.isa)) + (v.force < 0 ? "" : v.force == 0 ? " packed" : " streaming") + " " + dt + " T=" + std::to_string(s.T) + " K=" + std::to_string(s.K) +
         " N=" + std::to_string(s.N);
}

void check_dense(DType dt, bool integers) {
  IsaGuard guard;
  std::mt19937 rng(1234);
  for (const Shape& s : kShapes) {
    const DenseW w = make_dense(dt, s.N, s.K, rng, integers);
    const std::vector<float> x = make_x(s.T, s.K, rng, integers);
    std::vector<double> ref(size_t(s.T * s.N)), mag(ref.size()), nterms(ref.size(), double(s.K + 8));
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t n = 0; n < s.N; ++n) {
        double a = 0, m = 0;
        for (int64_t k = 0; k < s.K; ++k) {
          const double p = double(x[size_t(t * s.K + k)]) * w.exact[size_t(n * s.K + k)];
          a += p;
          m += std::abs(p);
        }
        ref[size_t(t * s.N + n)] = a;
        mag[size_t(t * s.N + n)] = m;
      }
    for (const Variant& var : variants()) {
      set_kernel_isa(var.isa);
      detail::force_decode_max_t = var.force;
      std::vector<float> y(ref.size(), std::nanf(""));
      gemm_dense(x.data(), s.T, s.K, w.data(dt), dt, s.N, y.data());
      const std::string what = shape_str(s, var, std::string(dtype_name(dt)).c_str());
      if (integers) {  // small integers: every partial sum is exact, so all orders agree exactly
        for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(double(y[i]), ref[i]) << what << " element " << i;
      } else {
        expect_close(y, ref, mag, nterms, what);
      }
    }
  }
}

void check_hxq(bool sidecar, bool integers) {
  IsaGuard guard;
  std::mt19937 rng(99);
  for (const Shape& s : kShapes) {
    const Hxq h = make_hxq(s.N, s.K, rng, integers);
    const HxqView v = h.view(sidecar);
    const std::vector<float> x = make_x(s.T, s.K, rng, integers);
    std::vector<double> ref(size_t(s.T * s.N)), mag(ref.size()), nterms(ref.size());
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t n = 0; n < s.N; ++n) {
        double a = 0, m = 0;
        const float* xr = x.data() + t * s.K;
        for (int64_t k = 0; k < s.K; ++k) {
          a += double(xr[k]) * h.w(n, k, s.K);
          m += std::abs(double(xr[k]) * h.w(n, k, s.K));
        }
        int64_t extra = 0;
        if (sidecar)
          for (int64_t e = h.row_ptr[size_t(n)]; e < h.row_ptr[size_t(n) + 1]; ++e) {
            const double p = double(xr[h.col[size_t(e)]]) * h.delta[size_t(e)];
            a += p;
            m += std::abs(p);
            ++extra;
          }
        ref[size_t(t * s.N + n)] = a;
        mag[size_t(t * s.N + n)] = m;
        nterms[size_t(t * s.N + n)] = double(s.K + 2 * extra + 8);
      }
    for (const Variant& var : variants()) {
      set_kernel_isa(var.isa);
      detail::force_decode_max_t = var.force;
      std::vector<float> y(ref.size(), std::nanf(""));
      gemm_hxq(x.data(), s.T, v, y.data());
      const std::string what = shape_str(s, var, sidecar ? "HXQ+sidecar" : "HXQ");
      if (integers) {
        for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(double(y[i]), ref[i]) << what << " element " << i;
      } else {
        expect_close(y, ref, mag, nterms, what);
      }
    }
  }
}

}  // namespace

TEST(KernelsIsa, NamesAndSelection) {
  EXPECT_EQ(isa_from_name("avx512"), Isa::Avx512);
  EXPECT_EQ(isa_from_name("avx2"), Isa::Avx2);
  EXPECT_EQ(isa_from_name("scalar"), Isa::Scalar);
  EXPECT_FALSE(isa_from_name("sse9"));
  EXPECT_TRUE(isa_supported(Isa::Scalar));
  EXPECT_TRUE(isa_supported(best_isa()));
  IsaGuard guard;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (isa_supported(i)) {
      set_kernel_isa(i);
      EXPECT_EQ(kernel_isa(), i);
    } else {
      EXPECT_THROW(set_kernel_isa(i), Error);
    }
  }
}

TEST(KernelsDense, F32MatchesReference) { check_dense(DType::F32, false); }
TEST(KernelsDense, F16MatchesReference) { check_dense(DType::F16, false); }
TEST(KernelsDense, BF16MatchesReference) { check_dense(DType::BF16, false); }
TEST(KernelsDense, IntegerInputsExactOnEveryIsa) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) check_dense(dt, true);
}

TEST(KernelsHxq, MatchesReference) { check_hxq(false, false); }
TEST(KernelsHxq, SidecarMatchesReference) { check_hxq(true, false); }
TEST(KernelsHxq, IntegerInputsExactOnEveryIsa) {
  check_hxq(false, true);
  check_hxq(true, true);
}

// Results do not depend on the number of threads (each output is one thread's fixed-order sum).
TEST(KernelsDense, ThreadCountDoesNotChangeResults) {
  IsaGuard guard;
  std::mt19937 rng(5);
  for (int64_t T : {1, 3, 40, 70}) {  // 70 > 64: the packed path
    const int64_t K = 300, N = 1000;
    const DenseW w = make_dense(DType::BF16, N, K, rng, false);
    const Hxq h = make_hxq(N, K, rng, false);
    const std::vector<float> x = make_x(T, K, rng, false);
    for (Isa isa : supported_isas()) {
      set_kernel_isa(isa);
      std::vector<float> y1(size_t(T * N)), y3(y1.size()), h1(y1.size()), h3(y1.size());
      set_num_threads(1);
      gemm_dense(x.data(), T, K, w.data(DType::BF16), DType::BF16, N, y1.data());
      gemm_hxq(x.data(), T, h.view(true), h1.data());
      set_num_threads(3);
      gemm_dense(x.data(), T, K, w.data(DType::BF16), DType::BF16, N, y3.data());
      gemm_hxq(x.data(), T, h.view(true), h3.data());
      set_num_threads(0);
      EXPECT_EQ(y1, y3) << isa_name(isa) << " T=" << T;
      EXPECT_EQ(h1, h3) << isa_name(isa) << " T=" << T;
    }
  }
}

TEST(KernelsDense, EmptyShapesAndBadDtype) {
  std::vector<float> x(6, 1.0f), y(6, 5.0f), w(6, 1.0f);
  gemm_dense(x.data(), 2, 0, w.data(), DType::F32, 3, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
  gemm_dense(x.data(), 0, 3, w.data(), DType::F32, 3, y.data());  // nothing to do
  EXPECT_THROW(gemm_dense(x.data(), 1, 3, w.data(), DType::I32, 2, y.data()), Error);
}

TEST(KernelsHxq, BadSidecarIsAnErrorNotACrash) {
  IsaGuard guard;
  std::mt19937 rng(7);
  for (Isa isa : supported_isas()) {
    set_kernel_isa(isa);
    for (int64_t T : {1, 20}) {
      Hxq h = make_hxq(40, 50, rng, false);
      h.col.push_back(50);  // one past the last column, in the last row
      h.delta.push_back(1.0f);
      h.row_ptr.back() += 1;
      std::vector<float> x(size_t(T * 50), 1.0f), y(size_t(T * 40));
      EXPECT_THROW(gemm_hxq(x.data(), T, h.view(true), y.data()), Error) << isa_name(isa);
      Hxq g = make_hxq(40, 50, rng, false);
      g.row_ptr[10] = g.row_ptr[11] + 1;  // decreasing row pointers
      EXPECT_THROW(gemm_hxq(x.data(), T, g.view(true), y.data()), Error) << isa_name(isa);
    }
  }
}

TEST(KernelsMeasure, BandwidthAndPeakArePositive) {
  ThreadPool tp(2);
  EXPECT_GT(measure_read_bandwidth_gbps(size_t(8) << 20, tp, 3), 0.0);
  EXPECT_GT(measure_peak_fma_gflops(tp, best_isa(), 3), 0.0);
  EXPECT_GT(measure_peak_fma_gflops(tp, Isa::Scalar, 1), 0.0);
}

// BF16-exact codebooks: the two-plane decoder (codebook_bf16_exact) must give bit-identical
// outputs to the float32 four-plane decoder — same values, same lane order, same summation —
// on every ISA and regime (only the AVX-512 decode regime uses the flag; the others ignore it).
TEST(KernelsHxq, Bf16ExactCodebookBitIdenticalToF32Path) {
  IsaGuard guard;
  std::mt19937 rng(4242);
  for (const Shape& s : kShapes)
    for (bool sidecar : {false, true}) {
      Hxq h = make_hxq(s.N, s.K, rng, false);
      for (auto& c : h.codebook) {  // truncate to BF16, keep a few negative zeros / tiny values
        uint32_t u;
        std::memcpy(&u, &c, 4);
        u &= 0xffff0000u;
        std::memcpy(&c, &u, 4);
      }
      h.codebook[3] = -0.0f;
      h.codebook[200] = std::ldexp(1.0f, -120);
      ASSERT_TRUE(codebook_is_bf16_exact(h.codebook.data(), 256));
      HxqView v = h.view(sidecar);
      const std::vector<float> x = make_x(s.T, s.K, rng, false);
      for (const Variant& var : variants()) {
        set_kernel_isa(var.isa);
        detail::force_decode_max_t = var.force;
        std::vector<float> y0(size_t(s.T * s.N), std::nanf("")), y1 = y0;
        v.codebook_bf16_exact = false;
        gemm_hxq(x.data(), s.T, v, y0.data());
        v.codebook_bf16_exact = true;
        gemm_hxq(x.data(), s.T, v, y1.data());
        const std::string what = shape_str(s, var, sidecar ? "HXQ+sidecar bf16" : "HXQ bf16");
        ASSERT_EQ(0, std::memcmp(y0.data(), y1.data(), y0.size() * sizeof(float))) << what;
      }
    }
}

TEST(KernelsHxq, Bf16ExactnessCheck) {
  std::vector<float> cb(256, 0.5f);
  EXPECT_TRUE(codebook_is_bf16_exact(cb.data(), 256));
  cb[255] = 0.1f;  // 0x3dcccccd: low bits set
  EXPECT_FALSE(codebook_is_bf16_exact(cb.data(), 256));
  EXPECT_TRUE(codebook_is_bf16_exact(cb.data(), 255));
  cb[255] = -0.0f;
  EXPECT_TRUE(codebook_is_bf16_exact(cb.data(), 256));
}

// The flag really selects the two-plane decoder on AVX-512 (decode regime): on a codebook that is
// NOT BF16-exact it yields the truncated values, so the outputs differ from the exact path.
TEST(KernelsHxq, Bf16FlagSelectsTwoPlaneDecoderOnAvx512) {
  if (!isa_supported(Isa::Avx512)) GTEST_SKIP() << "no AVX-512";
  IsaGuard guard;
  set_kernel_isa(Isa::Avx512);
  detail::force_decode_max_t = int64_t(1) << 30;
  std::mt19937 rng(5);
  Hxq h = make_hxq(9, 200, rng, false);
  HxqView v = h.view(false);
  const std::vector<float> x = make_x(1, 200, rng, false);
  std::vector<float> y0(9), y1(9);
  gemm_hxq(x.data(), 1, v, y0.data());
  v.codebook_bf16_exact = true;
  gemm_hxq(x.data(), 1, v, y1.data());
  EXPECT_NE(0, std::memcmp(y0.data(), y1.data(), y0.size() * sizeof(float)));
}

// ---------------------------------------------------------------------------------------------
// Fast HXQ decode (HxqMath::Fast: 16-bit integer codebook and X, VNNI dot products)

namespace {

// The error bound of the fast path for one output (see kernels_avx512.cpp):
//   ĉb = z + s·u, |ĉb − cb| ≤ s/2;  x̂ = sx_b·q, |x̂ − x| ≤ sx_b/2   (sx_b = max|x| in block / 32639,
//   blocks of detail::kQBlock columns)
//   |Σ ĉb·x̂ − Σ cb·x| ≤ Σ_k (s/2)·|x_k| + |ĉb_k|·sx_b/2
// (0.51 instead of 0.5 covers the float32 rounding of s, 1/sx and x / sx), plus float32
// summation: ~2^-24 relative per addition over nb block sums, 16 lanes and the zero-point
// term, bounded by gamma(nb + 64) times the sum of the magnitudes involved.
double fast_tolerance(const Hxq& h, const float* x, int64_t K, int64_t r, bool sidecar) {
  float mn = h.codebook[0], mx = h.codebook[0];
  for (float c : h.codebook) {
    mn = std::min(mn, c);
    mx = std::max(mx, c);
  }
  const double s = double((mx - mn) / 65535.0f), zc = double(mn) + 32768.0 * s;
  double tol = 0, mag = 0;
  const int64_t B = detail::kQBlock, nb = (K + B - 1) / B;
  for (int64_t b = 0; b < nb; ++b) {
    float m = 0;
    for (int64_t k = b * B; k < std::min(K, b * B + B); ++k) m = std::max(m, std::abs(x[k]));
    const double sx = double(m) / 32639.0;
    for (int64_t k = b * B; k < std::min(K, b * B + B); ++k) {
      const double cb = h.codebook[h.idx[size_t(r * K + k)]];
      tol += 0.51 * s * std::abs(x[k]) + 0.51 * (std::abs(cb) + s) * sx;
      mag += (std::abs(cb) + std::abs(zc) + s) * (std::abs(x[k]) + sx);
    }
  }
  if (sidecar)
    for (int64_t e = h.row_ptr[size_t(r)]; e < h.row_ptr[size_t(r) + 1]; ++e)
      mag += std::abs(double(x[h.col[size_t(e)]]) * h.delta[size_t(e)]);
  return tol + gamma_n(double(nb + 64)) * mag * 2;
}

bool fast_here() { return isa_supported(Isa::Avx512) && cpu_features().avx512vnni; }

}  // namespace

TEST(KernelsHxqFast, WithinQuantisationBound) {
  if (!fast_here()) GTEST_SKIP() << "no AVX-512 VBMI + VNNI";
  IsaGuard guard;
  HxqMathScope fast(HxqMath::Fast);
  set_kernel_isa(Isa::Avx512);
  ASSERT_TRUE(hxq_fast_available());
  std::mt19937 rng(2024);
  // Decode-regime shapes (T <= 4) incl. K not a multiple of 64 or 512, several blocks, N odd.
  const Shape shapes[] = {{1, 1, 1}, {1, 37, 3}, {2, 100, 33}, {3, 513, 17}, {4, 1100, 9}, {1, 2048, 64}, {2, 1535, 5}, {1, 3000, 7}};
  for (const Shape& sh : shapes)
    for (bool sidecar : {false, true}) {
      const Hxq h = make_hxq(sh.N, sh.K, rng, false);
      std::vector<float> x = make_x(sh.T, sh.K, rng, false);
      for (int64_t k = 0; k < sh.K; k += 97) x[size_t(k)] *= 30.0f;  // outliers
      std::vector<float> y(size_t(sh.T * sh.N), std::nanf(""));
      gemm_hxq(x.data(), sh.T, h.view(sidecar), y.data());
      for (int64_t t = 0; t < sh.T; ++t)
        for (int64_t r = 0; r < sh.N; ++r) {
          const float* xr = x.data() + t * sh.K;
          double ref = 0;
          for (int64_t k = 0; k < sh.K; ++k) ref += double(xr[k]) * h.w(r, k, sh.K);
          if (sidecar)
            for (int64_t e = h.row_ptr[size_t(r)]; e < h.row_ptr[size_t(r) + 1]; ++e)
              ref += double(xr[h.col[size_t(e)]]) * h.delta[size_t(e)];
          const double tol = fast_tolerance(h, xr, sh.K, r, sidecar);
          ASSERT_LE(std::abs(double(y[size_t(t * sh.N + r)]) - ref), tol)
              << "T=" << sh.T << " K=" << sh.K << " N=" << sh.N << " t=" << t << " r=" << r << " sidecar=" << sidecar;
        }
    }
}

// What the bound means in practice: on Gaussian weights/activations (a 2048-wide layer) the fast
// path's outputs are within ~1e-4 relative RMS of the exact ones — far below the 8-bit codebook's
// own error (~5e-3) — and it is really a different computation (not silently the exact path).
TEST(KernelsHxqFast, TypicalErrorFarBelowCodebookError) {
  if (!fast_here()) GTEST_SKIP() << "no AVX-512 VBMI + VNNI";
  IsaGuard guard;
  set_kernel_isa(Isa::Avx512);
  std::mt19937 rng(77);
  const int64_t K = 2048, N = 256;
  const Hxq h = make_hxq(N, K, rng, false);
  const std::vector<float> x = make_x(1, K, rng, false);
  std::vector<float> ye(static_cast<size_t>(N)), yf(static_cast<size_t>(N));
  {
    HxqMathScope m(HxqMath::Exact);
    gemm_hxq(x.data(), 1, h.view(true), ye.data());
  }
  {
    HxqMathScope m(HxqMath::Fast);
    gemm_hxq(x.data(), 1, h.view(true), yf.data());
  }
  double num = 0, den = 0;
  for (int64_t i = 0; i < N; ++i) {
    num += double(yf[size_t(i)] - ye[size_t(i)]) * (yf[size_t(i)] - ye[size_t(i)]);
    den += double(ye[size_t(i)]) * ye[size_t(i)];
  }
  const double rel = std::sqrt(num / den);
  EXPECT_LT(rel, 1e-4);
  EXPECT_GT(rel, 0.0);
}

// Non-finite activations, all-zero and tiny blocks, a constant codebook: the fast path gives the
// exact path's answer (NaN/Inf: by falling back to it) and never makes up NaNs.
TEST(KernelsHxqFast, EdgeCases) {
  if (!fast_here()) GTEST_SKIP() << "no AVX-512 VBMI + VNNI";
  IsaGuard guard;
  set_kernel_isa(Isa::Avx512);
  std::mt19937 rng(3);
  const int64_t K = 700, N = 12;
  Hxq h = make_hxq(N, K, rng, false);
  auto both = [&](const std::vector<float>& x, int64_t T, std::vector<float>& ye, std::vector<float>& yf) {
    ye.assign(size_t(T * N), 0.0f);
    yf.assign(size_t(T * N), 0.0f);
    {
      HxqMathScope m(HxqMath::Exact);
      gemm_hxq(x.data(), T, h.view(true), ye.data());
    }
    HxqMathScope m(HxqMath::Fast);
    gemm_hxq(x.data(), T, h.view(true), yf.data());
  };
  std::vector<float> ye, yf;
  std::vector<float> x = make_x(2, K, rng, false);
  x[size_t(K + 5)] = std::numeric_limits<float>::infinity();
  both(x, 2, ye, yf);
  EXPECT_EQ(0, std::memcmp(ye.data(), yf.data(), ye.size() * 4)) << "Inf falls back to the exact path";
  x[size_t(K + 5)] = std::nanf("");
  both(x, 2, ye, yf);
  EXPECT_EQ(0, std::memcmp(ye.data(), yf.data(), ye.size() * 4)) << "NaN falls back to the exact path";
  std::vector<float> z(size_t(K), 0.0f);
  for (int64_t k = 600; k < K; ++k) z[size_t(k)] = 1e-35f;  // second block: tiny, quantised to 0
  both(z, 1, ye, yf);
  for (int64_t i = 0; i < N; ++i) {
    EXPECT_TRUE(std::isfinite(yf[size_t(i)]));
    EXPECT_NEAR(yf[size_t(i)], ye[size_t(i)], 1e-30);
  }
  std::fill(h.codebook.begin(), h.codebook.end(), 0.25f);  // range 0: s = 0
  x = make_x(1, K, rng, false);
  both(x, 1, ye, yf);
  for (int64_t i = 0; i < N; ++i)  // only X's quantisation error remains
    EXPECT_NEAR(yf[size_t(i)], ye[size_t(i)], fast_tolerance(h, x.data(), K, i, true));
}

TEST(KernelsHxqFast, ThreadCountDoesNotChangeResults) {
  if (!fast_here()) GTEST_SKIP() << "no AVX-512 VBMI + VNNI";
  IsaGuard guard;
  HxqMathScope fast(HxqMath::Fast);
  set_kernel_isa(Isa::Avx512);
  std::mt19937 rng(11);
  for (int64_t T : {1, 2, 3, 4}) {
    // Enough rows (16 MB of indices, ~60 row chunks) that the workers take part for sure.
    const int64_t K = 1000, N = T == 1 ? 16000 : 1000;
    const Hxq h = make_hxq(N, K, rng, false);
    const std::vector<float> x = make_x(T, K, rng, false);
    std::vector<float> y1(size_t(T * N)), y3(y1.size());
    set_num_threads(1);
    gemm_hxq(x.data(), T, h.view(true), y1.data());
    set_num_threads(3);
    gemm_hxq(x.data(), T, h.view(true), y3.data());
    set_num_threads(0);
    EXPECT_EQ(y1, y3) << "T=" << T;
    // Every row really computed (not only the calling thread's share): close to the exact path.
    std::vector<float> ye(y1.size());
    {
      HxqMathScope exact(HxqMath::Exact);
      set_num_threads(3);
      gemm_hxq(x.data(), T, h.view(true), ye.data());
      set_num_threads(0);
    }
    for (size_t i = 0; i < ye.size(); ++i)
      ASSERT_NEAR(y3[i], ye[i], fast_tolerance(h, x.data() + (int64_t(i) / N) * K, K, int64_t(i) % N, true)) << i;
  }
}

// Beyond the 4 rows of X the fast kernel takes per pass, the decode regime runs it in blocks of 4:
// each row's result is the same bits as the row alone (the rows of a batch do not interact).
TEST(KernelsHxqFast, RowsBeyondOnePassGiveTheirOwnResult) {
  if (!fast_here()) GTEST_SKIP() << "no AVX-512 VBMI + VNNI";
  IsaGuard guard;
  HxqMathScope fast(HxqMath::Fast);
  set_kernel_isa(Isa::Avx512);
  std::mt19937 rng(11);
  const int64_t N = 80, K = 2048 + 24;
  ASSERT_TRUE(detail::use_decode(11, K, true));
  const Hxq h = make_hxq(N, K, rng, false);
  const std::vector<float> x = make_x(11, K, rng, false);
  std::vector<float> one(static_cast<size_t>(11 * N));  // row t of X alone
  for (int64_t t = 0; t < 11; ++t) gemm_hxq(x.data() + t * K, 1, h.view(true), one.data() + t * N);
  for (int64_t T : {5, 8, 11}) {
    std::vector<float> y(static_cast<size_t>(T * N), std::nanf(""));
    gemm_hxq(x.data(), T, h.view(true), y.data());
    for (int64_t t = 0; t < T; ++t)
      ASSERT_EQ(std::memcmp(y.data() + t * N, one.data() + t * N, size_t(N) * sizeof(float)), 0)
          << "row " << t << " of " << T << " differs from the row alone";
  }
}

TEST(KernelsHxqFast, MathScopeNestsAndRestores) {
  const HxqMath before = hxq_math();
  {
    HxqMathScope a(HxqMath::Exact);
    EXPECT_EQ(hxq_math(), HxqMath::Exact);
    {
      HxqMathScope b(HxqMath::Fast);
      EXPECT_EQ(hxq_math(), HxqMath::Fast);
    }
    EXPECT_EQ(hxq_math(), HxqMath::Exact);
  }
  EXPECT_EQ(hxq_math(), before);
  // Only the calling thread is affected.
  HxqMathScope a(before == HxqMath::Fast ? HxqMath::Exact : HxqMath::Fast);
  HxqMath other = hxq_math();
  std::thread([&] { other = hxq_math(); }).join();
  EXPECT_EQ(other, before);
}
