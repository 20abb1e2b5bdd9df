#include "kernels/hxq2_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/cpu_features.h"
#include "kernels/dispatch.h"
#include "kernels/hxq_gemm.h"
#include "kernels/sidecar.h"

namespace hxq {

namespace detail {
// hxq2_avx2.cpp
void hxq2_rows_avx2(const float* X, int64_t T, const Hxq2View& w, int64_t n0, int64_t n1, float* Y, int64_t ldy);

void hxq2_quant_codebook(const Hxq2View& w, Hxq2QuantX& q) {
  const int n = 1 << w.bits;
  double m = 0;
  for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(double(w.codebook[i])));
  for (int i = 0; i < 256; ++i)
    q.cbq[i] = i < n && m > 0 ? int16_t(std::lrint(double(w.codebook[i]) * 16383.0 / m)) : int16_t(0);
  q.cs = float(m / 16383.0);
}

bool hxq2_quant_x(const float* X, int64_t T, int64_t K, Hxq2QuantX& q, int chunk, bool nibble_lanes) {
  if (chunk != 32 && chunk != 64) fail("hxq2_quant_x: chunk {} (32 or 64)", chunk);
  q.nibble_lanes = chunk == 64 && nibble_lanes;
  q.T = T;
  q.K = K;
  q.chunk = chunk;
  q.K32 = (K + chunk - 1) / chunk * chunk;
  // Lane of column j of a chunk. chunk 32: j (0..7, 24..31), j − 8 (16..23), j + 8 (8..15);
  // chunk 64: column 16·blk + r goes to lane 8L + r (r < 8) or 32 + 8L + r − 8 (r >= 8), L the
  // 128-bit lane of block blk.
  static constexpr int kLane[2][4] = {{0, 1, 2, 3}, {0, 2, 1, 3}};
  int pos[64];
  for (int j = 0; j < chunk; ++j)
    pos[j] = chunk == 32 ? (j < 8 || j >= 24 ? j : j < 16 ? j + 8 : j - 8)
                         : (j % 16 < 8 ? 0 : 32) + 8 * kLane[q.nibble_lanes][j / 16] + j % 8;
  const int64_t nb = (K + kHxq2XBlock - 1) / kHxq2XBlock;
  q.q.assign(size_t(T * q.K32), 0);
  q.xs.assign(size_t(T * nb), 0.0f);
  // On the caller's thread before the rows are split: float arithmetic in loops the compiler
  // vectorises (measured 5 % of TinyLlama's 8-bit decode time with the former double / lrint
  // loop). Rounding is half away from zero: |error| <= xs / 2 as hxq2_gemm.h states.
  float r[kHxq2XBlock];
  for (int64_t t = 0; t < T; ++t) {
    const float* x = X + t * K;
    int16_t* dst = q.q.data() + t * q.K32;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * kHxq2XBlock, n = std::min(K, k0 + kHxq2XBlock) - k0;
      float m = 0;
      bool bad = false;
      for (int64_t k = 0; k < n; ++k) {
        const float a = std::fabs(x[k0 + k]);
        bad |= !(a <= std::numeric_limits<float>::max());  // Inf or NaN
        m = std::max(m, a);
      }
      if (bad) return false;
      q.xs[size_t(t * nb + b)] = float(double(m) / 16383.0);
      if (m == 0) continue;
      const float inv = float(16383.0 / double(m));
      for (int64_t k = 0; k < n; ++k) {
        const float v = x[k0 + k] * inv;
        r[k] = std::min(16383.0f, std::max(-16383.0f, v + std::copysign(0.5f, v)));
      }
      for (int64_t k = 0; k < n; k += chunk) {
        const int64_t m2 = std::min<int64_t>(chunk, n - k);
        int16_t* d = dst + k0 + k;
        for (int64_t j = 0; j < m2; ++j) d[pos[j]] = int16_t(r[k + j]);  // truncation: rounded above
      }
    }
  }
  return true;
}

}  // namespace detail

namespace {
// The AVX-512 kernels run (not merely exist) and the CPU has VNNI: hxq2_avx512.cpp's fast kernel.
bool avx512_fast() { return kernel_isa() == Isa::Avx512 && cpu_features().avx512vnni; }
}  // namespace

bool hxq2_fast_available(int bits) {
  if (bits == 8) return avx512_fast();
  return (bits == 4 || bits == 5 || bits == 6) && detail::active_kernels() != nullptr;
}

void hxq2_pack_chunk(const uint8_t* idx, int bits, uint8_t* out) {
  if (bits == 8) {
    std::memcpy(out, idx, 32);
    return;
  }
  for (int j = 0; j < 16; ++j) out[j] = uint8_t((idx[j] & 15) | (idx[j + 16] & 15) << 4);
  if (bits == 5) {
    uint32_t h = 0;
    for (int j = 0; j < 32; ++j) h |= uint32_t((idx[j] >> 4) & 1) << j;
    for (int i = 0; i < 4; ++i) out[16 + i] = uint8_t(h >> (8 * i));
  } else if (bits == 6) {
    uint64_t h = 0;
    for (int j = 0; j < 32; ++j) h |= uint64_t((idx[j] >> 4) & 3) << (2 * j);
    for (int i = 0; i < 8; ++i) out[16 + i] = uint8_t(h >> (8 * i));
  }
}

void hxq2_unpack_chunk(const uint8_t* in, int bits, uint8_t* idx) {
  if (bits == 8) {
    std::memcpy(idx, in, 32);
    return;
  }
  for (int j = 0; j < 16; ++j) {
    idx[j] = in[j] & 15;
    idx[j + 16] = in[j] >> 4;
  }
  if (bits == 5) {
    uint32_t h = 0;
    for (int i = 0; i < 4; ++i) h |= uint32_t(in[16 + i]) << (8 * i);
    for (int j = 0; j < 32; ++j) idx[j] |= uint8_t(((h >> j) & 1) << 4);
  } else if (bits == 6) {
    uint64_t h = 0;
    for (int i = 0; i < 8; ++i) h |= uint64_t(in[16 + i]) << (8 * i);
    for (int j = 0; j < 32; ++j) idx[j] |= uint8_t(((h >> (2 * j)) & 3) << 4);
  }
}

void hxq2_pack_tail(const uint8_t* idx, int64_t n, int bits, uint8_t* out) {
  std::memset(out, 0, size_t((n * bits + 7) / 8));
  for (int64_t j = 0; j < n; ++j)
    for (int b = 0; b < bits; ++b)
      if ((idx[j] >> b) & 1) out[(j * bits + b) >> 3] |= uint8_t(1u << ((j * bits + b) & 7));
}

void hxq2_unpack_tail(const uint8_t* in, int64_t n, int bits, uint8_t* idx) {
  std::memset(idx, 0, 32);
  for (int64_t j = 0; j < n; ++j)
    for (int b = 0; b < bits; ++b)
      if ((in[(j * bits + b) >> 3] >> ((j * bits + b) & 7)) & 1) idx[j] |= uint8_t(1u << b);
}

void hxq2_decode_row(const Hxq2View& w, int64_t r, float* out) {
  const uint8_t* row = w.indices + r * w.row_bytes();
  const uint8_t* codes = w.codes + r * w.groups();
  uint8_t idx[32];
  for (int64_t ch = 0; ch * 32 < w.cols; ++ch) {
    const int64_t n = std::min<int64_t>(32, w.cols - ch * 32);
    if (n == 32) hxq2_unpack_chunk(row + ch * 4 * w.bits, w.bits, idx);
    else hxq2_unpack_tail(row + ch * 4 * w.bits, n, w.bits, idx);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = ch * 32 + j;
      out[c] = w.scale_lut[codes[c / w.group] & 63] * w.codebook[idx[j]];
    }
  }
}

namespace {

void check_view(const Hxq2View& w) {
  if (w.rows < 0 || w.cols < 0) fail("gemm_hxq2: negative shape [{}, {}]", w.rows, w.cols);
  if (w.bits != 4 && w.bits != 5 && w.bits != 6 && w.bits != 8) fail("gemm_hxq2: unsupported bit width {}", w.bits);
  if (w.group != 16 && w.group != 32) fail("gemm_hxq2: unsupported group size {}", w.group);
  if (w.rows > 0 && w.cols > 0 && (!w.codebook || !w.indices || !w.codes || !w.scale_lut))
    fail("gemm_hxq2: view without codebook, indices or scales");
}

bool finite_codebook(const Hxq2View& w) {
  for (int i = 0; i < (1 << w.bits); ++i)
    if (!std::isfinite(w.codebook[i])) return false;
  return true;
}

using detail::add_sidecar;
using detail::sidecar_col;
using detail::sidecar_range;

// Rows n0..n1 decoded one at a time, each dotted with the T rows of X (16 partial sums per row).
void reference_rows(const float* X, int64_t T, const Hxq2View& w, int64_t n0, int64_t n1, float* Y) {
  const int64_t K = w.cols, N = w.rows;
  std::vector<float> wr(static_cast<size_t>(K));
  for (int64_t r = n0; r < n1; ++r) {
    hxq2_decode_row(w, r, wr.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* x = X + t * K;
      float acc[16] = {};
      int64_t k = 0;
      for (; k + 16 <= K; k += 16)
        for (int j = 0; j < 16; ++j) acc[j] += x[k + j] * wr[size_t(k + j)];
      float s = 0;
      for (; k < K; ++k) s += x[k] * wr[size_t(k)];
      for (int j = 0; j < 16; ++j) s += acc[j];
      Y[t * N + r] = s;
    }
  }
  add_sidecar(X, T, w, n0, n1, Y);
}

}  // namespace

void gemm_hxq2_reference(const float* X, int64_t T, const Hxq2View& w, float* Y) {
  check_view(w);
  if (T <= 0 || w.rows == 0) return;
  if (w.cols == 0) {
    std::fill(Y, Y + T * w.rows, 0.0f);
    return;
  }
  pool().parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) { reference_rows(X, T, w, r0, r1, Y); }, 16);
}

void gemm_hxq2(const float* X, int64_t T, const Hxq2View& w, float* Y) {
  check_view(w);
  const int64_t K = w.cols, N = w.rows;
  if (T < 0) fail("gemm_hxq2: negative T={}", T);
  if (T == 0 || N == 0) return;
  if (K == 0) {
    std::fill(Y, Y + T * N, 0.0f);
    return;
  }
  const detail::KernelSet* ks = detail::active_kernels();
  if (!ks) return gemm_hxq2_reference(X, T, w, Y);
  // Every SIMD kernel set implies AVX2 + FMA: the v2 kernels of hxq2_avx2.cpp serve both.
  const bool fast = hxq_math() == HxqMath::Fast && hxq2_fast_available(w.bits) && finite_codebook(w);
  // With the fast kernels, blocks of 8 rows of X beat the float prefill panels up to ~64 rows
  // whatever K (`hxq bench --prompt P`, 2 threads, prefill tok/s blocks / panels: TinyLlama-1.1B
  // v2-8 P = 32 73-77 / 49-52, P = 64 72 / 64, P = 128 76 / 77; Mamba2-370m v2-8 P = 32
  // 158-181 / 137-141, P = 128 186 / 205).
  const bool decode =
      fast && detail::force_decode_max_t < 0 ? T <= kHxq2FastDecodeMaxT : detail::use_decode(T, K, true);
  if (decode) {
    // At least ~256 KiB of weights per task, multiples of 16 rows (as the other decode drivers).
    int64_t grain = std::max<int64_t>(16, (int64_t(256) << 10) / std::max<int64_t>(1, w.row_bytes()));
    grain = (grain + 15) / 16 * 16;
    thread_local detail::Hxq2QuantX qx_buf;
    // A named reference: a lambda does not capture a thread_local (the pool's threads would see
    // their own, empty instance).
    const detail::Hxq2QuantX& qx = qx_buf;
    // The AVX-512 kernel where it runs, except at 4 bits where AVX2's is as fast (one core,
    // 8512 x 2048 from memory, T = 1, Gweights/s AVX-512 / AVX2: 8 bits 18.3 / 4.1 (exact),
    // 6 bits 13.0 / 8.6, 5 bits 14.9 / 14.0, 4 bits 20.6 / 21.2).
    const bool wide = avx512_fast() && w.bits != 4;
    // The fast kernels take up to 8 rows of X per pass over W; more rows (a short prompt) run in
    // blocks of 8. Each row is quantised and summed on its own, so a row's result does not depend
    // on the rows beside it. (TinyLlama-1.1B v2-8, `hxq bench --prompt 16`: the exact path this
    // replaced above 8 rows took 800 ms for 16 tokens against 121 ms for 8.)
    int64_t t0 = 0;
    if (fast) {
      detail::hxq2_quant_codebook(w, qx_buf);  // once: hxq2_quant_x leaves it alone
      for (; t0 < T; t0 += 8) {
        const int64_t tb = std::min<int64_t>(8, T - t0);
        if (!detail::hxq2_quant_x(X + t0 * K, tb, K, qx_buf, wide ? 64 : 32, w.bits < 8)) break;
        const float* Xb = X + t0 * K;
        float* Yb = Y + t0 * N;
        detail::dynamic_for(N, grain, [&](int64_t n0, int64_t n1) {
          if (wide) detail::hxq2_fast_rows_avx512(qx, w, n0, n1, Yb, N);
          else detail::hxq2_fast_rows_avx2(qx, w, n0, n1, Yb, N);
          add_sidecar(Xb, tb, w, n0, n1, Yb);
        });
      }
      if (t0 >= T) return;
    }
    // The exact path (also the rows from a block of X holding a non-finite value on).
    X += t0 * K;
    Y += t0 * N;
    T -= t0;
    detail::dynamic_for(N, grain, [&](int64_t n0, int64_t n1) {
      detail::hxq2_rows_avx2(X, T, w, n0, n1, Y, N);
      add_sidecar(X, T, w, n0, n1, Y);
    });
    return;
  }
  // Prefill: decoded rows (sidecar included) transposed into the [K][nr] panels of the micro-kernel.
  const int64_t NR = ks->nr;
  detail::prefill_driver(*ks, X, T, K, N, [&](int64_t n0, int64_t n, float* dst) {
    detail::hxq2_pack_panel_avx2(w, n0, n, NR, dst);
  }, Y);
}

}  // namespace hxq
