// Aggregate decode throughput of Model::decode_batch: B sequences, each after a short prompt,
// advanced one token per step in one pass. tok_s = tokens/s summed over the B sequences.
//
//   HXQ_BATCH_BENCH_MODEL=/tmp/m2-370m HXQ_BATCH_BENCH_THREADS=2 ./hxq_bench
//     --benchmark_filter=BM_DecodeBatch --benchmark_repetitions=3 --benchmark_report_aggregates_only
// (one command line; HXQ_BATCH_BENCH_THREADS defaults to 2)
//
// Without HXQ_BATCH_BENCH_MODEL (a checkpoint directory, dense or HXQ) the benchmark is skipped.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/threadpool.h"
#include "models/model.h"

namespace {

constexpr int64_t kPrompt = 16;  // prompt tokens per sequence before the timed steps
constexpr int64_t kSteps = 32;   // timed decode steps per repetition

const hxq::Model* bench_model() {
  static std::unique_ptr<hxq::Model> m = [] {
    std::unique_ptr<hxq::Model> r;
    const char* dir = std::getenv("HXQ_BATCH_BENCH_MODEL");
    if (!dir || !*dir) return r;
    const char* t = std::getenv("HXQ_BATCH_BENCH_THREADS");
    hxq::set_num_threads(t ? std::atoi(t) : 2);
    r = hxq::load_model(dir);
    return r;
  }();
  return m.get();
}

int32_t token(int64_t seq, int64_t i, int64_t vocab) { return int32_t((seq * 7919 + i * 104729 + 17) % vocab); }

void BM_DecodeBatch(benchmark::State& state) {
  const hxq::Model* m = bench_model();
  if (!m) {
    state.SkipWithError("set HXQ_BATCH_BENCH_MODEL to a checkpoint directory");
    return;
  }
  const int64_t B = state.range(0), V = m->vocab_size();
  // Fresh states every repetition: each starts from the same prompt length.
  std::vector<std::unique_ptr<hxq::ModelState>> states;
  std::vector<hxq::ModelState*> ptrs;
  for (int64_t b = 0; b < B; ++b) {
    states.push_back(m->new_state());
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i < kPrompt; ++i) prompt.push_back(token(b, i, V));
    m->forward(*states.back(), prompt, kPrompt, nullptr);
    ptrs.push_back(states.back().get());
  }
  std::vector<int32_t> ids(static_cast<size_t>(B));
  std::vector<float> logits(static_cast<size_t>(B * V));
  m->decode_batch(ptrs, ids, logits.data());  // warm the buffers
  int64_t step = 0;
  for (auto _ : state) {
    for (int64_t b = 0; b < B; ++b) ids[size_t(b)] = token(b, kPrompt + step, V);
    m->decode_batch(ptrs, ids, logits.data());
    benchmark::DoNotOptimize(logits.data());
    ++step;
  }
  state.counters["tok_s"] = benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["B"] = double(B);
}
BENCHMARK(BM_DecodeBatch)->ArgName("B")->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Iterations(kSteps)->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
