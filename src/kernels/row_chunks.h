// Rows of X in chunks of at most 4 with the chunk size as a compile-time constant: the decode
// kernels are templates on it (accumulators in registers). Header-only, ISA-independent: each
// kernel file instantiates it with its own target flags.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace hxq::detail {

// Calls f(std::integral_constant<int, TT>{}, t) for t = 0, 4, 8, ... < T, TT = min(4, T − t).
template <class F>
inline void for_row_chunks(int64_t T, F&& f) {
  for (int64_t t = 0; t < T; t += 4) {
    switch (std::min<int64_t>(4, T - t)) {
      case 1: f(std::integral_constant<int, 1>{}, t); break;
      case 2: f(std::integral_constant<int, 2>{}, t); break;
      case 3: f(std::integral_constant<int, 3>{}, t); break;
      default: f(std::integral_constant<int, 4>{}, t); break;
    }
  }
}

}  // namespace hxq::detail
