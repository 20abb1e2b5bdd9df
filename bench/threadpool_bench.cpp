// Micro-benchmarks of the thread pool: the cost of one parallel job (run_on_all) when each share
// does `work` µs of busy work, for 1 and 2 threads (and all cores). Serial execution of the
// shares costs threads × work; perfect parallelism costs work; the rest is dispatch overhead.
#include <benchmark/benchmark.h>

#include <chrono>

#include "core/threadpool.h"

using namespace hxq;

namespace {

void busy_us(int64_t us) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::microseconds(us)) {
  }
}

// Args: threads (0 = all cores), µs of work per share.
void BM_PoolJob(benchmark::State& st) {
  ThreadPool tp(st.range(0) > 0 ? int(st.range(0)) : hardware_threads());
  const int64_t work = st.range(1);
  for (auto _ : st) tp.run_on_all([&](int, int) { busy_us(work); });
  st.counters["threads"] = tp.size();
}
BENCHMARK(BM_PoolJob)->ArgsProduct({{1, 2, 0}, {0, 5, 20}})->UseRealTime()->Unit(benchmark::kMicrosecond);

// A parallel_for below twice its grain runs on the caller: the cost of the call itself.
void BM_PoolSmallParallelFor(benchmark::State& st) {
  ThreadPool tp(2);
  int64_t sink = 0;
  for (auto _ : st) tp.parallel_for(100, [&](int64_t b, int64_t e, int) { sink += e - b; }, 64);
  benchmark::DoNotOptimize(sink);
}
BENCHMARK(BM_PoolSmallParallelFor)->UseRealTime();

}  // namespace
