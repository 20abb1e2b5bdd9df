// The fast decode kernels take a few rows of X per pass over W (helix 4, v2 8); a product with
// more rows in the decode regime (a short prompt, a large batch) runs them in blocks. Each row of
// X is quantised and summed on its own, so a row's result must be the same bits whatever rows
// come with it — the property that makes batched serving give each request its own answer.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "codec/hxq2_codec.h"
#include "kernels/dispatch.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"

namespace hxq {
namespace {

std::vector<float> random_x(int64_t T, int64_t K, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(T * K));
  for (auto& v : x) v = nd(rng);
  return x;
}

// Y row by row (T = 1 each) against Y of all rows at once: bit for bit.
template <class Gemm>
void expect_rows_independent(Gemm gemm, int64_t T, int64_t K, int64_t N, std::mt19937& rng, const char* what) {
  ASSERT_TRUE(detail::use_decode(T, K, true)) << what << ": T = " << T << " is not in the decode regime";
  const auto x = random_x(T, K, rng);
  std::vector<float> all(static_cast<size_t>(T * N)), one(static_cast<size_t>(N));
  gemm(x.data(), T, all.data());
  for (int64_t t = 0; t < T; ++t) {
    gemm(x.data() + t * K, 1, one.data());
    ASSERT_EQ(std::memcmp(one.data(), all.data() + t * N, size_t(N) * sizeof(float)), 0)
        << what << ": row " << t << " of " << T << " differs from the row alone";
  }
}

TEST(DecodeBlocks, V2RowsBeyondOnePassGiveTheirOwnResult) {
  std::mt19937 rng(7);
  const int64_t N = 96, K = 2048 + 40;
  for (int bits : {4, 5, 6, 8}) {
    std::uniform_int_distribution<int> di(0, (1 << bits) - 1), dc(0, 63);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> cb(size_t(1) << bits), lut(64);
    for (auto& c : cb) c = nd(rng);
    hxq2_scale_table(0.5f, 0.1f, lut.data());
    const int64_t rb = hxq2_packed_row_bytes(K, bits), groups = (K + 31) / 32;
    std::vector<uint8_t> packed(size_t(N * rb)), codes(size_t(N * groups)), idx(32);
    for (auto& c : codes) c = uint8_t(dc(rng));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c0 = 0; c0 < K; c0 += 32) {
        const int64_t m = std::min<int64_t>(32, K - c0);
        for (int64_t j = 0; j < 32; ++j) idx[size_t(j)] = j < m ? uint8_t(di(rng)) : 0;
        uint8_t* out = packed.data() + n * rb + c0 / 32 * 4 * bits;
        if (m == 32) hxq2_pack_chunk(idx.data(), bits, out);
        else hxq2_pack_tail(idx.data(), m, bits, out);
      }
    Hxq2View v;
    v.rows = N;
    v.cols = K;
    v.bits = bits;
    v.group = 32;
    v.codebook = cb.data();
    v.indices = packed.data();
    v.codes = codes.data();
    v.scale_lut = lut.data();
    for (int64_t T : {9, 16, 20})
      expect_rows_independent([&](const float* x, int64_t t, float* y) { gemm_hxq2(x, t, v, y); }, T, K, N, rng,
                              "v2");
  }
}

TEST(DecodeBlocks, HelixRowsBeyondOnePassGiveTheirOwnResult) {
  std::mt19937 rng(11);
  const int64_t N = 80, K = 2048 + 24;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> di(0, 255);
  std::vector<float> cb(256);
  for (auto& c : cb) c = nd(rng);
  std::vector<uint8_t> ind(size_t(N * K));
  for (auto& i : ind) i = uint8_t(di(rng));
  HxqView v;
  v.rows = N;
  v.cols = K;
  v.codebook = cb.data();
  v.indices = ind.data();
  for (int64_t T : {5, 8, 11})
    expect_rows_independent([&](const float* x, int64_t t, float* y) { gemm_hxq(x, t, v, y); }, T, K, N, rng,
                            "helix");
}

}  // namespace
}  // namespace hxq
