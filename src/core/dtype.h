// Element types of stored tensors (safetensors dtypes we accept) and scalar conversions
// between them and float32 (bit-exact round-to-nearest-even where narrowing).
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace hxq {

enum class DType : uint8_t { F32, F16, BF16, I64, I32, U8, U16 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // safetensors spelling: "F32", "BF16", ...
std::optional<DType> dtype_from_name(std::string_view s);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even, overflow to inf

// Converts n elements of a float-like dtype (F32/F16/BF16) to float32.
void to_f32(DType t, const void* src, float* dst, size_t n);

}  // namespace hxq
