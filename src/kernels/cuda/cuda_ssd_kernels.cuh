// Device kernels of cuda_ssd.cu (recurrent and chunked SSD scan), in a header so that a host-side
// emulation harness can compile them too (HXQ_CUDA_EMULATION). Internal.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_emu_compat.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace hxq::cuda::HXQ_KERN_NS {

// ---- recurrent kernel ----
// One warp per (h, p) (the early return is warp-uniform: blockDim is a multiple of 32). Lane l
// holds S[h][p][n] for n = l + 32 j, j < NJ, in registers, and for each t:
//   s = exp(dt·A)·s + (dt·x)·B[n];  y = Σ_n s·C[n] (warp shuffle) + D·x.
template <int NJ>
__global__ void __launch_bounds__(256) ssd_recurrent_kernel(SsdArgs a) {
  const int64_t wid = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = int(threadIdx.x) & 31;
  if (wid >= a.H * a.P) return;
  const int64_t h = wid / a.P, p = wid % a.P, g = h / (a.H / a.G);
  const int64_t N = a.N;
  float* S = a.state + (h * a.P + p) * N;
  float s[NJ];
HXQ_UNROLL
  for (int j = 0; j < NJ; ++j) {
    const int64_t n = lane + 32 * j;
    s[j] = n < N ? S[n] : 0.0f;
  }
  const float Ah = a.A[h], Dh = a.D[h];
  for (int64_t t = 0; t < a.T; ++t) {
    const float dtv = a.dt[t * a.H + h];
    const float decay = expf(dtv * Ah);
    const float xv = a.x[(t * a.H + h) * a.P + p];
    const float dx = dtv * xv;
    const float* Bt = a.B + (t * a.G + g) * N;
    const float* Ct = a.C + (t * a.G + g) * N;
    float part = 0.0f;
HXQ_UNROLL
    for (int j = 0; j < NJ; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < N) {
        s[j] = fmaf(decay, s[j], dx * Bt[n]);
        part = fmaf(s[j], Ct[n], part);
      }
    }
    part = warp_sum(part);
    if (lane == 0) a.y[(t * a.H + h) * a.P + p] = fmaf(Dh, xv, part);
  }
HXQ_UNROLL
  for (int j = 0; j < NJ; ++j) {
    const int64_t n = lane + 32 * j;
    if (n < N) S[n] = s[j];
  }
}

// ---- chunked kernels ----
// Chunk c covers t in [c·L, c·L + len_c). cum[h][t] = Σ_{u = c·L}^{t} dt[u][h]·A[h] (restarts at
// every chunk), so the decay from step j to step i of one chunk (j <= i) is exp(cum_i − cum_j).
// Workspace: cum [H][nchunks·L], then st [nchunks][H][P][N] (first the chunk's own contribution,
// then, after ssd_pass_kernel, the state at the chunk's start).

constexpr int kL = 64;

__global__ void ssd_cum_kernel(SsdArgs a, int64_t nchunks, float* cum) {
  const int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= nchunks * a.H) return;
  const int64_t c = id / a.H, h = id % a.H, Tpad = nchunks * kL;
  const float Ah = a.A[h];
  float run = 0.0f;
  for (int64_t t = c * kL; t < std::min<int64_t>(a.T, (c + 1) * kL); ++t) {
    run += a.dt[t * a.H + h] * Ah;
    cum[h * Tpad + t] = run;
  }
}

__device__ __forceinline__ int64_t chunk_len(int64_t T, int64_t c) { return std::min<int64_t>(kL, T - c * kL); }

// st[c][h][p][n] = Σ_{j < len} exp(cum_last − cum_j)·dt_j·x_j[p]·B_j[n]  (the chunk's state when
// it starts from zero). Block (16 x 16 threads) = tile of 64 p x 64 n (grid.z = p-tiles x n-tiles);
// thread holds p = ty + 16a, n = tx + 16b; steps j in tiles of 16 through shared memory.
__global__ void __launch_bounds__(256) ssd_chunk_state_kernel(SsdArgs a, int64_t nchunks, const float* cum, float* st) {
  __shared__ float Xs[16][64];
  __shared__ float Bs[16][64];
  const int tid = int(threadIdx.x), tx = tid & 15, ty = tid >> 4;
  const int64_t c = blockIdx.x, h = blockIdx.y;
  const int64_t ntiles_n = (a.N + 63) / 64;
  const int64_t p0 = int64_t(blockIdx.z / ntiles_n) * 64, n0 = int64_t(blockIdx.z % ntiles_n) * 64;
  const int64_t t0 = c * kL, len = chunk_len(a.T, c), g = h / (a.H / a.G), Tpad = nchunks * kL;
  const float cl = cum[h * Tpad + t0 + len - 1];
  float acc[4][4];
HXQ_UNROLL
  for (int i = 0; i < 4; ++i)
HXQ_UNROLL
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  for (int64_t jt = 0; jt < len; jt += 16) {
HXQ_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int e = tid + 256 * i, j = e >> 6, q = e & 63;
      const int64_t t = t0 + jt + j;
      const bool tj = jt + j < len;
      float xv = 0.0f;
      if (tj && p0 + q < a.P) xv = expf(cl - cum[h * Tpad + t]) * a.dt[t * a.H + h] * a.x[(t * a.H + h) * a.P + p0 + q];
      Xs[j][q] = xv;
      Bs[j][q] = (tj && n0 + q < a.N) ? a.B[(t * a.G + g) * a.N + n0 + q] : 0.0f;
    }
    __syncthreads();
HXQ_UNROLL
    for (int j = 0; j < 16; ++j)
HXQ_UNROLL
      for (int i = 0; i < 4; ++i) {
        const float xp = Xs[j][ty + 16 * i];
HXQ_UNROLL
        for (int k = 0; k < 4; ++k) acc[i][k] = fmaf(xp, Bs[j][tx + 16 * k], acc[i][k]);
      }
    __syncthreads();
  }
HXQ_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int64_t p = p0 + ty + 16 * i;
    if (p >= a.P) continue;
HXQ_UNROLL
    for (int k = 0; k < 4; ++k) {
      const int64_t n = n0 + tx + 16 * k;
      if (n < a.N) st[((c * a.H + h) * a.P + p) * a.N + n] = acc[i][k];
    }
  }
}

// One thread per state element (h, p, n): walks the chunks in order, replacing each chunk's own
// contribution by the state at the chunk's start, and writes the final state.
__global__ void ssd_pass_kernel(SsdArgs a, int64_t nchunks, const float* cum, float* st) {
  const int64_t HPN = a.H * a.P * a.N;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= HPN) return;
  const int64_t h = e / (a.P * a.N), Tpad = nchunks * kL;
  float s = a.state[e];
  for (int64_t c = 0; c < nchunks; ++c) {
    const float decay = expf(cum[h * Tpad + c * kL + chunk_len(a.T, c) - 1]);
    const float local = st[c * HPN + e];
    st[c * HPN + e] = s;
    s = fmaf(decay, s, local);
  }
  a.state[e] = s;
}

// Outputs of chunk c, head h, p-tile (64): thread (tx, ty) holds i = ty + 16a, p = tx + 16b.
//   M[i][j] = (j <= i) · exp(cum_i − cum_j) · dt_j · (C_i · B_j)             (phase A, N in tiles of 16)
//   y[i][p] = Σ_j M[i][j]·x_j[p] + exp(cum_i)·Σ_n C_i[n]·S0[p][n] + D·x_i[p]  (phases B, C)
// Shared rows are padded (17, 65) so that the column-wise reads hit distinct banks.
__global__ void __launch_bounds__(256) ssd_chunk_out_kernel(SsdArgs a, int64_t nchunks, const float* cum, const float* st) {
  __shared__ float Cs[kL][17];
  __shared__ float Bs[kL][17];  // phase C: the initial state tile S0[p][n]
  __shared__ float Ms[kL][kL + 1];
  __shared__ float Xs[kL][kL + 1];
  const int tid = int(threadIdx.x), tx = tid & 15, ty = tid >> 4;
  const int64_t c = blockIdx.x, h = blockIdx.y, p0 = int64_t(blockIdx.z) * 64;
  const int64_t t0 = c * kL, len = chunk_len(a.T, c), g = h / (a.H / a.G), Tpad = nchunks * kL;
  const int64_t N = a.N, P = a.P, H = a.H;
  const float* cumh = cum + h * Tpad + t0;

  // Phase A: C·Bᵀ over n.
  float acc[4][4];
HXQ_UNROLL
  for (int i = 0; i < 4; ++i)
HXQ_UNROLL
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  for (int64_t nb = 0; nb < N; nb += 16) {
HXQ_UNROLL
    for (int k = 0; k < 4; ++k) {
      const int e = tid + 256 * k, i = e >> 4, q = e & 15;
      const bool ok = i < len && nb + q < N;
      const int64_t off = ((t0 + i) * a.G + g) * N + nb + q;
      Cs[i][q] = ok ? a.C[off] : 0.0f;
      Bs[i][q] = ok ? a.B[off] : 0.0f;
    }
    __syncthreads();
HXQ_UNROLL
    for (int q = 0; q < 16; ++q)
HXQ_UNROLL
      for (int i = 0; i < 4; ++i) {
        const float cv = Cs[ty + 16 * i][q];
HXQ_UNROLL
        for (int k = 0; k < 4; ++k) acc[i][k] = fmaf(cv, Bs[tx + 16 * k][q], acc[i][k]);
      }
    __syncthreads();
  }
  // Masked, decayed M; x tile.
HXQ_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int ii = ty + 16 * i;
HXQ_UNROLL
    for (int k = 0; k < 4; ++k) {
      const int jj = tx + 16 * k;
      float m = 0.0f;
      if (jj <= ii && ii < len) m = acc[i][k] * expf(cumh[ii] - cumh[jj]) * a.dt[(t0 + jj) * H + h];
      Ms[ii][jj] = m;
    }
  }
  for (int e = tid; e < kL * 64; e += 256) {
    const int j = e >> 6, q = e & 63;
    Xs[j][q] = (j < len && p0 + q < P) ? a.x[((t0 + j) * H + h) * P + p0 + q] : 0.0f;
  }
  __syncthreads();
  // Phase B: intra-chunk.
  float yo[4][4];
HXQ_UNROLL
  for (int i = 0; i < 4; ++i)
HXQ_UNROLL
    for (int k = 0; k < 4; ++k) yo[i][k] = 0.0f;
  for (int j = 0; j < kL; ++j)
HXQ_UNROLL
    for (int i = 0; i < 4; ++i) {
      const float m = Ms[ty + 16 * i][j];
HXQ_UNROLL
      for (int k = 0; k < 4; ++k) yo[i][k] = fmaf(m, Xs[j][tx + 16 * k], yo[i][k]);
    }
  // Phase C: C_i · S0[p] over n (Cs/Bs are free: phase A ended with __syncthreads).
  float ys[4][4];
HXQ_UNROLL
  for (int i = 0; i < 4; ++i)
HXQ_UNROLL
    for (int k = 0; k < 4; ++k) ys[i][k] = 0.0f;
  const float* S0 = st + (c * H + h) * P * N;
  for (int64_t nb = 0; nb < N; nb += 16) {
HXQ_UNROLL
    for (int k = 0; k < 4; ++k) {
      const int e = tid + 256 * k, i = e >> 4, q = e & 15;
      Cs[i][q] = (i < len && nb + q < N) ? a.C[((t0 + i) * a.G + g) * N + nb + q] : 0.0f;
      Bs[i][q] = (p0 + i < P && nb + q < N) ? S0[(p0 + i) * N + nb + q] : 0.0f;
    }
    __syncthreads();
HXQ_UNROLL
    for (int q = 0; q < 16; ++q)
HXQ_UNROLL
      for (int i = 0; i < 4; ++i) {
        const float cv = Cs[ty + 16 * i][q];
HXQ_UNROLL
        for (int k = 0; k < 4; ++k) ys[i][k] = fmaf(cv, Bs[tx + 16 * k][q], ys[i][k]);
      }
    __syncthreads();
  }
  const float Dh = a.D[h];
HXQ_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int ii = ty + 16 * i;
    if (ii >= len) continue;
    const float ec = expf(cumh[ii]);
HXQ_UNROLL
    for (int k = 0; k < 4; ++k) {
      const int pp = tx + 16 * k;
      if (p0 + pp >= P) continue;
      a.y[((t0 + ii) * H + h) * P + p0 + pp] = fmaf(Dh, Xs[ii][pp], fmaf(ec, ys[i][k], yo[i][k]));
    }
  }
}

}  // namespace hxq::cuda::HXQ_KERN_NS
