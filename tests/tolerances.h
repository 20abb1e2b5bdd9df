// Every numerical tolerance of the test suite, in one place, with its justification.
#pragma once

namespace hxq::tol {

// Logits vs transformers' fp32 forward (issue requirement). Both sides compute in fp32 but sum
// in different orders (blocked GEMM vs cuBLAS/MKL, chunked SSD with other chunk splits), so
// results differ by rounding: ~1e-6 relative per dot product, amplified through the layers. The
// largest logits are O(10), so 2e-3 absolute is ~1e-4 relative: loose enough for reassociation,
// orders of magnitude below any real error (a wrong norm grouping misses by ~14).
inline constexpr float kLogitAbs = 2e-3f;

// Hidden states per layer vs transformers: same reasoning, hidden values are O(1..30).
inline constexpr float kHiddenAbs = 2e-3f;

// Prefill-then-decode logits vs full-prefill logits: the same math in another order (chunked
// SSD vs recurrent step), so the same bound as against transformers.
inline constexpr float kDecodeVsPrefillAbs = 2e-3f;

// HXQ forward vs the dense forward of the decoded weights (issue 3): identical weights, only the
// summation order inside the kernels differs.
inline constexpr float kHxqVsDecodedAbs = 1e-4f;

}  // namespace hxq::tol
