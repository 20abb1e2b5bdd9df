#include "models/blocks.h"

#include <algorithm>
#include <cstring>

#include "core/threadpool.h"
#include "models/linear.h"
#include "kernels/ssd.h"

namespace hxq {

namespace {

constexpr int64_t kMinTaskFloats = int64_t(1) << 14;

// exp(x) for x <= 0 (softmax after subtracting the maximum), written so that loops over it
// vectorise: x = k ln2 + f with |f| <= ln2/2, exp(f) by its degree-7 Taylor polynomial (remainder
// < 6e-9 relative), times 2^k built in the exponent bits. Relative error < 1e-7 (measured over
// [-87, 0]), like libm's expf; below -87 it returns exp(-87) ~ 1.6e-38 rather than less, which is
// harmless next to the maximum's weight of 1.
inline float exp_nonpos(float x) {
  // Clamp x >= -87 on the bits (for x <= 0, a larger bit pattern is a more negative float):
  // an integer select vectorises where a float compare (which may trap) does not.
  uint32_t xb;
  std::memcpy(&xb, &x, 4);
  xb = xb > 0xC2AE0000u ? 0xC2AE0000u : xb;  // 0xC2AE0000 = -87.0f
  std::memcpy(&x, &xb, 4);
  const float kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  float f = x - kf * 0.693145751953125f;  // ln2 split in a high part exact in float ...
  f = f - kf * 1.428606820309417e-06f;   // ... and the rest
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t k = int32_t(kf);
  const uint32_t bits = uint32_t(k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// x[j] = exp(x[j] - mx) for j < n; returns their sum.
float exp_shifted(float* x, int64_t n, float mx) {
  for (int64_t j = 0; j < n; ++j) x[j] = exp_nonpos(x[j] - mx);
  float acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int i = 0; i < 8; ++i) acc[i] += x[j + i];
  float s = 0;
  for (; j < n; ++j) s += x[j];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

float* grow(std::vector<float>& v, int64_t n) {
  if (v.size() < size_t(n)) v.resize(size_t(n));
  return v.data();
}

int64_t row_grain(int64_t row_floats) { return std::max<int64_t>(1, kMinTaskFloats / std::max<int64_t>(1, row_floats)); }

void add_rmsnorm_rows(float* h, const float* add, int64_t T, int64_t n, const float* w, double eps, float* y) {
  pool().parallel_for(T, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      float* hr = h + t * n;
      const float ss = add ? ssd::add_sumsq(hr, add + t * n, n) : ssd::sumsq(hr, n);
      const float inv = 1.0f / std::sqrt(ss / float(n) + float(eps));
      ssd::scale_mul(hr, w, inv, n, y + t * n);
    }
  }, row_grain(n));
}

std::vector<float> transpose_taps(const std::vector<float>& w, int64_t C, int64_t K) {
  std::vector<float> t(w.size());
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) t[size_t(j * C + c)] = w[size_t(c * K + j)];
  return t;
}

void causal_conv_silu(const float* in, int64_t ldin, int64_t T, float* window, const float* wt, const float* bias,
                      int64_t C, int64_t K, float* out, std::vector<float>& tail) {
  if (T == 1) {
    ssd::conv_step(in, window, wt, bias, C, K, out);
    return;
  }
  pool().parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    ssd::conv_rows(in, ldin, window, wt, bias, C, K, t0, t1, out, C);
  }, row_grain(C * K));
  // The new window: the last K-1 inputs (partly the old window when T < K-1).
  float* tl = grow(tail, (K - 1) * C);
  for (int64_t j = 0; j < K - 1; ++j) {
    const int64_t src = T - (K - 1) + j;
    std::copy_n(src < 0 ? window + (K - 1 + src) * C : in + src * ldin, C, tl + j * C);
  }
  std::copy_n(tl, (K - 1) * C, window);
}

void head_logits(const Linear& head, const float* x, int64_t rows, int64_t vocab, float* logits,
                 std::vector<float>& scratch) {
  if (head.out_features() == vocab) {
    head.forward(x, rows, logits);
    return;
  }
  float* full = grow(scratch, rows * head.out_features());
  head.forward(x, rows, full);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(full + r * head.out_features(), vocab, logits + r * vocab);
}

void KVCache::reserve(int64_t n, int64_t keep) {
  if (n <= cap) return;
  const int64_t nc = std::min(max_ctx, std::max({n, 2 * cap, int64_t(64)}));
  const size_t total = size_t(layers * kvh * nc * hd);
  std::vector<float> nk(total), nv(total);
  for (int64_t s = 0; s < layers * kvh; ++s) {
    std::copy_n(k.data() + s * cap * hd, keep * hd, nk.data() + s * nc * hd);
    std::copy_n(v.data() + s * cap * hd, keep * hd, nv.data() + s * nc * hd);
  }
  k.swap(nk);
  v.swap(nv);
  cap = nc;
}

namespace {

// One head's query over keys 0 .. n-1: o = softmax(scale · q·Kᵀ) · V (rows of hd floats), with
// sc [n] and acc [hd] as scratch; scores and sums by the SIMD kernels of kernels/ssd.h.
inline void attend(const float* q, const float* K, const float* V, int64_t n, int64_t hd, float scale, float* sc,
                   float* acc, float* o) {
  ssd::attn_scores(q, K, n, hd, scale, sc);
  const float mx = *std::max_element(sc, sc + n);
  const float sum = exp_shifted(sc, n, mx);
  std::fill(acc, acc + hd, 0.0f);
  ssd::attn_accumulate(sc, V, n, hd, acc);
  const float inv = 1.0f / sum;
  for (int64_t e = 0; e < hd; ++e) o[e] = acc[e] * inv;
}

// Waking the pool costs more than a few thousand multiply-adds (decode of small models).
constexpr int64_t kMinParallelAttention = int64_t(1) << 16;

}  // namespace

void KVCache::copy_prefix(const KVCache& o, int64_t n) {
  if (o.layers != layers || o.kvh != kvh || o.hd != hd)
    fail("KV cache copy: shapes [{}, {}, {}] and [{}, {}, {}] do not match", layers, kvh, hd, o.layers, o.kvh, o.hd);
  if (n == 0 || layers * kvh * hd == 0) return;  // nothing to copy (or a cache of no attention layer)
  if (n < 0 || n > o.cap) fail("KV cache copy: {} positions of a cache holding {}", n, o.cap);
  reserve(n, 0);
  for (int64_t s = 0; s < layers * kvh; ++s) {
    std::copy_n(o.k.data() + s * o.cap * hd, n * hd, k.data() + s * cap * hd);
    std::copy_n(o.v.data() + s * o.cap * hd, n * hd, v.data() + s * cap * hd);
  }
}

void causal_attention(const float* q_all, int64_t T, int64_t H, const KVCache& kv, int64_t l, int64_t pos0,
                      float scale, float* out) {
  const int64_t G = kv.kvh, hd = kv.hd, qd = H * hd;
  // Work items: (head, block of queries).
  const int64_t QB = 16, nqb = (T + QB - 1) / QB, rep = H / G;
  auto run = [&](int64_t i0, int64_t i1, int) {
    thread_local std::vector<float> sc_buf, acc_buf;  // each thread its own, grown once
    float* sc = grow(sc_buf, pos0 + T);
    float* acc = grow(acc_buf, hd);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t hh = it / nqb, b = it % nqb, g = hh / rep;
      const float* K = kv.k_at(l, g, 0);
      const float* V = kv.v_at(l, g, 0);
      for (int64_t t = b * QB; t < std::min(T, (b + 1) * QB); ++t)  // causal: keys 0 .. pos0 + t
        attend(q_all + t * qd + hh * hd, K, V, pos0 + t + 1, hd, scale, sc, acc, out + t * qd + hh * hd);
    }
  };
  if (H * T * (pos0 + T) * hd < kMinParallelAttention) run(0, H * nqb, 0);
  else pool().parallel_for(H * nqb, run);
}

void decode_attention(const float* q, int64_t B, int64_t H, const KVCache* const* kv, const int64_t* pos, int64_t l,
                      float scale, float* out) {
  if (B <= 0) return;
  const int64_t hd = kv[0]->hd, qd = H * hd;
  int64_t work = 0, longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    work += H * (pos[b] + 1) * hd;
    longest = std::max(longest, pos[b] + 1);
  }
  auto run = [&](int64_t i0, int64_t i1, int) {
    thread_local std::vector<float> sc, acc;  // each thread its own, grown once
    float* s = grow(sc, longest);
    float* a = grow(acc, hd);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / H, hh = it % H, g = hh / (H / kv[b]->kvh);
      attend(q + b * qd + hh * hd, kv[b]->k_at(l, g, 0), kv[b]->v_at(l, g, 0), pos[b] + 1, hd, scale, s, a,
             out + b * qd + hh * hd);
    }
  };
  if (work < kMinParallelAttention) run(0, B * H, 0);
  else pool().parallel_for(B * H, run);
}

}  // namespace hxq
