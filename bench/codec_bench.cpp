// Encode speed of the HXQ codec on a 2048 x 8512 random BF16 tensor (the size of a real MLP
// projection): optimal k-means + error sidecar, and helix-substrate's Lloyd + magnitude sidecar.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "codec/hxq_codec.h"

namespace {

const std::vector<uint16_t>& bf16_tensor() {
  static const std::vector<uint16_t> t = [] {
    std::mt19937 g(1);
    std::normal_distribution<float> nd(0.f, 0.02f);
    std::vector<uint16_t> v(size_t(2048) * 8512);
    for (auto& x : v) x = hxq::f32_to_bf16(nd(g));
    return v;
  }();
  return t;
}

void run(benchmark::State& state, const hxq::EncodeOptions& o) {
  const auto& t = bf16_tensor();
  for (auto _ : state) {
    auto e = hxq::encode(t.data(), hxq::DType::BF16, 2048, 8512, o);
    benchmark::DoNotOptimize(e.indices.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(t.size() * 2));
}

void BM_EncodeOptimalErrorSidecar(benchmark::State& state) {
  hxq::EncodeOptions o;  // optimal codebook, 0.1 % error sidecar
  run(state, o);
}

void BM_EncodeHelixLloyd(benchmark::State& state) {
  hxq::EncodeOptions o;
  o.codebook = hxq::CodebookMethod::Lloyd;
  o.sidecar = hxq::SidecarMethod::Magnitude;
  o.module = "model.layers.0.mlp.up_proj";
  run(state, o);
}

BENCHMARK(BM_EncodeOptimalErrorSidecar)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_EncodeHelixLloyd)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

}  // namespace
