// Rows of X in chunks of at most 8 with the chunk size as a compile-time constant: the decode
// kernels are templates on it (accumulators in registers; one decode of a weight row serves up to
// 8 rows of X). Header-only, ISA-independent: each kernel file instantiates it with its own target
// flags.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace hxq::detail {

// Calls f(std::integral_constant<int, TT>{}, t) for t = 0, 8, 16, ... < T, TT = min(8, T − t).
template <class F>
inline void for_row_chunks(int64_t T, F&& f) {
  for (int64_t t = 0; t < T; t += 8) {
    switch (std::min<int64_t>(8, T - t)) {
      case 1: f(std::integral_constant<int, 1>{}, t); break;
      case 2: f(std::integral_constant<int, 2>{}, t); break;
      case 3: f(std::integral_constant<int, 3>{}, t); break;
      case 4: f(std::integral_constant<int, 4>{}, t); break;
      case 5: f(std::integral_constant<int, 5>{}, t); break;
      case 6: f(std::integral_constant<int, 6>{}, t); break;
      case 7: f(std::integral_constant<int, 7>{}, t); break;
      default: f(std::integral_constant<int, 8>{}, t); break;
    }
  }
}

}  // namespace hxq::detail
