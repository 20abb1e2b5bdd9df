// Optional CUDA kernels (built when HXQ_CUDA=ON, HXQ_HAVE_CUDA=1): HXQ and BF16 matrix products,
// Mamba2's SSD scan and a bandwidth probe on the GPU. Plain C++ header: no CUDA header needed.
//
// Design (details next to each kernel in the .cu files):
// * HXQ matvec (T <= 8, memory-bound): a persistent grid; each block copies the 256-entry codebook
//   into shared memory replicated 32 times ([entry][lane], 32 KiB), so the lookup of lane l always
//   hits bank l (no bank conflicts for random indices). A block owns R rows at a time (R = 4, or 8
//   for T > 4); its warps split K into 512-byte chunks, each lane loading 16 indices of each row
//   with one 16-byte load; X is read in float4 from L1/L2 and reused for the R rows; fp32
//   accumulation, warp shuffle + shared-memory reduction over the block's warps, then the sidecar
//   row (CSR) is added by the thread that writes the output. Indices stay u8 on the device.
//   K not a multiple of 16 (or unaligned pointers) uses the same kernel with per-byte loads.
// * BF16 matvec: the same kernel shape, 8 weights per 16-byte load.
// * Matmul (T > 8): 128x128 output tiles, K-steps of 16; the W tile is decoded (codebook in shared
//   memory, or BF16 -> F32) into shared memory, 8x8 register tile per thread, exact fp32 FMAs.
//   The HXQ sidecar is added afterwards by a small kernel (one thread per output of a row that
//   has entries).
// * TF32 tensor-core matmul (opt-in, CudaAlgo::MatmulTf32): 64x64 tiles, 4 warps of 2x2 wmma
//   16x16x8 fragments, operands rounded to TF32, fp32 accumulation.
// * "Simple" kernels (one block per output, shared-memory tree reduction, sidecar added serially)
//   are kept as a clearly-correct fallback, selectable with CudaAlgo::Simple.
// * SSD scan: recurrent kernel (one warp per (head, p); the lane keeps N/32 state values in
//   registers and loops over t; y by warp shuffle) for T = 1 (decode) and as the simple fallback;
//   chunked kernel (SSD form, chunk L = 64) for long T: (1) in-chunk cumulative decay per (chunk,
//   head), (2) per chunk the state contributed by the chunk's inputs (a [P x L]·[L x N] product),
//   (3) a sequential pass over chunks per state element giving each chunk's initial state and the
//   final state, (4) per chunk the outputs: masked decayed (C·Bᵀ) times x, plus C times the chunk's
//   initial state, plus D·x.
// The kernels live in cuda_gemm_kernels.cuh / cuda_ssd_kernels.cuh so that tests/cuda_test.cpp can
// also run them on the CPU under cuda_emulation.h (CudaEmu* tests: index math without a GPU).
// All device memory pointers below are device pointers; all launches go to `stream` (nullptr =
// the legacy default stream) and are asynchronous unless said otherwise. Every CUDA error becomes
// hxq::Error("cuda: <call>: <message>"); nothing aborts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/hxq_gemm.h"

namespace hxq::cuda {

// True when the CUDA runtime reports at least one device. Never throws (no driver -> false).
bool cuda_available();
// Why cuda_available() is false (e.g. "cudaGetDeviceCount: cudaErrorInsufficientDriver (...)"), or "".
std::string cuda_unavailable_reason();

struct DeviceInfo {
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  size_t total_mem = 0;        // bytes
  size_t l2_bytes = 0;
  int mem_clock_khz = 0;       // 0 where the runtime does not report it
  int mem_bus_bits = 0;
  double theoretical_bw_gbps = 0;  // 2 * clock * bus width, 0 when unknown
};
// Device 0's properties. Throws hxq::Error without a device.
DeviceInfo device_info();
// One line for reports: "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB, L2 50 MiB".
std::string device_summary();

// Waits for all work on the device; throws on an asynchronous error.
void synchronize();

// Owning device allocation (cudaMalloc / cudaFree), move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return p_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }

  // Synchronous copies of `bytes` (<= bytes()) from/to host memory at byte offset `offset`.
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;
  void zero();

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Allocates a buffer of n elements of T and uploads them.
template <typename T>
DeviceBuffer to_device(const T* host, size_t n) {
  DeviceBuffer b(n * sizeof(T));
  if (n) b.upload(host, n * sizeof(T));
  return b;
}

// An HXQ weight resident on the device: codebook (256 f32), u8 indices [rows, cols] and the CSR
// sidecar (row_ptr has rows + 1 entries; empty buffers when there is no sidecar).
struct DeviceHxq {
  int64_t rows = 0, cols = 0, nnz = 0;
  DeviceBuffer codebook, indices, sc_row_ptr, sc_col, sc_delta;
};
// Uploads w (validates the sidecar like gemm_hxq: throws hxq::Error for decreasing row pointers
// or columns outside [0, cols)).
DeviceHxq upload_hxq(const HxqView& w);

enum class CudaAlgo {
  Auto,    // matvec kernel for T <= 8, tiled matmul otherwise
  Simple,  // one block per output (slow, obviously correct: the fallback)
  Matvec,  // force the matvec kernel (any T <= 8)
  Matmul,  // force the tiled matmul (any T)
  // Opt-in, not exact: tensor-core matmul with X and W rounded to TF32 (10-bit mantissa), fp32
  // accumulation (relative error per product <= ~2^-10; measured in tests/cuda_test.cpp).
  MatmulTf32,
};

// Y [T, w.rows] = X [T, w.cols] · Wᵀ (+ sidecar); X, Y device float32 row-major, not overlapping.
void cuda_gemm_hxq(const float* X, int64_t T, const DeviceHxq& w, float* Y, CudaAlgo algo = CudaAlgo::Auto,
                   void* stream = nullptr);

// Y [T, N] = X [T, K] · Wᵀ with W [N, K] BF16 (raw uint16 bits) on the device.
void cuda_gemm_bf16(const float* X, int64_t T, int64_t K, const uint16_t* W, int64_t N, float* Y,
                    CudaAlgo algo = CudaAlgo::Auto, void* stream = nullptr);

// Mamba2 SSD scan of one layer (all pointers on the device, float32, contiguous):
//   x [T][H][P], dt [T][H] (softplus'ed, clamped), A [H] (negative), B, C [T][G][N], D [H],
//   state [H][P][N] (in: initial state, out: state after step T-1), y [T][H][P].
//   S_t = exp(dt[t][h]·A[h])·S_{t-1} + dt[t][h]·x[t][h][p]·B[t][g][n],   g = h / (H / G),
//   y[t][h][p] = Σ_n S_t[h][p][n]·C[t][g][n] + D[h]·x[t][h][p].
struct SsdArgs {
  int64_t T = 0, H = 0, P = 0, N = 0, G = 1;
  const float* x = nullptr;
  const float* dt = nullptr;
  const float* A = nullptr;
  const float* B = nullptr;
  const float* C = nullptr;
  const float* D = nullptr;
  float* state = nullptr;
  float* y = nullptr;
};
enum class SsdAlgo {
  Auto,       // Recurrent for T <= 8, Chunked otherwise
  Recurrent,  // step kernel looped over t (decode; also the simple reference)
  Chunked,    // SSD chunked form, chunk 64
};
// Grow-only scratch memory for the chunked scan (reuse one across calls to avoid cudaMalloc).
class SsdWorkspace {
 public:
  float* get(size_t floats);  // valid until the next get()
 private:
  DeviceBuffer buf_;
};
// Throws hxq::Error for sizes that are negative, H not a multiple of G, or N > 1024.
// With ws == nullptr the chunked form allocates (and frees) its scratch itself.
void cuda_ssd_scan(const SsdArgs& a, SsdAlgo algo = SsdAlgo::Auto, SsdWorkspace* ws = nullptr,
                   void* stream = nullptr);
// Scratch floats the chunked scan needs for these sizes.
size_t ssd_workspace_floats(int64_t T, int64_t H, int64_t P, int64_t N);

// Device memory bandwidth, GB/s (1e9 bytes/s), median of `repeats` timed passes after a warm-up:
// a read-only kernel over `bytes` (16-byte loads, grid-stride, sum kept live) ...
double measure_read_bandwidth_gbps(size_t bytes = size_t(1) << 30, int repeats = 7);
// ... and cudaMemcpy device-to-device of `bytes` (counts read + write: 2·bytes per copy).
double measure_copy_bandwidth_gbps(size_t bytes = size_t(1) << 30, int repeats = 7);

// Timing with CUDA events on `stream`.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start(void* stream = nullptr);
  void stop(void* stream = nullptr);
  double elapsed_ms();  // waits for stop
 private:
  void* a_ = nullptr;
  void* b_ = nullptr;
};

// Streams and graphs for the benchmark: a stream of its own, and a captured sequence of launches
// replayed with one call (removes the host launch cost from the timing of microsecond kernels).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* get() const { return s_; }
  void sync();
 private:
  void* s_ = nullptr;
};
class Graph {
 public:
  Graph() = default;
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  // Captures what fn() launches on `stream` (fn must launch only on that stream).
  template <typename F>
  void capture(void* stream, F&& fn) {
    begin(stream);
    try {
      fn();
    } catch (...) {
      abort_capture(stream);
      throw;
    }
    end(stream);
  }
  void launch(void* stream);
  bool valid() const { return exec_ != nullptr; }
 private:
  void begin(void* stream);
  void end(void* stream);
  void abort_capture(void* stream) noexcept;
  void* exec_ = nullptr;
};

}  // namespace hxq::cuda
