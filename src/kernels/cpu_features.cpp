#include "kernels/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace hxq {

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures c;
#if defined(__x86_64__) || defined(__i386__)
    // libgcc's checks include the OS (XGETBV) enabling the YMM / ZMM register state.
    __builtin_cpu_init();
    c.avx2 = __builtin_cpu_supports("avx2");
    c.fma = __builtin_cpu_supports("fma");
    c.f16c = __builtin_cpu_supports("f16c");
    c.avx512f = __builtin_cpu_supports("avx512f");
    c.avx512bw = __builtin_cpu_supports("avx512bw");
    c.avx512vl = __builtin_cpu_supports("avx512vl");
    c.avx512dq = __builtin_cpu_supports("avx512dq");
    c.avx512vbmi = __builtin_cpu_supports("avx512vbmi");
    c.avx512vnni = __builtin_cpu_supports("avx512vnni");
    c.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
    return c;
  }();
  return f;
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return avx2;
    case Isa::Avx512: return avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vbmi;
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

std::optional<Isa> isa_from_name(std::string_view s) {
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_name(i) == s) return i;
  return std::nullopt;
}

namespace {

std::atomic<int>& current_isa() {
  static std::atomic<int> v{-1};
  return v;
}

Isa isa_from_env() {
  const char* e = std::getenv("HXQ_ISA");
  if (!e || !*e) return best_isa();
  auto isa = isa_from_name(e);
  if (!isa) fail("HXQ_ISA={}: unknown instruction set (expected avx512, avx2 or scalar)", e);
  if (!isa_supported(*isa))
    fail("HXQ_ISA={}: this CPU does not support it (best available: {})", e, isa_name(best_isa()));
  return *isa;
}

}  // namespace

Isa kernel_isa() {
  int v = current_isa().load(std::memory_order_relaxed);
  if (v < 0) {
    Isa isa = isa_from_env();
    int expected = -1;
    current_isa().compare_exchange_strong(expected, int(isa));
    v = current_isa().load();
  }
  return Isa(v);
}

void set_kernel_isa(Isa isa) {
  if (!isa_supported(isa))
    fail("kernel ISA {}: this CPU does not support it (best available: {})", isa_name(isa), isa_name(best_isa()));
  current_isa().store(int(isa));
}

}  // namespace hxq
