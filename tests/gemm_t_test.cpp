// Tests of the transposed kernels dX = G · W (kernels/gemm_t.h): every kernel ISA (scalar
// reference, AVX2, AVX-512) and 1 and 2 threads against a double-precision sum over the decoded
// weights, for dense F32/F16/BF16, helix HXQ and HXQ v2 (4, 5, 6, 8 bits, groups 16 and 32), with
// and without sidecar, on odd shapes; bitwise independence of the thread count, of the other rows
// of G computed with a row and of the SIMD ISA; exact sidecar counting; empty shapes and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm_t.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"

using namespace hxq;

namespace {

std::vector<Isa> supported_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

// Restores the kernel ISA and the pool size chosen before the test.
struct Restore {
  Isa isa = kernel_isa();
  int threads = pool().size();
  ~Restore() {
    set_kernel_isa(isa);
    set_num_threads(threads);
  }
};

// One weight in every form the tests need: a function that runs gemm_t (or its reference) on it,
// and W[r, c] in double (decoded value plus the sidecar deltas, summed in double).
struct Weight {
  std::string name;
  int64_t N = 0, K = 0;
  // Storage (only the fields of the weight's kind are used).
  DType dt = DType::F32;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<float> codebook, lut;
  std::vector<uint8_t> idx, codes;
  int bits = 8, group = 32;
  bool helix = false, v2 = false, sidecar = false;
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col;
  std::vector<float> delta;
  std::vector<double> wd;  // [N, K]

  HxqView hxq_view() const {
    HxqView v;
    v.rows = N;
    v.cols = K;
    v.codebook = codebook.data();
    v.indices = idx.data();
    if (sidecar) {
      v.sc_row_ptr = row_ptr.data();
      v.sc_col = col.data();
      v.sc_delta = delta.data();
    }
    return v;
  }
  Hxq2View hxq2_view() const {
    Hxq2View v;
    v.rows = N;
    v.cols = K;
    v.bits = bits;
    v.group = group;
    v.codebook = codebook.data();
    v.indices = idx.data();
    v.codes = codes.data();
    v.scale_lut = lut.data();
    if (sidecar) {
      v.sc_row_ptr = row_ptr.data();
      v.sc_col = col.data();
      v.sc_delta = delta.data();
    }
    return v;
  }
  const void* dense_data() const { return dt == DType::F32 ? static_cast<const void*>(f32.data()) : half.data(); }
  void run(const float* G, int64_t T, float* dX, bool reference) const {
    if (helix) {
      if (reference) gemm_t_hxq_reference(G, T, hxq_view(), dX);
      else gemm_t_hxq(G, T, hxq_view(), dX);
    } else if (v2) {
      if (reference) gemm_t_hxq2_reference(G, T, hxq2_view(), dX);
      else gemm_t_hxq2(G, T, hxq2_view(), dX);
    } else {
      if (reference) gemm_t_dense_reference(G, T, N, dense_data(), dt, K, dX);
      else gemm_t_dense(G, T, N, dense_data(), dt, K, dX);
    }
  }
};

// About 1 weight in 30 gets a sidecar entry, every 7th row none, and row 1 (when it exists) a
// second entry on an already corrected column (entries on the same weight add up). Deltas are
// small integers when `integers`, else normal.
void add_sidecar(Weight& w, std::mt19937& rng, bool integers) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> d30(0, 29), di(-3, 3);
  w.sidecar = true;
  w.row_ptr.assign(1, 0);
  for (int64_t r = 0; r < w.N; ++r) {
    const size_t first = w.col.size();
    if (r % 7 != 6)
      for (int64_t k = 0; k < w.K; ++k)
        if (d30(rng) == 0 || (r == 0 && k == w.K - 1)) {
          w.col.push_back(int32_t(k));
          w.delta.push_back(integers ? float(di(rng)) : nd(rng));
        }
    if (r == 1 && w.col.size() > first) {
      w.col.push_back(w.col[first]);
      w.delta.push_back(integers ? 2.0f : nd(rng));
    }
    w.row_ptr.push_back(int64_t(w.col.size()));
  }
  for (int64_t r = 0; r < w.N; ++r)
    for (int64_t e = w.row_ptr[size_t(r)]; e < w.row_ptr[size_t(r + 1)]; ++e)
      w.wd[size_t(r * w.K + w.col[size_t(e)])] += double(w.delta[size_t(e)]);
}

Weight make_dense(DType dt, int64_t N, int64_t K, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Weight w;
  w.name = std::string("dense ") + std::string(dtype_name(dt));
  w.N = N;
  w.K = K;
  w.dt = dt;
  const size_t n = size_t(N * K);
  w.wd.resize(n);
  if (dt == DType::F32) w.f32.resize(n);
  else w.half.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const float v = nd(rng);
    if (dt == DType::F32) {
      w.f32[i] = v;
      w.wd[i] = v;
    } else {
      w.half[i] = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
      w.wd[i] = dt == DType::BF16 ? bf16_to_f32(w.half[i]) : f16_to_f32(w.half[i]);
    }
  }
  return w;
}

// Every index value occurs (each 5th weight cycles through 0..255). `integers`: codebook entries
// are small integers (products and sums then exact in float32).
Weight make_helix(int64_t N, int64_t K, bool sidecar, std::mt19937& rng, bool integers = false) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> ib(0, 255), di(-4, 4);
  Weight w;
  w.name = sidecar ? "helix + sidecar" : "helix";
  w.helix = true;
  w.N = N;
  w.K = K;
  w.codebook.resize(256);
  for (auto& c : w.codebook) c = integers ? float(di(rng)) : nd(rng);
  w.idx.resize(size_t(N * K));
  w.wd.resize(w.idx.size());
  for (size_t i = 0; i < w.idx.size(); ++i) {
    w.idx[i] = uint8_t(i % 5 == 0 ? i / 5 % 256 : size_t(ib(rng)));
    w.wd[i] = w.codebook[w.idx[i]];
  }
  if (sidecar) add_sidecar(w, rng, integers);
  return w;
}

// Random indices packed with the kernels' own packing functions, random scale codes, a scale
// table of powers of two apart (1 and 2^-k / 4 when `integers`, so that scale × entry is exact).
Weight make_v2(int64_t N, int64_t K, int bits, int group, bool sidecar, std::mt19937& rng, bool integers = false) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> di(0, (1 << bits) - 1), dc(0, 63), dv(-4, 4);
  Weight w;
  w.name = "v2 " + std::to_string(bits) + "-bit group " + std::to_string(group) + (sidecar ? " + sidecar" : "");
  w.v2 = true;
  w.N = N;
  w.K = K;
  w.bits = bits;
  w.group = group;
  w.codebook.resize(size_t(1) << bits);
  for (auto& c : w.codebook) c = integers ? float(dv(rng)) : nd(rng);
  w.lut.resize(64);
  for (int i = 0; i < 64; ++i)
    w.lut[size_t(i)] = integers ? float(1 + i % 3) : std::ldexp(1.0f, -(i % 16)) * (1.0f + float(i) / 64);
  const int64_t rb = hxq2_packed_row_bytes(K, bits), ng = (K + group - 1) / group;
  w.idx.assign(size_t(N * rb), 0);
  w.codes.resize(size_t(N * ng));
  for (auto& c : w.codes) c = uint8_t(dc(rng));
  uint8_t idx[32];
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c0 = 0; c0 < K; c0 += 32) {
      const int64_t m = std::min<int64_t>(32, K - c0);
      for (int64_t j = 0; j < 32; ++j) idx[j] = j < m ? uint8_t(di(rng)) : 0;
      uint8_t* dst = w.idx.data() + r * rb + c0 / 32 * 4 * bits;
      if (m == 32) hxq2_pack_chunk(idx, bits, dst);
      else hxq2_pack_tail(idx, m, bits, dst);
    }
  // Decoded by the scalar row decoder (tested against the packing in hxq2_test.cpp).
  const Hxq2View v = w.hxq2_view();
  w.wd.resize(size_t(N * K));
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t r = 0; r < N; ++r) {
    hxq2_decode_row(v, r, row.data());
    for (int64_t c = 0; c < K; ++c) w.wd[size_t(r * K + c)] = row[size_t(c)];
  }
  if (sidecar) add_sidecar(w, rng, integers);
  return w;
}

std::vector<float> make_g(int64_t T, int64_t N, std::mt19937& rng, bool integers = false) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> di(-4, 4);
  std::vector<float> g(size_t(T * N));
  for (auto& v : g) v = integers ? float(di(rng)) : nd(rng);
  return g;
}

// ref = G · W in double, mag = |G| · |W| (the scale of the rounding error).
void reference(const Weight& w, const std::vector<float>& G, int64_t T, std::vector<double>& ref,
               std::vector<double>& mag) {
  ref.assign(size_t(T * w.K), 0.0);
  mag.assign(ref.size(), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < w.N; ++r) {
      const double g = G[size_t(t * w.N + r)];
      for (int64_t c = 0; c < w.K; ++c) {
        const double p = g * w.wd[size_t(r * w.K + c)];
        ref[size_t(t * w.K + c)] += p;
        mag[size_t(t * w.K + c)] += std::fabs(p);
      }
    }
}

// Tolerance: every kernel computes each output as a float32 sum of the N products G[t, r]·W[r, c]
// in some order (the reference: in row order without FMA; the SIMD kernels: FMA chains over blocks
// of 256 rows, the blocks added in order). For any such order |computed − exact| <= γ_N · Σ|g·w|
// with γ_N = N·u / (1 − N·u), u = 2^-24 (Higham, "Accuracy and Stability of Numerical
// Algorithms", 3.1; an FMA rounds once where a product and a sum round twice, which only tightens
// it). The float32 weight holds decoded value + deltas rounded once per delta (at most 2 per
// weight here), another <= 2u·|w| per term. So the first-order worst case is (N + 2)·u·Σ|g·w|;
// the tolerance is twice that, (N + 2)·FLT_EPSILON·Σ|g·w| (FLT_EPSILON = 2u), covering the
// 1/(1 − N·u) factor. Typical errors are ~sqrt(N)·u·Σ|g·w|, far below; a wrong or missing term
// is ~Σ|g·w| / N, far above for the sizes here.
void expect_close(const std::vector<float>& y, const std::vector<double>& ref, const std::vector<double>& mag,
                  int64_t N, const std::string& what) {
  ASSERT_EQ(y.size(), ref.size());
  int bad = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double tol = double(N + 2) * std::numeric_limits<float>::epsilon() * mag[i] + 1e-30;
    if (!(std::fabs(double(y[i]) - ref[i]) <= tol) && ++bad <= 5)
      ADD_FAILURE() << what << ": dX[" << i << "] = " << y[i] << ", reference " << ref[i] << ", tolerance " << tol;
  }
  EXPECT_EQ(bad, 0) << what;
}

struct Shape {
  int64_t T, N, K;
};
// T = 1, 3 (slab regime, dense rows read in place) and 17, 64 (panel regime); N up to three blocks
// of 256 rows (not a multiple of it), K above one column range, neither a multiple of 8/16/32/64;
// v2 tail chunks of 1 to 27 columns (over two groups of 16 at K = 59).
const Shape kShapes[] = {{1, 300, 97}, {3, 37, 59}, {17, 531, 70}, {64, 70, 300},
                         {1, 5, 1},    {17, 1, 33}, {3, 257, 513}, {64, 260, 33}};

std::string where(const Weight& w, const Shape& s, Isa isa, int threads, bool reference) {
  return w.name + " T=" + std::to_string(s.T) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " " +
         std::string(isa_name(isa)) + (reference ? " reference" : "") + " threads=" + std::to_string(threads);
}

// Every ISA, the kernel and its scalar reference, 1 and 2 threads: within the bound of the double
// reference, and bit-identical between thread counts.
void check_weight(const std::function<Weight(const Shape&, std::mt19937&)>& make, uint32_t seed) {
  Restore restore;
  std::mt19937 rng(seed);
  for (const Shape& s : kShapes) {
    const Weight w = make(s, rng);
    const std::vector<float> G = make_g(s.T, s.N, rng);
    std::vector<double> ref, mag;
    reference(w, G, s.T, ref, mag);
    for (Isa isa : supported_isas()) {
      set_kernel_isa(isa);
      for (bool refk : {false, true}) {
        if (refk && isa != Isa::Scalar) continue;  // the reference does not depend on the ISA
        std::vector<float> first;
        for (int threads : {1, 2}) {
          set_num_threads(threads);
          std::vector<float> dX(ref.size(), std::nanf(""));
          w.run(G.data(), s.T, dX.data(), refk);
          const std::string what = where(w, s, isa, threads, refk);
          expect_close(dX, ref, mag, s.N, what);
          if (first.empty()) first = dX;
          else EXPECT_EQ(0, std::memcmp(first.data(), dX.data(), dX.size() * 4)) << what << ": differs from 1 thread";
        }
        if (isa == Isa::Scalar && !refk) {  // the scalar ISA runs the reference itself
          std::vector<float> r(ref.size());
          w.run(G.data(), s.T, r.data(), true);
          EXPECT_EQ(0, std::memcmp(first.data(), r.data(), r.size() * 4)) << w.name << ": scalar ISA vs reference";
        }
      }
    }
  }
}

TEST(GemmTDense, F32MatchesDoubleReference) {
  check_weight([](const Shape& s, std::mt19937& rng) { return make_dense(DType::F32, s.N, s.K, rng); }, 1);
}
TEST(GemmTDense, F16MatchesDoubleReference) {
  check_weight([](const Shape& s, std::mt19937& rng) { return make_dense(DType::F16, s.N, s.K, rng); }, 2);
}
TEST(GemmTDense, BF16MatchesDoubleReference) {
  check_weight([](const Shape& s, std::mt19937& rng) { return make_dense(DType::BF16, s.N, s.K, rng); }, 3);
}
TEST(GemmTHxq, MatchesDoubleReference) {
  check_weight([](const Shape& s, std::mt19937& rng) { return make_helix(s.N, s.K, false, rng); }, 4);
}
TEST(GemmTHxq, SidecarMatchesDoubleReference) {
  check_weight([](const Shape& s, std::mt19937& rng) { return make_helix(s.N, s.K, true, rng); }, 5);
}
TEST(GemmTHxq2, EveryWidthAndGroupMatchesDoubleReference) {
  uint32_t seed = 6;
  for (int bits : {4, 5, 6, 8})
    for (int group : {16, 32})
      for (bool sidecar : {false, true})
        check_weight([&](const Shape& s, std::mt19937& rng) { return make_v2(s.N, s.K, bits, group, sidecar, rng); },
                     seed++);
}

// Larger thread counts split K into more, narrower column ranges: still the same bits.
TEST(GemmT, ThreadCountDoesNotChangeResults) {
  Restore restore;
  std::mt19937 rng(20);
  const int64_t T = 20, N = 600, K = 700;
  const std::vector<float> G = make_g(T, N, rng);
  const Weight ws[] = {make_dense(DType::BF16, N, K, rng), make_helix(N, K, true, rng),
                       make_v2(N, K, 5, 16, true, rng)};
  for (Isa isa : supported_isas()) {
    set_kernel_isa(isa);
    for (const Weight& w : ws) {
      std::vector<float> first;
      for (int threads : {1, 2, 3, 7}) {
        set_num_threads(threads);
        std::vector<float> dX(size_t(T * K));
        w.run(G.data(), T, dX.data(), false);
        if (first.empty()) first = dX;
        else
          EXPECT_EQ(0, std::memcmp(first.data(), dX.data(), dX.size() * 4))
              << w.name << " " << isa_name(isa) << " threads=" << threads;
      }
    }
  }
}

// Both regimes (slabs for few rows of G, packed panels for more) and both SIMD ISAs sum every
// output in the same order (gemm_t.h), so a row of dX does not depend on the rows of G computed
// with it nor on the ISA: bit for bit.
TEST(GemmT, RowsDoNotDependOnBatchOrSimdIsa) {
  Restore restore;
  std::mt19937 rng(24);
  const int64_t T = 20, N = 600, K = 300;
  const std::vector<float> G = make_g(T, N, rng);
  const Weight ws[] = {make_dense(DType::F32, N, K, rng), make_dense(DType::F16, N, K, rng),
                       make_dense(DType::BF16, N, K, rng), make_helix(N, K, true, rng),
                       make_v2(N, K, 5, 16, true, rng), make_v2(N, K, 8, 32, true, rng)};
  set_num_threads(2);
  for (const Weight& w : ws) {
    std::vector<float> first;
    for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
      if (!isa_supported(isa)) continue;
      set_kernel_isa(isa);
      std::vector<float> all(size_t(T * K));
      w.run(G.data(), T, all.data(), false);
      if (first.empty()) first = all;
      else EXPECT_EQ(0, std::memcmp(first.data(), all.data(), all.size() * 4)) << w.name << ": AVX2 vs AVX-512";
      for (int64_t batch : {1, 3, 8}) {
        std::vector<float> part(size_t(T * K));
        for (int64_t t0 = 0; t0 < T; t0 += batch) {
          const int64_t n = std::min(batch, T - t0);
          w.run(G.data() + t0 * N, n, part.data() + t0 * K, false);
        }
        EXPECT_EQ(0, std::memcmp(all.data(), part.data(), all.size() * 4))
            << w.name << " " << isa_name(isa) << ": rows in batches of " << batch << " vs all " << T;
      }
    }
  }
}

// Small integers everywhere (G, codebook, scales, deltas): every product and partial sum is an
// exact float32 integer, so every ISA must give the exact result — each sidecar entry counted
// once (duplicate entries on one weight both), none lost at block or range edges.
TEST(GemmT, SidecarEntriesCountedExactly) {
  Restore restore;
  std::mt19937 rng(21);
  for (const Shape& s : {Shape{3, 300, 97}, Shape{17, 40, 300}, Shape{1, 531, 33}}) {
    const std::vector<float> G = make_g(s.T, s.N, rng, true);
    const Weight ws[] = {make_helix(s.N, s.K, true, rng, true), make_v2(s.N, s.K, 6, 16, true, rng, true),
                         make_v2(s.N, s.K, 8, 32, true, rng, true)};
    for (const Weight& w : ws) {
      std::vector<double> ref, mag;
      reference(w, G, s.T, ref, mag);
      // Only the sidecar: an all-zero codebook.
      Weight z = w;
      std::fill(z.codebook.begin(), z.codebook.end(), 0.0f);
      std::vector<double> zref(ref.size(), 0.0);
      for (int64_t r = 0; r < s.N; ++r)
        for (int64_t e = w.row_ptr[size_t(r)]; e < w.row_ptr[size_t(r + 1)]; ++e)
          for (int64_t t = 0; t < s.T; ++t)
            zref[size_t(t * s.K + w.col[size_t(e)])] += double(G[size_t(t * s.N + r)]) * double(w.delta[size_t(e)]);
      for (Isa isa : supported_isas()) {
        set_kernel_isa(isa);
        for (int threads : {1, 2}) {
          set_num_threads(threads);
          std::vector<float> dX(ref.size()), dz(ref.size());
          w.run(G.data(), s.T, dX.data(), false);
          z.run(G.data(), s.T, dz.data(), false);
          for (size_t i = 0; i < ref.size(); ++i) {
            ASSERT_EQ(double(dX[i]), ref[i]) << w.name << " " << isa_name(isa) << " threads=" << threads << " at " << i;
            ASSERT_EQ(double(dz[i]), zref[i]) << w.name << " sidecar only " << isa_name(isa) << " at " << i;
          }
        }
      }
    }
  }
}

TEST(GemmT, EmptyShapes) {
  Restore restore;
  std::mt19937 rng(22);
  for (Isa isa : supported_isas()) {
    set_kernel_isa(isa);
    // N = 0: dX zeroed (an empty sum), whatever the (absent) weight pointers.
    std::vector<float> dX(12, 5.0f);
    gemm_t_dense(nullptr, 3, 0, nullptr, DType::BF16, 4, dX.data());
    for (float v : dX) EXPECT_EQ(v, 0.0f) << isa_name(isa);
    std::fill(dX.begin(), dX.end(), 5.0f);
    HxqView hv;
    hv.cols = 4;
    gemm_t_hxq(nullptr, 3, hv, dX.data());
    for (float v : dX) EXPECT_EQ(v, 0.0f) << isa_name(isa);
    std::fill(dX.begin(), dX.end(), 5.0f);
    Hxq2View v2;
    v2.cols = 4;
    gemm_t_hxq2(nullptr, 3, v2, dX.data());
    for (float v : dX) EXPECT_EQ(v, 0.0f) << isa_name(isa);
    // T = 0 or K = 0: nothing to write.
    const Weight w = make_v2(5, 40, 4, 32, true, rng);
    gemm_t_hxq2(nullptr, 0, w.hxq2_view(), nullptr);
    gemm_t_dense(nullptr, 0, 5, w.codebook.data(), DType::F32, 3, nullptr);
    std::vector<float> g(10, 1.0f);
    gemm_t_dense(g.data(), 2, 5, nullptr, DType::F32, 0, nullptr);
  }
}

TEST(GemmT, BadInputThrowsBeforeWriting) {
  Restore restore;
  std::mt19937 rng(23);
  const int64_t T = 2, N = 6, K = 40;
  const std::vector<float> G = make_g(T, N, rng);
  const Weight dense = make_dense(DType::F32, N, K, rng);
  for (Isa isa : supported_isas()) {
    set_kernel_isa(isa);
    std::vector<float> dX(size_t(T * K), 7.0f);
    auto untouched = [&] {
      for (float v : dX)
        if (v != 7.0f) return false;
      return true;
    };
    const std::string at = std::string(isa_name(isa));
    // Shapes, dtypes, null arrays.
    EXPECT_THROW(gemm_t_dense(G.data(), -1, N, dense.f32.data(), DType::F32, K, dX.data()), Error) << at;
    EXPECT_THROW(gemm_t_dense(G.data(), T, -1, dense.f32.data(), DType::F32, K, dX.data()), Error) << at;
    EXPECT_THROW(gemm_t_dense(G.data(), T, N, dense.f32.data(), DType::F32, -1, dX.data()), Error) << at;
    EXPECT_THROW(gemm_t_dense(G.data(), T, N, dense.f32.data(), DType::I32, K, dX.data()), Error) << at;
    EXPECT_THROW(gemm_t_dense(nullptr, T, N, dense.f32.data(), DType::F32, K, dX.data()), Error) << at;
    EXPECT_THROW(gemm_t_dense(G.data(), T, N, nullptr, DType::F32, K, dX.data()), Error) << at;
    EXPECT_THROW(gemm_t_dense(G.data(), T, N, dense.f32.data(), DType::F32, K, nullptr), Error) << at;
    EXPECT_THROW(gemm_t_dense_reference(G.data(), T, N, dense.f32.data(), DType::U8, K, dX.data()), Error) << at;
    // Helix: sidecar column out of range (K, then −1), decreasing row pointers, no codebook.
    for (bool ref : {false, true}) {
      Weight h = make_helix(N, K, true, rng);
      h.col.back() = int32_t(K);
      EXPECT_THROW(h.run(G.data(), T, dX.data(), ref), Error) << at;
      h.col.back() = -1;
      EXPECT_THROW(h.run(G.data(), T, dX.data(), ref), Error) << at;
      h.col.back() = 0;
      h.row_ptr[3] = h.row_ptr[4] + 1;
      EXPECT_THROW(h.run(G.data(), T, dX.data(), ref), Error) << at;
      Weight hn = make_helix(N, K, false, rng);
      HxqView hv = hn.hxq_view();
      hv.codebook = nullptr;
      EXPECT_THROW(
          ref ? gemm_t_hxq_reference(G.data(), T, hv, dX.data()) : gemm_t_hxq(G.data(), T, hv, dX.data()), Error)
          << at;
      // v2: bad width and group, bad sidecar column, missing scales.
      Weight v = make_v2(N, K, 5, 32, true, rng);
      v.bits = 7;
      EXPECT_THROW(v.run(G.data(), T, dX.data(), ref), Error) << at;
      v.bits = 5;
      v.group = 64;
      EXPECT_THROW(v.run(G.data(), T, dX.data(), ref), Error) << at;
      v.group = 32;
      v.col.back() = int32_t(K + 3);
      EXPECT_THROW(v.run(G.data(), T, dX.data(), ref), Error) << at;
      Weight vn = make_v2(N, K, 4, 16, false, rng);
      Hxq2View vv = vn.hxq2_view();
      vv.scale_lut = nullptr;
      EXPECT_THROW(
          ref ? gemm_t_hxq2_reference(G.data(), T, vv, dX.data()) : gemm_t_hxq2(G.data(), T, vv, dX.data()), Error)
          << at;
    }
    EXPECT_TRUE(untouched()) << at << ": a throwing call wrote dX";
    // The message is one line naming the kernel.
    try {
      Weight h = make_helix(N, K, true, rng);
      h.col.back() = int32_t(K);
      h.run(G.data(), T, dX.data(), false);
      ADD_FAILURE() << "no throw";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("gemm_t_hxq"), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
}

}  // namespace
