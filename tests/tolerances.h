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

// decode_batch rows vs single-sequence forwards (B > 1; B = 1 is bit for bit). The linears run on
// B rows instead of one: dense layers sum in the same order up to the decode kernels' row limit
// and through the packed prefill kernel beyond it (measured: <= 6.4e-7 on the tiny models,
// 3.8e-6 on mamba2-neox-17m), but HXQ layers also change math with the row count — the default
// fast decode math (16-bit X and codebook, kernels/hxq_gemm.h) serves up to 4 (helix) or 8 (v2)
// rows, more rows take the exact path — so a row may differ by that math's error: measured up
// to 4.0e-4 (zamba2 tiny, v2; <= 8.1e-7 with HXQ_EXACT=1). 2e-3, the bound of the other
// same-math-other-order comparisons, leaves 5x margin and is far below any real error (a row
// given another sequence's state or position misses by O(1)).
inline constexpr float kBatchVsSingleAbs = 2e-3f;

// HXQ forward vs the dense forward of the decoded weights (issue 3): identical weights, only the
// summation order inside the kernels differs.
inline constexpr float kHxqVsDecodedAbs = 1e-4f;

// A LoRA adapter applied at inference (W·x + s·B·(A·x), Linear::forward) vs the dense F32
// checkpoint with W + s·B·A merged: the same weights, only grouped otherwise — the merged weight
// is rounded to float once, the adapter path sums the rank-r product apart from the base product —
// so the difference is rounding (~1e-7 relative per dot product) carried through the layers, like
// kHxqVsDecodedAbs. Measured on the tiny fixtures (logits O(1..10)): 1.3e-6 (qwen2) to 3.5e-5
// (mamba2); 2e-4 leaves ~6x margin. The tests' random adapters move the logits by 1 to 6 (checked
// to exceed 100x this bound), so a mis-applied adapter cannot pass.
inline constexpr float kLoraVsMergedAbs = 2e-4f;

// An HXQ base with an adapter vs its decoded dense weights with the delta merged (prefill: exact
// codebook math): the reordering above plus codebook kernels vs dense ones, the latter bounded by
// kHxqVsDecodedAbs. Measured: 3.2e-6 (llama) and 5.1e-6 (zamba2), v2 8-bit.
inline constexpr float kLoraHxqVsDecodedMergedAbs = 1e-4f;

// HXQ v2 kernels vs a double-precision sum over the decoded weights: a float32 sum of n terms in
// any order is within n·u·Σ|terms| of the exact sum (u = 2^-24, first order), each product and
// the decoded weight (scale × codebook entry, + sidecar delta) add a few roundings per term; the
// test bounds |y − ref| by kHxq2SumUlps · (K + 16) · u · Σ|x·w|, i.e. twice the worst case.
inline constexpr double kHxq2SumUlps = 2.0;

}  // namespace hxq::tol
