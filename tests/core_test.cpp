#include <gtest/gtest.h>

#include <cmath>
#include <atomic>
#include <numeric>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "io/json.h"
#include "test_util.h"

using namespace hxq;

TEST(DType, Bf16RoundTripAndRounding) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // halfway 1 + 2^-8 -> even (1.0)
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // halfway 1 + 3*2^-8 -> even (1 + 2^-6)
}

TEST(DType, F16RoundTripAllValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), h) << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);               // halfway to smallest subnormal: even
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(ThreadPool, CoversRangeOnceAndPropagatesErrors) {
  ThreadPool p(3);
  std::vector<int> hits(1000, 0);
  p.parallel_for(1000, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (int h : hits) EXPECT_EQ(h, 1);
  EXPECT_THROW(p.parallel_for(10, [](int64_t b, int64_t, int) {
    if (b > 0) throw std::runtime_error("boom");
  }), std::runtime_error);
  // still usable after an exception
  int sum = 0;
  p.parallel_for(1, [&](int64_t, int64_t, int) { sum = 1; });
  EXPECT_EQ(sum, 1);
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadPool p(2);
  std::atomic<int> total{0};
  p.parallel_for(4, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i)
      p.parallel_for(10, [&](int64_t b2, int64_t e2, int) { total += int(e2 - b2); });
  });
  EXPECT_EQ(total.load(), 40);
}

TEST(Json, AcceptsBareAndTaggedInfinity) {
  auto j = parse_json_text(R"({"a": [0.0, Infinity], "b": [0.0, {"__float__": "Infinity"}], "s": "Infinity NaN"})", "t");
  EXPECT_TRUE(std::isinf(json_float(j["a"][1], "a")));
  EXPECT_TRUE(std::isinf(json_float(j["b"][1], "b")));
  EXPECT_EQ(j["s"].get<std::string>(), "Infinity NaN");
  EXPECT_THROW(parse_json_text("{\"a\": ", "cfg.json"), Error);
  try {
    parse_json_text("{\"a\": ", "cfg.json");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos);
  }
}
