// Building blocks shared by the architectures in src/models: row-wise RMSNorm (fused with the
// residual add), the causal depthwise conv over a sequence with its rolling window, the logits
// head over a possibly padded vocabulary, and causal softmax attention over a float32 K/V cache.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "models/model.h"

namespace hxq {

class Linear;

// v.data() with at least n elements (grows, never shrinks: no allocation once warm).
float* grow(std::vector<float>& v, int64_t n);

// Parallel loops over rows take at least this many rows per task (~16K floats of work each):
// below that, handing work to another thread costs about what it saves.
int64_t row_grain(int64_t row_floats);

// Σ a[i]·b[i] with 8 partial sums (a fixed order: results do not depend on the caller).
inline float dot8(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// `st` as the architecture's state type S ("<what>(): a state of another model" otherwise).
template <class S>
S& state_as(ModelState& st, const char* what) {
  auto* p = dynamic_cast<S*>(&st);
  if (!p) fail("{}: a state of another model", what);
  return *p;
}
template <class S>
const S& state_as(const ModelState& st, const char* what) {
  auto* p = dynamic_cast<const S*>(&st);
  if (!p) fail("{}: a state of another model", what);
  return *p;
}

inline float softplus(float x) {  // torch.nn.functional.softplus, beta=1, threshold=20
  return x > 20.0f ? x : std::log1p(std::exp(x));
}

// For each row r of h [T, n]: h[r] += add[r] (when add is not null), then
// y[r] = w ⊙ h[r] / sqrt(mean(h[r]²) + eps) (transformers' RMSNorm; the residual add fused with
// the next norm). With add == nullptr h is only read.
void add_rmsnorm_rows(float* h, const float* add, int64_t T, int64_t n, const float* w, double eps, float* y);

// Conv weights [C, K] (PyTorch's depthwise Conv1d [C, 1, K]) tap-major [K, C], as ssd::conv_* take them.
std::vector<float> transpose_taps(const std::vector<float>& w, int64_t C, int64_t K);

// Causal depthwise conv + SiLU over T rows of C channels (row t of the input at in + t·ldin) that
// continue the window [K-1][C] (the previous inputs, oldest first): out [T, C]; the window then
// holds the last K-1 inputs. `tail` is scratch.
void causal_conv_silu(const float* in, int64_t ldin, int64_t T, float* window, const float* wt, const float* bias,
                      int64_t C, int64_t K, float* out, std::vector<float>& tail);

// logits [rows, vocab] = head(x [rows, in]); a head with more rows than vocab (padded embedding)
// is computed whole into `scratch` and cut to the first vocab entries.
void head_logits(const Linear& head, const float* x, int64_t rows, int64_t vocab, float* logits,
                 std::vector<float>& scratch);

// K/V cache: float32 [layer][kv_head][position][head_dim] for `layers` attention layers,
// capacity grown geometrically up to max_ctx positions.
class KVCache {
 public:
  KVCache(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_ctx)
      : layers(layers), kvh(kv_heads), hd(head_dim), max_ctx(max_ctx) {}
  // Makes room for n positions, keeping the first `keep`.
  void reserve(int64_t n, int64_t keep);
  float* k_at(int64_t l, int64_t g, int64_t p) { return k.data() + ((l * kvh + g) * cap + p) * hd; }
  float* v_at(int64_t l, int64_t g, int64_t p) { return v.data() + ((l * kvh + g) * cap + p) * hd; }
  const float* k_at(int64_t l, int64_t g, int64_t p) const { return k.data() + ((l * kvh + g) * cap + p) * hd; }
  const float* v_at(int64_t l, int64_t g, int64_t p) const { return v.data() + ((l * kvh + g) * cap + p) * hd; }
  size_t bytes() const { return (k.size() + v.size()) * sizeof(float); }
  // This cache = the first n positions of `o` (a cache of the same shape), growing the capacity
  // only when it is below n (a fresh cache gets about n positions, not o's capacity).
  void copy_prefix(const KVCache& o, int64_t n);

  const int64_t layers, kvh, hd, max_ctx;
  int64_t cap = 0;
  std::vector<float> k, v;
};

// Causal attention of T queries at positions pos0 .. pos0+T-1 over layer `l` of the cache (which
// holds keys/values of positions 0 .. pos0+T-1): for head h (kv head h / (H / kv_heads), as
// transformers' repeat_kv), out[t][h] = softmax(scale · q[t][h] · Kᵀ over keys 0..pos0+t) · V.
// q and out are [T, H·head_dim].
void causal_attention(const float* q, int64_t T, int64_t H, const KVCache& kv, int64_t l, int64_t pos0, float scale,
                      float* out);

// One query for each of B sequences: out[b] = the attention of q[b] at position pos[b] over keys
// 0 .. pos[b] of layer l of kv[b], exactly as causal_attention(q[b], 1, H, *kv[b], l, pos[b],
// scale, out[b]) computes it; the (sequence, head) pairs run in parallel. q and out [B, H·head_dim].
void decode_attention(const float* q, int64_t B, int64_t H, const KVCache* const* kv, const int64_t* pos, int64_t l,
                      float scale, float* out);

}  // namespace hxq
