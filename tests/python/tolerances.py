"""Numerical tolerances of the Python tests, in one place, with their reasons.

The package runs the C++ engine, so where the CLI prints a number the package gives the same
bits (asserted with equality, no tolerance). Tolerances are needed only where two different
computations meet:
"""

# Logits of a position computed in a different split of the sequence (a prefill of 30 tokens,
# then one token at a time, vs one forward over all 40): the kernels' regimes differ (decode
# kernels for 1 row, packed GEMM panels for many), so float32 sums run in a different order.
# Logits of these models are O(10); float32 reassociation over a few hundred terms per dot
# product costs ~1e-6 relative per layer, and the fast 16-bit HXQ decode kernels add their bounded
# quantisation error (kernels/hxq_gemm.h: <= range/131070 per codebook entry, measured 1e-4-ish
# on logits). 2e-3 is the CLI's decode-vs-prefill tolerance (tests/tolerances.h).
INCREMENTAL_VS_FULL_ABS = 2e-3

# PyTorch (float32, its own GEMMs and softmax) vs the engine on the same weights: each matmul's
# float32 sums are ordered differently; on logits of magnitude <= ~20 after 5 layers the
# differences measure ~1e-5; 1e-3 leaves two orders of margin and still catches any real error
# (a wrong scale or a missing term moves logits by >= 1e-2).
TORCH_VS_ENGINE_ABS = 1e-3

# The torch Llama against transformers' reference logits: the CLI's own reference tolerance.
TORCH_VS_TRANSFORMERS_ABS = 2e-3

# HxqLinear's input gradient (engine kernel, float32) against grad_out @ W_decoded computed by
# torch in float64: float32 accumulation over N <= 512 rows of |g·w| <= 1 terms.
GRAD_INPUT_REL = 1e-5
