// Internal: the Mamba2 mixer kernels of ssd.h written once over a SIMD vector type S (included by
// ssd_avx512.cpp and ssd_avx2.cpp, each compiled for its instruction set). S provides: W (lanes),
// V, zero, set1, load, loadn / storen (first n < W lanes, the rest zero / untouched), store, add,
// sub, mul, div, fma (a·b + c), min, max, hsum, and exp (relative error < 2e-7 where the result
// is a normal float).
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/ssd.h"

namespace hxq::ssd::detail {

template <class S>
struct SsdImpl {
  using V = typename S::V;
  static constexpr int W = S::W;

  static V silu(V x) { return S::div(x, S::add(S::set1(1.0f), S::exp(S::sub(S::zero(), x)))); }

  static float sumsq(const float* x, int64_t n) {
    V a0 = S::zero(), a1 = S::zero();
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      const V v0 = S::load(x + i), v1 = S::load(x + i + W);
      a0 = S::fma(v0, v0, a0);
      a1 = S::fma(v1, v1, a1);
    }
    for (; i < n; i += W) {
      const V v = i + W <= n ? S::load(x + i) : S::loadn(x + i, int(n - i));
      a0 = S::fma(v, v, a0);
    }
    return S::hsum(S::add(a0, a1));
  }

  static float add_sumsq(float* h, const float* a, int64_t n) {
    V acc = S::zero();
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      const V v = S::add(S::load(h + i), S::load(a + i));
      S::store(h + i, v);
      acc = S::fma(v, v, acc);
    }
    if (i < n) {
      const int r = int(n - i);
      const V v = S::add(S::loadn(h + i, r), S::loadn(a + i, r));
      S::storen(h + i, v, r);
      acc = S::fma(v, v, acc);
    }
    return S::hsum(acc);
  }

  static void scale_mul(const float* x, const float* w, float s, int64_t n, float* y) {
    const V vs = S::set1(s);
    int64_t i = 0;
    for (; i + W <= n; i += W) S::store(y + i, S::mul(S::load(w + i), S::mul(S::load(x + i), vs)));
    if (i < n) {
      const int r = int(n - i);
      S::storen(y + i, S::mul(S::loadn(w + i, r), S::mul(S::loadn(x + i, r), vs)), r);
    }
  }

  static float gate_silu_sumsq(float* y, const float* z, int64_t n) {
    V acc = S::zero();
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      const V v = S::mul(S::load(y + i), silu(S::load(z + i)));
      S::store(y + i, v);
      acc = S::fma(v, v, acc);
    }
    if (i < n) {
      const int r = int(n - i);
      const V v = S::mul(S::loadn(y + i, r), silu(S::loadn(z + i, r)));
      S::storen(y + i, v, r);
      acc = S::fma(v, v, acc);
    }
    return S::hsum(acc);
  }

  // out = silu(bias + Σ_j w[j]·row_j) over channels [c, c + r) (r == W: full vector).
  template <bool Full>
  static void conv_block(const float* const* rows, const float* w, const float* bias, int64_t C, int64_t K, int64_t c,
                         int r, float* out) {
    auto ld = [&](const float* p) { return Full ? S::load(p) : S::loadn(p, r); };
    V acc = ld(bias + c);
    for (int64_t j = 0; j < K; ++j) acc = S::fma(ld(w + j * C + c), ld(rows[j] + c), acc);
    if (Full) S::store(out + c, silu(acc));
    else S::storen(out + c, silu(acc), r);
  }

  static void conv_step(const float* x, float* state, const float* w, const float* bias, int64_t C, int64_t K,
                        float* out) {
    const float* rows[16];
    for (int64_t j = 0; j + 1 < K; ++j) rows[j] = state + j * C;
    rows[K - 1] = x;
    int64_t c = 0;
    for (; c + W <= C; c += W) {
      conv_block<true>(rows, w, bias, C, K, c, W, out);
      for (int64_t j = 0; j + 2 < K; ++j) S::store(state + j * C + c, S::load(state + (j + 1) * C + c));
      if (K > 1) S::store(state + (K - 2) * C + c, S::load(x + c));
    }
    if (c < C) {
      const int r = int(C - c);
      conv_block<false>(rows, w, bias, C, K, c, r, out);
      for (int64_t j = 0; j + 2 < K; ++j) S::storen(state + j * C + c, S::loadn(state + (j + 1) * C + c, r), r);
      if (K > 1) S::storen(state + (K - 2) * C + c, S::loadn(x + c, r), r);
    }
  }

  static void conv_rows(const float* in, int64_t ldin, const float* state, const float* w, const float* bias, int64_t C,
                        int64_t K, int64_t t0, int64_t t1, float* out, int64_t ldout) {
    const float* rows[16];
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t j = 0; j < K; ++j) {
        const int64_t s = t + j - (K - 1);
        rows[j] = s < 0 ? state + (K - 1 + s) * C : in + s * ldin;
      }
      float* o = out + t * ldout;
      int64_t c = 0;
      for (; c + W <= C; c += W) conv_block<true>(rows, w, bias, C, K, c, W, o);
      if (c < C) conv_block<false>(rows, w, bias, C, K, c, int(C - c), o);
    }
  }

  static void ssm_step(float* Sm, int64_t P, int64_t N, const float* x, const float* B, const float* Cv, float dt,
                       float decay, float D, float* y) {
    const V vdecay = S::set1(decay);
    for (int64_t p = 0; p < P; ++p) {
      float* sp = Sm + p * N;
      const V coef = S::set1(dt * x[p]);
      V acc = S::zero();
      int64_t n = 0;
      for (; n + W <= N; n += W) {
        const V s = S::fma(S::load(sp + n), vdecay, S::mul(coef, S::load(B + n)));
        S::store(sp + n, s);
        acc = S::fma(s, S::load(Cv + n), acc);
      }
      if (n < N) {
        const int r = int(N - n);
        const V s = S::fma(S::loadn(sp + n, r), vdecay, S::mul(coef, S::loadn(B + n, r)));
        S::storen(sp + n, s, r);
        acc = S::fma(s, S::loadn(Cv + n, r), acc);
      }
      y[p] = S::hsum(acc) + D * x[p];
    }
  }

  static void decay_row(const float* cb, const float* cum, const float* dt, float ct, int64_t n, float* out) {
    const V vct = S::set1(ct);
    int64_t u = 0;
    for (; u + W <= n; u += W) {
      V v = S::mul(S::exp(S::sub(vct, S::load(cum + u))), S::load(dt + u));
      if (cb) v = S::mul(S::load(cb + u), v);
      S::store(out + u, v);
    }
    if (u < n) {
      const int r = int(n - u);
      V v = S::mul(S::exp(S::sub(vct, S::loadn(cum + u, r))), S::loadn(dt + u, r));
      if (cb) v = S::mul(S::loadn(cb + u, r), v);
      S::storen(out + u, v, r);
    }
  }

  static void axpby(float a, const float* x, float b, float* y, int64_t n) {
    const V va = S::set1(a), vb = S::set1(b);
    int64_t i = 0;
    for (; i + W <= n; i += W) S::store(y + i, S::fma(va, S::load(x + i), S::mul(vb, S::load(y + i))));
    if (i < n) {
      const int r = int(n - i);
      S::storen(y + i, S::fma(va, S::loadn(x + i, r), S::mul(vb, S::loadn(y + i, r))), r);
    }
  }

  static void mul(const float* x, const float* w, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + W <= n; i += W) S::store(y + i, S::mul(S::load(x + i), S::load(w + i)));
    if (i < n) {
      const int r = int(n - i);
      S::storen(y + i, S::mul(S::loadn(x + i, r), S::loadn(w + i, r)), r);
    }
  }

  static void scale(const float* x, float s, float* y, int64_t n) {
    const V vs = S::set1(s);
    int64_t i = 0;
    for (; i + W <= n; i += W) S::store(y + i, S::mul(vs, S::load(x + i)));
    if (i < n) S::storen(y + i, S::mul(vs, S::loadn(x + i, int(n - i))), int(n - i));
  }

  // softplus(x) = max(x, 0) + log1p(v), v = exp(−|x|) ∈ (0, 1], with log1p(v) = 2·atanh(s),
  // s = v / (2 + v) ∈ (0, 1/3]: 2s·Σ_{k<9} s^{2k}/(2k+1), truncation < 2e-10 relative, no
  // cancellation for small v. Above 20 the correction is below half an ulp of x (torch returns x).
  static V softplus(V x) {
    const V v = S::exp(S::min(x, S::sub(S::zero(), x)));
    const V s = S::div(v, S::add(S::set1(2.0f), v));
    const V u = S::mul(s, s);
    V p = S::set1(1.0f / 17.0f);
    p = S::fma(p, u, S::set1(1.0f / 15.0f));
    p = S::fma(p, u, S::set1(1.0f / 13.0f));
    p = S::fma(p, u, S::set1(1.0f / 11.0f));
    p = S::fma(p, u, S::set1(1.0f / 9.0f));
    p = S::fma(p, u, S::set1(1.0f / 7.0f));
    p = S::fma(p, u, S::set1(1.0f / 5.0f));
    p = S::fma(p, u, S::set1(1.0f / 3.0f));
    p = S::fma(p, u, S::set1(1.0f));
    return S::fma(S::add(s, s), p, S::max(x, S::zero()));
  }

  // One vector of channels [c, c + r) (r == W: a full vector) through all T steps.
  template <bool Full>
  static void scan_block(const ScanArgs& a, int64_t c, int r) {
    auto ld = [&](const float* p) { return Full ? S::load(p) : S::loadn(p, r); };
    auto st = [&](float* p, V v) {
      if (Full) S::store(p, v);
      else S::storen(p, v, r);
    };
    const int64_t C = a.C, N = a.N;
    const V Dv = ld(a.D + c);
    for (int64_t t = 0; t < a.T; ++t) {
      const V delta = softplus(ld(a.dt + t * a.lddt + c));
      const V xv = ld(a.x + t * a.ldx + c);
      const V dx = S::mul(delta, xv);
      const float* B = a.B + t * a.ldbc;
      const float* Cm = a.Cm + t * a.ldbc;
      V acc = S::zero();
      for (int64_t n = 0; n < N; ++n) {
        float* sp = a.S + n * C + c;
        const V dA = S::exp(S::mul(delta, ld(a.A + n * C + c)));
        const V s = S::fma(dA, ld(sp), S::mul(dx, S::set1(B[n])));
        st(sp, s);
        acc = S::fma(s, S::set1(Cm[n]), acc);
      }
      V yv = S::fma(Dv, xv, acc);
      if (a.z) yv = S::mul(yv, silu(ld(a.z + t * a.ldz + c)));
      st(a.y + t * a.ldy + c, yv);
    }
  }

  static void selective_scan(const ScanArgs& a, int64_t c0, int64_t c1) {
    int64_t c = c0;
    for (; c + W <= c1; c += W) scan_block<true>(a, c, W);
    if (c < c1) scan_block<false>(a, c, int(c1 - c));
  }

  // Four keys at a time (independent FMA chains), one horizontal sum per key.
  static void attn_scores(const float* q, const float* K, int64_t n, int64_t hd, float scale, float* s) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const float* k0 = K + j * hd;
      V a0 = S::zero(), a1 = S::zero(), a2 = S::zero(), a3 = S::zero();
      int64_t e = 0;
      for (; e + W <= hd; e += W) {
        const V qv = S::load(q + e);
        a0 = S::fma(qv, S::load(k0 + e), a0);
        a1 = S::fma(qv, S::load(k0 + hd + e), a1);
        a2 = S::fma(qv, S::load(k0 + 2 * hd + e), a2);
        a3 = S::fma(qv, S::load(k0 + 3 * hd + e), a3);
      }
      if (e < hd) {
        const int r = int(hd - e);
        const V qv = S::loadn(q + e, r);
        a0 = S::fma(qv, S::loadn(k0 + e, r), a0);
        a1 = S::fma(qv, S::loadn(k0 + hd + e, r), a1);
        a2 = S::fma(qv, S::loadn(k0 + 2 * hd + e, r), a2);
        a3 = S::fma(qv, S::loadn(k0 + 3 * hd + e, r), a3);
      }
      s[j] = scale * S::hsum(a0);
      s[j + 1] = scale * S::hsum(a1);
      s[j + 2] = scale * S::hsum(a2);
      s[j + 3] = scale * S::hsum(a3);
    }
    for (; j < n; ++j) {
      const float* kj = K + j * hd;
      V a = S::zero();
      int64_t e = 0;
      for (; e + W <= hd; e += W) a = S::fma(S::load(q + e), S::load(kj + e), a);
      if (e < hd) a = S::fma(S::loadn(q + e, int(hd - e)), S::loadn(kj + e, int(hd - e)), a);
      s[j] = scale * S::hsum(a);
    }
  }

  // acc += Σ_j p[j] V[j]: up to 8 vectors of acc stay in registers while the keys stream by.
  static void attn_accumulate(const float* p, const float* Vm, int64_t n, int64_t hd, float* acc) {
    constexpr int kR = 8;
    for (int64_t e0 = 0; e0 < hd; e0 += kR * W) {
      const int64_t m = std::min<int64_t>(kR * W, hd - e0);
      const int nv = int((m + W - 1) / W), last = int(m - int64_t(nv - 1) * W);  // lanes of vector nv - 1
      // Vector v at x: full, except a short final vector (its first `last` lanes).
      auto partial = [&](int v) { return v + 1 == nv && last < W; };
      auto ld = [&](const float* x, int v) { return partial(v) ? S::loadn(x + v * W, last) : S::load(x + v * W); };
      V a[kR];
      for (int v = 0; v < nv; ++v) a[v] = ld(acc + e0, v);
      for (int64_t j = 0; j < n; ++j) {
        const V w = S::set1(p[j]);
        for (int v = 0; v < nv; ++v) a[v] = S::fma(w, ld(Vm + j * hd + e0, v), a[v]);
      }
      for (int v = 0; v < nv; ++v) {
        if (partial(v)) S::storen(acc + e0 + v * W, a[v], last);
        else S::store(acc + e0 + v * W, a[v]);
      }
    }
  }

  static const SsdKernels& table() {
    static const SsdKernels k{sumsq,    add_sumsq, scale_mul, gate_silu_sumsq, conv_step,
                              conv_rows, ssm_step, decay_row, axpby,           mul,
                              scale,     selective_scan, attn_scores, attn_accumulate};
    return k;
  }
};

}  // namespace hxq::ssd::detail
