// CUDA matrix kernels: HXQ (u8 indices into a float32 codebook + CSR sidecar) and BF16 weights,
// Y[T, N] = X[T, K] · Wᵀ in float32. Matvec (T <= 8), tiled matmul, and a simple fallback.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <mma.h>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_gemm_kernels.cuh"
#include "kernels/cuda/cuda_util.cuh"

namespace hxq::cuda {

using detail::check;
using detail::check_launch;

using namespace kern;

namespace {

// ---- TF32 tensor-core matmul (opt-in: CudaAlgo::MatmulTf32) ----
//
// Block = 4 warps, output tile 64 (T) x 64 (N), K-steps of 32. X and decoded W tiles go to shared
// memory as As[m][k] and Bs[n][k] (row stride 36 floats: a multiple of 4 as wmma needs, and every
// 16-row fragment start stays 32-byte aligned); warp (wm, wn) computes a 32 x 32 sub-tile as 2 x 2
// wmma 16x16x8 fragments. Both operands are rounded to TF32 (__float_to_tf32: round to nearest,
// ties away), products are exact and accumulated in fp32. The result goes through shared memory
// (Cs) for bounds-checked stores.

constexpr int kTM = 64, kTN = 64, kTK = 32, kTLd = kTK + 4, kTCd = kTN + 4;

template <class W>
__global__ void __launch_bounds__(128)
    matmul_tf32_kernel(const float* __restrict__ X, int64_t T, int64_t K, int64_t N, W w, float* __restrict__ Y) {
  using namespace nvcuda;
  __shared__ __align__(32) float As[kTM * kTLd];
  __shared__ __align__(32) float Bs[kTN * kTLd];
  __shared__ __align__(32) float Cs[kTM * kTCd];
  __shared__ float cbs[256];
  const int tid = int(threadIdx.x), warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
  const int64_t m0 = int64_t(blockIdx.y) * kTM, n0 = int64_t(blockIdx.x) * kTN;
  if constexpr (std::is_same_v<W, HxqElem>) {
    for (int i = tid; i < 256; i += 128) cbs[i] = w.cb[i];
    __syncthreads();
    w.cb = cbs;
  }
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < K; k0 += kTK) {
#pragma unroll
    for (int i = 0; i < (kTM * kTK) / 128; ++i) {
      const int e = tid + 128 * i, m = e >> 5, k = e & 31;
      const int64_t gm = m0 + m, gk = k0 + k;
      As[m * kTLd + k] = (gm < T && gk < K) ? X[gm * K + gk] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < (kTN * kTK) / 128; ++i) {
      const int e = tid + 128 * i, n = e >> 5, k = e & 31;
      const int64_t gn = n0 + n, gk = k0 + k;
      Bs[n * kTLd + k] = (gn < N && gk < K) ? w(gn, gk) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTK; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * kTLd + kk, kTLd);
#pragma unroll
        for (int q = 0; q < a[i].num_elements; ++q) a[i].x[q] = wmma::__float_to_tf32(a[i].x[q]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(b[j], Bs + (wn * 32 + j * 16) * kTLd + kk, kTLd);
#pragma unroll
        for (int q = 0; q < b[j].num_elements; ++q) b[j].x[q] = wmma::__float_to_tf32(b[j].x[q]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kTCd + wn * 32 + j * 16, acc[i][j], kTCd, wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < kTM * kTN; e += 128) {
    const int m = e / kTN, n = e % kTN;
    const int64_t gm = m0 + m, gn = n0 + n;
    if (gm < T && gn < N) Y[gm * N + gn] = Cs[m * kTCd + n];
  }
}

// ---- launchers ----

void check_sizes(const char* what, const float* X, int64_t T, int64_t K, const void* W, int64_t N, const float* Y) {
  if (T < 0 || K < 0 || N < 0) detail::fail_msg(what, "negative size");
  if (T > 0 && N > 0 && (!Y || (K > 0 && (!X || !W)))) detail::fail_msg(what, "null pointer");
}

template <int T, bool HXQ>
void launch_matvec_t(const float* X, int64_t K, int64_t N, const void* W, const float* cb, const int64_t* rp,
                     const int32_t* col, const float* delta, float* Y, cudaStream_t s) {
  constexpr int R = matvec_rows(T);
  constexpr int EPV = HXQ ? 16 : 8;
  const bool vec = K % EPV == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 && reinterpret_cast<uintptr_t>(X) % 16 == 0;
  const int64_t ngroups = (N + R - 1) / R;
  int per_sm = 0;
  // One row group per warp (no block reduction) when there are enough groups to fill the GPU:
  // measured on the H100 at T = 1, 16384×4096 (4096 groups) 1,752 → 2,055 GB/s and 8512×2048
  // (2128 groups) 1,069 → 1,168, but 2048×4096 (512 groups: half the SMs idle) 987 → 580; with
  // fewer than 2 groups per warp slot of one block per SM, K is split over the warps of a block.
  if (vec && ngroups >= int64_t(2) * kWarpKernelWarps * detail::sm_count()) {
    const int threads = kWarpKernelWarps * 32;
    const size_t smem = size_t(HXQ ? 256 * kCbCopies : 0) * sizeof(float);
    auto kern = matvec_warp_kernel<T, R, HXQ>;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem), "cudaOccupancyMaxActiveBlocks");
    const int64_t blocks_needed = (ngroups + kWarpKernelWarps - 1) / kWarpKernelWarps;
    const int grid = int(std::max<int64_t>(1, std::min<int64_t>(blocks_needed, int64_t(std::max(per_sm, 1)) * detail::sm_count())));
    kern<<<grid, threads, smem, s>>>(X, K, N, W, cb, rp, col, delta, Y);
    check_launch(HXQ ? "matvec_warp_kernel(hxq)" : "matvec_warp_kernel(bf16)");
    return;
  }
  const int64_t nchunks = (K + 32 * EPV - 1) / (32 * EPV);
  const int nwarps = int(std::clamp<int64_t>(nchunks, 2, 8));
  const int threads = nwarps * 32;
  const size_t smem = size_t((HXQ ? 256 * kCbCopies : 0) + nwarps * R * T) * sizeof(float);
  auto kern = vec ? matvec_kernel<T, R, true, HXQ> : matvec_kernel<T, R, false, HXQ>;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem), "cudaOccupancyMaxActiveBlocks");
  const int grid = int(std::max<int64_t>(1, std::min<int64_t>(ngroups, int64_t(std::max(per_sm, 1)) * detail::sm_count())));
  kern<<<grid, threads, smem, s>>>(X, K, N, W, cb, rp, col, delta, Y);
  check_launch(HXQ ? "matvec_kernel(hxq)" : "matvec_kernel(bf16)");
}

template <bool HXQ>
void launch_matvec(const float* X, int64_t T, int64_t K, int64_t N, const void* W, const float* cb, const int64_t* rp,
                   const int32_t* col, const float* delta, float* Y, cudaStream_t s) {
  switch (T) {
    case 1: return launch_matvec_t<1, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    case 2: return launch_matvec_t<2, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    case 3: return launch_matvec_t<3, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    case 4: return launch_matvec_t<4, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    case 5: return launch_matvec_t<5, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    case 6: return launch_matvec_t<6, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    case 7: return launch_matvec_t<7, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    case 8: return launch_matvec_t<8, HXQ>(X, K, N, W, cb, rp, col, delta, Y, s);
    default: detail::fail_msg("cuda_gemm (matvec)", "the matvec kernel takes 1 <= T <= 8");
  }
}

template <class W>
void launch_simple(const float* X, int64_t T, int64_t K, int64_t N, W w, const int64_t* rp, const int32_t* col,
                   const float* delta, float* Y, cudaStream_t s) {
  if (N > 0x7fffffff) detail::fail_msg("cuda_gemm (simple)", "too many rows");
  const dim3 grid(unsigned(N), unsigned(std::min<int64_t>(T, 65535)));
  gemm_simple_kernel<W><<<grid, kSimpleThreads, 0, s>>>(X, T, K, N, w, rp, col, delta, Y);
  check_launch("gemm_simple_kernel");
}

template <class W>
void launch_matmul(const float* X, int64_t T, int64_t K, int64_t N, W w, float* Y, cudaStream_t s) {
  const int64_t gx = (N + kBN - 1) / kBN, gy = (T + kBM - 1) / kBM;
  if (gx > 0x7fffffff || gy > 65535) detail::fail_msg("cuda_gemm (matmul)", "matrix too large for the grid");
  matmul_kernel<W><<<dim3(unsigned(gx), unsigned(gy)), 256, 0, s>>>(X, T, K, N, w, Y);
  check_launch("matmul_kernel");
}

template <class W>
void launch_matmul_tf32(const float* X, int64_t T, int64_t K, int64_t N, W w, float* Y, cudaStream_t s) {
  const int64_t gx = (N + kTN - 1) / kTN, gy = (T + kTM - 1) / kTM;
  if (gx > 0x7fffffff || gy > 65535) detail::fail_msg("cuda_gemm (matmul tf32)", "matrix too large for the grid");
  matmul_tf32_kernel<W><<<dim3(unsigned(gx), unsigned(gy)), 128, 0, s>>>(X, T, K, N, w, Y);
  check_launch("matmul_tf32_kernel");
}

}  // namespace

void cuda_gemm_hxq(const float* X, int64_t T, const DeviceHxq& w, float* Y, CudaAlgo algo, void* stream) {
  const int64_t K = w.cols, N = w.rows;
  check_sizes("cuda_gemm_hxq", X, T, K, w.indices.data(), N, Y);
  if (T == 0 || N == 0) return;
  detail::require_device("cuda_gemm_hxq");
  cudaStream_t s = detail::as_stream(stream);
  const float* cb = w.codebook.as<const float>();
  if (!cb) detail::fail_msg("cuda_gemm_hxq", "weight has no codebook on the device");
  const int64_t* rp = w.sc_row_ptr.data() ? w.sc_row_ptr.as<const int64_t>() : nullptr;
  const int32_t* col = w.sc_col.as<const int32_t>();
  const float* delta = w.sc_delta.as<const float>();
  if (K == 0) {  // empty dot products; any sidecar would have a column outside [0, 0)
    check(cudaMemsetAsync(Y, 0, size_t(T * N) * sizeof(float), s), "cudaMemsetAsync");
    return;
  }
  const uint8_t* idx = w.indices.as<const uint8_t>();
  if (algo == CudaAlgo::Auto) algo = T <= 8 ? CudaAlgo::Matvec : CudaAlgo::Matmul;
  switch (algo) {
    case CudaAlgo::Simple:
      launch_simple(X, T, K, N, HxqElem{idx, cb, K}, rp, col, delta, Y, s);
      break;
    case CudaAlgo::Matvec:
      launch_matvec<true>(X, T, K, N, idx, cb, rp, col, delta, Y, s);
      break;
    default:
      if (algo == CudaAlgo::MatmulTf32) launch_matmul_tf32(X, T, K, N, HxqElem{idx, cb, K}, Y, s);
      else launch_matmul(X, T, K, N, HxqElem{idx, cb, K}, Y, s);
      if (rp && w.nnz > 0) {
        const dim3 grid(unsigned((N + 255) / 256), unsigned(std::min<int64_t>(T, 65535)));
        sidecar_kernel<<<grid, 256, 0, s>>>(X, T, K, N, rp, col, delta, Y);
        check_launch("sidecar_kernel");
      }
  }
}

void cuda_gemm_bf16(const float* X, int64_t T, int64_t K, const uint16_t* W, int64_t N, float* Y, CudaAlgo algo,
                    void* stream) {
  check_sizes("cuda_gemm_bf16", X, T, K, W, N, Y);
  if (T == 0 || N == 0) return;
  detail::require_device("cuda_gemm_bf16");
  cudaStream_t s = detail::as_stream(stream);
  if (K == 0) {
    check(cudaMemsetAsync(Y, 0, size_t(T * N) * sizeof(float), s), "cudaMemsetAsync");
    return;
  }
  if (algo == CudaAlgo::Auto) algo = T <= 8 ? CudaAlgo::Matvec : CudaAlgo::Matmul;
  switch (algo) {
    case CudaAlgo::Simple:
      launch_simple(X, T, K, N, Bf16Elem{W, K}, nullptr, nullptr, nullptr, Y, s);
      break;
    case CudaAlgo::Matvec:
      launch_matvec<false>(X, T, K, N, W, nullptr, nullptr, nullptr, nullptr, Y, s);
      break;
    case CudaAlgo::MatmulTf32:
      launch_matmul_tf32(X, T, K, N, Bf16Elem{W, K}, Y, s);
      break;
    default:
      launch_matmul(X, T, K, N, Bf16Elem{W, K}, Y, s);
  }
}

}  // namespace hxq::cuda
