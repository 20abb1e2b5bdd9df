#include "codec/helix_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace hxq::helix {

// ---- numpy float32 summation -------------------------------------------------------------

namespace {

// numpy's FLOAT_pairwise_sum for a contiguous array (loops_utils.h semantics).
float pairwise(const float* a, int64_t n) {
  if (n < 8) {
    float res = 0.f;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    float r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise(a, n2) + pairwise(a + n2, n - n2);
}

}  // namespace

float np_sum_f32(const float* a, int64_t n, int64_t block) {
  if (block <= 0) block = n > 0 ? n : 1;
  float acc = 0.f;  // the reduction starts from the identity 0
  for (int64_t i = 0; i < n; i += block) acc += pairwise(a + i, std::min(block, n - i));
  return acc;
}

float np_mean_f32(const float* a, int64_t n, int64_t block) {
  const float s = np_sum_f32(a, n, block);
  return float(double(s) / double(n));
}

// ---- numpy percentile ----------------------------------------------------------------------

double np_quantile_linear(const float* sorted, int64_t n, double q) {
  if (n <= 0) fail("percentile of an empty array");
  const double v = double(n - 1) * q;
  if (!(v < double(n - 1))) return double(sorted[n - 1]);  // above bounds: last element
  if (v < 0) return double(sorted[0]);
  const double fl = std::floor(v);
  const int64_t prev = int64_t(fl);
  const double gamma = v - fl;
  const float a = sorted[prev], b = sorted[prev + 1];
  const float diff = b - a;  // float32 subtraction
  if (gamma >= 0.5) return double(b) - double(diff) * (1.0 - gamma);
  return double(a) + double(diff) * gamma;
}

std::vector<double> np_linspace_percent_fractions(int k) {
  std::vector<double> q(static_cast<size_t>(std::max(k, 0)));
  if (k <= 0) return q;
  if (k == 1) {
    q[0] = (0.0 * 100.0) / 100.0;
    return q;
  }
  const double step = 100.0 / double(k - 1);
  for (int i = 0; i < k; ++i) {
    double y = double(i) * step;
    y += 0.0;
    if (i == k - 1) y = 100.0;
    q[size_t(i)] = y / 100.0;
  }
  return q;
}

// ---- MT19937 / RandomState -------------------------------------------------------------------

Mt19937::Mt19937(uint32_t seed) {
  for (int i = 0; i < 624; ++i) {
    mt_[i] = seed;
    seed = 1812433253u * (seed ^ (seed >> 30)) + uint32_t(i + 1);
  }
  pos_ = 624;
}

uint32_t Mt19937::next_u32() {
  if (pos_ >= 624) {
    for (int i = 0; i < 624; ++i) {
      const uint32_t y = (mt_[i] & 0x80000000u) | (mt_[(i + 1) % 624] & 0x7fffffffu);
      mt_[i] = mt_[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    pos_ = 0;
  }
  uint32_t y = mt_[pos_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

uint64_t Mt19937::next_u64() {
  const uint64_t hi = next_u32();
  return (hi << 32) | next_u32();
}

double Mt19937::next_double() {
  const int32_t a = int32_t(next_u32() >> 5), b = int32_t(next_u32() >> 6);
  return (a * 67108864.0 + b) / 9007199254740992.0;
}

namespace {
// numpy's random_interval(max): smallest all-ones mask >= max, rejection sampling.
uint64_t random_interval(Mt19937& g, uint64_t max) {
  if (max == 0) return 0;
  uint64_t mask = max;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  mask |= mask >> 16;
  mask |= mask >> 32;
  uint64_t value;
  if (max <= 0xffffffffull) {
    while ((value = (g.next_u32() & mask)) > max) {
    }
  } else {
    while ((value = (g.next_u64() & mask)) > max) {
    }
  }
  return value;
}
}  // namespace

namespace {
template <typename T>
std::vector<T> legacy_permutation(uint32_t seed, int64_t n) {
  std::vector<T> a(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) a[size_t(i)] = T(i);
  Mt19937 g(seed);
  for (int64_t i = n - 1; i >= 1; --i) {
    const int64_t j = int64_t(random_interval(g, uint64_t(i)));
    std::swap(a[size_t(i)], a[size_t(j)]);
  }
  return a;
}
}  // namespace

std::vector<int64_t> np_legacy_permutation(uint32_t seed, int64_t n) { return legacy_permutation<int64_t>(seed, n); }

// ---- numpy argsort (introsort) ---------------------------------------------------------------

namespace {

inline bool np_less(float a, float b) { return a < b || (b != b && a == a); }

void np_aheapsort(const float* v, int64_t* tosort, int64_t n) {
  int64_t* a = tosort - 1;  // 1-based heap indexing
  int64_t i, j, l, tmp;
  for (l = n >> 1; l > 0; --l) {
    tmp = a[l];
    for (i = l, j = l << 1; j <= n;) {
      if (j < n && np_less(v[a[j]], v[a[j + 1]])) j += 1;
      if (np_less(v[tmp], v[a[j]])) {
        a[i] = a[j];
        i = j;
        j += j;
      } else {
        break;
      }
    }
    a[i] = tmp;
  }
  for (; n > 1;) {
    tmp = a[n];
    a[n] = a[1];
    n -= 1;
    for (i = 1, j = 2; j <= n;) {
      if (j < n && np_less(v[a[j]], v[a[j + 1]])) j++;
      if (np_less(v[tmp], v[a[j]])) {
        a[i] = a[j];
        i = j;
        j += j;
      } else {
        break;
      }
    }
    a[i] = tmp;
  }
}

int msb(uint64_t x) {
  int d = 0;
  while (x >>= 1) ++d;
  return d;
}

}  // namespace

std::vector<int64_t> np_argsort_quicksort(const std::vector<float>& vec) {
  const int64_t num = int64_t(vec.size());
  std::vector<int64_t> idx(static_cast<size_t>(num));
  for (int64_t i = 0; i < num; ++i) idx[size_t(i)] = i;
  if (num < 2) return idx;
  const float* v = vec.data();
  constexpr int kSmall = 15;
  constexpr int kStack = 128;
  int64_t* pl = idx.data();
  int64_t* pr = idx.data() + num - 1;
  int64_t* stack[kStack];
  int64_t** sptr = stack;
  int depth[kStack];
  int* psdepth = depth;
  int cdepth = msb(uint64_t(num)) * 2;
  int64_t *pm, *pi, *pj, *pk;
  int64_t vi;
  float vp;
  for (;;) {
    if (cdepth < 0) {
      np_aheapsort(v, pl, pr - pl + 1);
      goto stack_pop;
    }
    while ((pr - pl) > kSmall) {
      pm = pl + ((pr - pl) >> 1);
      if (np_less(v[*pm], v[*pl])) std::swap(*pm, *pl);
      if (np_less(v[*pr], v[*pm])) std::swap(*pr, *pm);
      if (np_less(v[*pm], v[*pl])) std::swap(*pm, *pl);
      vp = v[*pm];
      pi = pl;
      pj = pr - 1;
      std::swap(*pm, *pj);
      for (;;) {
        do ++pi;
        while (np_less(v[*pi], vp));
        do --pj;
        while (np_less(vp, v[*pj]));
        if (pi >= pj) break;
        std::swap(*pi, *pj);
      }
      pk = pr - 1;
      std::swap(*pi, *pk);
      if (pi - pl < pr - pi) {
        *sptr++ = pi + 1;
        *sptr++ = pr;
        pr = pi - 1;
      } else {
        *sptr++ = pl;
        *sptr++ = pi - 1;
        pl = pi + 1;
      }
      *psdepth++ = --cdepth;
    }
    for (pi = pl + 1; pi <= pr; ++pi) {
      vi = *pi;
      vp = v[vi];
      pj = pi;
      pk = pi - 1;
      while (pj > pl && np_less(vp, v[*pk])) *pj-- = *pk--;
      *pj = vi;
    }
  stack_pop:
    if (sptr == stack) break;
    pr = *(--sptr);
    pl = *(--sptr);
    cdepth = *(--psdepth);
  }
  return idx;
}

// ---- helix-substrate's k-means -------------------------------------------------------------

std::vector<float> kmeans_sample(const float* flat, int64_t n) {
  if (n <= kKmeansMaxSamples) return std::vector<float>(flat, flat + n);
  // RandomState(42).choice(n, size, replace=False) == permutation(n)[:size]
  std::vector<float> s(static_cast<size_t>(kKmeansMaxSamples));
  if (n <= int64_t(0xffffffffu)) {  // same permutation, half the memory traffic
    const auto perm = legacy_permutation<uint32_t>(42, n);
    for (int64_t i = 0; i < kKmeansMaxSamples; ++i) s[size_t(i)] = flat[perm[size_t(i)]];
  } else {
    const auto perm = legacy_permutation<int64_t>(42, n);
    for (int64_t i = 0; i < kKmeansMaxSamples; ++i) s[size_t(i)] = flat[perm[size_t(i)]];
  }
  return s;
}

uint8_t assign_one_f32(float x, const float* c, int k) {
  // ascending codebook: |fl(x − c_j)| is non-increasing over {c_j <= x} and non-decreasing over
  // {c_j > x}, so the minimum sits next to the split; walk left over equal values for the
  // lowest index.
  int lo = 0, hi = k;  // first j with c[j] > x
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (c[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  const int jr = lo, jl = lo - 1;
  if (jl < 0) return uint8_t(jr);
  const float fl = std::fabs(x - c[jl]);
  if (jr < k) {
    const float fr = std::fabs(x - c[jr]);
    if (fr < fl) return uint8_t(jr);
  }
  int j = jl;
  while (j > 0 && std::fabs(x - c[j - 1]) == fl) --j;
  return uint8_t(j);
}

namespace {

bool ascending(const float* c, int k) {
  for (int j = 1; j < k; ++j)
    if (!(c[j - 1] <= c[j])) return false;
  return true;
}

uint8_t assign_brute_f32(float x, const float* c, int k) {
  int best = 0;
  float bd = std::fabs(x - c[0]);
  for (int j = 1; j < k; ++j) {
    const float d = std::fabs(x - c[j]);
    if (d < bd) bd = d, best = j;
  }
  return uint8_t(best);
}

}  // namespace

void assign_f32(const float* x, int64_t n, const float* codebook, int k, uint8_t* out) {
  if (k < 1 || k > 256) fail("helix assignment: codebook size {} not in [1, 256]", k);
  const bool asc = ascending(codebook, k);
  pool().parallel_for(
      n,
      [&](int64_t b, int64_t e, int) {
        if (asc)
          for (int64_t i = b; i < e; ++i) out[i] = assign_one_f32(x[i], codebook, k);
        else
          for (int64_t i = b; i < e; ++i) out[i] = assign_brute_f32(x[i], codebook, k);
      },
      1 << 16);
}

std::vector<float> kmeans_codebook(const float* data_in, int64_t n, int max_k, int max_iters, int64_t sum_block) {
  if (max_k < 1 || max_k > 256) fail("helix k-means: k = {} not in [1, 256]", max_k);
  if (n <= 0) return {};
  std::vector<float> data(data_in, data_in + n);
  for (auto& x : data) {
    if (!std::isfinite(x)) fail("helix k-means: the weights contain NaN or Inf");
    if (x == 0.f) x = 0.f;  // canonical +0.0
  }
  std::vector<float> sorted = data;
  std::sort(sorted.begin(), sorted.end());
  std::vector<float> dv;  // distinct values, ascending
  dv.reserve(sorted.size());
  for (float x : sorted)
    if (dv.empty() || dv.back() != x) dv.push_back(x);
  const int k = int(std::min<int64_t>(max_k, int64_t(dv.size())));

  // percentile initialisation (float64, rounded to float32)
  std::vector<float> c(static_cast<size_t>(k));
  const auto q = np_linspace_percent_fractions(k);
  for (int j = 0; j < k; ++j) c[size_t(j)] = float(np_quantile_linear(sorted.data(), n, q[size_t(j)]));
  double cb_range = double(c[size_t(k - 1)] - c[0]);
  if (cb_range < 1e-30) cb_range = 1.0;
  const double abs_tol = 0.001 * cb_range;

  // element -> distinct-value id
  std::vector<uint32_t> uid(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    uid[size_t(i)] = uint32_t(std::lower_bound(dv.begin(), dv.end(), data[size_t(i)]) - dv.begin());
  const int64_t U = int64_t(dv.size());
  std::vector<uint8_t> lab(static_cast<size_t>(U));
  std::vector<int64_t> cnt(static_cast<size_t>(k)), off(size_t(k) + 1);
  std::vector<float> grouped(static_cast<size_t>(n));
  std::vector<float> nc(static_cast<size_t>(k));
  for (int it = 0; it < max_iters; ++it) {
    assign_f32(dv.data(), U, c.data(), k, lab.data());
    std::fill(cnt.begin(), cnt.end(), 0);
    for (int64_t i = 0; i < n; ++i) cnt[lab[uid[size_t(i)]]]++;
    off[0] = 0;
    for (int j = 0; j < k; ++j) off[size_t(j) + 1] = off[size_t(j)] + cnt[size_t(j)];
    std::vector<int64_t> wp(off.begin(), off.end() - 1);
    for (int64_t i = 0; i < n; ++i) grouped[size_t(wp[lab[uid[size_t(i)]]]++)] = data[size_t(i)];
    float max_delta = 0.f;
    for (int j = 0; j < k; ++j) {
      nc[size_t(j)] = cnt[size_t(j)] ? np_mean_f32(grouped.data() + off[size_t(j)], cnt[size_t(j)], sum_block)
                                     : c[size_t(j)];
      max_delta = std::max(max_delta, std::fabs(nc[size_t(j)] - c[size_t(j)]));
    }
    if (double(max_delta) < abs_tol) break;
    c.swap(nc);
  }
  return c;
}

// ---- sidecar ---------------------------------------------------------------------------------

SidecarPolicy sidecar_policy_for(const std::string& module) {
  std::string name = module;
  if (name.size() < 7 || name.compare(name.size() - 7, 7, ".weight") != 0) name += ".weight";
  enum Cls { QK, VO, FFN, NORM, EMB, HEAD, UNKNOWN };
  static const std::vector<std::pair<std::regex, Cls>> gguf = {
      {std::regex(R"(blk\.(\d+)\.attn_q\.weight)"), QK},
      {std::regex(R"(blk\.(\d+)\.attn_k\.weight)"), QK},
      {std::regex(R"(blk\.(\d+)\.attn_v\.weight)"), VO},
      {std::regex(R"(blk\.(\d+)\.attn_output\.weight)"), VO},
      {std::regex(R"(blk\.(\d+)\.ffn_gate\.weight)"), FFN},
      {std::regex(R"(blk\.(\d+)\.ffn_up\.weight)"), FFN},
      {std::regex(R"(blk\.(\d+)\.ffn_down\.weight)"), FFN},
      {std::regex(R"(blk\.(\d+)\.\w*norm\w*\.weight)"), NORM},
      {std::regex(R"(^token_embd\.weight$)"), EMB},
      {std::regex(R"(^output\.weight$)"), HEAD},
      {std::regex(R"(^output_norm\.weight$)"), NORM},
  };
  static const std::vector<std::pair<std::regex, Cls>> hf = {
      {std::regex(R"(layers\.(\d+)\.self_attn\.q_proj\.weight)"), QK},
      {std::regex(R"(layers\.(\d+)\.self_attn\.k_proj\.weight)"), QK},
      {std::regex(R"(layers\.(\d+)\.self_attn\.v_proj\.weight)"), VO},
      {std::regex(R"(layers\.(\d+)\.self_attn\.o_proj\.weight)"), VO},
      {std::regex(R"(layers\.(\d+)\.mlp\.gate_proj\.weight)"), FFN},
      {std::regex(R"(layers\.(\d+)\.mlp\.up_proj\.weight)"), FFN},
      {std::regex(R"(layers\.(\d+)\.mlp\.down_proj\.weight)"), FFN},
      {std::regex(R"(layers\.(\d+)\.\w*norm\w*\.weight)"), NORM},
      {std::regex(R"(embed_tokens\.weight$)"), EMB},
      {std::regex(R"(lm_head\.weight$)"), HEAD},
      {std::regex(R"(layers\.(\d+)\.mixer\.in_proj\.weight)"), FFN},
      {std::regex(R"(layers\.(\d+)\.mixer\.out_proj\.weight)"), FFN},
      {std::regex(R"(layers\.(\d+)\.mixer\.x_proj\.weight)"), UNKNOWN},
      {std::regex(R"(layers\.(\d+)\.mixer\.dt_proj\.weight)"), UNKNOWN},
      {std::regex(R"(layers\.(\d+)\.mixer\.B_proj\.weight)"), FFN},
      {std::regex(R"(layers\.(\d+)\.mixer\.C_proj\.weight)"), FFN},
      {std::regex(R"(layers\.(\d+)\.mixer\.norm\.weight)"), NORM},
      {std::regex(R"(backbone\.embeddings?\.weight$)"), EMB},
  };
  Cls cls = UNKNOWN;
  bool found = false;
  for (auto* table : {&gguf, &hf}) {
    for (auto& [re, c] : *table)
      if (std::regex_search(name, re)) {
        cls = c;
        found = true;
        break;
      }
    if (found) break;
  }
  switch (cls) {
    case QK: return {99.95, 512};
    case UNKNOWN: return {99.9, 256};
    default: return {99.9, 512};  // VO, FFN, LM head; NORM/EMB are never compressed by helix
  }
}

void magnitude_sidecar(const float* flat, int64_t n, const SidecarPolicy& pol, std::vector<int64_t>& pos,
                       std::vector<float>& val) {
  pos.clear();
  val.clear();
  if (n <= 0) return;
  if (!(pol.percentile >= 0 && pol.percentile <= 100)) fail("sidecar percentile {} not in [0, 100]", pol.percentile);
  // Order statistics needed by the two percentiles (zeros canonicalised as in kmeans_codebook).
  std::vector<float> work(flat, flat + n);
  for (auto& x : work) {
    if (!std::isfinite(x)) fail("helix sidecar: the weights contain NaN or Inf");
    if (x == 0.f) x = 0.f;
  }
  auto quantile = [&](double q) {
    const double v = double(n - 1) * q;
    if (!(v < double(n - 1))) {
      std::nth_element(work.begin(), work.end() - 1, work.end());
      return double(work[size_t(n - 1)]);
    }
    if (v < 0) {
      std::nth_element(work.begin(), work.begin(), work.end());
      return double(work[0]);
    }
    const int64_t p = int64_t(std::floor(v));
    std::nth_element(work.begin(), work.begin() + p, work.end());
    const float a = work[size_t(p)];
    const float b = *std::min_element(work.begin() + p + 1, work.end());
    const float two[2] = {a, b};
    // same formula as np_quantile_linear on the two neighbours
    return np_quantile_linear(two, 2, v - std::floor(v));
  };
  const double lo = quantile((100.0 - pol.percentile) / 100.0);
  const double hi = quantile(pol.percentile / 100.0);
  // numpy 1.24 compares the float32 array with the float64 scalar in float32
  const float lof = float(lo), hif = float(hi);
  for (int64_t i = 0; i < n; ++i) {
    const float x = flat[i];
    if (x < lof || x > hif) pos.push_back(i);
  }
  if (pol.max_corrections > 0 && int64_t(pos.size()) > pol.max_corrections) {
    std::vector<float> mag(pos.size());
    for (size_t i = 0; i < pos.size(); ++i) mag[i] = std::fabs(flat[pos[i]]);
    const auto order = np_argsort_quicksort(mag);
    std::vector<int64_t> keep;
    keep.reserve(size_t(pol.max_corrections));
    for (int64_t t = 0; t < pol.max_corrections; ++t) keep.push_back(pos[size_t(order[order.size() - 1 - size_t(t)])]);
    std::sort(keep.begin(), keep.end());
    pos.swap(keep);
  }
  val.resize(pos.size());
  for (size_t i = 0; i < pos.size(); ++i) val[i] = f16_to_f32(f32_to_f16(flat[pos[i]]));
}

}  // namespace hxq::helix
