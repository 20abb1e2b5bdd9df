// CUDA SSD scan of Mamba2 (one layer): a recurrent step kernel (decode, and the simple reference)
// and the chunked SSD form (chunk 64) for long sequences. Shapes and math in cuda_kernels.h.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_ssd_kernels.cuh"
#include "kernels/cuda/cuda_util.cuh"

namespace hxq::cuda {

using detail::check;
using detail::check_launch;

using namespace kern;

namespace {

void check_args(const SsdArgs& a) {
  if (a.T < 0 || a.H <= 0 || a.P <= 0 || a.N <= 0 || a.G <= 0) detail::fail_msg("cuda_ssd_scan", "bad sizes");
  if (a.H % a.G != 0) detail::fail_msg("cuda_ssd_scan", "H is not a multiple of G");
  if (a.N > 1024) detail::fail_msg("cuda_ssd_scan", "N > 1024 is not supported");
  if (!a.state || (a.T > 0 && (!a.x || !a.dt || !a.A || !a.B || !a.C || !a.D || !a.y)))
    detail::fail_msg("cuda_ssd_scan", "null pointer");
}

template <int NJ>
void launch_recurrent_nj(const SsdArgs& a, cudaStream_t s) {
  const int64_t threads = a.H * a.P * 32;
  const int64_t grid = (threads + 255) / 256;
  if (grid > 0x7fffffff) detail::fail_msg("cuda_ssd_scan", "too many heads");
  ssd_recurrent_kernel<NJ><<<unsigned(grid), 256, 0, s>>>(a);
  check_launch("ssd_recurrent_kernel");
}

void launch_recurrent(const SsdArgs& a, cudaStream_t s) {
  const int64_t nj = (a.N + 31) / 32;
  if (nj <= 1) return launch_recurrent_nj<1>(a, s);
  if (nj <= 2) return launch_recurrent_nj<2>(a, s);
  if (nj <= 4) return launch_recurrent_nj<4>(a, s);
  if (nj <= 8) return launch_recurrent_nj<8>(a, s);
  if (nj <= 16) return launch_recurrent_nj<16>(a, s);
  return launch_recurrent_nj<32>(a, s);
}

}  // namespace

float* SsdWorkspace::get(size_t floats) {
  if (buf_.bytes() < floats * sizeof(float)) buf_ = DeviceBuffer(floats * sizeof(float));
  return buf_.as<float>();
}

size_t ssd_workspace_floats(int64_t T, int64_t H, int64_t P, int64_t N) {
  const int64_t nchunks = (std::max<int64_t>(T, 0) + kL - 1) / kL;
  return size_t(H * nchunks * kL + nchunks * H * P * N);
}

void cuda_ssd_scan(const SsdArgs& a, SsdAlgo algo, SsdWorkspace* ws, void* stream) {
  check_args(a);
  if (a.T == 0) return;
  detail::require_device("cuda_ssd_scan");
  cudaStream_t s = detail::as_stream(stream);
  if (algo == SsdAlgo::Auto) algo = a.T <= 8 ? SsdAlgo::Recurrent : SsdAlgo::Chunked;
  if (algo == SsdAlgo::Recurrent) return launch_recurrent(a, s);

  const int64_t nchunks = (a.T + kL - 1) / kL;
  if (nchunks > 0x7fffffff || a.H > 65535) detail::fail_msg("cuda_ssd_scan", "too many chunks or heads");
  SsdWorkspace own;
  float* wsp = (ws ? ws : &own)->get(ssd_workspace_floats(a.T, a.H, a.P, a.N));
  float* cum = wsp;
  float* st = wsp + a.H * nchunks * kL;

  const int64_t ncum = nchunks * a.H;
  ssd_cum_kernel<<<unsigned((ncum + 255) / 256), 256, 0, s>>>(a, nchunks, cum);
  check_launch("ssd_cum_kernel");
  const int64_t ptiles = (a.P + 63) / 64, ntiles = (a.N + 63) / 64;
  if (ptiles * ntiles > 65535) detail::fail_msg("cuda_ssd_scan", "P too large");
  ssd_chunk_state_kernel<<<dim3(unsigned(nchunks), unsigned(a.H), unsigned(ptiles * ntiles)), 256, 0, s>>>(a, nchunks, cum, st);
  check_launch("ssd_chunk_state_kernel");
  const int64_t hpn = a.H * a.P * a.N;
  ssd_pass_kernel<<<unsigned((hpn + 255) / 256), 256, 0, s>>>(a, nchunks, cum, st);
  check_launch("ssd_pass_kernel");
  ssd_chunk_out_kernel<<<dim3(unsigned(nchunks), unsigned(a.H), unsigned(ptiles)), 256, 0, s>>>(a, nchunks, cum, st);
  check_launch("ssd_chunk_out_kernel");
  if (!ws) check(cudaStreamSynchronize(s), "cudaStreamSynchronize");  // `own` is freed on return
}

}  // namespace hxq::cuda
