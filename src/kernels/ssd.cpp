#include "kernels/ssd.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu_features.h"

namespace hxq::ssd {

namespace detail {

namespace {

// The portable reference (libm exp): plain loops, the arithmetic spelled out as in ssd.h.
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

float sumsq_s(const float* x, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j] * x[i + j];
  float s = 0;
  for (; i < n; ++i) s += x[i] * x[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float add_sumsq_s(float* h, const float* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] += a[i];
  return sumsq_s(h, n);
}

void scale_mul_s(const float* x, const float* w, float s, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * s);
}

float gate_silu_sumsq_s(float* y, const float* z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= silu(z[i]);
  return sumsq_s(y, n);
}

void conv_rows_s(const float* in, int64_t ldin, const float* state, const float* w, const float* bias, int64_t C,
                 int64_t K, int64_t t0, int64_t t1, float* out, int64_t ldout) {
  for (int64_t t = t0; t < t1; ++t) {
    float* o = out + t * ldout;
    for (int64_t c = 0; c < C; ++c) o[c] = bias[c];
    for (int64_t j = 0; j < K; ++j) {
      const int64_t s = t + j - (K - 1);
      const float* row = s < 0 ? state + (K - 1 + s) * C : in + s * ldin;
      const float* wj = w + j * C;
      for (int64_t c = 0; c < C; ++c) o[c] += wj[c] * row[c];
    }
    for (int64_t c = 0; c < C; ++c) o[c] = silu(o[c]);
  }
}

void conv_step_s(const float* x, float* state, const float* w, const float* bias, int64_t C, int64_t K, float* out) {
  conv_rows_s(x, C, state, w, bias, C, K, 0, 1, out, C);
  for (int64_t j = 0; j + 2 < K; ++j) std::copy_n(state + (j + 1) * C, C, state + j * C);
  if (K > 1) std::copy_n(x, C, state + (K - 2) * C);
}

void ssm_step_s(float* S, int64_t P, int64_t N, const float* x, const float* B, const float* C, float dt, float decay,
                float D, float* y) {
  for (int64_t p = 0; p < P; ++p) {
    float* sp = S + p * N;
    const float coef = dt * x[p];
    for (int64_t n = 0; n < N; ++n) sp[n] = sp[n] * decay + coef * B[n];
    float acc = 0;
    for (int64_t n = 0; n < N; ++n) acc += sp[n] * C[n];
    y[p] = acc + D * x[p];
  }
}

void decay_row_s(const float* cb, const float* cum, const float* dt, float ct, int64_t n, float* out) {
  for (int64_t u = 0; u < n; ++u) out[u] = (cb ? cb[u] : 1.0f) * (std::exp(ct - cum[u]) * dt[u]);
}

void axpby_s(float a, const float* x, float b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a * x[i] + b * y[i];
}

void mul_s(const float* x, const float* w, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * w[i];
}

void scale_s(const float* x, float s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = s * x[i];
}

void attn_scores_s(const float* q, const float* K, int64_t n, int64_t hd, float scale, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    float d = 0;
    for (int64_t e = 0; e < hd; ++e) d += q[e] * K[j * hd + e];
    s[j] = scale * d;
  }
}

void attn_accumulate_s(const float* p, const float* V, int64_t n, int64_t hd, float* acc) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t e = 0; e < hd; ++e) acc[e] += p[j] * V[j * hd + e];
}

void selective_scan_s(const ScanArgs& a, int64_t c0, int64_t c1) {
  const int64_t C = a.C, N = a.N;
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t t = 0; t < a.T; ++t) {
      const float raw = a.dt[t * a.lddt + c];
      const float delta = raw > 20.0f ? raw : std::log1p(std::exp(raw));
      const float xv = a.x[t * a.ldx + c];
      const float* B = a.B + t * a.ldbc;
      const float* Cm = a.Cm + t * a.ldbc;
      float acc = 0;
      for (int64_t n = 0; n < N; ++n) {
        float& s = a.S[n * C + c];
        s = std::exp(delta * a.A[n * C + c]) * s + (delta * xv) * B[n];
        acc += s * Cm[n];
      }
      float yv = acc + a.D[c] * xv;
      if (a.z) yv *= silu(a.z[t * a.ldz + c]);
      a.y[t * a.ldy + c] = yv;
    }
  }
}

}  // namespace

const SsdKernels& ssd_kernels_scalar() {
  static const SsdKernels k{sumsq_s,     add_sumsq_s, scale_mul_s, gate_silu_sumsq_s, conv_step_s,
                            conv_rows_s, ssm_step_s,  decay_row_s, axpby_s,           mul_s,
                            scale_s,     selective_scan_s, attn_scores_s, attn_accumulate_s};
  return k;
}

}  // namespace detail

namespace {

const detail::SsdKernels& active() {
  switch (kernel_isa()) {
    case Isa::Avx512: return detail::ssd_kernels_avx512();
    case Isa::Avx2: return detail::ssd_kernels_avx2();
    case Isa::Scalar: break;
  }
  return detail::ssd_kernels_scalar();
}

// The SIMD conv kernels keep the K row pointers of a window on the stack.
constexpr int64_t kMaxSimdTaps = 16;

}  // namespace

float sumsq(const float* x, int64_t n) { return active().sumsq(x, n); }
void attn_scores(const float* q, const float* K, int64_t n, int64_t hd, float scale, float* s) {
  active().attn_scores(q, K, n, hd, scale, s);
}
void attn_accumulate(const float* p, const float* V, int64_t n, int64_t hd, float* acc) {
  active().attn_accumulate(p, V, n, hd, acc);
}
float add_sumsq(float* h, const float* a, int64_t n) { return active().add_sumsq(h, a, n); }
void scale_mul(const float* x, const float* w, float s, int64_t n, float* y) { active().scale_mul(x, w, s, n, y); }
float gate_silu_sumsq(float* y, const float* z, int64_t n) { return active().gate_silu_sumsq(y, z, n); }

void conv_step(const float* x, float* state, const float* w, const float* bias, int64_t C, int64_t K, float* out) {
  (K > kMaxSimdTaps ? detail::ssd_kernels_scalar() : active()).conv_step(x, state, w, bias, C, K, out);
}

void conv_rows(const float* in, int64_t ldin, const float* state, const float* w, const float* bias, int64_t C,
               int64_t K, int64_t t0, int64_t t1, float* out, int64_t ldout) {
  (K > kMaxSimdTaps ? detail::ssd_kernels_scalar() : active())
      .conv_rows(in, ldin, state, w, bias, C, K, t0, t1, out, ldout);
}

void ssm_step(float* S, int64_t P, int64_t N, const float* x, const float* B, const float* C, float dt, float decay,
              float D, float* y) {
  active().ssm_step(S, P, N, x, B, C, dt, decay, D, y);
}

void decay_row(const float* cb, const float* cum, const float* dt, float ct, int64_t n, float* out) {
  active().decay_row(cb, cum, dt, ct, n, out);
}

void selective_scan(const ScanArgs& a, int64_t c0, int64_t c1) { active().selective_scan(a, c0, c1); }

void axpby(float a, const float* x, float b, float* y, int64_t n) { active().axpby(a, x, b, y, n); }
void mul(const float* x, const float* w, float* y, int64_t n) { active().mul(x, w, y, n); }
void scale(const float* x, float s, float* y, int64_t n) { active().scale(x, s, y, n); }

}  // namespace hxq::ssd
