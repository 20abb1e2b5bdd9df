// Internal: the per-instruction-set kernel tables behind gemm_dense / gemm_hxq and the
// measurement helpers (one table per *_avx2.cpp / *_avx512.cpp file, chosen at run time).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cpu_features.h"
#include "kernels/hxq_gemm.h"

namespace hxq::detail {

// Decode regime ("matvec": few rows of X, W streamed once). X is first rewritten into a
// per-ISA layout Xp (rows of decode_kp(K) floats, zero padded; the order of the K elements
// inside blocks is permuted to match how the kernel expands the weights).
// Prefill regime: X is packed into blocks of mr rows (pack_x: [k][mr], rows past T zero), W
// into panels of nr rows ([k][nr], rows past N zero), and micro() computes one mr x nr tile
// C (+)= A · B over kc steps, storing only the first m rows and n columns.
// Fast HXQ decode regime (AVX-512 VBMI + VNNI): X quantised to 16-bit integers per block of
// kQBlock columns, x ≈ x̂ = scale[t][b] · q, q = 256 · hi + lo with hi, lo int8 (|q| <= 32639),
// rows of kp = K rounded up to 64 bytes (zero padded). lanes[t][b][j] = 128 · Σ q over the
// columns c of block b with (c mod 64) / 4 == j (the int32 lane that VPDPBUSD adds them into);
// sum[t] = Σ_k x̂[t][k].
inline constexpr int64_t kQBlock = 1024;  // see the bounds in kernels_avx512.cpp
struct QuantX {
  int64_t T = 0, K = 0, kp = 0, nb = 0;
  int8_t* hi = nullptr;
  int8_t* lo = nullptr;
  float* scale = nullptr;   // [T][nb]
  int32_t* lanes = nullptr;  // [T][nb][16], 64-byte aligned
  double* sum = nullptr;    // [T]
  // The codebook's 16-bit form, cb[e] ≈ z + s · (256 · cb_hi[e] + cb_lo[e]) (set by quant_x).
  alignas(64) uint8_t cb_lo[256];
  alignas(64) uint8_t cb_hi[256];
  float z = 0, s = 0;
};

struct KernelSet {
  int64_t (*decode_kp)(int64_t K);
  void (*decode_prep_x)(const float* X, int64_t T, int64_t K, DType wdt, bool hxq, float* Xp);
  // Y[t, n] for t in [0, T), n in [n0, n1); Y has row stride ldy.
  void (*dense_decode)(const float* Xp, int64_t T, int64_t K, const void* W, DType wdt, int64_t n0,
                       int64_t n1, float* Y, int64_t ldy);
  // Same for HXQ, without the sidecar (the driver adds it).
  void (*hxq_decode)(const float* Xp, int64_t T, const HxqView& w, int64_t n0, int64_t n1, float* Y,
                     int64_t ldy);

  int mr, nr;
  void (*pack_x)(const float* X, int64_t ldx, int64_t m, int64_t K, float* dst);
  void (*dense_pack_w)(const void* W, DType wdt, int64_t K, int64_t n0, int64_t n, float* dst);
  void (*hxq_pack_w)(const HxqView& w, int64_t n0, int64_t n, float* dst);  // no sidecar
  void (*micro)(const float* A, const float* B, int64_t kc, float* C, int64_t ldc, int m, int n,
                bool accumulate);

  // Measurement helpers: a reduction over a buffer (bandwidth) and n iterations of independent
  // FMA chains, returning the floating-point operations done.
  uint64_t (*read_sum)(const void* p, size_t bytes);
  double (*fma_loop)(int64_t iters);

  // Fast HXQ decode (nullptr where the ISA has none). quant_x fills q from X and the codebook
  // (buffers sized by the caller) and returns false when X holds a non-finite value or the
  // codebook's range overflows (the caller then takes the exact path). hxq_decode_fast writes
  // Y[t, n] for n in [n0, n1), t < q.T <= 4, without the sidecar.
  bool (*hxq_quant_x)(const float* X, const float* codebook, QuantX& q);
  void (*hxq_decode_fast)(const QuantX& q, const HxqView& w, int64_t n0, int64_t n1, float* Y, int64_t ldy);
};

const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();

}  // namespace hxq::detail

#include "core/threadpool.h"
#include <memory>
#include <new>

namespace hxq::detail {

// A 64-byte aligned float scratch buffer (contents uninitialised).
struct AlignedFloats {
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<float[], Free> p;
  size_t n = 0;
  float* get(size_t want) {
    if (want > n) {
      p.reset(static_cast<float*>(::operator new[](want * sizeof(float), std::align_val_t(64))));
      n = want;
    }
    return p.get();
  }
};

// The kernel set of kernel_isa() (nullptr for Isa::Scalar).
const KernelSet* active_kernels();

// Whether T rows of X go through the decode (streaming) kernels rather than packed panels:
// always for T <= 8; up to T = 64 (dense) or 24 (HXQ, whose decode costs more per weight) while
// X stays in L2 (<= 512 KiB), where the streaming kernel measured faster than packing W. (HXQ v2
// with its fast kernels has its own limit, kHxq2FastDecodeMaxT in hxq2_gemm.h.)
// force_decode_max_t >= 0 replaces the rule by T <= force_decode_max_t (tests, benchmarks).
inline int64_t force_decode_max_t = -1;
inline bool use_decode(int64_t T, int64_t K, bool hxq) {
  if (force_decode_max_t >= 0) return T <= force_decode_max_t;
  return T <= 8 || (T <= (hxq ? 24 : 64) && T * K * 4 <= (int64_t(512) << 10));
}

// Calls fn(begin, end) on chunks of `chunk` indices covering [0, n), handed out to the pool's
// threads through an atomic counter (a thread that is descheduled on a busy machine does not
// hold back the others, as a static split would). Single chunk: runs on the caller.
void dynamic_for(int64_t n, int64_t chunk, FnRef<void(int64_t, int64_t)> fn);

// Decode-regime driver: prepares X, splits rows of W over the pool and calls
// rows(Xp, n0, n1) for each range (which writes Y[:, n0:n1]).
void decode_driver(const KernelSet& ks, const float* X, int64_t T, int64_t K, DType wdt, bool hxq,
                   int64_t N, int64_t row_bytes,
                   FnRef<void(const float*, int64_t, int64_t)> rows);

// Prefill-regime driver: packs X, splits (panel of nr rows of W) x (group of mr-row blocks of X)
// tasks over the pool; pack_w(n0, n, dst) writes the [K][nr] float panel of rows n0 .. n0+n-1.
void prefill_driver(const KernelSet& ks, const float* X, int64_t T, int64_t K, int64_t N,
                    FnRef<void(int64_t, int64_t, float*)> pack_w, float* Y);

}  // namespace hxq::detail
