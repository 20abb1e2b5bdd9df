// Benchmarks of the optional CUDA kernels (HXQ_CUDA=ON): HXQ and BF16 matvec (weights cycled
// through >= 4x the L2 so they come from HBM), HXQ/BF16 matmul at T = 512, the SSD scan, and the
// device's measured read bandwidth as the baseline. Timed with CUDA events around CUDA-graph
// replays of a batch of launches (host launch cost excluded; the gaps between kernels included).
// Without a device every benchmark reports "no CUDA device".
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cuda/cuda_kernels.h"

using namespace hxq;
namespace hc = hxq::cuda;

namespace {

bool no_device(benchmark::State& st) {
  if (hc::cuda_available()) return false;
  static const std::string msg = "no CUDA device: " + hc::cuda_unavailable_reason();
  st.SkipWithError(msg.c_str());
  return true;
}

// Measured once per process: 1 GiB read-only kernel, median of 9.
double device_bw() {
  static const double bw = [] {
    const double v = hc::measure_read_bandwidth_gbps(size_t(1) << 30, 9);
    std::fprintf(stderr, "cuda: %s; measured read bandwidth %.1f GB/s\n", hc::device_summary().c_str(), v);
    return v;
  }();
  return bw;
}

// Copies so that one pass over them is >= max(4x L2, 256 MiB): every call reads its copy from HBM.
int copies_for(size_t bytes) {
  static const size_t l2 = hc::device_info().l2_bytes;
  const size_t target = std::max<size_t>(4 * l2, size_t(256) << 20);
  return int(std::max<size_t>(2, (target + bytes - 1) / bytes));
}

uint64_t mix(uint64_t& s) {  // splitmix64: fast host-side random bytes for large weights
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
float unit(uint64_t& s) { return float(mix(s) >> 40) * (1.0f / 16777216.0f) - 0.5f; }

// Runs launch(copy, stream) for `batch` calls (copy = i % ncopies) per benchmark iteration, as one
// CUDA graph when capture works (else plain launches), timed with events. Reports per call:
// us_per_call; with bytes: GB/s and bw_frac (of the measured read bandwidth); with flops: GFLOP/s.
template <class F>
void run_timed(benchmark::State& st, int ncopies, int batch, double bytes, double flops, F&& launch) {
  const double bw = device_bw();
  hc::Stream s;
  hc::Graph g;
  bool graph = true;
  try {
    g.capture(s.get(), [&] {
      for (int i = 0; i < batch; ++i) launch(i % ncopies, s.get());
    });
  } catch (const Error& e) {
    std::fprintf(stderr, "cuda bench: graph capture failed (%s), timing plain launches\n", e.what());
    graph = false;
  }
  auto once = [&] {
    if (graph) g.launch(s.get());
    else
      for (int i = 0; i < batch; ++i) launch(i % ncopies, s.get());
  };
  once();  // warm-up
  s.sync();
  hc::EventTimer tm;
  double total_s = 0;
  for (auto _ : st) {
    tm.start(s.get());
    once();
    tm.stop(s.get());
    const double sec = tm.elapsed_ms() * 1e-3;
    total_s += sec;
    st.SetIterationTime(sec);
  }
  const double calls = double(st.iterations()) * batch;
  st.counters["us_per_call"] = calls > 0 ? total_s * 1e6 / calls : 0;
  st.counters["graph"] = graph ? 1 : 0;
  st.counters["bw_GB/s"] = bw;
  if (bytes > 0 && total_s > 0) {
    const double gbs = bytes * calls / total_s * 1e-9;
    st.counters["GB/s"] = gbs;
    st.counters["bw_frac"] = gbs / bw;
  }
  if (flops > 0 && total_s > 0) st.counters["GFLOP/s"] = flops * calls / total_s * 1e-9;
}

// ---- HXQ / BF16 products ----

struct HxqSet {
  std::vector<hc::DeviceHxq> w;
  double bytes = 0;  // per call: indices + codebook + sidecar (what the kernel must read of W)
  HxqSet(int64_t N, int64_t K, int copies) {
    uint64_t seed = uint64_t(N * 131 + K);
    std::vector<float> cb(256);
    for (float& c : cb) c = 0.1f * unit(seed);
    std::vector<uint8_t> idx(static_cast<size_t>(N * K));
    for (size_t i = 0; i < idx.size(); i += 8) {
      const uint64_t r = mix(seed);
      for (size_t j = 0; j < 8 && i + j < idx.size(); ++j) idx[i + j] = uint8_t(r >> (8 * j));
    }
    // 512 sidecar entries spread over the rows (the helix-substrate maximum per tensor).
    const int64_t nnz = std::min<int64_t>(512, N * K);
    std::vector<int64_t> rp(static_cast<size_t>(N + 1), 0);
    std::vector<int32_t> col(static_cast<size_t>(nnz));
    std::vector<float> delta(static_cast<size_t>(nnz));
    for (int64_t e = 0; e < nnz; ++e) {
      const int64_t r = e * N / nnz;
      rp[size_t(r + 1)]++;
      col[size_t(e)] = int32_t(mix(seed) % uint64_t(K));
      delta[size_t(e)] = unit(seed);
    }
    for (int64_t r = 0; r < N; ++r) rp[size_t(r + 1)] += rp[size_t(r)];
    HxqView v;
    v.rows = N;
    v.cols = K;
    v.codebook = cb.data();
    v.indices = idx.data();
    v.sc_row_ptr = rp.data();
    v.sc_col = col.data();
    v.sc_delta = delta.data();
    for (int c = 0; c < copies; ++c) w.push_back(hc::upload_hxq(v));
    bytes = double(N * K) + 1024.0 + double(N + 1) * 8 + double(nnz) * 8;
  }
};

struct Bf16Set {
  std::vector<hc::DeviceBuffer> w;
  Bf16Set(int64_t N, int64_t K, int copies) {
    uint64_t seed = uint64_t(N * 7 + K);
    std::vector<uint16_t> h(static_cast<size_t>(N * K));
    for (uint16_t& v : h) v = f32_to_bf16(0.05f * unit(seed));
    for (int c = 0; c < copies; ++c) w.push_back(hc::to_device(h.data(), h.size()));
  }
};

hc::DeviceBuffer random_device(size_t n, uint64_t seed) {
  std::vector<float> h(n);
  for (float& v : h) v = unit(seed);
  return hc::to_device(h.data(), n);
}

// Enough calls per iteration to pass over every copy and take >= ~0.5 ms.
int batch_for(int ncopies, double bytes) {
  const int min_calls = int(std::ceil(0.5e-3 * 3e12 / std::max(bytes, 1.0)));  // 0.5 ms at 3 TB/s
  const int reps = std::max(1, (std::max(min_calls, ncopies) + ncopies - 1) / ncopies);
  return ncopies * reps;
}

void BM_CudaHxqMatvec(benchmark::State& st) {
  if (no_device(st)) return;
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  try {
    const int nc = copies_for(size_t(N * K));
    HxqSet set(N, K, nc);
    hc::DeviceBuffer x = random_device(size_t(T * K), 1), y(size_t(T * N) * 4);
    run_timed(st, nc, batch_for(nc, set.bytes), set.bytes, 2.0 * double(T * N * K), [&](int c, void* s) {
      hc::cuda_gemm_hxq(x.as<float>(), T, set.w[size_t(c)], y.as<float>(), hc::CudaAlgo::Auto, s);
    });
    st.counters["copies"] = nc;
  } catch (const Error& e) {
    st.SkipWithError(e.what());
  }
}

void BM_CudaBf16Matvec(benchmark::State& st) {
  if (no_device(st)) return;
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  try {
    const double bytes = 2.0 * double(N * K);
    const int nc = copies_for(size_t(bytes));
    Bf16Set set(N, K, nc);
    hc::DeviceBuffer x = random_device(size_t(T * K), 2), y(size_t(T * N) * 4);
    run_timed(st, nc, batch_for(nc, bytes), bytes, 2.0 * double(T * N * K), [&](int c, void* s) {
      hc::cuda_gemm_bf16(x.as<float>(), T, K, set.w[size_t(c)].as<uint16_t>(), N, y.as<float>(), hc::CudaAlgo::Auto, s);
    });
    st.counters["copies"] = nc;
  } catch (const Error& e) {
    st.SkipWithError(e.what());
  }
}

// Matmul (compute-bound): one copy of W, GFLOP/s. Fourth argument tf32: 1 = the opt-in TF32
// tensor-core kernel.
void BM_CudaHxqMatmul(benchmark::State& st) {
  if (no_device(st)) return;
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  const hc::CudaAlgo algo = st.range(3) ? hc::CudaAlgo::MatmulTf32 : hc::CudaAlgo::Auto;
  try {
    HxqSet set(N, K, 1);
    hc::DeviceBuffer x = random_device(size_t(T * K), 3), y(size_t(T * N) * 4);
    run_timed(st, 1, 4, 0, 2.0 * double(T * N * K), [&](int, void* s) {
      hc::cuda_gemm_hxq(x.as<float>(), T, set.w[0], y.as<float>(), algo, s);
    });
  } catch (const Error& e) {
    st.SkipWithError(e.what());
  }
}

void BM_CudaBf16Matmul(benchmark::State& st) {
  if (no_device(st)) return;
  const int64_t N = st.range(0), K = st.range(1), T = st.range(2);
  try {
    Bf16Set set(N, K, 1);
    hc::DeviceBuffer x = random_device(size_t(T * K), 4), y(size_t(T * N) * 4);
    run_timed(st, 1, 4, 0, 2.0 * double(T * N * K), [&](int, void* s) {
      hc::cuda_gemm_bf16(x.as<float>(), T, K, set.w[0].as<uint16_t>(), N, y.as<float>(), hc::CudaAlgo::Auto, s);
    });
  } catch (const Error& e) {
    st.SkipWithError(e.what());
  }
}

// ---- SSD scan: args T, algo (0 auto, 1 recurrent, 2 chunked); H = 64, P = 64, N = 128, G = 1 ----

void BM_CudaSsdScan(benchmark::State& st) {
  if (no_device(st)) return;
  const int64_t T = st.range(0), H = 64, P = 64, N = 128, G = 1;
  const hc::SsdAlgo algo = st.range(1) == 1 ? hc::SsdAlgo::Recurrent : st.range(1) == 2 ? hc::SsdAlgo::Chunked : hc::SsdAlgo::Auto;
  try {
    const size_t state_bytes = size_t(H * P * N) * 4;
    // T = 1 is memory-bound on the state (read + write): cycle through copies as the layers of a
    // model would. Long T: one state.
    const int nc = T == 1 ? copies_for(state_bytes) : 1;
    std::vector<hc::DeviceBuffer> states;
    for (int c = 0; c < nc; ++c) states.push_back(random_device(size_t(H * P * N), 10 + uint64_t(c)));
    hc::DeviceBuffer x = random_device(size_t(T * H * P), 5), B = random_device(size_t(T * G * N), 6),
                     C = random_device(size_t(T * G * N), 7), D = random_device(size_t(H), 8), y(size_t(T * H * P) * 4);
    std::vector<float> dth(static_cast<size_t>(T * H)), Ah(static_cast<size_t>(H));
    uint64_t seed = 9;
    for (float& v : dth) v = 0.01f + 0.09f * (unit(seed) + 0.5f);
    for (float& v : Ah) v = -(1.0f + 7.0f * (unit(seed) + 0.5f));
    hc::DeviceBuffer dt = hc::to_device(dth.data(), dth.size()), A = hc::to_device(Ah.data(), Ah.size());
    hc::SsdWorkspace ws;
    ws.get(hc::ssd_workspace_floats(T, H, P, N));  // allocate before capture
    const double bytes = double(2 * state_bytes + size_t(T) * size_t(2 * H * P + 2 * G * N + H) * 4);
    const double flops = double(T * H * P * N) * 4.0;  // recurrence: 2 FMAs per state element and step
    const int batch = T == 1 ? batch_for(nc, bytes) : 4;
    run_timed(st, nc, batch, bytes, flops, [&](int c, void* s) {
      hc::SsdArgs a;
      a.T = T, a.H = H, a.P = P, a.N = N, a.G = G;
      a.x = x.as<float>(), a.dt = dt.as<float>(), a.A = A.as<float>(), a.B = B.as<float>(), a.C = C.as<float>();
      a.D = D.as<float>(), a.state = states[size_t(c)].as<float>(), a.y = y.as<float>();
      hc::cuda_ssd_scan(a, algo, &ws, s);
    });
    st.counters["tokens/s"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
    st.counters["copies"] = nc;
  } catch (const Error& e) {
    st.SkipWithError(e.what());
  }
}

// ---- baselines ----

void BM_CudaBandwidth(benchmark::State& st) {
  if (no_device(st)) return;
  try {
    double read = 0, copy = 0;
    for (auto _ : st) {
      read = hc::measure_read_bandwidth_gbps(size_t(1) << 30, 9);
      copy = hc::measure_copy_bandwidth_gbps(size_t(1) << 30, 9);
      st.SetIterationTime(1.0);
    }
    const hc::DeviceInfo d = hc::device_info();
    st.counters["read_GB/s"] = read;
    st.counters["copy_GB/s"] = copy;
    st.counters["theoretical_GB/s"] = d.theoretical_bw_gbps;
    st.counters["sms"] = d.sm_count;
    st.counters["l2_MiB"] = double(d.l2_bytes) / double(1 << 20);
    st.SetLabel(d.name);
  } catch (const Error& e) {
    st.SkipWithError(e.what());
  }
}

constexpr double kMinTime = 0.2;

BENCHMARK(BM_CudaBandwidth)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaHxqMatvec)
    ->ArgNames({"N", "K", "T"})
    ->Args({8512, 2048, 1})
    ->Args({2048, 4096, 1})
    ->Args({16384, 4096, 1})
    ->Args({8512, 2048, 4})
    ->Args({2048, 4096, 4})
    ->Args({16384, 4096, 4})
    ->Args({16384, 4096, 8})
    ->UseManualTime()
    ->MinTime(kMinTime)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaBf16Matvec)
    ->ArgNames({"N", "K", "T"})
    ->Args({8512, 2048, 1})
    ->Args({2048, 4096, 1})
    ->Args({16384, 4096, 1})
    ->Args({8512, 2048, 4})
    ->Args({2048, 4096, 4})
    ->Args({16384, 4096, 4})
    ->UseManualTime()
    ->MinTime(kMinTime)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaHxqMatmul)
    ->ArgNames({"N", "K", "T", "tf32"})
    ->Args({8512, 2048, 512, 0})
    ->Args({2048, 4096, 512, 0})
    ->Args({16384, 4096, 512, 0})
    ->Args({8512, 2048, 512, 1})
    ->Args({16384, 4096, 512, 1})
    ->UseManualTime()
    ->MinTime(kMinTime)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaBf16Matmul)
    ->ArgNames({"N", "K", "T"})
    ->Args({8512, 2048, 512})
    ->UseManualTime()
    ->MinTime(kMinTime)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaSsdScan)
    ->ArgNames({"T", "algo"})
    ->Args({1, 0})
    ->Args({512, 2})
    ->Args({512, 1})
    ->Args({2048, 2})
    ->UseManualTime()
    ->MinTime(kMinTime)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
