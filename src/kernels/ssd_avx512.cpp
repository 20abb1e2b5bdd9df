// AVX-512 instance of the Mamba2 mixer kernels (ssd_simd.h): 16 float lanes, masked tails, exp
// by range reduction + degree-7 polynomial + scalef (compiled with AVX-512 flags, only called
// after run-time detection).
// GCC 12 reports false 'uninitialized' warnings inside its own AVX-512 headers (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/ssd_simd.h"

namespace hxq::ssd::detail {

namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int W = 16;
  static __mmask16 mask(int n) { return __mmask16((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void storen(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float hsum(V a) { return _mm512_reduce_add_ps(a); }
  // exp(x) = 2^k · exp(f), k = round(x / ln2), f = x − k ln2 (ln2 in two parts, |f| <= ln2/2),
  // exp(f) by its Taylor polynomial of degree 7 (remainder < 6e-9 relative); scalef applies 2^k
  // with correct overflow to inf and underflow to 0. x is clamped to [-104, 89] first so that
  // ±inf inputs give 0 / inf rather than NaN.
  static V exp(V x) {
    // (max/min return their second operand for NaN: x goes second so NaN propagates.)
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    const V kf = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V f = _mm512_fnmadd_ps(kf, _mm512_set1_ps(0.693145751953125f), x);
    f = _mm512_fnmadd_ps(kf, _mm512_set1_ps(1.428606820309417e-06f), f);
    V p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, kf);
  }
};

}  // namespace

const SsdKernels& ssd_kernels_avx512() { return SsdImpl<Avx512>::table(); }

}  // namespace hxq::ssd::detail
