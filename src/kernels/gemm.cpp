#include "kernels/gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/dispatch.h"

namespace hxq {

namespace detail {

const KernelSet* active_kernels() {
  switch (kernel_isa()) {
    case Isa::Avx512: return &kernels_avx512();
    case Isa::Avx2: return &kernels_avx2();
    case Isa::Scalar: return nullptr;
  }
  return nullptr;
}

void dynamic_for(int64_t n, int64_t chunk, FnRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  ThreadPool& tp = pool();
  if (n <= chunk || tp.size() == 1) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int64_t workers = std::min<int64_t>(tp.size(), nchunks);
  tp.run_on_all([&](int t, int) {
    if (t >= workers) return;
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= nchunks) return;
      fn(c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

void decode_driver(const KernelSet& ks, const float* X, int64_t T, int64_t K, DType wdt, bool hxq,
                   int64_t N, int64_t row_bytes,
                   FnRef<void(const float*, int64_t, int64_t)> rows) {
  thread_local AlignedFloats xbuf;
  const int64_t kp = ks.decode_kp(K);
  float* Xp = xbuf.get(size_t(std::max<int64_t>(1, T * kp)));
  ks.decode_prep_x(X, T, K, wdt, hxq, Xp);
  // At least ~256 KiB of weights per task so that waking a worker pays off; multiples of 16 rows.
  int64_t grain = std::max<int64_t>(16, (int64_t(256) << 10) / std::max<int64_t>(1, row_bytes));
  grain = (grain + 15) / 16 * 16;
  dynamic_for(N, grain, [&](int64_t n0, int64_t n1) { rows(Xp, n0, n1); });
}

void prefill_driver(const KernelSet& ks, const float* X, int64_t T, int64_t K, int64_t N,
                    FnRef<void(int64_t, int64_t, float*)> pack_w, float* Y) {
  const int64_t MR = ks.mr, NR = ks.nr;
  // k-block of the packed path: B slice kc x nr floats (64 KiB at nr = 32, from L2); larger
  // blocks measured better than L1-sized ones (fewer passes over C, fewer calls).
  const int64_t KC = 512;
  const int64_t ntb = (T + MR - 1) / MR, npanels = (N + NR - 1) / NR;
  ThreadPool& tp = pool();
  const int nthreads = tp.size();

  thread_local AlignedFloats xbuf;
  float* Xp = xbuf.get(size_t(ntb * K * MR));
  dynamic_for(ntb, std::max<int64_t>(1, 65536 / (MR * K)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      ks.pack_x(X + b * MR * K, K, std::min(MR, T - b * MR), K, Xp + b * K * MR);
  });

  // Few panels (small N): also split the X blocks into groups so every thread has work.
  int64_t groups = 1;
  if (npanels < 4 * nthreads) groups = std::min(ntb, (4 * nthreads + npanels - 1) / npanels);
  const int64_t tasks = npanels * groups;
  // A thread keeps its last packed panel (tagged with this call's id) for the next task of the
  // same panel.
  static std::atomic<uint64_t> calls{0};
  const uint64_t call = ++calls;
  dynamic_for(tasks, 1, [&](int64_t i0, int64_t i1) {
    thread_local AlignedFloats wbuf;
    thread_local uint64_t packed_call = 0;
    thread_local int64_t packed_panel = -1;
    float* B = wbuf.get(size_t(K * NR));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t p = i / groups, g = i % groups;
      const int64_t n0 = p * NR, n = std::min(NR, N - n0);
      if (packed_call != call || packed_panel != p) {
        packed_call = 0;  // a throwing pack_w leaves no stale tag
        pack_w(n0, n, B);
        packed_call = call;
        packed_panel = p;
      }
      const int64_t tb0 = ntb * g / groups, tb1 = ntb * (g + 1) / groups;
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        for (int64_t tb = tb0; tb < tb1; ++tb) {
          const int64_t t0 = tb * MR;
          ks.micro(Xp + tb * K * MR + k0 * MR, B + k0 * NR, kc, Y + t0 * N + n0, N,
                   int(std::min(MR, T - t0)), int(n), k0 > 0);
        }
      }
    }
  });
}

}  // namespace detail

float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

namespace {

// The portable reference: converts 16 rows of W at a time to float32, then plain dot products.
void gemm_dense_scalar(const float* X, int64_t T, int64_t K, const void* W, DType wdt, int64_t N, float* Y) {
  const size_t es = dtype_size(wdt);
  const int64_t RB = 16;
  const int64_t nblocks = (N + RB - 1) / RB;
  pool().parallel_for(nblocks, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> wb(size_t(RB * K));
    for (int64_t b = b0; b < b1; ++b) {
      int64_t r0 = b * RB, r1 = std::min(N, r0 + RB);
      to_f32(wdt, static_cast<const char*>(W) + size_t(r0 * K) * es, wb.data(), size_t((r1 - r0) * K));
      for (int64_t t = 0; t < T; ++t) {
        const float* x = X + t * K;
        float* y = Y + t * N;
        for (int64_t r = r0; r < r1; ++r) y[r] = dot_f32(x, wb.data() + (r - r0) * K, K);
      }
    }
  });
}

}  // namespace

void gemm_dense(const float* X, int64_t T, int64_t K, const void* W, DType wdt, int64_t N, float* Y) {
  if (wdt != DType::F32 && wdt != DType::F16 && wdt != DType::BF16)
    fail("gemm: unsupported weight dtype {}", dtype_name(wdt));
  if (T < 0 || K < 0 || N < 0) fail("gemm: negative shape T={} K={} N={}", T, K, N);
  if (T == 0 || N == 0) return;
  if (K == 0) {
    std::fill(Y, Y + T * N, 0.0f);
    return;
  }
  const detail::KernelSet* ks = detail::active_kernels();
  if (!ks) return gemm_dense_scalar(X, T, K, W, wdt, N, Y);
  const int64_t es = int64_t(dtype_size(wdt));
  if (detail::use_decode(T, K, false)) {
    detail::decode_driver(*ks, X, T, K, wdt, false, N, K * es, [&](const float* Xp, int64_t n0, int64_t n1) {
      ks->dense_decode(Xp, T, K, W, wdt, n0, n1, Y, N);
    });
    return;
  }
  detail::prefill_driver(*ks, X, T, K, N, [&](int64_t n0, int64_t n, float* dst) {
    ks->dense_pack_w(W, wdt, K, n0, n, dst);
  }, Y);
}

}  // namespace hxq
