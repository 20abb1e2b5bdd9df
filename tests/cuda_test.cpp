// Tests of the optional CUDA kernels (HXQ_CUDA=ON) against the CPU kernels: HXQ and BF16 matrix
// products (every algorithm, odd shapes), the SSD scan (recurrent and chunked) against a plain
// double-precision recurrence, and error behaviour without a device. Needs no test data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <span>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/gemm.h"
#include "kernels/hxq_gemm.h"

using namespace hxq;
namespace hc = hxq::cuda;

namespace {

#define HXQ_REQUIRE_GPU() \
  if (!hc::cuda_available()) GTEST_SKIP() << "no CUDA device: " << hc::cuda_unavailable_reason()

constexpr double kU = 1.0 / (1 << 24);  // unit roundoff of float32

struct HostHxq {
  int64_t rows = 0, cols = 0;
  std::vector<float> cb;
  std::vector<uint8_t> idx;
  std::vector<int64_t> rp;
  std::vector<int32_t> col;
  std::vector<float> delta;
  HxqView view() const {
    HxqView v;
    v.rows = rows;
    v.cols = cols;
    v.codebook = cb.data();
    v.indices = idx.data();
    if (!rp.empty()) {
      v.sc_row_ptr = rp.data();
      v.sc_col = col.data();
      v.sc_delta = delta.data();
    }
    return v;
  }
  float w(int64_t r, int64_t k) const { return cb[idx[size_t(r * cols + k)]]; }
};

// Random HXQ weight: normal codebook, uniform indices, a sidecar on about a third of the rows
// (1..3 entries of size ~0.3, i.e. outliers ~6x the codebook's spread).
HostHxq random_hxq(int64_t rows, int64_t cols, bool sidecar, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f), big(0.0f, 0.3f);
  std::uniform_int_distribution<int> u8(0, 255);
  HostHxq h;
  h.rows = rows;
  h.cols = cols;
  h.cb.resize(256);
  for (float& c : h.cb) c = nd(rng);
  h.idx.resize(size_t(rows * cols));
  for (uint8_t& i : h.idx) i = uint8_t(u8(rng));
  if (sidecar) {
    h.rp.assign(size_t(rows + 1), 0);
    std::uniform_int_distribution<int64_t> cd(0, cols - 1);
    for (int64_t r = 0; r < rows; ++r) {
      const int n = (rng() % 3 == 0) ? int(1 + rng() % 3) : 0;
      for (int e = 0; e < n; ++e) {
        h.col.push_back(int32_t(cd(rng)));
        h.delta.push_back(big(rng));
      }
      h.rp[size_t(r + 1)] = int64_t(h.col.size());
    }
  }
  return h;
}

std::vector<float> random_vec(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// Y (device result) vs Yref (CPU kernel). Both are float32 sums of the same K products (plus the
// sidecar terms) in different orders; each has a rounding error of typically sqrt(K)·u·Σ|terms|
// (random walk; K·u·Σ|terms| is the worst case). We allow (8·sqrt(K) + 8)·u·Σ|terms| per output:
// ~3e-5 of Σ|terms| at K = 4096. A wrong index, lost sidecar entry or missed tail changes an
// output by about one term, |x·w| ~ Σ|terms| / K, i.e. more than 100x the bound for K <= 4096,
// and a sidecar term (~0.3·|x|) is far above it too.
void expect_close(const std::vector<float>& Y, const std::vector<float>& Yref, const std::vector<double>& abs_sum,
                  int64_t K, const std::string& what) {
  ASSERT_EQ(Y.size(), Yref.size());
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < Y.size(); ++i) {
    const double tol = (8.0 * std::sqrt(double(K)) + 8.0) * kU * abs_sum[i] + 1e-30;
    const double err = std::fabs(double(Y[i]) - double(Yref[i]));
    worst = std::max(worst, err / tol);
    if (!(err <= tol) && bad++ < 5)
      ADD_FAILURE() << what << ": output " << i << " gpu " << Y[i] << " cpu " << Yref[i] << " tol " << tol;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " outputs out of tolerance (worst err/tol " << worst << ")";
}

// Σ_k |x_k · w_k| (+ |sidecar terms|) per output, in double.
std::vector<double> abs_sums_hxq(const std::vector<float>& X, int64_t T, const HostHxq& w) {
  std::vector<double> s(size_t(T * w.rows), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < w.rows; ++r) {
      double a = 0;
      for (int64_t k = 0; k < w.cols; ++k) a += std::fabs(double(X[size_t(t * w.cols + k)]) * w.w(r, k));
      if (!w.rp.empty())
        for (int64_t e = w.rp[size_t(r)]; e < w.rp[size_t(r + 1)]; ++e)
          a += std::fabs(double(X[size_t(t * w.cols + w.col[size_t(e)])]) * w.delta[size_t(e)]);
      s[size_t(t * w.rows + r)] = a;
    }
  return s;
}

const char* algo_name(hc::CudaAlgo a) {
  switch (a) {
    case hc::CudaAlgo::Auto: return "auto";
    case hc::CudaAlgo::Simple: return "simple";
    case hc::CudaAlgo::Matvec: return "matvec";
    case hc::CudaAlgo::MatmulTf32: return "matmul-tf32";
    default: return "matmul";
  }
}

struct Shape {
  int64_t rows, cols;
};
// Odd K (not a multiple of 16 or 64), K % 16 == 8, a K that is not a multiple of the 512-element
// chunk, rows not a multiple of 4/8/128, and two multiple-of-everything shapes.
const Shape kShapes[] = {{37, 50}, {130, 1000}, {64, 256}, {257, 1040}, {300, 2048}, {129, 4096}};

// x_offset: start X one float into the buffer (misaligned for 16-byte loads: the per-element path).
// Enough rows (> 2 · 8 warps · 132 SMs row groups of 4) for the launcher's one-group-per-warp kernel.
const Shape kManyRows[] = {{9000, 1024}, {8500, 528}};

void check_hxq(hc::CudaAlgo algo, const std::vector<int64_t>& Ts, bool sidecar, int x_offset = 0,
               std::span<const Shape> shapes = kShapes) {
  uint32_t seed = 100;
  for (const Shape& sh : shapes) {
    const HostHxq w = random_hxq(sh.rows, sh.cols, sidecar, seed++);
    const hc::DeviceHxq dw = hc::upload_hxq(w.view());
    for (int64_t T : Ts) {
      const std::vector<float> X = random_vec(size_t(T * sh.cols), seed++);
      std::vector<float> Yref(size_t(T * sh.rows)), Y(Yref.size(), -1.0f);
      {
        HxqMathScope exact(HxqMath::Exact);  // the device computes with exact float32 codebook values
        gemm_hxq(X.data(), T, w.view(), Yref.data());
      }
      hc::DeviceBuffer dx((X.size() + size_t(x_offset)) * 4), dy(Y.size() * 4);
      dx.upload(X.data(), X.size() * 4, size_t(x_offset) * 4);
      hc::cuda_gemm_hxq(dx.as<float>() + x_offset, T, dw, dy.as<float>(), algo);
      hc::synchronize();
      dy.download(Y.data(), Y.size() * 4);
      expect_close(Y, Yref, abs_sums_hxq(X, T, w), sh.cols,
                   std::string("hxq ") + algo_name(algo) + " " + std::to_string(sh.rows) + "x" +
                       std::to_string(sh.cols) + " T=" + std::to_string(T) + (sidecar ? " sidecar" : ""));
    }
  }
}

void check_bf16(hc::CudaAlgo algo, const std::vector<int64_t>& Ts, int x_offset = 0,
                std::span<const Shape> shapes = kShapes) {
  uint32_t seed = 500;
  for (const Shape& sh : shapes) {
    const int64_t N = sh.rows, K = sh.cols;
    const std::vector<float> wf = random_vec(size_t(N * K), seed++, 0.05f);
    std::vector<uint16_t> wb(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) wb[i] = f32_to_bf16(wf[i]);
    const hc::DeviceBuffer dw = hc::to_device(wb.data(), wb.size());
    for (int64_t T : Ts) {
      const std::vector<float> X = random_vec(size_t(T * K), seed++);
      std::vector<float> Yref(size_t(T * N)), Y(Yref.size(), -1.0f);
      gemm_dense(X.data(), T, K, wb.data(), DType::BF16, N, Yref.data());
      std::vector<double> as(Yref.size(), 0.0);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t r = 0; r < N; ++r)
          for (int64_t k = 0; k < K; ++k)
            as[size_t(t * N + r)] += std::fabs(double(X[size_t(t * K + k)]) * bf16_to_f32(wb[size_t(r * K + k)]));
      hc::DeviceBuffer dx((X.size() + size_t(x_offset)) * 4), dy(Y.size() * 4);
      dx.upload(X.data(), X.size() * 4, size_t(x_offset) * 4);
      hc::cuda_gemm_bf16(dx.as<float>() + x_offset, T, K, dw.as<uint16_t>(), N, dy.as<float>(), algo);
      hc::synchronize();
      dy.download(Y.data(), Y.size() * 4);
      expect_close(Y, Yref, as, K,
                   std::string("bf16 ") + algo_name(algo) + " " + std::to_string(N) + "x" + std::to_string(K) +
                       " T=" + std::to_string(T));
    }
  }
}

}  // namespace

// ---- without a device (runs everywhere) ----

TEST(CudaNoDevice, CallsFailWithErrorNotCrash) {
  if (hc::cuda_available()) GTEST_SKIP() << "a CUDA device is present: " << hc::device_summary();
  std::cout << "[ no cuda  ] " << hc::cuda_unavailable_reason() << "\n";
  EXPECT_FALSE(hc::cuda_available());  // cached, still false, no throw
  EXPECT_FALSE(hc::cuda_unavailable_reason().empty());
  EXPECT_THROW(hc::device_info(), Error);
  EXPECT_THROW(hc::DeviceBuffer(1024), Error);
  EXPECT_THROW(hc::EventTimer(), Error);
  EXPECT_THROW(hc::Stream(), Error);
  EXPECT_THROW(hc::synchronize(), Error);
  EXPECT_THROW(hc::measure_read_bandwidth_gbps(1 << 20, 1), Error);
  const HostHxq w = random_hxq(8, 32, true, 1);
  EXPECT_THROW(hc::upload_hxq(w.view()), Error);
  float dummy[4] = {};
  hc::SsdArgs a;
  a.T = 1, a.H = 1, a.P = 1, a.N = 1, a.G = 1;
  a.x = a.dt = a.A = a.B = a.C = a.D = dummy;
  a.state = a.y = dummy;
  EXPECT_THROW(hc::cuda_ssd_scan(a), Error);
  try {
    hc::DeviceBuffer b(16);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda: "), std::string::npos) << e.what();
  }
}

// Argument checks happen before any device work, so these run without a GPU too.
TEST(CudaArgs, BadSidecarAndSizesAreErrors) {
  HostHxq w = random_hxq(4, 16, true, 2);
  w.rp = {0, 2, 1, 3, 3};
  w.col = {0, 1, 2};
  w.delta = {1, 1, 1};
  EXPECT_THROW(hc::upload_hxq(w.view()), Error);  // decreasing row pointers
  w.rp = {0, 1, 2, 3, 3};
  w.col = {0, 16, 2};
  EXPECT_THROW(hc::upload_hxq(w.view()), Error);  // column outside the row
  hc::SsdArgs a;
  a.T = 1, a.H = 6, a.P = 4, a.N = 8, a.G = 4;  // H not a multiple of G
  float dummy[1] = {};
  a.x = a.dt = a.A = a.B = a.C = a.D = dummy;
  a.state = a.y = dummy;
  EXPECT_THROW(hc::cuda_ssd_scan(a), Error);
  a.G = 1;
  a.N = 2048;
  EXPECT_THROW(hc::cuda_ssd_scan(a), Error);
}

// ---- device ----

TEST(CudaDevice, InfoAndBandwidth) {
  HXQ_REQUIRE_GPU();
  const hc::DeviceInfo d = hc::device_info();
  EXPECT_GT(d.sm_count, 0);
  EXPECT_GT(d.total_mem, size_t(0));
  std::cout << "[ device   ] " << hc::device_summary() << "\n";
  const double rd = hc::measure_read_bandwidth_gbps(size_t(1) << 30, 5);
  const double cp = hc::measure_copy_bandwidth_gbps(size_t(1) << 29, 5);
  std::cout << "[ device   ] read bandwidth " << rd << " GB/s, D2D copy " << cp << " GB/s (read + write)\n";
  EXPECT_GT(rd, 0.0);
  EXPECT_GT(cp, 0.0);
}

TEST(CudaDevice, BufferRoundTripAndErrors) {
  HXQ_REQUIRE_GPU();
  std::vector<int32_t> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = int32_t(i * 7 + 1);
  hc::DeviceBuffer b = hc::to_device(v.data(), v.size());
  std::vector<int32_t> back(v.size());
  b.download(back.data(), back.size() * 4);
  EXPECT_EQ(back, v);
  EXPECT_THROW(b.download(back.data(), 8, 4000 - 4), Error);  // outside the buffer
  hc::DeviceBuffer moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.bytes(), 4000u);
  EXPECT_THROW(hc::DeviceBuffer(size_t(1) << 50), Error);  // out of memory -> Error, and the device still works
  moved.zero();
  moved.download(back.data(), 8);
  EXPECT_EQ(back[0], 0);
}

// Simple first: if the fast kernels fail on a device, these tell whether the data path works.
TEST(CudaGemmHxq, SimpleMatchesCpu) {
  HXQ_REQUIRE_GPU();
  check_hxq(hc::CudaAlgo::Simple, {1, 3, 64}, true);
}
TEST(CudaGemmHxq, MatvecMatchesCpu) {
  HXQ_REQUIRE_GPU();
  check_hxq(hc::CudaAlgo::Matvec, {1, 2, 3, 4, 5, 6, 7, 8}, true);
}
// Many row groups: the launcher takes the one-group-per-warp kernel (the shapes above take the
// block kernel); 528 columns end in a partial 512-element chunk.
TEST(CudaGemmHxq, MatvecManyRowsWarpKernel) {
  HXQ_REQUIRE_GPU();
  check_hxq(hc::CudaAlgo::Matvec, {1, 2, 4, 8}, true, 0, kManyRows);
}
TEST(CudaGemmBf16, MatvecManyRowsWarpKernel) {
  HXQ_REQUIRE_GPU();
  check_bf16(hc::CudaAlgo::Matvec, {1, 3, 8}, 0, kManyRows);
}

TEST(CudaGemmHxq, MatvecNoSidecar) {
  HXQ_REQUIRE_GPU();
  check_hxq(hc::CudaAlgo::Matvec, {1, 8}, false);
}
TEST(CudaGemmHxq, MatvecMisalignedXUsesElementPath) {
  HXQ_REQUIRE_GPU();
  check_hxq(hc::CudaAlgo::Matvec, {1, 3}, true, 1);
}
TEST(CudaGemmHxq, MatmulMatchesCpu) {
  HXQ_REQUIRE_GPU();
  check_hxq(hc::CudaAlgo::Matmul, {1, 3, 64, 300}, true);
}
TEST(CudaGemmHxq, AutoMatchesCpu) {
  HXQ_REQUIRE_GPU();
  check_hxq(hc::CudaAlgo::Auto, {1, 3, 8, 64, 300}, true);
}

TEST(CudaGemmBf16, SimpleMatchesCpu) {
  HXQ_REQUIRE_GPU();
  check_bf16(hc::CudaAlgo::Simple, {1, 3});
}
TEST(CudaGemmBf16, MatvecMatchesCpu) {
  HXQ_REQUIRE_GPU();
  check_bf16(hc::CudaAlgo::Matvec, {1, 2, 4, 5, 8});
}
TEST(CudaGemmBf16, MatvecMisalignedX) {
  HXQ_REQUIRE_GPU();
  check_bf16(hc::CudaAlgo::Matvec, {1, 3}, 1);
}
TEST(CudaGemmBf16, MatmulMatchesCpu) {
  HXQ_REQUIRE_GPU();
  check_bf16(hc::CudaAlgo::Matmul, {3, 64, 300});
}

// ---- TF32 tensor-core matmul (opt-in, inexact) ----

namespace {

// Round to TF32 as cvt.rna.tf32.f32 does (nearest, ties away from zero; 10 mantissa bits kept).
float tf32_rna(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// The kernel's exact arithmetic model: products of the TF32-rounded X and W (exact in fp32),
// summed in fp32 (+ the sidecar, added in fp32 from the unrounded X). Against that model we allow
// (16·sqrt(K) + 16)·u·Σ|terms|: the tensor cores' fp32 accumulation may truncate instead of
// rounding, which biases but does not enlarge the per-addition error beyond ~1 ulp of the running
// sum (~sqrt(K)·u·Σ|terms| in total). The error against the exact fp32 product (the price of TF32,
// ~2^-11 relative per operand) is printed for docs/PERFORMANCE.md, not asserted beyond 2^-9.
template <class WF>
void check_tf32(const std::string& what, const std::vector<float>& X, int64_t T, int64_t K, int64_t N, WF wf,
                const HostHxq* side, const std::vector<float>& Y, const std::vector<float>& Yexact) {
  int bad = 0;
  double worst_model = 0, worst_exact = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < N; ++r) {
      double ref = 0, as = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(tf32_rna(X[size_t(t * K + k)])) * double(tf32_rna(wf(r, k)));
        ref += p;
        as += std::fabs(p);
      }
      if (side && !side->rp.empty())
        for (int64_t e = side->rp[size_t(r)]; e < side->rp[size_t(r + 1)]; ++e) {
          const double p = double(X[size_t(t * K + side->col[size_t(e)])]) * double(side->delta[size_t(e)]);
          ref += p;
          as += std::fabs(p);
        }
      const size_t i = size_t(t * N + r);
      const double tol = (16.0 * std::sqrt(double(K)) + 16.0) * kU * as + 1e-30;
      const double err = std::fabs(double(Y[i]) - ref);
      worst_model = std::max(worst_model, err / tol);
      worst_exact = std::max(worst_exact, std::fabs(double(Y[i]) - double(Yexact[i])) / (as + 1e-30));
      if (!(err <= tol) && bad++ < 5)
        ADD_FAILURE() << what << ": output " << i << " gpu " << Y[i] << " tf32 model " << ref << " tol " << tol;
    }
  EXPECT_EQ(bad, 0) << what << ": worst err/tol " << worst_model;
  EXPECT_LE(worst_exact, 1.0 / 512) << what;
  std::cout << "[ tf32     ] " << what << ": max |gpu - fp32 cpu| / sum|x*w| = " << worst_exact
            << ", worst err / tolerance vs the TF32 model = " << worst_model << "\n";
}

}  // namespace

TEST(CudaGemmHxq, MatmulTf32MatchesTf32Model) {
  HXQ_REQUIRE_GPU();
  uint32_t seed = 900;
  for (const Shape& sh : kShapes) {
    const HostHxq w = random_hxq(sh.rows, sh.cols, true, seed++);
    const hc::DeviceHxq dw = hc::upload_hxq(w.view());
    for (int64_t T : {3, 64, 300}) {
      const std::vector<float> X = random_vec(size_t(T * sh.cols), seed++);
      std::vector<float> Yref(size_t(T * sh.rows)), Y(Yref.size(), -1.0f);
      {
        HxqMathScope exact(HxqMath::Exact);  // the device computes with exact float32 codebook values
        gemm_hxq(X.data(), T, w.view(), Yref.data());
      }
      const hc::DeviceBuffer dx = hc::to_device(X.data(), X.size());
      hc::DeviceBuffer dy(Y.size() * 4);
      hc::cuda_gemm_hxq(dx.as<float>(), T, dw, dy.as<float>(), hc::CudaAlgo::MatmulTf32);
      hc::synchronize();
      dy.download(Y.data(), Y.size() * 4);
      check_tf32("hxq tf32 " + std::to_string(sh.rows) + "x" + std::to_string(sh.cols) + " T=" + std::to_string(T), X,
                 T, sh.cols, sh.rows, [&](int64_t r, int64_t k) { return w.w(r, k); }, &w, Y, Yref);
    }
  }
}

TEST(CudaGemmBf16, MatmulTf32MatchesTf32Model) {
  HXQ_REQUIRE_GPU();
  const int64_t N = 257, K = 1040, T = 100;
  const std::vector<float> wf = random_vec(size_t(N * K), 77, 0.05f);
  std::vector<uint16_t> wb(wf.size());
  for (size_t i = 0; i < wf.size(); ++i) wb[i] = f32_to_bf16(wf[i]);
  const std::vector<float> X = random_vec(size_t(T * K), 78);
  std::vector<float> Yref(size_t(T * N)), Y(Yref.size(), -1.0f);
  gemm_dense(X.data(), T, K, wb.data(), DType::BF16, N, Yref.data());
  const hc::DeviceBuffer dw = hc::to_device(wb.data(), wb.size()), dx = hc::to_device(X.data(), X.size());
  hc::DeviceBuffer dy(Y.size() * 4);
  hc::cuda_gemm_bf16(dx.as<float>(), T, K, dw.as<uint16_t>(), N, dy.as<float>(), hc::CudaAlgo::MatmulTf32);
  hc::synchronize();
  dy.download(Y.data(), Y.size() * 4);
  check_tf32("bf16 tf32 257x1040 T=100", X, T, K, N, [&](int64_t r, int64_t k) { return bf16_to_f32(wb[size_t(r * K + k)]); },
             nullptr, Y, Yref);
}

TEST(CudaGemm, EmptyAndZeroK) {
  HXQ_REQUIRE_GPU();
  const HostHxq w = random_hxq(5, 0, false, 3);
  const hc::DeviceHxq dw = hc::upload_hxq(w.view());
  hc::DeviceBuffer dy(5 * 2 * 4), dx(16);
  std::vector<float> y(10, 1.0f);
  dy.upload(y.data(), 40);
  hc::cuda_gemm_hxq(dx.as<float>(), 2, dw, dy.as<float>());
  hc::synchronize();
  dy.download(y.data(), 40);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  EXPECT_NO_THROW(hc::cuda_gemm_hxq(dx.as<float>(), 0, dw, dy.as<float>()));
  EXPECT_THROW(hc::cuda_gemm_bf16(dx.as<float>(), -1, 4, nullptr, 4, dy.as<float>()), Error);
  EXPECT_THROW(hc::cuda_gemm_bf16(dx.as<float>(), 9, 4, dx.as<uint16_t>(), 1, dy.as<float>(), hc::CudaAlgo::Matvec),
               Error);  // matvec takes T <= 8
}

// ---- SSD scan ----

namespace {

struct SsdHost {
  int64_t T, H, P, N, G;
  std::vector<float> x, dt, A, B, C, D, S0;
};

SsdHost random_ssd(int64_t T, int64_t H, int64_t P, int64_t N, int64_t G, uint32_t seed) {
  SsdHost s{T, H, P, N, G, {}, {}, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> udt(0.005f, 0.1f), ua(0.5f, 8.0f);
  s.x = random_vec(size_t(T * H * P), seed + 1);
  s.dt.resize(size_t(T * H));
  for (float& v : s.dt) v = udt(rng);
  s.A.resize(size_t(H));
  for (float& v : s.A) v = -ua(rng);
  s.B = random_vec(size_t(T * G * N), seed + 2, 0.5f);
  s.C = random_vec(size_t(T * G * N), seed + 3, 0.5f);
  s.D = random_vec(size_t(H), seed + 4);
  s.S0 = random_vec(size_t(H * P * N), seed + 5);
  return s;
}

// The definition, step by step, in double.
void ssd_reference(const SsdHost& s, std::vector<double>& S, std::vector<double>& y) {
  S.assign(s.S0.begin(), s.S0.end());
  y.assign(size_t(s.T * s.H * s.P), 0.0);
  for (int64_t t = 0; t < s.T; ++t)
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t g = h / (s.H / s.G);
      const double dt = s.dt[size_t(t * s.H + h)], decay = std::exp(dt * double(s.A[size_t(h)]));
      const float* B = &s.B[size_t((t * s.G + g) * s.N)];
      const float* C = &s.C[size_t((t * s.G + g) * s.N)];
      for (int64_t p = 0; p < s.P; ++p) {
        const double xv = s.x[size_t((t * s.H + h) * s.P + p)];
        double* Sp = &S[size_t((h * s.P + p) * s.N)];
        double acc = 0;
        for (int64_t n = 0; n < s.N; ++n) {
          Sp[n] = decay * Sp[n] + dt * xv * double(B[n]);
          acc += Sp[n] * double(C[n]);
        }
        y[size_t((t * s.H + h) * s.P + p)] = acc + double(s.D[size_t(h)]) * xv;
      }
    }
}

const char* ssd_name(hc::SsdAlgo a) {
  return a == hc::SsdAlgo::Recurrent ? "recurrent" : a == hc::SsdAlgo::Chunked ? "chunked" : "auto";
}

// Tolerance: the GPU computes in float32; the chunked form sums <= N + 64 + N products per output
// and evaluates decays as exp(cum_i − cum_j) from float32 prefix sums (|cum| <= ~50 here), each
// term with a relative error of ~(|cum| + 10)·u ≈ 4e-6. Against the double reference we allow 1e-4
// of the largest magnitude (y or state), ~20x that; a wrong mask, decay, group or chunk boundary
// changes outputs by O(10%) or more.
void check_ssd(hc::SsdAlgo algo, int64_t T, int64_t H, int64_t P, int64_t N, int64_t G, bool reuse_ws = false) {
  const SsdHost s = random_ssd(T, H, P, N, G, uint32_t(T * 131 + H * 7 + G));
  std::vector<double> Sref, yref;
  ssd_reference(s, Sref, yref);
  hc::DeviceBuffer x = hc::to_device(s.x.data(), s.x.size()), dt = hc::to_device(s.dt.data(), s.dt.size()),
                   A = hc::to_device(s.A.data(), s.A.size()), B = hc::to_device(s.B.data(), s.B.size()),
                   C = hc::to_device(s.C.data(), s.C.size()), D = hc::to_device(s.D.data(), s.D.size()),
                   S = hc::to_device(s.S0.data(), s.S0.size()), y(size_t(T * H * P) * 4 + 4);
  hc::SsdArgs a;
  a.T = T, a.H = H, a.P = P, a.N = N, a.G = G;
  a.x = x.as<float>(), a.dt = dt.as<float>(), a.A = A.as<float>(), a.B = B.as<float>(), a.C = C.as<float>();
  a.D = D.as<float>(), a.state = S.as<float>(), a.y = y.as<float>();
  hc::SsdWorkspace ws;
  if (reuse_ws) {
    // Run once on a scratch copy of the state to leave garbage in the workspace, then for real.
    hc::DeviceBuffer S2 = hc::to_device(s.S0.data(), s.S0.size());
    hc::SsdArgs a2 = a;
    a2.state = S2.as<float>();
    hc::cuda_ssd_scan(a2, algo, &ws);
  }
  hc::cuda_ssd_scan(a, algo, reuse_ws ? &ws : nullptr);
  hc::synchronize();
  std::vector<float> yg(size_t(T * H * P)), Sg(s.S0.size());
  y.download(yg.data(), yg.size() * 4);
  S.download(Sg.data(), Sg.size() * 4);
  const std::string what = std::string("ssd ") + ssd_name(algo) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
                           " P=" + std::to_string(P) + " N=" + std::to_string(N) + " G=" + std::to_string(G);
  double ymax = 0, smax = 0;
  for (double v : yref) ymax = std::max(ymax, std::fabs(v));
  for (double v : Sref) smax = std::max(smax, std::fabs(v));
  int bad = 0;
  for (size_t i = 0; i < yg.size(); ++i)
    if (!(std::fabs(yg[i] - yref[i]) <= 1e-4 * ymax) && bad++ < 5)
      ADD_FAILURE() << what << ": y[" << i << "] gpu " << yg[i] << " ref " << yref[i] << " (max |y| " << ymax << ")";
  for (size_t i = 0; i < Sg.size(); ++i)
    if (!(std::fabs(Sg[i] - Sref[i]) <= 1e-4 * smax) && bad++ < 10)
      ADD_FAILURE() << what << ": S[" << i << "] gpu " << Sg[i] << " ref " << Sref[i] << " (max |S| " << smax << ")";
  EXPECT_EQ(bad, 0) << what;
}

}  // namespace

TEST(CudaSsd, RecurrentMatchesReference) {
  HXQ_REQUIRE_GPU();
  for (int64_t T : {1, 7, 300})
    for (int64_t G : {1, 2, 8}) check_ssd(hc::SsdAlgo::Recurrent, T, 16, 64, 128, G);
}
TEST(CudaSsd, RecurrentOddSizes) {
  HXQ_REQUIRE_GPU();
  check_ssd(hc::SsdAlgo::Recurrent, 7, 6, 40, 72, 3);
  check_ssd(hc::SsdAlgo::Recurrent, 5, 2, 8, 16, 1);  // N < 32: partial lanes
  check_ssd(hc::SsdAlgo::Recurrent, 3, 4, 8, 300, 2);  // N > 256
}
TEST(CudaSsd, ChunkedMatchesReference) {
  HXQ_REQUIRE_GPU();
  for (int64_t T : {1, 7, 300})
    for (int64_t G : {1, 2, 8}) check_ssd(hc::SsdAlgo::Chunked, T, 16, 64, 128, G);
}
TEST(CudaSsd, ChunkedOddSizesAndChunkBoundaries) {
  HXQ_REQUIRE_GPU();
  check_ssd(hc::SsdAlgo::Chunked, 130, 6, 40, 72, 3);   // P, N not multiples of 64/16; partial last chunk
  check_ssd(hc::SsdAlgo::Chunked, 128, 4, 96, 128, 1);  // exact chunks; two p-tiles (one partial)
  check_ssd(hc::SsdAlgo::Chunked, 65, 2, 64, 200, 2);   // one step into the second chunk; 4 n-tiles
  check_ssd(hc::SsdAlgo::Chunked, 300, 8, 64, 128, 2, true);  // reused workspace
}
TEST(CudaSsd, AutoLongSequence) {
  HXQ_REQUIRE_GPU();
  check_ssd(hc::SsdAlgo::Auto, 1000, 4, 64, 128, 1);
}

// ---- the kernels' index math on the CPU (no GPU needed) ----
// The device kernels compiled as host C++ under the emulation of kernels/cuda/cuda_emulation.h
// (every CUDA thread a real thread, barriers, shuffles), on small odd shapes that hit every tail:
// R-row groups past N, partial 512-element chunks, K not a multiple of 16, misaligned X, grid-
// stride loops, partial 128x128 tiles, partial SSD chunks and p/n tiles. References in double;
// the kernels sum at most a few thousand fp32 terms, so 1e-5 (GEMM) / 1e-4 (SSD, with exps) of
// the largest output is ~100x the rounding error and far below any indexing mistake.
// (Included last: the emulation defines threadIdx, __shared__, ... as macros.)
#include "kernels/cuda/cuda_emulation.h"
#include "kernels/cuda/cuda_gemm_kernels.cuh"
#include "kernels/cuda/cuda_ssd_kernels.cuh"

namespace {

namespace kn = hxq::cuda::kern_emu;
namespace emu = hxq::cuda::emu;

void expect_near_all(const std::string& what, const std::vector<float>& got, const std::vector<double>& ref,
                     double tol_rel) {
  double mx = 0;
  for (double r : ref) mx = std::max(mx, std::fabs(r));
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(double(got[i]) - ref[i]) <= tol_rel * mx) && bad++ < 3)
      ADD_FAILURE() << what << ": [" << i << "] got " << got[i] << " ref " << ref[i];
  EXPECT_EQ(bad, 0) << what;
}

struct EmuW {
  HostHxq h;
  std::vector<uint16_t> bf;
};
EmuW emu_weights(int64_t N, int64_t K, uint32_t seed) {
  EmuW w{random_hxq(N, K, true, seed), {}};
  const std::vector<float> f = random_vec(size_t(N * K), seed + 1, 0.05f);
  w.bf.resize(f.size());
  for (size_t i = 0; i < f.size(); ++i) w.bf[i] = f32_to_bf16(f[i]);
  return w;
}
std::vector<double> emu_ref(const std::vector<float>& X, int64_t T, const EmuW& w, bool hxq) {
  const int64_t N = w.h.rows, K = w.h.cols;
  std::vector<double> y(size_t(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < N; ++r) {
      double a = 0;
      for (int64_t k = 0; k < K; ++k)
        a += double(X[size_t(t * K + k)]) * (hxq ? w.h.w(r, k) : bf16_to_f32(w.bf[size_t(r * K + k)]));
      if (hxq)
        for (int64_t e = w.h.rp[size_t(r)]; e < w.h.rp[size_t(r + 1)]; ++e)
          a += double(X[size_t(t * K + w.h.col[size_t(e)])]) * w.h.delta[size_t(e)];
      y[size_t(t * N + r)] = a;
    }
  return y;
}

// The launcher's configurations (cuda_gemm.cu launch_matvec_t) with a given grid: the block
// kernel, and for aligned inputs also the warp kernel.
template <int T, bool HXQ>
void emu_matvec(int64_t N, int64_t K, unsigned grid, int x_off) {
  const EmuW w = emu_weights(N, K, uint32_t(N * 31 + K + T));
  std::vector<float> Xb = random_vec(size_t(T * K) + 4, 7);
  const float* X = Xb.data() + x_off;
  constexpr int R = kn::matvec_rows(T);
  constexpr int EPV = HXQ ? 16 : 8;
  const int64_t nchunks = (K + 32 * EPV - 1) / (32 * EPV);
  const int nwarps = int(std::clamp<int64_t>(nchunks, 2, 8));
  const size_t smem = size_t((HXQ ? 256 * kn::kCbCopies : 0) + nwarps * R * T) * 4;
  const bool vec = K % EPV == 0 && reinterpret_cast<uintptr_t>(X) % 16 == 0;
  const void* W = HXQ ? static_cast<const void*>(w.h.idx.data()) : static_cast<const void*>(w.bf.data());
  const int64_t* rp = HXQ ? w.h.rp.data() : nullptr;
  const std::vector<double> ref = emu_ref(std::vector<float>(X, X + T * K), T, w, HXQ);
  const std::string what = std::string("matvec ") + (HXQ ? "hxq" : "bf16") + " T=" + std::to_string(T) + " " +
                           std::to_string(N) + "x" + std::to_string(K);
  // The block kernel (K split over the warps of a block), vectorised or per element.
  std::vector<float> Y(size_t(T * N), -7.0f);
  emu::launch(dim3(grid), dim3(unsigned(nwarps * 32)), smem, [&] {
    if (vec) kn::matvec_kernel<T, R, true, HXQ>(X, K, N, W, w.h.cb.data(), rp, w.h.col.data(), w.h.delta.data(), Y.data());
    else kn::matvec_kernel<T, R, false, HXQ>(X, K, N, W, w.h.cb.data(), rp, w.h.col.data(), w.h.delta.data(), Y.data());
  });
  expect_near_all(what + (vec ? " block vec" : " block elem"), Y, ref, 1e-5);
  if (vec) {  // the warp kernel (one row group per warp, blocks of 8 warps)
    std::vector<float> Yw(size_t(T * N), -7.0f);
    const size_t smem_w = size_t(HXQ ? 256 * kn::kCbCopies : 0) * 4;
    emu::launch(dim3(grid), dim3(unsigned(kn::kWarpKernelWarps * 32)), smem_w, [&] {
      kn::matvec_warp_kernel<T, R, HXQ>(X, K, N, W, w.h.cb.data(), rp, w.h.col.data(), w.h.delta.data(), Yw.data());
    });
    expect_near_all(what + " warp", Yw, ref, 1e-5);
  }
}

template <bool HXQ>
void emu_matmul(int64_t T, int64_t N, int64_t K, bool simple) {
  const EmuW w = emu_weights(N, K, uint32_t(T + N + K));
  const std::vector<float> X = random_vec(size_t(T * K), 8);
  std::vector<float> Y(size_t(T * N), -7.0f);
  const kn::HxqElem he{w.h.idx.data(), w.h.cb.data(), K};
  const kn::Bf16Elem be{w.bf.data(), K};
  if (simple) {
    emu::launch(dim3(unsigned(N), unsigned(std::min<int64_t>(T, 2))), dim3(kn::kSimpleThreads), 0, [&] {
      if constexpr (HXQ)
        kn::gemm_simple_kernel<kn::HxqElem>(X.data(), T, K, N, he, w.h.rp.data(), w.h.col.data(), w.h.delta.data(),
                                            Y.data());
      else kn::gemm_simple_kernel<kn::Bf16Elem>(X.data(), T, K, N, be, nullptr, nullptr, nullptr, Y.data());
    });
  } else {
    emu::launch(dim3(unsigned((N + kn::kBN - 1) / kn::kBN), unsigned((T + kn::kBM - 1) / kn::kBM)), dim3(256), 0, [&] {
      if constexpr (HXQ) kn::matmul_kernel<kn::HxqElem>(X.data(), T, K, N, he, Y.data());
      else kn::matmul_kernel<kn::Bf16Elem>(X.data(), T, K, N, be, Y.data());
    });
    if (HXQ)
      emu::launch(dim3(unsigned((N + 255) / 256), unsigned(std::min<int64_t>(T, 3))), dim3(256), 0, [&] {
        kn::sidecar_kernel(X.data(), T, K, N, w.h.rp.data(), w.h.col.data(), w.h.delta.data(), Y.data());
      });
  }
  expect_near_all(std::string(simple ? "simple " : "matmul ") + (HXQ ? "hxq" : "bf16") + " T=" + std::to_string(T) +
                      " " + std::to_string(N) + "x" + std::to_string(K),
                  Y, emu_ref(X, T, w, HXQ), 1e-5);
}

void emu_ssd(int64_t T, int64_t H, int64_t P, int64_t N, int64_t G, bool chunked) {
  const SsdHost s = random_ssd(T, H, P, N, G, uint32_t(T + H + P + N + G));
  std::vector<double> Sref, yref;
  ssd_reference(s, Sref, yref);
  std::vector<float> y(size_t(T * H * P), -7.0f), S = s.S0;
  hc::SsdArgs a;
  a.T = T, a.H = H, a.P = P, a.N = N, a.G = G;
  a.x = s.x.data(), a.dt = s.dt.data(), a.A = s.A.data(), a.B = s.B.data(), a.C = s.C.data(), a.D = s.D.data();
  a.state = S.data(), a.y = y.data();
  if (!chunked) {
    emu::launch(dim3(unsigned((H * P * 32 + 255) / 256)), dim3(256), 0, [&] {
      const int64_t nj = (N + 31) / 32;
      if (nj <= 1) kn::ssd_recurrent_kernel<1>(a);
      else if (nj <= 2) kn::ssd_recurrent_kernel<2>(a);
      else if (nj <= 4) kn::ssd_recurrent_kernel<4>(a);
      else kn::ssd_recurrent_kernel<8>(a);
    });
  } else {
    // The launch sequence of cuda_ssd_scan (cuda_ssd.cu), on a NaN-filled workspace.
    const int64_t nchunks = (T + kn::kL - 1) / kn::kL;
    std::vector<float> ws(hc::ssd_workspace_floats(T, H, P, N), std::nanf(""));
    float* cum = ws.data();
    float* st = ws.data() + H * nchunks * kn::kL;
    emu::launch(dim3(unsigned((nchunks * H + 255) / 256)), dim3(256), 0, [&] { kn::ssd_cum_kernel(a, nchunks, cum); });
    const int64_t pt = (P + 63) / 64, nt = (N + 63) / 64;
    emu::launch(dim3(unsigned(nchunks), unsigned(H), unsigned(pt * nt)), dim3(256), 0,
                [&] { kn::ssd_chunk_state_kernel(a, nchunks, cum, st); });
    emu::launch(dim3(unsigned((H * P * N + 255) / 256)), dim3(256), 0, [&] { kn::ssd_pass_kernel(a, nchunks, cum, st); });
    emu::launch(dim3(unsigned(nchunks), unsigned(H), unsigned(pt)), dim3(256), 0,
                [&] { kn::ssd_chunk_out_kernel(a, nchunks, cum, st); });
  }
  const std::string what = std::string(chunked ? "ssd chunked" : "ssd recurrent") + " T=" + std::to_string(T) +
                           " H=" + std::to_string(H) + " P=" + std::to_string(P) + " N=" + std::to_string(N) +
                           " G=" + std::to_string(G);
  expect_near_all(what + " y", y, yref, 1e-4);
  expect_near_all(what + " state", S, Sref, 1e-4);
}

}  // namespace

TEST(CudaEmu, MatvecHxq) {
  emu_matvec<1, true>(37, 1040, 3, 0);  // 3 chunks (last partial), 10 row groups over 3 blocks
  emu_matvec<3, true>(37, 1040, 4, 0);
  emu_matvec<5, true>(37, 2048, 2, 0);  // R = 4, T > 4
  emu_matvec<8, true>(19, 512, 3, 0);
  emu_matvec<2, true>(37, 50, 3, 0);    // K % 16 != 0: element path
  emu_matvec<4, true>(13, 1000, 2, 0);
  emu_matvec<1, true>(13, 1040, 2, 1);  // misaligned X
  emu_matvec<1, true>(20, 4608, 2, 0);  // 9 chunks over 8 warps: prefetch within and across groups
  emu_matvec<3, true>(9, 4608, 1, 0);
  emu_matvec<1, true>(301, 1040, 2, 0);  // 76 row groups over 16 warps: each warp loops over groups
  emu_matvec<8, true>(130, 512, 1, 0);
}
TEST(CudaEmu, MatvecBf16) {
  emu_matvec<1, false>(37, 1040, 3, 0);
  emu_matvec<4, false>(13, 2056, 2, 0);
  emu_matvec<6, false>(21, 50, 3, 0);
  emu_matvec<3, false>(13, 1040, 2, 1);
  emu_matvec<2, false>(20, 2304, 2, 0);  // 9 chunks of 256 BF16 over 8 warps
  emu_matvec<2, false>(301, 520, 1, 0);   // 76 row groups over 8 warps, last chunk partial
}
TEST(CudaEmu, MatmulAndSimple) {
  emu_matmul<true>(130, 165, 50, false);  // partial tiles in T, N and K
  emu_matmul<false>(130, 165, 50, false);
  emu_matmul<true>(3, 200, 37, false);
  emu_matmul<true>(3, 5, 300, true);
  emu_matmul<false>(3, 5, 300, true);
}
TEST(CudaEmu, SsdRecurrent) {
  emu_ssd(7, 4, 8, 72, 2, false);
  emu_ssd(3, 2, 8, 16, 1, false);
}
TEST(CudaEmu, SsdChunked) {
  emu_ssd(130, 2, 70, 72, 2, true);  // partial last chunk, 2 p-tiles and 2 n-tiles (partial)
  emu_ssd(1, 2, 64, 128, 1, true);
  emu_ssd(65, 2, 8, 130, 2, true);
}
