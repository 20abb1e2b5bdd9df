#include "models/blocks.h"

#include <algorithm>
#include <cstring>

#include "core/threadpool.h"
#include "kernels/linear.h"
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

void causal_attention(const float* q_all, int64_t T, int64_t H, const KVCache& kv, int64_t l, int64_t pos0,
                      float scale, float* out) {
  const int64_t G = kv.kvh, hd = kv.hd, qd = H * hd;
  // Work items: (head, block of queries).
  const int64_t QB = 16, nqb = (T + QB - 1) / QB, rep = H / G;
  auto run = [&](int64_t i0, int64_t i1, int) {
    std::vector<float> sc(static_cast<size_t>(pos0 + T)), acc(static_cast<size_t>(hd));
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t hh = it / nqb, b = it % nqb, g = hh / rep;
      const float* K = kv.k_at(l, g, 0);
      const float* V = kv.v_at(l, g, 0);
      for (int64_t t = b * QB; t < std::min(T, (b + 1) * QB); ++t) {
        const float* q = q_all + t * qd + hh * hd;
        const int64_t n = pos0 + t + 1;  // causal: keys 0 .. pos0 + t
        // scores = scale · q·K[j] and acc = Σ_j p_j V[j] by the SIMD kernels of kernels/ssd.h.
        ssd::attn_scores(q, K, n, hd, scale, sc.data());
        const float mx = *std::max_element(sc.begin(), sc.begin() + n);
        const float sum = exp_shifted(sc.data(), n, mx);
        std::fill(acc.begin(), acc.end(), 0.0f);
        ssd::attn_accumulate(sc.data(), V, n, hd, acc.data());
        const float inv = 1.0f / sum;
        float* o = out + t * qd + hh * hd;
        for (int64_t e = 0; e < hd; ++e) o[e] = acc[size_t(e)] * inv;
      }
    }
  };
  // Waking the pool costs more than a few thousand multiply-adds (decode of small models).
  if (H * T * (pos0 + T) * hd < (int64_t(1) << 16)) run(0, H * nqb, 0);
  else pool().parallel_for(H * nqb, run);
}

}  // namespace hxq
