// Host emulation of the CUDA execution model, so that the kernel headers (cuda_*_kernels.cuh) can
// be run on a CPU to check their index math, tails and barriers without a GPU (tests only).
//
// Include this header first (it defines HXQ_CUDA_EMULATION and the CUDA keywords as macros:
// threadIdx, __shared__ = static, ...), then the kernel headers, and launch with emu::launch.
// Every CUDA thread of a block is a real thread (a persistent pool, up to 1024), blocks run one
// after another, __syncthreads is a std::barrier over the block, __shfl_xor_sync exchanges through
// a per-warp array between two warp barriers. Dynamic shared memory is filled with NaN before each
// block so that reads of unwritten entries show up. Kernels using wmma are not supported.
#pragma once
#define HXQ_CUDA_EMULATION 1
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct uint4 {
  uint32_t x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};
struct float2 {
  float x, y;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

namespace hxq::cuda::emu {

inline thread_local dim3 t_idx, b_idx;
inline dim3 b_dim, g_dim;
inline std::barrier<>* block_bar = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
inline std::vector<float> warp_vals;
alignas(64) inline unsigned char dyn_smem[256 * 1024];

// Persistent worker threads; run_block(nt, fn) runs fn on workers 0..nt-1 and waits for them.
class BlockRunner {
 public:
  ~BlockRunner() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    start_.notify_all();
    for (auto& t : th_) t.join();
  }
  void run_block(unsigned nt, dim3 bidx, const std::function<void()>& fn) {
    while (th_.size() < nt) th_.emplace_back([this, t = unsigned(th_.size())] { worker(t); });
    std::unique_lock<std::mutex> lk(m_);
    fn_ = &fn;
    bidx_ = bidx;
    active_ = nt;
    done_ = 0;
    ++gen_;
    start_.notify_all();
    done_cv_.wait(lk, [&] { return done_ == active_; });
  }

 private:
  void worker(unsigned t) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      start_.wait(lk, [&] { return stop_ || gen_ != seen; });
      if (stop_) return;
      seen = gen_;
      if (t >= active_) continue;
      const std::function<void()>* fn = fn_;
      const dim3 bidx = bidx_;
      lk.unlock();
      t_idx = dim3(t, 0, 0);
      b_idx = bidx;
      (*fn)();
      warp_bars[t >> 5]->arrive_and_drop();  // a finished thread no longer takes part
      block_bar->arrive_and_drop();
      lk.lock();
      if (++done_ == active_) done_cv_.notify_all();
    }
  }
  std::vector<std::thread> th_;
  std::mutex m_;
  std::condition_variable start_, done_cv_;
  uint64_t gen_ = 0;
  unsigned active_ = 0, done_ = 0;
  bool stop_ = false;
  const std::function<void()>* fn_ = nullptr;
  dim3 bidx_;
};

inline BlockRunner& runner() {
  static BlockRunner r;
  return r;
}

// Runs fn() as a grid of 1-D blocks of block.x (<= 1024) threads; `smem` bytes of dynamic shared
// memory (<= 256 KiB).
inline void launch(dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn) {
  g_dim = grid;
  b_dim = block;
  const unsigned nt = block.x;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        const float nanv = std::nanf("");
        for (size_t i = 0; i < smem / 4 && i < sizeof(dyn_smem) / 4; ++i) std::memcpy(dyn_smem + 4 * i, &nanv, 4);
        std::barrier<> bar(nt);
        block_bar = &bar;
        warp_bars.clear();
        for (unsigned w = 0; w < (nt + 31) / 32; ++w)
          warp_bars.push_back(std::make_unique<std::barrier<>>(std::min<unsigned>(32, nt - 32 * w)));
        warp_vals.assign(size_t((nt + 31) / 32) * 32, 0.0f);
        runner().run_block(nt, dim3(bx, by, bz), fn);
      }
}

}  // namespace hxq::cuda::emu

#define threadIdx ::hxq::cuda::emu::t_idx
#define blockIdx ::hxq::cuda::emu::b_idx
#define blockDim ::hxq::cuda::emu::b_dim
#define gridDim ::hxq::cuda::emu::g_dim
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define HXQ_UNROLL
#define HXQ_KERN_NS kern_emu
#define HXQ_EXTERN_SHARED(T, name) T* name = reinterpret_cast<T*>(::hxq::cuda::emu::dyn_smem)

inline void __syncthreads() { ::hxq::cuda::emu::block_bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int off) {
  namespace e = ::hxq::cuda::emu;
  const unsigned w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  e::warp_vals[w * 32 + lane] = v;
  e::warp_bars[w]->arrive_and_wait();
  const float r = e::warp_vals[w * 32 + (lane ^ unsigned(off))];
  e::warp_bars[w]->arrive_and_wait();
  return r;
}
template <class T>
T __ldg(const T* p) {
  return *p;
}
template <class T>
T __ldcs(const T* p) {
  return *p;
}
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
