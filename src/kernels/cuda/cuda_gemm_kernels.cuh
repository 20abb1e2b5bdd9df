// Device kernels of cuda_gemm.cu (HXQ/BF16 simple, matvec, matmul, sidecar), in a header so that
// a host-side emulation harness can compile them too (HXQ_CUDA_EMULATION). Internal.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_emu_compat.cuh"

namespace hxq::cuda::HXQ_KERN_NS {

// ---- weight decoders (one element at (row, k); used by the simple and matmul kernels) ----

struct HxqElem {
  const uint8_t* idx;
  const float* cb;  // global or shared codebook
  int64_t K;
  __device__ float operator()(int64_t r, int64_t k) const { return cb[idx[r * K + k]]; }
};

struct Bf16Elem {
  const uint16_t* w;
  int64_t K;
  __device__ float operator()(int64_t r, int64_t k) const { return __uint_as_float(uint32_t(w[r * K + k]) << 16); }
};

// Y[t, r] += Σ_e X[t, col_e] · delta_e over row r's sidecar entries, in entry order.
__device__ __forceinline__ float add_sidecar(float y, const float* X, int64_t K, int64_t t, int64_t r,
                                             const int64_t* rp, const int32_t* col, const float* delta) {
  if (rp)
    for (int64_t e = rp[r]; e < rp[r + 1]; ++e) y = fmaf(X[t * K + col[e]], delta[e], y);
  return y;
}

// ---- simple kernel: one block (128 threads) per (row, t), tree reduction in shared memory ----

constexpr int kSimpleThreads = 128;

template <class W>
__global__ void __launch_bounds__(kSimpleThreads)
    gemm_simple_kernel(const float* X, int64_t T, int64_t K, int64_t N, W w, const int64_t* rp, const int32_t* col,
                       const float* delta, float* Y) {
  __shared__ float red[kSimpleThreads];
  const int64_t r = blockIdx.x;
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    float acc = 0.0f;
    for (int64_t k = threadIdx.x; k < K; k += kSimpleThreads) acc = fmaf(X[t * K + k], w(r, k), acc);
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = kSimpleThreads / 2; s > 0; s >>= 1) {
      if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) Y[t * N + r] = add_sidecar(red[0], X, K, t, r, rp, col, delta);
    __syncthreads();  // red[] is rewritten by the next t
  }
}

// ---- matvec kernel (T <= 8) ----
//
// Persistent blocks of nwarps (2..8) warps. Block-wide: the HXQ codebook replicated 32 times in
// shared memory as cbs[entry * 32 + lane] (lane l reads bank l: conflict-free for any indices).
// A block takes groups of R consecutive rows (grid-stride); warp w handles K-chunks w, w + nwarps,
// ... of 32 × EPV elements (EPV = 16 u8 indices or 8 BF16 weights = one 16-byte load per lane and
// row). Each lane accumulates acc[r][t] in fp32; then a warp shuffle reduction, the per-warp sums
// in shared memory, __syncthreads, and thread (r, t) adds the warps' sums in warp order plus the
// sidecar and writes Y[t, row]. VEC = false (K % EPV != 0 or misaligned pointers): per-element
// loads with a bounds check on every k.

constexpr int kCbCopies = 32;

// Rows per group of the matvec for T rows of X (registers: the current and the prefetched
// weights, R·T accumulators, T·4 x values).
constexpr int matvec_rows(int T) { return 4; }
// Blocks per SM the matvec is compiled for (register budget): measured on an H100 (ncu), 8 rows
// per group and no bound gave 112 registers, 2 blocks of 8 warps per SM (25 % occupancy) and
// issue slots 40 % busy, latency-bound; more resident warps hide the lookups' latency.
constexpr int matvec_min_blocks(int T) { return T == 1 ? 4 : T == 2 ? 3 : T <= 4 ? 2 : 1; }

__device__ __forceinline__ uint32_t word_of(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// Shared by both matvec kernels. The codebook replicated kCbCopies times: 256 entries x 8 float4
// stores of the same value (cbs is 16-byte aligned: dynamic shared memory); ends with a barrier.
__device__ __forceinline__ void fill_codebook(float* cbs, const float* __restrict__ cb) {
  for (int i = threadIdx.x; i < 256 * (kCbCopies / 4); i += blockDim.x) {
    const float v = __ldg(cb + i / (kCbCopies / 4));
    reinterpret_cast<float4*>(cbs)[i] = make_float4(v, v, v, v);
  }
  __syncthreads();
}

// This lane's 16-byte vectors of rows g·R .. g·R + R − 1 from column k0 (zeros past N or K).
template <int R, bool HXQ>
__device__ __forceinline__ void load_rows(const void* __restrict__ Wp, int64_t K, int64_t N, int64_t g, int64_t k0,
                                          uint4* wv) {
HXQ_UNROLL
  for (int r = 0; r < R; ++r) {
    const int64_t row = g * R + r;
    if (row < N && k0 < K) {
      const uint4* src = HXQ ? reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(Wp) + row * K + k0)
                             : reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(Wp) + row * K + k0);
      wv[r] = __ldcs(src);
    } else {
      wv[r] = make_uint4(0, 0, 0, 0);
    }
  }
}

// acc[r][t] += Σ over this lane's EPV columns from k0 of W[r] · X[t] (wv from load_rows; k0 + EPV
// <= K and X 16-byte aligned per row: the VEC case).
template <int T, int R, bool HXQ>
__device__ __forceinline__ void fma_chunk(const uint4* wv, const float* __restrict__ X, int64_t K, int64_t k0,
                                          const float* cbs, int lane, float (&acc)[R][T]) {
  constexpr int EPW = HXQ ? 4 : 2;  // elements per 32-bit word
HXQ_UNROLL
  for (int j = 0; j < 4; ++j) {
    float xv[T][EPW];
HXQ_UNROLL
    for (int t = 0; t < T; ++t) {
      const float* xp = X + t * K + k0 + j * EPW;
      if constexpr (EPW == 4) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(xp));
        xv[t][0] = v.x;
        xv[t][1] = v.y;
        xv[t][2] = v.z;
        xv[t][3] = v.w;
      } else {
        const float2 v = __ldg(reinterpret_cast<const float2*>(xp));
        xv[t][0] = v.x;
        xv[t][1] = v.y;
      }
    }
HXQ_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint32_t wd = word_of(wv[r], j);
HXQ_UNROLL
      for (int b = 0; b < EPW; ++b) {
        float wf;
        if constexpr (HXQ) wf = cbs[((wd >> (8 * b)) & 255u) * kCbCopies + lane];
        else wf = __uint_as_float(b == 0 ? (wd << 16) : (wd & 0xffff0000u));
HXQ_UNROLL
        for (int t = 0; t < T; ++t) acc[r][t] = fmaf(wf, xv[t][b], acc[r][t]);
      }
    }
  }
}

template <int T, int R, bool VEC, bool HXQ>
__global__ void __launch_bounds__(256, matvec_min_blocks(T))
    matvec_kernel(const float* __restrict__ X, int64_t K, int64_t N, const void* __restrict__ Wp,
                  const float* __restrict__ cb, const int64_t* __restrict__ rp, const int32_t* __restrict__ col,
                  const float* __restrict__ delta, float* __restrict__ Y) {
  HXQ_EXTERN_SHARED(float, smem);
  float* cbs = smem;                                   // HXQ: 256 * 32 floats
  float* red = smem + (HXQ ? 256 * kCbCopies : 0);     // nwarps * R * T floats
  constexpr int EPV = HXQ ? 16 : 8;                    // elements per 16-byte vector
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5, nwarps = int(blockDim.x) >> 5;
  if constexpr (HXQ) fill_codebook(cbs, cb);
  const uint8_t* W8 = static_cast<const uint8_t*>(Wp);
  const uint16_t* W16 = static_cast<const uint16_t*>(Wp);
  const int64_t chunk = int64_t(32) * EPV;
  const int64_t nchunks = (K + chunk - 1) / chunk;
  const int64_t ngroups = (N + R - 1) / R;

  // VEC: this warp's work items (group grp, chunk c) are walked in order and the weights of the
  // next item are loaded before the current one is computed (and before the block-wide reduction
  // at the end of a group), so each warp always has a load in flight.
  const int64_t lane_k = int64_t(lane) * EPV;
  uint4 cur[R];
  if (VEC && blockIdx.x < ngroups && warp < nchunks) load_rows<R, HXQ>(Wp, K, N, blockIdx.x, warp * chunk + lane_k, cur);

  for (int64_t grp = blockIdx.x; grp < ngroups; grp += gridDim.x) {
    const int64_t r0 = grp * R;
    float acc[R][T];
HXQ_UNROLL
    for (int r = 0; r < R; ++r)
HXQ_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;

    for (int64_t c = warp; c < nchunks; c += nwarps) {
      const int64_t k0 = c * chunk + lane_k;
      if constexpr (VEC) {
        // K % EPV == 0 here, so all EPV elements from k0 are inside the row.
        uint4 nxt[R];
        const bool more_here = c + nwarps < nchunks, more_next = grp + gridDim.x < ngroups;
        if (more_here) load_rows<R, HXQ>(Wp, K, N, grp, (c + nwarps) * chunk + lane_k, nxt);
        else if (more_next) load_rows<R, HXQ>(Wp, K, N, grp + gridDim.x, warp * chunk + lane_k, nxt);
        if (k0 < K) fma_chunk<T, R, HXQ>(cur, X, K, k0, cbs, lane, acc);
        if (more_here || more_next)
HXQ_UNROLL
          for (int r = 0; r < R; ++r) cur[r] = nxt[r];
      } else {
        for (int e = 0; e < EPV; ++e) {
          const int64_t k = k0 + e;
          if (k >= K) break;
          float xv[T];
HXQ_UNROLL
          for (int t = 0; t < T; ++t) xv[t] = X[t * K + k];
HXQ_UNROLL
          for (int r = 0; r < R; ++r) {
            if (r0 + r >= N) continue;
            float wf;
            if constexpr (HXQ) wf = cbs[int(W8[(r0 + r) * K + k]) * kCbCopies + lane];
            else wf = __uint_as_float(uint32_t(W16[(r0 + r) * K + k]) << 16);
HXQ_UNROLL
            for (int t = 0; t < T; ++t) acc[r][t] = fmaf(wf, xv[t], acc[r][t]);
          }
        }
      }
    }

HXQ_UNROLL
    for (int r = 0; r < R; ++r)
HXQ_UNROLL
      for (int t = 0; t < T; ++t) {
        const float v = warp_sum(acc[r][t]);
        if (lane == 0) red[warp * (R * T) + r * T + t] = v;
      }
    __syncthreads();
    if (int(threadIdx.x) < R * T) {
      const int r = int(threadIdx.x) / T, t = int(threadIdx.x) % T;
      const int64_t row = r0 + r;
      if (row < N) {
        float y = 0.0f;
        for (int w = 0; w < nwarps; ++w) y += red[w * (R * T) + threadIdx.x];
        Y[t * N + row] = add_sidecar(y, X, K, t, row, rp, col, delta);
      }
    }
    __syncthreads();  // red[] is rewritten by the next group
  }
}

// ---- matvec, one row group per warp (VEC case: K % EPV == 0, 16-byte aligned W and X) ----
//
// Blocks of 8 warps share the replicated codebook (as above). Warp gw = blockIdx.x · 8 + warp
// takes row groups gw, gw + 8·gridDim.x, ...; for each it streams every K-chunk of its R rows
// (the next chunk's loads, possibly of its next group, issued before the current chunk is
// computed) and reduces with warp shuffles only: no shared-memory reduction, no block barrier
// after the codebook fill. Measured on the H100 against matvec_kernel (block-wide reduction per
// group of 4 rows): see docs/PERFORMANCE.md.
constexpr int kWarpKernelWarps = 8;

template <int T, int R, bool HXQ>
__global__ void __launch_bounds__(256, matvec_min_blocks(T))
    matvec_warp_kernel(const float* __restrict__ X, int64_t K, int64_t N, const void* __restrict__ Wp,
                       const float* __restrict__ cb, const int64_t* __restrict__ rp, const int32_t* __restrict__ col,
                       const float* __restrict__ delta, float* __restrict__ Y) {
  HXQ_EXTERN_SHARED(float, smem);
  float* cbs = smem;                   // HXQ: 256 * 32 floats
  constexpr int EPV = HXQ ? 16 : 8;    // elements per 16-byte vector
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5, nwarps = int(blockDim.x) >> 5;
  if constexpr (HXQ) fill_codebook(cbs, cb);
  const int64_t chunk = int64_t(32) * EPV, lane_k = int64_t(lane) * EPV;
  const int64_t nchunks = (K + chunk - 1) / chunk;
  const int64_t ngroups = (N + R - 1) / R;
  const int64_t gstride = int64_t(gridDim.x) * nwarps;

  int64_t grp = int64_t(blockIdx.x) * nwarps + warp;
  uint4 cur[R];
  if (grp < ngroups && nchunks > 0) load_rows<R, HXQ>(Wp, K, N, grp, lane_k, cur);
  for (; grp < ngroups; grp += gstride) {
    float acc[R][T];
HXQ_UNROLL
    for (int r = 0; r < R; ++r)
HXQ_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t k0 = c * chunk + lane_k;
      uint4 nxt[R];
      const bool more_here = c + 1 < nchunks, more_next = grp + gstride < ngroups;
      if (more_here) load_rows<R, HXQ>(Wp, K, N, grp, k0 + chunk, nxt);
      else if (more_next) load_rows<R, HXQ>(Wp, K, N, grp + gstride, lane_k, nxt);
      if (k0 < K) fma_chunk<T, R, HXQ>(cur, X, K, k0, cbs, lane, acc);
      if (more_here || more_next)
HXQ_UNROLL
        for (int r = 0; r < R; ++r) cur[r] = nxt[r];
    }
    // Butterfly reduction: every lane ends with every sum; lane r·T + t writes output (r, t).
HXQ_UNROLL
    for (int r = 0; r < R; ++r)
HXQ_UNROLL
      for (int t = 0; t < T; ++t) {
        const float v = warp_sum(acc[r][t]);
        const int64_t row = grp * R + r;
        if (lane == r * T + t && row < N) Y[t * N + row] = add_sidecar(v, X, K, t, row, rp, col, delta);
      }
  }
}

// ---- tiled matmul (any T) ----
//
// Block = 256 threads (16 x 16), output tile 128 (T) x 128 (N), K-steps of 16. Each step loads
// X[m0.., k0..] into As[k][m] and the decoded W[n0.., k0..] into Bs[k][n] (zero outside the
// matrix), then every thread does an 8 x 8 register tile of exact fp32 FMAs: rows ty*4 + {0..3}
// and 64 + ty*4 + {0..3}, columns likewise with tx (float4 shared-memory reads). Rows of As/Bs are
// padded by 4 floats to spread the transposing stores over the banks.

constexpr int kBM = 128, kBN = 128, kBK = 16, kPad = 4;

template <class W>
__global__ void __launch_bounds__(256, 2)
    matmul_kernel(const float* __restrict__ X, int64_t T, int64_t K, int64_t N, W w, float* __restrict__ Y) {
  __shared__ __align__(16) float As[kBK][kBM + kPad];
  __shared__ __align__(16) float Bs[kBK][kBN + kPad];
  __shared__ float cbs[256];
  const int tid = int(threadIdx.x), tx = tid & 15, ty = tid >> 4;
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  if constexpr (std::is_same_v<W, HxqElem>) {
    cbs[tid] = w.cb[tid];  // blockDim == 256
    __syncthreads();
    w.cb = cbs;
  }
  float acc[8][8];
HXQ_UNROLL
  for (int i = 0; i < 8; ++i)
HXQ_UNROLL
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
HXQ_UNROLL
    for (int i = 0; i < (kBM * kBK) / 256; ++i) {
      const int e = tid + 256 * i, m = e >> 4, k = e & 15;
      const int64_t gm = m0 + m, gk = k0 + k;
      As[k][m] = (gm < T && gk < K) ? X[gm * K + gk] : 0.0f;
    }
HXQ_UNROLL
    for (int i = 0; i < (kBN * kBK) / 256; ++i) {
      const int e = tid + 256 * i, n = e >> 4, k = e & 15;
      const int64_t gn = n0 + n, gk = k0 + k;
      Bs[k][n] = (gn < N && gk < K) ? w(gn, gk) : 0.0f;
    }
    __syncthreads();
HXQ_UNROLL
    for (int k = 0; k < kBK; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[k][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[k][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[k][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[k][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
HXQ_UNROLL
      for (int i = 0; i < 8; ++i)
HXQ_UNROLL
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
HXQ_UNROLL
  for (int i = 0; i < 8; ++i) {
    const int64_t gm = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
    if (gm >= T) continue;
HXQ_UNROLL
    for (int j = 0; j < 8; ++j) {
      const int64_t gn = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
      if (gn < N) Y[gm * N + gn] = acc[i][j];
    }
  }
}

// Y[t, r] += sidecar of row r, one thread per (r, t) (after the matmul; rows without entries
// return at once).
__global__ void sidecar_kernel(const float* X, int64_t T, int64_t K, int64_t N, const int64_t* rp, const int32_t* col,
                               const float* delta, float* Y) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= N || rp[r] == rp[r + 1]) return;
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) Y[t * N + r] = add_sidecar(Y[t * N + r], X, K, t, r, rp, col, delta);
}

}  // namespace hxq::cuda::HXQ_KERN_NS
