// Micro-benchmarks of the matrix kernels (HXQ, BF16, F32) in the decode (matvec, weights not in
// cache) and prefill (T = 512) regimes, against the machine's measured read bandwidth and peak
// FMA rate (measured here, with the same thread count). HXQ_ISA=avx512|avx2|scalar picks the
// kernels; HXQ_BENCH_BW_MB sizes the bandwidth buffer (default 1024 MiB).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/threadpool.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"
#include "kernels/membw.h"
#include "kernels/ssd.h"

using namespace hxq;

namespace {

// The pool size a benchmark asks for: 0 = all cores.
int threads_arg(int64_t a) { return a > 0 ? int(a) : hardware_threads(); }

// Read bandwidth with `threads` threads (512 MiB buffer unless HXQ_BENCH_BW_MB says, median of
// 5 reads). The machine is shared, so the matvec benchmarks measure it just before and just
// after their own timing loop and report their rate against the mean of the two.
// With one thread everything (kernels and baselines) is timed in thread CPU time, which
// excludes time slices lost to other processes; with all cores, in wall time.
double machine_bandwidth(int threads) {
  const char* e = std::getenv("HXQ_BENCH_BW_MB");
  const size_t mb = e ? size_t(std::atol(e)) : 512;
  ThreadPool tp(threads);
  return measure_read_bandwidth_gbps(mb << 20, tp, 5, threads == 1);
}

double machine_peak(int threads) {
  ThreadPool tp(threads);
  return measure_peak_fma_gflops(tp, best_isa(), 9, threads == 1);
}

// peak_frac: the kernel's flop rate over the peak FMA rate measured around it.
void set_peak_counters(benchmark::State& st, double flops, double peak_before, double peak_after) {
  const double peak = 0.5 * (peak_before + peak_after);
  st.counters["peak_GFLOP/s"] = peak;
  st.counters["peak_frac"] = benchmark::Counter(flops * 1e-9 / peak, benchmark::Counter::kIsIterationInvariantRate);
}

// Enough copies of a weight that one pass over all of them is >= 256 MiB (8x the L3), so each
// matvec reads its copy from memory as a model's layer-after-layer decode does.
int copies_for(size_t bytes) { return int(std::max<size_t>(2, ((size_t(256) << 20) + bytes - 1) / bytes)); }

struct DenseSet {
  std::vector<std::vector<uint8_t>> w;
  DenseSet(DType dt, int64_t N, int64_t K, int copies) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<uint8_t> one(size_t(N * K) * dtype_size(dt));
    for (int64_t i = 0; i < N * K; ++i) {
      const float v = nd(rng);
      if (dt == DType::F32) std::memcpy(one.data() + 4 * i, &v, 4);
      else {
        const uint16_t h = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(one.data() + 2 * i, &h, 2);
      }
    }
    w.assign(size_t(copies), one);
  }
};

struct HxqSet {
  std::vector<float> codebook;
  std::vector<std::vector<uint8_t>> idx;
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col;
  std::vector<float> delta;
  int64_t N, K;
  bool bf16 = false;
  // 512 sidecar entries, the most helix-substrate writes per tensor. bf16_codebook: entries
  // rounded to BF16 and the view flagged codebook_bf16_exact (two-plane decoder).
  HxqSet(int64_t n, int64_t k, int copies, bool bf16_codebook = false) : N(n), K(k), bf16(bf16_codebook) {
    std::mt19937 rng(2);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    codebook.resize(256);
    for (auto& c : codebook) c = bf16 ? bf16_to_f32(f32_to_bf16(nd(rng))) : nd(rng);
    std::vector<uint8_t> one(size_t(N * K));
    for (auto& b : one) b = uint8_t(rng());
    idx.assign(size_t(copies), one);
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
  }
  HxqView view(int c) const {
    HxqView v;
    v.rows = N;
    v.cols = K;
    v.codebook = codebook.data();
    v.indices = idx[size_t(c)].data();
    v.sc_row_ptr = row_ptr.data();
    v.sc_col = col.data();
    v.sc_delta = delta.data();
    v.codebook_bf16_exact = bf16;
    return v;
  }
  size_t bytes() const {
    return size_t(N * K) + 256 * 4 + row_ptr.size() * 8 + col.size() * 8;
  }
};

std::vector<float> make_x(int64_t T, int64_t K) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(T * K));
  for (auto& v : x) v = nd(rng);
  return x;
}

void set_counters(benchmark::State& st, double bytes, double flops) {
  st.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GFLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(std::string(isa_name(kernel_isa())));
}

double process_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// All-core runs on a shared machine lose time slices to other processes; besides the wall-time
// rates they report "while scheduled" rates: work over (process CPU time / threads), against
// baselines measured the same way (sum over threads of work / thread CPU time).
struct CpuClock {
  int threads;
  double c0 = process_cpu_seconds(), busy = 0;
  void stop() { busy = (process_cpu_seconds() - c0) / threads; }
};

// bw_frac: the kernel's byte rate over the read bandwidth measured around it (GB/s).
void set_bw_counters(benchmark::State& st, double bytes, double bw_before, double bw_after) {
  const double bw = 0.5 * (bw_before + bw_after);
  st.counters["bw_GB/s"] = bw;
  st.counters["bw_frac"] = benchmark::Counter(bytes * 1e-9 / bw, benchmark::Counter::kIsIterationInvariantRate);
}

void set_cpu_bw_counters(benchmark::State& st, double bytes, const CpuClock& cpu, int threads) {
  if (threads == 1) return;  // one-core runs are timed in CPU time already
  const double rate = bytes * double(st.iterations()) / cpu.busy * 1e-9;
  ThreadPool tp(threads);
  const char* e = std::getenv("HXQ_BENCH_BW_MB");
  const double bw = measure_read_bandwidth_gbps((e ? size_t(std::atol(e)) : 512) << 20, tp, 5, true);
  st.counters["sched_GB/s"] = rate;
  st.counters["sched_bw_GB/s"] = bw;
  st.counters["sched_bw_frac"] = rate / bw;
}

void set_cpu_peak_counters(benchmark::State& st, double flops, const CpuClock& cpu, int threads) {
  if (threads == 1) return;
  const double rate = flops * double(st.iterations()) / cpu.busy * 1e-9;
  ThreadPool tp(threads);
  const double peak = measure_peak_fma_gflops(tp, best_isa(), 9, true);
  st.counters["sched_GFLOP/s"] = rate;
  st.counters["sched_peak_GFLOP/s"] = peak;
  st.counters["sched_peak_frac"] = rate / peak;
}

// Decode: T = st.range(2) rows of X, a different (cold) copy of W each iteration.
void BM_DenseMatvec(benchmark::State& st, DType dt) {
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  const int threads = threads_arg(st.range(3));
  const double bw0 = machine_bandwidth(threads);
  set_num_threads(threads);
  const size_t wb = size_t(N * K) * dtype_size(dt);
  const int copies = copies_for(wb);
  DenseSet ws(dt, N, K, copies);
  const std::vector<float> x = make_x(T, K);
  std::vector<float> y(size_t(T * N));
  int c = 0;
  CpuClock cpu{threads};
  for (auto _ : st) {
    gemm_dense(x.data(), T, K, ws.w[size_t(c)].data(), dt, N, y.data());
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  cpu.stop();
  set_counters(st, double(wb), 2.0 * double(T * N * K));
  set_bw_counters(st, double(wb), bw0, machine_bandwidth(threads));
  set_cpu_bw_counters(st, double(wb), cpu, threads);
  set_num_threads(0);
}

void hxq_matvec(benchmark::State& st, bool bf16_codebook, HxqMath math) {
  HxqMathScope scope(math);
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  const int threads = threads_arg(st.range(3));
  const double bw0 = machine_bandwidth(threads);
  set_num_threads(threads);
  const int copies = copies_for(size_t(N * K));
  HxqSet hs(N, K, copies, bf16_codebook);
  const std::vector<float> x = make_x(T, K);
  std::vector<float> y(size_t(T * N));
  int c = 0;
  CpuClock cpu{threads};
  for (auto _ : st) {
    gemm_hxq(x.data(), T, hs.view(c), y.data());
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  cpu.stop();
  set_counters(st, double(hs.bytes()), 2.0 * double(T * N * K));
  set_bw_counters(st, double(hs.bytes()), bw0, machine_bandwidth(threads));
  set_cpu_bw_counters(st, double(hs.bytes()), cpu, threads);
  set_num_threads(0);
}

// HXQ v2 (random indices, codebook and scale codes; no sidecar): range(0..5) = N, K, T, threads,
// bits, group. copies = 1 keeps the weight in cache (the kernel's compute rate, G weights/s);
// otherwise enough copies that each call reads its weight from memory.
struct Hxq2Set {
  std::vector<float> codebook, lut;
  std::vector<std::vector<uint8_t>> idx;
  std::vector<uint8_t> codes;
  int64_t N, K;
  int bits, group;
  Hxq2Set(int64_t n, int64_t k, int b, int g, int copies) : N(n), K(k), bits(b), group(g) {
    std::mt19937 rng(4);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    codebook.resize(size_t(1) << b);
    for (auto& c : codebook) c = nd(rng);
    lut.resize(64);
    for (int q = 0; q < 64; ++q) lut[size_t(q)] = 0.05f * std::exp2(-0.1f * float(q));
    std::vector<uint8_t> one(size_t(N * hxq2_packed_row_bytes(K, b)));
    for (auto& v : one) v = uint8_t(rng());
    idx.assign(size_t(copies), one);
    codes.resize(size_t(N * ((K + g - 1) / g)));
    for (auto& c : codes) c = uint8_t(rng() % 64);
  }
  Hxq2View view(int c) const {
    Hxq2View v;
    v.rows = N;
    v.cols = K;
    v.bits = bits;
    v.group = group;
    v.codebook = codebook.data();
    v.indices = idx[size_t(c)].data();
    v.codes = codes.data();
    v.scale_lut = lut.data();
    return v;
  }
  double bytes() const { return double(idx[0].size() + codes.size() * 6 / 8 + codebook.size() * 4); }
};

void hxq2_matvec(benchmark::State& st, HxqMath math, bool in_cache) {
  HxqMathScope scope(math);
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  const int threads = threads_arg(st.range(3));
  const int bits = int(st.range(4)), group = int(st.range(5));
  const double bw0 = in_cache ? 0 : machine_bandwidth(threads);
  set_num_threads(threads);
  const int copies = in_cache ? 1 : copies_for(size_t(double(N * K) * bits / 8));
  Hxq2Set hs(N, K, bits, group, copies);
  const std::vector<float> x = make_x(T, K);
  std::vector<float> y(size_t(T * N));
  int c = 0;
  CpuClock cpu{threads};
  for (auto _ : st) {
    gemm_hxq2(x.data(), T, hs.view(c), y.data());
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  cpu.stop();
  st.counters["Gweights/s"] = benchmark::Counter(double(N * K) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  set_counters(st, hs.bytes(), 2.0 * double(T * N * K));
  if (!in_cache) {
    set_bw_counters(st, hs.bytes(), bw0, machine_bandwidth(threads));
    set_cpu_bw_counters(st, hs.bytes(), cpu, threads);
  }
  st.SetLabel(std::string(isa_name(kernel_isa())));
  set_num_threads(0);
}
void BM_Hxq2Matvec(benchmark::State& st) { hxq2_matvec(st, HxqMath::Fast, false); }
void BM_Hxq2MatvecExact(benchmark::State& st) { hxq2_matvec(st, HxqMath::Exact, false); }
void BM_Hxq2MatvecInCache(benchmark::State& st) { hxq2_matvec(st, HxqMath::Fast, true); }
void BM_Hxq2MatvecExactInCache(benchmark::State& st) { hxq2_matvec(st, HxqMath::Exact, true); }

// The default (HxqMath::Fast: 16-bit integer decode with VNNI where available).
void BM_HxqMatvec(benchmark::State& st) { hxq_matvec(st, false, HxqMath::Fast); }
// Exact float32 codebook values (HxqMath::Exact).
void BM_HxqMatvecExact(benchmark::State& st) { hxq_matvec(st, false, HxqMath::Exact); }
// Exact math with a BF16-exact codebook (AVX-512: two byte planes instead of four, T <= 2).
void BM_HxqMatvecBf16Codebook(benchmark::State& st) { hxq_matvec(st, true, HxqMath::Exact); }

// Mamba2 decode SSM step over a whole model's state (every layer's heads, state [P=64][N=128]
// per head, fp32): read and rewritten once per token, like the weights. range(0) = layers ×
// heads (370m: 48 × 32 = 1536, 1.3B: 48 × 64 = 3072); one core, thread CPU time.
void BM_SsmStepModelState(benchmark::State& st) {
  const int64_t heads = st.range(0), P = 64, N = 128;
  const double bw0 = machine_bandwidth(1);
  set_num_threads(1);
  std::vector<float> S(size_t(heads * P * N), 0.01f), x(size_t(P), 0.5f), B(size_t(N), 0.1f), C(size_t(N), 0.2f),
      y(static_cast<size_t>(P));
  for (auto _ : st) {
    for (int64_t h = 0; h < heads; ++h)
      ssd::ssm_step(S.data() + h * P * N, P, N, x.data(), B.data(), C.data(), 0.01f, 0.99f, 1.0f, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = 2.0 * double(S.size()) * 4.0;  // read + write
  st.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  set_bw_counters(st, bytes, bw0, machine_bandwidth(1));
  st.SetLabel(std::string(isa_name(kernel_isa())));
  set_num_threads(0);
}

// Prefill: T = st.range(2) (512) rows of X; compute-bound, reported against the peak FMA rate.
void BM_DenseGemm(benchmark::State& st, DType dt) {
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  const int threads = threads_arg(st.range(3));
  const double peak0 = machine_peak(threads);
  set_num_threads(threads);
  DenseSet ws(dt, N, K, 1);
  const std::vector<float> x = make_x(T, K);
  std::vector<float> y(size_t(T * N));
  CpuClock cpu{threads};
  for (auto _ : st) {
    gemm_dense(x.data(), T, K, ws.w[0].data(), dt, N, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  cpu.stop();
  const double flops = 2.0 * double(T * N * K);
  set_counters(st, double(N * K) * double(dtype_size(dt)), flops);
  set_peak_counters(st, flops, peak0, machine_peak(threads));
  set_cpu_peak_counters(st, flops, cpu, threads);
  set_num_threads(0);
}

void BM_HxqGemm(benchmark::State& st) {
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  const int threads = threads_arg(st.range(3));
  const double peak0 = machine_peak(threads);
  set_num_threads(threads);
  HxqSet hs(N, K, 1);
  const std::vector<float> x = make_x(T, K);
  std::vector<float> y(size_t(T * N));
  CpuClock cpu{threads};
  for (auto _ : st) {
    gemm_hxq(x.data(), T, hs.view(0), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  cpu.stop();
  const double flops = 2.0 * double(T * N * K);
  set_counters(st, double(hs.bytes()), flops);
  set_peak_counters(st, flops, peak0, machine_peak(threads));
  set_cpu_peak_counters(st, flops, cpu, threads);
  set_num_threads(0);
}

void BM_ReadBandwidth(benchmark::State& st) {
  const int threads = threads_arg(st.range(0));
  double bw = 0;
  for (auto _ : st) {
    ThreadPool tp(threads);
    const char* e = std::getenv("HXQ_BENCH_BW_MB");
    bw = measure_read_bandwidth_gbps((e ? size_t(std::atol(e)) : 1024) << 20, tp, 9, threads == 1);
  }
  st.counters["GB/s"] = bw;
  st.SetLabel(std::string(isa_name(kernel_isa())));
}

void BM_PeakFma(benchmark::State& st) {
  const int threads = threads_arg(st.range(0));
  double p = 0;
  for (auto _ : st) p = machine_peak(threads);
  st.counters["GFLOP/s"] = p;
  st.SetLabel(std::string(isa_name(best_isa())));
}

// Mamba2-1.3B: in_proj [8512, 2048], out_proj [2048, 4096]. threads 0 = all cores (wall time),
// 1 = one core (thread CPU time).
void matvec_shapes(benchmark::internal::Benchmark* b, int64_t th) {
  b->ArgNames({"N", "K", "T", "threads"});
  for (int64_t T : {1, 2, 4, 8}) {
    b->Args({8512, 2048, T, th});
    b->Args({2048, 4096, T, th});
  }
  // Zamba2-1.2B's shared block (inputs of 2 x hidden): MLP down projection, and a LoRA adapter's
  // B matrix (rank 128) of the fused gate/up projection.
  b->Args({4096, 8192, 1, th});
  b->Args({16384, 128, 1, th});
  if (th != 1) b->UseRealTime();
  b->Unit(benchmark::kMicrosecond);
}

void gemm_shapes(benchmark::internal::Benchmark* b, int64_t th) {
  b->ArgNames({"N", "K", "T", "threads"});
  b->Args({8512, 2048, 512, th});
  b->Args({2048, 4096, 512, th});
  if (th != 1) b->UseRealTime();
  b->Unit(benchmark::kMillisecond);
}

void all_cores_matvec(benchmark::internal::Benchmark* b) { matvec_shapes(b, 0); }
void one_core_matvec(benchmark::internal::Benchmark* b) { matvec_shapes(b, 1); }
void all_cores_gemm(benchmark::internal::Benchmark* b) { gemm_shapes(b, 0); }
void one_core_gemm(benchmark::internal::Benchmark* b) { gemm_shapes(b, 1); }

// v2: every bit width, group 32 and 16, T = 1, 2, 4 and 8 (the server's batched decode). In cache:
// 128 x 2048 (<= 256 KiB), one core.
void hxq2_shapes(benchmark::internal::Benchmark* b, int64_t N, int64_t th) {
  b->ArgNames({"N", "K", "T", "threads", "bits", "group"});
  for (int64_t bits : {8, 6, 5, 4})
    for (int64_t g : {32, 16})
      for (int64_t T : {1, 2, 4, 8}) b->Args({N, 2048, T, th, bits, g});
  if (th != 1) b->UseRealTime();
  b->Unit(benchmark::kMicrosecond);
}
void hxq2_all_cores(benchmark::internal::Benchmark* b) { hxq2_shapes(b, 8512, 0); }
void hxq2_one_core(benchmark::internal::Benchmark* b) { hxq2_shapes(b, 8512, 1); }
void hxq2_in_cache(benchmark::internal::Benchmark* b) { hxq2_shapes(b, 128, 1); }

void thread_counts(benchmark::internal::Benchmark* b) {
  b->ArgNames({"threads"})->Arg(0)->Arg(1)->Iterations(1)->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_ReadBandwidth)->Apply(thread_counts);
BENCHMARK(BM_SsmStepModelState)->ArgNames({"heads"})->Arg(1536)->Arg(3072)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PeakFma)->Apply(thread_counts);
BENCHMARK(BM_Hxq2Matvec)->Apply(hxq2_all_cores);
BENCHMARK(BM_Hxq2Matvec)->Apply(hxq2_one_core);
BENCHMARK(BM_Hxq2MatvecExact)->Apply(hxq2_all_cores);
BENCHMARK(BM_Hxq2MatvecExact)->Apply(hxq2_one_core);
BENCHMARK(BM_Hxq2MatvecInCache)->Apply(hxq2_in_cache);
BENCHMARK(BM_Hxq2MatvecExactInCache)->Apply(hxq2_in_cache);
BENCHMARK(BM_HxqMatvec)->Apply(all_cores_matvec);
BENCHMARK(BM_HxqMatvec)->Apply(one_core_matvec);
BENCHMARK(BM_HxqMatvecExact)->Apply(all_cores_matvec);
BENCHMARK(BM_HxqMatvecExact)->Apply(one_core_matvec);
BENCHMARK(BM_HxqMatvecBf16Codebook)->Apply(all_cores_matvec);
BENCHMARK(BM_HxqMatvecBf16Codebook)->Apply(one_core_matvec);
BENCHMARK_CAPTURE(BM_DenseMatvec, bf16, DType::BF16)->Apply(all_cores_matvec);
BENCHMARK_CAPTURE(BM_DenseMatvec, bf16, DType::BF16)->Apply(one_core_matvec);
BENCHMARK_CAPTURE(BM_DenseMatvec, f16, DType::F16)->Apply(all_cores_matvec);
BENCHMARK_CAPTURE(BM_DenseMatvec, f16, DType::F16)->Apply(one_core_matvec);
BENCHMARK_CAPTURE(BM_DenseMatvec, f32, DType::F32)->Apply(all_cores_matvec);
BENCHMARK_CAPTURE(BM_DenseMatvec, f32, DType::F32)->Apply(one_core_matvec);
BENCHMARK(BM_HxqGemm)->Apply(all_cores_gemm);
BENCHMARK(BM_HxqGemm)->Apply(one_core_gemm);
BENCHMARK_CAPTURE(BM_DenseGemm, bf16, DType::BF16)->Apply(all_cores_gemm);
BENCHMARK_CAPTURE(BM_DenseGemm, bf16, DType::BF16)->Apply(one_core_gemm);
BENCHMARK_CAPTURE(BM_DenseGemm, f32, DType::F32)->Apply(all_cores_gemm);
BENCHMARK_CAPTURE(BM_DenseGemm, f32, DType::F32)->Apply(one_core_gemm);
