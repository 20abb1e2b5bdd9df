// Run-time CPU feature detection and the instruction set the kernels use (scalar, AVX2 or
// AVX-512), chosen automatically or forced with HXQ_ISA=avx512|avx2|scalar or set_kernel_isa().
#pragma once
#include <optional>
#include <string_view>

namespace hxq {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vbmi = false, avx512vnni = false, avx512bf16 = false;
};

// What this CPU (and OS: register state enabled) supports; detected once.
const CpuFeatures& cpu_features();

// Whether the kernels of that ISA can run here. Avx2 needs AVX2+FMA+F16C; Avx512 needs
// F+BW+VL+DQ+VBMI as well (the HXQ kernel decodes with VBMI byte permutes).
bool isa_supported(Isa isa);
Isa best_isa();  // the fastest supported one

std::string_view isa_name(Isa isa);                    // "scalar", "avx2", "avx512"
std::optional<Isa> isa_from_name(std::string_view s);  // inverse of isa_name

// The ISA the kernels dispatch to. Initialised on first use from the environment variable HXQ_ISA
// (when set; an unknown or unsupported value throws hxq::Error) or best_isa().
Isa kernel_isa();
// Forces an ISA (tests, benchmarks); throws hxq::Error when this CPU does not support it.
void set_kernel_isa(Isa isa);

}  // namespace hxq
