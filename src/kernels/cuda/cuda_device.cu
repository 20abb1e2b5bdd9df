// CUDA runtime glue: availability, device properties, buffers, timers, streams/graphs and the
// device-bandwidth probes used as the benchmarks' baseline.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_util.cuh"

namespace hxq::cuda {

namespace detail {

void cuda_fail(const char* what, cudaError_t e) {
  (void)cudaGetLastError();  // clear a non-sticky error so that later calls can proceed
  throw Error(std::string("cuda: ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void fail_msg(const char* what, const char* msg) { throw Error(std::string("cuda: ") + what + ": " + msg); }

void require_device(const char* what) {
  if (!cuda_available()) fail_msg(what, ("no usable CUDA device: " + cuda_unavailable_reason()).c_str());
}

int sm_count() {
  static const int n = [] {
    int v = 0;
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0), "cudaDeviceGetAttribute(SM count)");
    return std::max(v, 1);
  }();
  return n;
}

}  // namespace detail

using detail::check;

namespace {
struct Availability {
  bool ok = false;
  std::string reason;
};
const Availability& availability() {
  static const Availability a = [] {
    Availability r;
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      r.reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
      int rt = 0, drv = 0;
      (void)cudaRuntimeGetVersion(&rt);
      if (cudaDriverGetVersion(&drv) == cudaSuccess)
        r.reason += "; runtime " + std::to_string(rt) + ", driver " + std::to_string(drv);
      (void)cudaGetLastError();
      return r;
    }
    r.ok = n > 0;
    if (!r.ok) r.reason = "no CUDA device";
    return r;
  }();
  return a;
}
}  // namespace

bool cuda_available() { return availability().ok; }
std::string cuda_unavailable_reason() { return availability().reason; }

DeviceInfo device_info() {
  detail::require_device("device_info");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  DeviceInfo d;
  d.name = p.name;
  d.sm_count = p.multiProcessorCount;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.total_mem = p.totalGlobalMem;
  d.l2_bytes = size_t(p.l2CacheSize);
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryClockRate, 0) == cudaSuccess) d.mem_clock_khz = v;
  else (void)cudaGetLastError();
  v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrGlobalMemoryBusWidth, 0) == cudaSuccess) d.mem_bus_bits = v;
  else (void)cudaGetLastError();
  if (d.mem_clock_khz > 0 && d.mem_bus_bits > 0)
    d.theoretical_bw_gbps = 2.0 * double(d.mem_clock_khz) * 1e3 * double(d.mem_bus_bits) / 8.0 / 1e9;
  return d;
}

std::string device_summary() {
  const DeviceInfo d = device_info();
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s, sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MiB, theoretical %.0f GB/s", d.name.c_str(),
                d.cc_major, d.cc_minor, d.sm_count, double(d.total_mem) / double(1 << 30),
                double(d.l2_bytes) / double(1 << 20), d.theoretical_bw_gbps);
  return buf;
}

void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

// ---- DeviceBuffer ----

DeviceBuffer::DeviceBuffer(size_t bytes) {
  detail::require_device("cudaMalloc");
  if (bytes == 0) return;
  check(cudaMalloc(&p_, bytes), "cudaMalloc");
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() {
  if (p_) (void)cudaFree(p_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) (void)cudaFree(p_);
    p_ = std::exchange(o.p_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset > bytes_ || bytes > bytes_ - offset) detail::fail_msg("upload", "copy outside the buffer");
  if (bytes == 0) return;
  check(cudaMemcpy(static_cast<char*>(p_) + offset, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(H2D)");
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset > bytes_ || bytes > bytes_ - offset) detail::fail_msg("download", "copy outside the buffer");
  if (bytes == 0) return;
  check(cudaMemcpy(host, static_cast<const char*>(p_) + offset, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(D2H)");
}

void DeviceBuffer::zero() {
  if (bytes_) check(cudaMemset(p_, 0, bytes_), "cudaMemset");
}

DeviceHxq upload_hxq(const HxqView& w) {
  if (w.rows < 0 || w.cols < 0) detail::fail_msg("upload_hxq", "negative shape");
  if (!w.codebook || (w.rows * w.cols > 0 && !w.indices)) detail::fail_msg("upload_hxq", "null codebook or indices");
  // Validate on the host first (works without a device), then upload.
  int64_t nnz = 0;
  if (w.sc_row_ptr) {
    const int64_t* rp = w.sc_row_ptr;
    if (rp[0] < 0) detail::fail_msg("upload_hxq", "sidecar row pointer is negative");
    for (int64_t r = 0; r < w.rows; ++r)
      if (rp[r + 1] < rp[r]) detail::fail_msg("upload_hxq", "sidecar row pointers decrease");
    nnz = rp[w.rows];
    if (nnz > 0 && (!w.sc_col || !w.sc_delta)) detail::fail_msg("upload_hxq", "null sidecar arrays");
    for (int64_t e = rp[0]; e < nnz; ++e)
      if (w.sc_col[e] < 0 || w.sc_col[e] >= w.cols) detail::fail_msg("upload_hxq", "sidecar column outside the row");
  }
  DeviceHxq d;
  d.rows = w.rows;
  d.cols = w.cols;
  d.codebook = to_device(w.codebook, 256);
  d.indices = to_device(w.indices, size_t(w.rows * w.cols));
  if (w.sc_row_ptr) {
    const int64_t* rp = w.sc_row_ptr;
    d.nnz = nnz;
    d.sc_row_ptr = to_device(rp, size_t(w.rows + 1));
    if (nnz > 0) {
      d.sc_col = to_device(w.sc_col, size_t(nnz));
      d.sc_delta = to_device(w.sc_delta, size_t(nnz));
    }
  }
  return d;
}

// ---- timers, streams, graphs ----

EventTimer::EventTimer() {
  detail::require_device("cudaEventCreate");
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreate(&a), "cudaEventCreate");
  if (cudaError_t e = cudaEventCreate(&b); e != cudaSuccess) {
    (void)cudaEventDestroy(a);
    detail::cuda_fail("cudaEventCreate", e);
  }
  a_ = a;
  b_ = b;
}
EventTimer::~EventTimer() {
  if (a_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(a_));
  if (b_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(b_));
}
void EventTimer::start(void* s) { check(cudaEventRecord(static_cast<cudaEvent_t>(a_), detail::as_stream(s)), "cudaEventRecord"); }
void EventTimer::stop(void* s) { check(cudaEventRecord(static_cast<cudaEvent_t>(b_), detail::as_stream(s)), "cudaEventRecord"); }
double EventTimer::elapsed_ms() {
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(b_)), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a_), static_cast<cudaEvent_t>(b_)), "cudaEventElapsedTime");
  return double(ms);
}

Stream::Stream() {
  detail::require_device("cudaStreamCreate");
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  s_ = s;
}
Stream::~Stream() {
  if (s_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(s_));
}
void Stream::sync() { check(cudaStreamSynchronize(static_cast<cudaStream_t>(s_)), "cudaStreamSynchronize"); }

Graph::~Graph() {
  if (exec_) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
}
void Graph::begin(void* s) {
  if (exec_) {
    (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
    exec_ = nullptr;
  }
  check(cudaStreamBeginCapture(detail::as_stream(s), cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
}
void Graph::end(void* s) {
  cudaGraph_t g = nullptr;
  check(cudaStreamEndCapture(detail::as_stream(s), &g), "cudaStreamEndCapture");
  cudaGraphExec_t ex = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&ex, g, 0);
  (void)cudaGraphDestroy(g);
  check(e, "cudaGraphInstantiate");
  exec_ = ex;
}
void Graph::abort_capture(void* s) noexcept {
  cudaGraph_t g = nullptr;
  if (cudaStreamEndCapture(detail::as_stream(s), &g) == cudaSuccess && g) (void)cudaGraphDestroy(g);
  (void)cudaGetLastError();
}
void Graph::launch(void* s) {
  if (!exec_) detail::fail_msg("cudaGraphLaunch", "no captured graph");
  check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), detail::as_stream(s)), "cudaGraphLaunch");
}

// ---- bandwidth probes ----

namespace {

// Reads n 16-byte words (4 independent loads in flight per thread per iteration); the XOR of
// everything read is stored only if it equals a value a zeroed buffer cannot produce, so the
// loads cannot be removed and nothing is written in practice.
__global__ void read_kernel(const uint4* __restrict__ p, size_t n, unsigned* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  unsigned acc = 0;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
                d = __ldcs(p + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    const uint4 a = __ldcs(p + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

double measure_read_bandwidth_gbps(size_t bytes, int repeats) {
  detail::require_device("measure_read_bandwidth_gbps");
  bytes = std::max<size_t>(bytes & ~size_t(15), 1 << 20);
  DeviceBuffer buf(bytes), sink(64);
  buf.zero();
  sink.zero();
  const size_t n = bytes / 16;
  const int grid = detail::sm_count() * 8, block = 256;
  EventTimer tm;
  std::vector<double> rates;
  for (int r = -1; r < std::max(repeats, 1); ++r) {
    tm.start();
    read_kernel<<<grid, block>>>(buf.as<uint4>(), n, sink.as<unsigned>());
    detail::check_launch("read_kernel");
    tm.stop();
    const double ms = tm.elapsed_ms();
    if (r >= 0 && ms > 0) rates.push_back(double(bytes) / (ms * 1e-3) / 1e9);
  }
  return median(rates);
}

double measure_copy_bandwidth_gbps(size_t bytes, int repeats) {
  detail::require_device("measure_copy_bandwidth_gbps");
  bytes = std::max<size_t>(bytes & ~size_t(15), 1 << 20);
  DeviceBuffer a(bytes), b(bytes);
  a.zero();
  EventTimer tm;
  std::vector<double> rates;
  for (int r = -1; r < std::max(repeats, 1); ++r) {
    tm.start();
    check(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, nullptr), "cudaMemcpyAsync(D2D)");
    tm.stop();
    const double ms = tm.elapsed_ms();
    if (r >= 0 && ms > 0) rates.push_back(2.0 * double(bytes) / (ms * 1e-3) / 1e9);
  }
  return median(rates);
}

}  // namespace hxq::cuda
