// Micro-benchmarks of the transposed product dX = G · W (kernels/gemm_t.h, the input gradient of
// Y = X · Wᵀ) next to the forward product of the same weight and shape, for dense BF16, helix
// HXQ (with 512 sidecar entries, as kernels_bench.cpp) and HXQ v2 at 8 and 4 bits (group 32, no
// sidecar): N = K = 2048, T = 1, 64, 512, all cores, wall time. GFLOP/s = 2·T·N·K / s. One copy of
// each weight (L3-warm after the first iteration: these compare the two products, they do not
// model a model's cold layer-after-layer reads). The forward runs the exact HXQ math
// (HxqMath::Exact), the only math gemm_t has. HXQ_ISA=avx512|avx2|scalar picks the kernels.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/gemm_t.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"

using namespace hxq;

namespace {

enum class Storage { BF16, Helix, V2b8, V2b4 };

struct BenchWeight {
  Storage s;
  int64_t N, K;
  std::vector<uint16_t> bf16;
  std::vector<float> codebook, lut;
  std::vector<uint8_t> idx, codes;
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col;
  std::vector<float> delta;
  int bits = 8;

  BenchWeight(Storage st, int64_t n, int64_t k) : s(st), N(n), K(k) {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    if (s == Storage::BF16) {
      bf16.resize(size_t(N * K));
      for (auto& h : bf16) h = f32_to_bf16(nd(rng));
      return;
    }
    if (s == Storage::Helix) {
      codebook.resize(256);
      for (auto& c : codebook) c = nd(rng);
      idx.resize(size_t(N * K));
      for (auto& b : idx) b = uint8_t(rng());
      std::vector<std::vector<int32_t>> per_row(static_cast<size_t>(N));
      for (int e = 0; e < 512; ++e) per_row[rng() % size_t(N)].push_back(int32_t(rng() % size_t(K)));
      row_ptr.push_back(0);
      for (auto& r : per_row) {
        for (int32_t c : r) {
          col.push_back(c);
          delta.push_back(nd(rng));
        }
        row_ptr.push_back(int64_t(col.size()));
      }
      return;
    }
    bits = s == Storage::V2b8 ? 8 : 4;
    codebook.resize(size_t(1) << bits);
    for (auto& c : codebook) c = nd(rng) * 50.0f;
    lut.resize(64);
    for (int i = 0; i < 64; ++i) lut[size_t(i)] = 0.02f * float(i + 1) / 64.0f;
    const int64_t rb = hxq2_packed_row_bytes(K, bits);
    idx.assign(size_t(N * rb), 0);
    codes.resize(size_t(N * ((K + 31) / 32)));
    for (auto& c : codes) c = uint8_t(rng() % 64);
    uint8_t chunk[32];
    for (int64_t r = 0; r < N; ++r)
      for (int64_t c0 = 0; c0 < K; c0 += 32) {
        const int64_t m = std::min<int64_t>(32, K - c0);
        for (int j = 0; j < 32; ++j) chunk[j] = j < m ? uint8_t(rng() % (1u << bits)) : 0;
        uint8_t* dst = idx.data() + r * rb + c0 / 32 * 4 * bits;
        if (m == 32) hxq2_pack_chunk(chunk, bits, dst);
        else hxq2_pack_tail(chunk, m, bits, dst);
      }
  }
  HxqView hxq() const {
    HxqView v;
    v.rows = N;
    v.cols = K;
    v.codebook = codebook.data();
    v.indices = idx.data();
    v.sc_row_ptr = row_ptr.data();
    v.sc_col = col.data();
    v.sc_delta = delta.data();
    return v;
  }
  Hxq2View hxq2() const {
    Hxq2View v;
    v.rows = N;
    v.cols = K;
    v.bits = bits;
    v.group = 32;
    v.codebook = codebook.data();
    v.indices = idx.data();
    v.codes = codes.data();
    v.scale_lut = lut.data();
    return v;
  }
  // dX [T, K] = G [T, N] · W.
  void backward(const float* G, int64_t T, float* dX) const {
    switch (s) {
      case Storage::BF16: return gemm_t_dense(G, T, N, bf16.data(), DType::BF16, K, dX);
      case Storage::Helix: return gemm_t_hxq(G, T, hxq(), dX);
      default: return gemm_t_hxq2(G, T, hxq2(), dX);
    }
  }
  // Y [T, N] = X [T, K] · Wᵀ.
  void forward(const float* X, int64_t T, float* Y) const {
    switch (s) {
      case Storage::BF16: return gemm_dense(X, T, K, bf16.data(), DType::BF16, N, Y);
      case Storage::Helix: return gemm_hxq(X, T, hxq(), Y);
      default: return gemm_hxq2(X, T, hxq2(), Y);
    }
  }
};

std::vector<float> gaussian(int64_t n) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

void run(benchmark::State& st, Storage s, bool transposed) {
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  HxqMathScope exact(HxqMath::Exact);
  const BenchWeight w(s, N, K);
  const std::vector<float> in = gaussian(T * (transposed ? N : K));
  std::vector<float> out(static_cast<size_t>(T * (transposed ? K : N)));
  for (auto _ : st) {
    if (transposed) w.backward(in.data(), T, out.data());
    else w.forward(in.data(), T, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Shown with an SI prefix: "45.2G/s" = 45.2 GFLOP/s.
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(T * N * K), benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(std::string(isa_name(kernel_isa())));
}

void BM_GemmT_Backward(benchmark::State& st, Storage s) { run(st, s, true); }
void BM_GemmT_Forward(benchmark::State& st, Storage s) { run(st, s, false); }

void shapes(benchmark::internal::Benchmark* b) {
  for (int64_t T : {1, 64, 512}) b->Args({2048, 2048, T});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_GemmT_Backward, bf16, Storage::BF16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_GemmT_Forward, bf16, Storage::BF16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_GemmT_Backward, helix, Storage::Helix)->Apply(shapes);
BENCHMARK_CAPTURE(BM_GemmT_Forward, helix, Storage::Helix)->Apply(shapes);
BENCHMARK_CAPTURE(BM_GemmT_Backward, v2_8bit, Storage::V2b8)->Apply(shapes);
BENCHMARK_CAPTURE(BM_GemmT_Forward, v2_8bit, Storage::V2b8)->Apply(shapes);
BENCHMARK_CAPTURE(BM_GemmT_Backward, v2_4bit, Storage::V2b4)->Apply(shapes);
BENCHMARK_CAPTURE(BM_GemmT_Forward, v2_4bit, Storage::V2b4)->Apply(shapes);

}  // namespace
