#include "kernels/membw.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <time.h>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"

namespace hxq {

namespace {

uint64_t read_sum_scalar(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  uint64_t acc[8] = {};
  size_t i = 0;
  for (; i + 64 <= bytes; i += 64)
    for (int j = 0; j < 8; ++j) {
      uint64_t v;
      std::memcpy(&v, c + i + 8 * j, 8);
      acc[j] += v;
    }
  uint64_t s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  for (; i < bytes; ++i) s += uint8_t(c[i]);
  return s;
}

double fma_loop_scalar(int64_t iters) {
  constexpr int A = 12;
  float acc[A];
  for (int j = 0; j < A; ++j) acc[j] = float(j);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < A; ++j) acc[j] = acc[j] * 0.999999f + 1e-6f;
  float s = 0;
  for (int j = 0; j < A; ++j) s += acc[j];
  volatile float sink = s;
  (void)sink;
  return double(iters) * A * 2;
}

const detail::KernelSet* kernels_for(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return &detail::kernels_avx512();
    case Isa::Avx2: return &detail::kernels_avx2();
    case Isa::Scalar: return nullptr;
  }
  return nullptr;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

using Clock = std::chrono::steady_clock;

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Rate of one timed round: wall (work / elapsed) or the sum over threads of work_t / cpu_t.
struct RoundTimer {
  bool cpu;
  std::vector<double> work, cpu0, cpu1;
  Clock::time_point t0;
  RoundTimer(bool c, int n) : cpu(c), work(size_t(n)), cpu0(size_t(n)), cpu1(size_t(n)) {}
  void start() {
    std::fill(work.begin(), work.end(), 0.0);
    std::fill(cpu0.begin(), cpu0.end(), -1.0);
    t0 = Clock::now();
  }
  void on_thread_start(int t) {
    if (cpu0[size_t(t)] < 0) cpu0[size_t(t)] = thread_cpu_seconds();
  }
  void on_thread_end(int t) { cpu1[size_t(t)] = thread_cpu_seconds(); }
  double rate() const {
    if (!cpu) {
      double total = 0;
      for (double w : work) total += w;
      return total / std::chrono::duration<double>(Clock::now() - t0).count();
    }
    double r = 0;
    for (size_t t = 0; t < work.size(); ++t)
      if (work[t] > 0 && cpu1[t] > cpu0[t]) r += work[t] / (cpu1[t] - cpu0[t]);
    return r;
  }
};

}  // namespace

// Runs fn(chunk index) for chunks 0 .. n-1 handed out to the pool's threads by an atomic counter:
// on a shared machine a descheduled thread does not hold back the others (the kernels schedule
// their work the same way), so the rate measured is what the pool can get.
template <class F>
void for_chunks(ThreadPool& tp, int64_t n, RoundTimer* timer, F fn) {
  std::atomic<int64_t> next{0};
  tp.run_on_all([&](int t, int) {
    if (timer) timer->on_thread_start(t);
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < n; c = next.fetch_add(1, std::memory_order_relaxed))
      fn(c, t);
    if (timer) timer->on_thread_end(t);
  });
}

double measure_read_bandwidth_gbps(size_t bytes, ThreadPool& tp, int repeats, bool cpu_time) {
  constexpr size_t kChunk = size_t(1) << 20;
  bytes = std::max<size_t>(bytes, 4 * kChunk) / kChunk * kChunk;
  struct Free {
    void operator()(char* p) const { ::operator delete[](p, std::align_val_t(4096)); }
  };
  std::unique_ptr<char[], Free> buf(static_cast<char*>(::operator new[](bytes, std::align_val_t(4096))));
  const detail::KernelSet* ks = kernels_for(kernel_isa());
  auto sum = ks ? ks->read_sum : read_sum_scalar;
  const int64_t nchunks = int64_t(bytes / kChunk);
  for_chunks(tp, nchunks, nullptr,
             [&](int64_t c, int) { std::memset(buf.get() + size_t(c) * kChunk, int(c & 0x7f) + 1, kChunk); });
  std::vector<uint64_t> sink(size_t(tp.size()), 0);
  std::vector<double> rates;
  RoundTimer timer(cpu_time, tp.size());
  for (int r = 0; r <= std::max(1, repeats); ++r) {
    timer.start();
    for_chunks(tp, nchunks, &timer, [&](int64_t c, int t) {
      sink[size_t(t)] += sum(buf.get() + size_t(c) * kChunk, kChunk);
      timer.work[size_t(t)] += double(kChunk);
    });
    if (r > 0) rates.push_back(timer.rate() * 1e-9);  // r == 0 is the warm-up
  }
  volatile uint64_t keep = sink[0];
  (void)keep;
  return median(rates);
}

double measure_peak_fma_gflops(ThreadPool& tp, Isa isa, int repeats, bool cpu_time) {
  if (!isa_supported(isa)) fail("peak FMA: ISA {} not supported by this CPU", isa_name(isa));
  const detail::KernelSet* ks = kernels_for(isa);
  auto loop = ks ? ks->fma_loop : fma_loop_scalar;
  const int64_t chunks = 16 * tp.size(), iters = 250'000;  // ~1 ms per chunk at full speed
  std::vector<double> rates;
  RoundTimer timer(cpu_time, tp.size());
  for (int r = 0; r <= std::max(1, repeats); ++r) {
    timer.start();
    for_chunks(tp, chunks, &timer, [&](int64_t, int t) { timer.work[size_t(t)] += loop(iters); });
    if (r > 0) rates.push_back(timer.rate() * 1e-9);
  }
  return median(rates);
}

}  // namespace hxq
