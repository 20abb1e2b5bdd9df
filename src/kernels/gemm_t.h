// Transposed matrix kernels: dX[T, K] = G[T, N] · W[N, K] — the input gradient of Y = X · Wᵀ
// (gemm_dense / gemm_hxq / gemm_hxq2) computed straight from W's stored form (dense F32/F16/BF16,
// helix HXQ or HXQ v2), never materialising W as a whole. Multithreaded.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"

namespace hxq {

// G [T, N] and dX [T, K] are row-major float32 and must not overlap; W is [N, K] (the weight of
// the forward product, rows = N outputs, cols = K inputs). dX is overwritten. For HXQ the
// sidecar is included: each weight is used as float32(decoded value + its deltas), the deltas
// added in stored order (as the forward's packed path does).
// With a SIMD kernel ISA (kernel_isa(), kernels/cpu_features.h), W's rows are decoded (or, for
// dense W and T <= 4, read in place) and summed with FMAs in blocks of 256 rows: every output is
// Σ over the blocks in row order of (an FMA chain over the block's rows from zero). Few rows of G
// (T <= 8) stream slabs of rows per thread into partial sums added in slab order; more go through
// the forward's packed micro-kernel (G packed like X, W decoded into panels per column tile of
// dX). Both compute that same order, so results are bit-identical for every thread count, on
// AVX2 and AVX-512, and a row of dX does not depend on the other rows of G computed with it.
// Scalar ISA: the references below. Throws hxq::Error (one line) for negative sizes, a null array
// with a non-zero size, another dtype, a bad v2 bit width / group size or a sidecar with
// decreasing row pointers or a column outside [0, K), before writing dX. T = 0 or K = 0 does
// nothing; N = 0 zeroes dX.
void gemm_t_dense(const float* G, int64_t T, int64_t N, const void* W, DType wdt, int64_t K, float* dX);
void gemm_t_hxq(const float* G, int64_t T, const HxqView& w, float* dX);
void gemm_t_hxq2(const float* G, int64_t T, const Hxq2View& w, float* dX);

// Scalar references (tests; the scalar ISA): the same weights (decoded row by row, sidecar
// deltas added as above), then for every output the plain float32 sum over the rows in order:
// dX[t, c] = ((0 + G[t, 0]·W[0, c]) + G[t, 1]·W[1, c]) + ... + G[t, N−1]·W[N−1, c], each product
// rounded to float32 before the addition (no FMA). Same checks and threading (column ranges).
void gemm_t_dense_reference(const float* G, int64_t T, int64_t N, const void* W, DType wdt, int64_t K, float* dX);
void gemm_t_hxq_reference(const float* G, int64_t T, const HxqView& w, float* dX);
void gemm_t_hxq2_reference(const float* G, int64_t T, const Hxq2View& w, float* dX);

}  // namespace hxq
