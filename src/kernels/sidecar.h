// Internal: the sidecar (CSR over rows: entries sc_row_ptr[r] .. sc_row_ptr[r+1]-1 of row r add
// sc_delta[e] to W[r, sc_col[e]]) shared by the HXQ (HxqView) and HXQ v2 (Hxq2View) kernels.
// The view's producer validates the CSR as a whole; these checks only make sure that a bad view
// cannot make a kernel read or write out of bounds.
#pragma once
#include <cstdint>

#include "core/error.h"
#include "kernels/hxq2_gemm.h"
#include "kernels/hxq_gemm.h"

namespace hxq::detail {

inline const char* sidecar_owner(const HxqView&) { return "gemm_hxq"; }
inline const char* sidecar_owner(const Hxq2View&) { return "gemm_hxq2"; }

// Entries [e0, e1) of row r, checked.
template <class View>
inline void sidecar_range(const View& w, int64_t r, int64_t& e0, int64_t& e1) {
  e0 = w.sc_row_ptr[r];
  e1 = w.sc_row_ptr[r + 1];
  if (e0 < 0 || e1 < e0)
    fail("{}: sidecar row pointers of row {} are not increasing ({}, {})", sidecar_owner(w), r, e0, e1);
  if (e1 > e0 && (!w.sc_col || !w.sc_delta)) fail("{}: sidecar entries without columns or deltas", sidecar_owner(w));
}

// Column of entry e (of row r), checked.
template <class View>
inline int64_t sidecar_col(const View& w, int64_t e, int64_t r) {
  const int64_t c = w.sc_col[e];
  if (c < 0 || c >= w.cols)
    fail("{}: sidecar column {} of row {} out of range [0, {})", sidecar_owner(w), c, r, w.cols);
  return c;
}

// Y[t, r] += X[t, col] · delta for the sidecar entries of rows [n0, n1) (Y has rows = w.rows).
template <class View>
void add_sidecar(const float* X, int64_t T, const View& w, int64_t n0, int64_t n1, float* Y) {
  if (!w.sc_row_ptr) return;
  const int64_t K = w.cols, N = w.rows;
  for (int64_t r = n0; r < n1; ++r) {
    int64_t e0, e1;
    sidecar_range(w, r, e0, e1);
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t c = sidecar_col(w, e, r);
      const float d = w.sc_delta[e];
      for (int64_t t = 0; t < T; ++t) Y[t * N + r] += X[t * K + c] * d;
    }
  }
}

}  // namespace hxq::detail
