// Vectorised elementwise kernels of the Mamba2 mixer (SSD scan, causal conv, gating, norms),
// dispatched at run time like the GEMM kernels: AVX-512, AVX2 or portable scalar (kernel_isa()).
#pragma once
#include <cstdint>

namespace hxq::ssd {

// Σ x[i]²
float sumsq(const float* x, int64_t n);
// h[i] += a[i]; returns Σ h[i]² (the residual add fused with the next RMSNorm's reduction).
float add_sumsq(float* h, const float* a, int64_t n);
// y[i] = w[i] · (x[i] · s)   (x == y allowed)
void scale_mul(const float* x, const float* w, float s, int64_t n, float* y);
// y[i] = y[i] · silu(z[i]); returns Σ y[i]² (the gate of Mamba2's gated RMSNorm).
float gate_silu_sumsq(float* y, const float* z, int64_t n);

// Depthwise causal conv + SiLU, one step for C channels: with the window `state` [K-1][C]
// (oldest first) and tap-major weights w [K][C],
//   out[c] = silu(bias[c] + Σ_{j<K-1} w[j][c] · state[j][c] + w[K-1][c] · x[c]);
// then the window shifts: state rows move up by one and x becomes the last row.
void conv_step(const float* x, float* state, const float* w, const float* bias, int64_t C, int64_t K, float* out);
// The same for rows t in [t0, t1) of a sequence: input row s is in + s·ldin for s >= 0 and
// state row K-1+s for s < 0; out row t is out + t·ldout. The state is not modified.
void conv_rows(const float* in, int64_t ldin, const float* state, const float* w, const float* bias, int64_t C,
               int64_t K, int64_t t0, int64_t t1, float* out, int64_t ldout);

// One recurrent SSM step of one head, state S [P][N]:
//   S[p][:] = decay · S[p][:] + (dt · x[p]) · B;   y[p] = S[p][:] · C + D · x[p].
void ssm_step(float* S, int64_t P, int64_t N, const float* x, const float* B, const float* C, float dt, float decay,
              float D, float* y);

// out[u] = (cb ? cb[u] : 1) · exp(ct − cum[u]) · dt[u] for u in [0, n)  (a row of SSD's masked
// decay matrix, or the state-update weights). The SIMD exp has a relative error < 2e-7 (a few
// ulp) wherever its result is a normal float; results below ~1e-38 may flush to 0.
void decay_row(const float* cb, const float* cum, const float* dt, float ct, int64_t n, float* out);

// Mamba1's selective scan of channels [c0, c1) of C over T steps, with a per-channel state of N
// entries stored state-major, S [N][C] (channels contiguous: the kernels vectorise across them):
//   δ = softplus(dt[t][c])                   (torch's softplus: x above 20 is returned as is)
//   S[n][c] = exp(δ · A[n][c]) · S[n][c] + δ · x[t][c] · B[t][n]
//   y[t][c] = (Σ_n S[n][c] · Cm[t][n] + D[c] · x[t][c]) · silu(z[t][c])     (no gate when z is null)
// Row t of x, dt, z, B/Cm and y starts at t times its ld. Each channel's state stays in cache for
// the whole sequence; channels are independent, so any split of [0, C) gives identical results.
struct ScanArgs {
  int64_t C = 0, N = 0, T = 0;
  float* S = nullptr;
  const float *A = nullptr, *D = nullptr;  // A [N][C], D [C]
  const float* x = nullptr;
  int64_t ldx = 0;
  const float* dt = nullptr;
  int64_t lddt = 0;
  const float* z = nullptr;
  int64_t ldz = 0;
  const float *B = nullptr, *Cm = nullptr;
  int64_t ldbc = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};
void selective_scan(const ScanArgs& a, int64_t c0, int64_t c1);

// y[i] = a · x[i] + b · y[i]
void axpby(float a, const float* x, float b, float* y, int64_t n);
// y[i] = x[i] · w[i]
void mul(const float* x, const float* w, float* y, int64_t n);
// y[i] = s · x[i]
void scale(const float* x, float s, float* y, int64_t n);

// Attention of one query over n keys (rows of hd floats, row j at K + j·hd / V + j·hd):
// s[j] = scale · q·K[j], and acc[e] += Σ_j p[j] · V[j][e].
void attn_scores(const float* q, const float* K, int64_t n, int64_t hd, float scale, float* s);
void attn_accumulate(const float* p, const float* V, int64_t n, int64_t hd, float* acc);

}  // namespace hxq::ssd

namespace hxq::ssd::detail {

struct SsdKernels {
  float (*sumsq)(const float*, int64_t);
  float (*add_sumsq)(float*, const float*, int64_t);
  void (*scale_mul)(const float*, const float*, float, int64_t, float*);
  float (*gate_silu_sumsq)(float*, const float*, int64_t);
  void (*conv_step)(const float*, float*, const float*, const float*, int64_t, int64_t, float*);
  void (*conv_rows)(const float*, int64_t, const float*, const float*, const float*, int64_t, int64_t, int64_t,
                    int64_t, float*, int64_t);
  void (*ssm_step)(float*, int64_t, int64_t, const float*, const float*, const float*, float, float, float, float*);
  void (*decay_row)(const float*, const float*, const float*, float, int64_t, float*);
  void (*axpby)(float, const float*, float, float*, int64_t);
  void (*mul)(const float*, const float*, float*, int64_t);
  void (*scale)(const float*, float, float*, int64_t);
  void (*selective_scan)(const ScanArgs&, int64_t, int64_t);
  void (*attn_scores)(const float*, const float*, int64_t, int64_t, float, float*);
  void (*attn_accumulate)(const float*, const float*, int64_t, int64_t, float*);
};

const SsdKernels& ssd_kernels_scalar();
const SsdKernels& ssd_kernels_avx2();
const SsdKernels& ssd_kernels_avx512();

}  // namespace hxq::ssd::detail
