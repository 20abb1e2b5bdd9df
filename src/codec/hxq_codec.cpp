#include "codec/hxq_codec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "codec/helix_reference.h"
#include "codec/kmeans1d.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace hxq {

namespace {

constexpr int64_t kChunk = 1 << 18;  // elements per work item of the element passes

int64_t nchunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Midpoints of an ascending codebook for nearest-centroid search.
struct Nearest {
  int k = 0;
  double mid[256];
  explicit Nearest(const float* c, int k_) : k(k_) {
    for (int j = 0; j + 1 < k; ++j) mid[j] = (double(c[j]) + double(c[j + 1])) * 0.5;
  }
  // index = number of midpoints strictly below x, searched within [lo, hi]
  int find(double x, int lo, int hi) const {
    while (lo < hi) {
      const int m = (lo + hi) >> 1;
      if (x > mid[m]) lo = m + 1;
      else hi = m;
    }
    return lo;
  }
  int find(double x) const { return find(x, 0, k - 1); }
};

// float32 <-> order-preserving uint32 key (−0.0 is mapped like +0.0 by the callers)
inline uint32_t f2key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float key2f(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Which elements go to the sidecar: all with error > thr, plus the first `tie_quota` (by
// position) with error == thr. thr = 0 with tie_quota = 0 means "every element with error > 0".
struct Cut {
  double thr = std::numeric_limits<double>::infinity();
  int64_t tie_quota = 0;
};

// Weighted selection: given (error, count) items with error > 0, find the cut that keeps exactly
// min(budget, Σ count) elements. Deterministic (3-way quickselect with middle pivots).
Cut select_cut(std::vector<std::pair<double, int64_t>> items, int64_t budget) {
  Cut cut;
  if (budget <= 0) return cut;
  int64_t total = 0;
  for (auto& it : items) total += it.second;
  if (total <= budget) {
    cut.thr = 0;
    cut.tie_quota = 0;
    return cut;
  }
  int64_t need = budget;
  size_t lo = 0, hi = items.size();
  for (;;) {
    const double p = items[lo + (hi - lo) / 2].first;
    // partition [lo, hi) into > p | == p | < p
    auto mid1 = std::partition(items.begin() + long(lo), items.begin() + long(hi),
                               [p](const auto& a) { return a.first > p; });
    auto mid2 = std::partition(mid1, items.begin() + long(hi), [p](const auto& a) { return a.first == p; });
    int64_t wg = 0, we = 0;
    for (auto it = items.begin() + long(lo); it != mid1; ++it) wg += it->second;
    for (auto it = mid1; it != mid2; ++it) we += it->second;
    if (wg >= need && wg > 0) {
      hi = size_t(mid1 - items.begin());
    } else if (wg + we >= need) {
      cut.thr = p;
      cut.tie_quota = need - wg;
      return cut;
    } else {
      need -= wg + we;
      lo = size_t(mid2 - items.begin());
    }
  }
}

// Per-chunk sidecar candidates, merged in position order.
struct Candidates {
  std::vector<std::vector<int64_t>> full, tie;
  explicit Candidates(int64_t chunks) : full(size_t(chunks)), tie(size_t(chunks)) {}
  std::vector<int64_t> merge(int64_t tie_quota) const {
    std::vector<int64_t> out;
    for (size_t c = 0; c < full.size(); ++c) {
      const auto& f = full[c];
      const auto& t = tie[c];
      size_t a = 0, b = 0;
      while (a < f.size() || b < t.size()) {
        if (b >= t.size() || (a < f.size() && f[a] < t[b])) {
          out.push_back(f[a++]);
        } else {
          if (tie_quota > 0) {
            out.push_back(t[b]);
            --tie_quota;
          }
          ++b;
        }
      }
    }
    return out;
  }
};

void fill_codebook(HxqTensor& t, const std::vector<float>& cents) {
  t.codebook.assign(256, cents.empty() ? 0.f : cents.back());
  std::copy(cents.begin(), cents.end(), t.codebook.begin());
}

int64_t error_budget(const EncodeOptions& o, int64_t n) {
  if (!(o.sidecar_fraction >= 0 && o.sidecar_fraction <= 1))
    fail("encode: sidecar fraction {} not in [0, 1]", o.sidecar_fraction);
  return int64_t(std::floor(o.sidecar_fraction * double(n)));
}

std::vector<float> to_float_vector(const void* data, DType dt, int64_t n) {
  std::vector<float> f(static_cast<size_t>(n));
  pool().parallel_for(
      nchunks(n),
      [&](int64_t b, int64_t e, int) {
        const int64_t i0 = b * kChunk, i1 = std::min(n, e * kChunk);
        to_f32(dt, static_cast<const char*>(data) + i0 * int64_t(dtype_size(dt)), f.data() + i0, size_t(i1 - i0));
      },
      1);
  return f;
}

// ---------------------------------------------------------------------------------------------
// 16-bit sources (BF16 / F16 codes): histogram of at most 65,536 codes, exact DP, table lookup.

HxqTensor encode_codes16(const uint16_t* codes, DType dt, int64_t rows, int64_t cols, const EncodeOptions& o) {
  const int64_t n = rows * cols;
  auto code_value = [dt](uint32_t c) { return dt == DType::BF16 ? bf16_to_f32(uint16_t(c)) : f16_to_f32(uint16_t(c)); };
  // histogram
  const int T = pool().size();
  std::vector<std::vector<uint32_t>> part(static_cast<size_t>(T));
  std::vector<int64_t> hist(65536, 0);
  const int64_t nc = nchunks(n);
  pool().parallel_for(nc, [&](int64_t b, int64_t e, int th) {
    auto& h = part[size_t(th)];
    if (h.empty()) h.assign(65536, 0);
    for (int64_t i = b * kChunk, end = std::min(n, e * kChunk); i < end; ++i) h[codes[i]]++;
  });
  for (auto& h : part)
    if (!h.empty())
      for (int c = 0; c < 65536; ++c) hist[size_t(c)] += h[size_t(c)];
  // distinct values (±0 merged), ascending
  std::vector<std::pair<float, int64_t>> dist;
  int64_t zero = 0;
  for (uint32_t c = 0; c < 65536; ++c) {
    if (!hist[c]) continue;
    const float v = code_value(c);
    if (!std::isfinite(v)) fail("encode: the weights contain NaN or Inf");
    if (v == 0.f) zero += hist[c];
    else dist.push_back({v, hist[c]});
  }
  if (zero) dist.push_back({0.f, zero});
  std::sort(dist.begin(), dist.end());
  WeightedPoints pts;
  for (auto& [v, w] : dist) {
    pts.value.push_back(v);
    pts.weight.push_back(double(w));
  }
  const auto km = kmeans1d_optimal(pts, o.k);
  HxqTensor t;
  t.rows = rows;
  t.cols = cols;
  fill_codebook(t, km.centroids);
  const int k = int(km.centroids.size());
  const Nearest near(km.centroids.data(), k);
  // per-code index, error class
  std::vector<uint8_t> idx(65536, 0), cls(65536, 0);  // cls: 2 = always, 1 = tie
  std::vector<double> err(65536, 0.0);
  std::vector<std::pair<double, int64_t>> items;
  for (uint32_t c = 0; c < 65536; ++c) {
    if (!hist[c]) continue;
    const float v = code_value(c);
    idx[c] = uint8_t(near.find(v));
    err[c] = std::fabs(double(v) - double(km.centroids[idx[c]]));
  }
  Cut cut;
  if (o.sidecar == SidecarMethod::Error) {
    // group codes by error (codes of ±0 share one value but are separate items: harmless)
    for (uint32_t c = 0; c < 65536; ++c)
      if (hist[c] && err[c] > 0) items.push_back({err[c], hist[c]});
    cut = select_cut(std::move(items), error_budget(o, n));
    for (uint32_t c = 0; c < 65536; ++c) {
      if (!hist[c] || !(err[c] > 0)) continue;
      if (err[c] > cut.thr) cls[c] = 2;
      else if (err[c] == cut.thr) cls[c] = 1;
    }
  }
  t.indices.resize(size_t(n));
  Candidates cand(nc);
  const bool want = o.sidecar == SidecarMethod::Error;
  pool().parallel_for(nc, [&](int64_t b, int64_t e, int) {
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t i0 = ch * kChunk, i1 = std::min(n, i0 + kChunk);
      for (int64_t i = i0; i < i1; ++i) t.indices[size_t(i)] = idx[codes[i]];
      if (!want) continue;
      auto& f = cand.full[size_t(ch)];
      auto& tt = cand.tie[size_t(ch)];
      for (int64_t i = i0; i < i1; ++i) {
        const uint8_t k2 = cls[codes[i]];
        if (k2 == 2) f.push_back(i);
        else if (k2 == 1) tt.push_back(i);
      }
    }
  });
  if (want) {
    t.sidecar_pos = cand.merge(cut.tie_quota);
    t.sidecar_val.resize(t.sidecar_pos.size());
    for (size_t s = 0; s < t.sidecar_pos.size(); ++s) t.sidecar_val[s] = code_value(codes[t.sidecar_pos[s]]);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// F32 sources: radix-sorted keys -> distinct values -> exact DP (or binned DP + Lloyd polish).

void radix_sort_u32(std::vector<uint32_t>& a) {
  std::vector<uint32_t> tmp(a.size());
  for (int shift = 0; shift < 32; shift += 11) {
    std::vector<size_t> cnt(2049, 0);
    for (uint32_t x : a) cnt[((x >> shift) & 2047u) + 1]++;
    bool trivial = false;
    for (size_t d = 1; d <= 2048; ++d)
      if (cnt[d] == a.size()) trivial = true;
    if (trivial) continue;
    for (size_t d = 1; d <= 2048; ++d) cnt[d] += cnt[d - 1];
    for (uint32_t x : a) tmp[cnt[(x >> shift) & 2047u]++] = x;
    a.swap(tmp);
  }
}

// Greedy bins of consecutive distinct values with count·width <= tau; returns bin starts.
std::vector<int64_t> greedy_bins(const WeightedPoints& p, double tau, int64_t limit) {
  std::vector<int64_t> starts;
  const int64_t U = p.size();
  int64_t s = 0;
  double cnt = 0;
  starts.push_back(0);
  for (int64_t i = 0; i < U; ++i) {
    const double c2 = cnt + p.weight[size_t(i)];
    if (i > s && c2 * (p.value[size_t(i)] - p.value[size_t(s)]) > tau) {
      s = i;
      cnt = p.weight[size_t(i)];
      starts.push_back(i);
      if (int64_t(starts.size()) > limit) return starts;
    } else {
      cnt = c2;
    }
  }
  return starts;
}

// Lloyd steps on exact weighted points from an initial partition (cluster starts); returns the
// final non-empty clusters' means. Each step lowers (never raises) the SSE.
std::vector<float> lloyd_polish(const WeightedPoints& p, std::vector<int64_t> starts, int max_iter) {
  const int64_t U = p.size();
  auto means = [&](const std::vector<int64_t>& st) {
    std::vector<double> m;
    for (size_t j = 0; j < st.size(); ++j) {
      const int64_t a = st[j], b = j + 1 < st.size() ? st[j + 1] : U;
      if (b <= a) continue;
      long double sw = 0, sv = 0;
      for (int64_t i = a; i < b; ++i) {
        sw += p.weight[size_t(i)];
        sv += (long double)p.weight[size_t(i)] * p.value[size_t(i)];
      }
      m.push_back(double(sv / sw));
    }
    return m;
  };
  std::vector<double> c = means(starts);
  for (int it = 0; it < max_iter; ++it) {
    std::vector<int64_t> ns{0};
    for (size_t j = 0; j + 1 < c.size(); ++j) {
      const double m = (c[j] + c[j + 1]) * 0.5;
      // first point strictly above the midpoint starts the next cluster
      const int64_t b = int64_t(std::upper_bound(p.value.begin(), p.value.end(), m) - p.value.begin());
      ns.push_back(std::max(b, ns.back()));
    }
    if (ns == starts) break;
    starts = ns;
    c = means(starts);
  }
  std::vector<float> out;
  for (double v : c) {
    const float f = float(v);
    if (out.empty() || f > out.back()) out.push_back(f);
  }
  return out;
}

HxqTensor encode_f32_optimal(const float* w, int64_t rows, int64_t cols, const EncodeOptions& o) {
  const int64_t n = rows * cols;
  std::vector<uint32_t> keys(static_cast<size_t>(n));
  std::atomic<bool> bad{false};
  pool().parallel_for(nchunks(n), [&](int64_t b, int64_t e, int) {
    bool lbad = false;
    for (int64_t i = b * kChunk, end = std::min(n, e * kChunk); i < end; ++i) {
      float x = w[i];
      if (!std::isfinite(x)) lbad = true;
      if (x == 0.f) x = 0.f;
      keys[size_t(i)] = f2key(x);
    }
    if (lbad) bad = true;
  });
  if (bad) fail("encode: the weights contain NaN or Inf");
  radix_sort_u32(keys);
  WeightedPoints pts;
  for (size_t i = 0; i < keys.size();) {
    size_t j = i;
    while (j < keys.size() && keys[j] == keys[i]) ++j;
    pts.value.push_back(key2f(keys[i]));
    pts.weight.push_back(double(j - i));
    i = j;
  }
  std::vector<uint32_t>().swap(keys);
  const int64_t bound = o.f32_exact_bound > 0 ? o.f32_exact_bound : kF32ExactBound;
  std::vector<float> cents;
  if (pts.size() <= bound) {
    cents = kmeans1d_optimal(pts, o.k).centroids;
  } else {
    // smallest tau (within 2 %) giving <= bound bins
    const double span = pts.value.back() - pts.value.front();
    double hi = double(n) * span * 1.0000001, lo = hi * 0x1p-80;
    while (hi / lo > 1.02) {
      const double mid = std::sqrt(lo * hi);
      if (int64_t(greedy_bins(pts, mid, bound).size()) <= bound) hi = mid;
      else lo = mid;
    }
    const auto bins = greedy_bins(pts, hi, bound);
    WeightedPoints bp;
    for (size_t b = 0; b < bins.size(); ++b) {
      const int64_t a = bins[b], e = b + 1 < bins.size() ? bins[b + 1] : pts.size();
      long double sw = 0, sv = 0;
      for (int64_t i = a; i < e; ++i) {
        sw += pts.weight[size_t(i)];
        sv += (long double)pts.weight[size_t(i)] * pts.value[size_t(i)];
      }
      bp.value.push_back(double(sv / sw));
      bp.weight.push_back(double(sw));
    }
    const auto km = kmeans1d_optimal(bp, o.k);
    std::vector<int64_t> starts;
    for (int64_t s : km.starts) starts.push_back(bins[size_t(s)]);
    cents = lloyd_polish(pts, starts, 100);
  }
  HxqTensor t;
  t.rows = rows;
  t.cols = cols;
  fill_codebook(t, cents);
  const int k = int(cents.size());
  const Nearest near(cents.data(), k);
  // bucket table on the top 16 key bits: index range of all floats in the bucket
  std::vector<uint8_t> blo(65536), bhi(65536);
  for (uint32_t b = 0; b < 65536; ++b) {
    float vmin = key2f(b << 16), vmax = key2f((b << 16) | 0xffffu);
    if (std::isnan(vmin) || std::isnan(vmax) || std::isinf(vmin) || std::isinf(vmax)) {
      blo[b] = 0;
      bhi[b] = uint8_t(k - 1);
      continue;
    }
    blo[b] = uint8_t(near.find(vmin));
    bhi[b] = uint8_t(near.find(vmax));
  }
  auto index_of = [&](float x) -> int {
    const uint32_t key = f2key(x == 0.f ? 0.f : x);
    const uint32_t b = key >> 16;
    const int lo = blo[b], hi = bhi[b];
    return lo == hi ? lo : near.find(double(x), lo, hi);
  };
  Cut cut;
  const bool want = o.sidecar == SidecarMethod::Error;
  if (want) {
    std::vector<std::pair<double, int64_t>> items;
    for (int64_t u = 0; u < pts.size(); ++u) {
      const float v = float(pts.value[size_t(u)]);
      const double e = std::fabs(double(v) - double(cents[size_t(index_of(v))]));
      if (e > 0) items.push_back({e, int64_t(pts.weight[size_t(u)])});
    }
    cut = select_cut(std::move(items), error_budget(o, n));
  }
  t.indices.resize(size_t(n));
  const int64_t nc = nchunks(n);
  Candidates cand(nc);
  pool().parallel_for(nc, [&](int64_t b, int64_t e, int) {
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t i0 = ch * kChunk, i1 = std::min(n, i0 + kChunk);
      auto& f = cand.full[size_t(ch)];
      auto& tt = cand.tie[size_t(ch)];
      for (int64_t i = i0; i < i1; ++i) {
        const int j = index_of(w[i]);
        t.indices[size_t(i)] = uint8_t(j);
        if (want) {
          const double er = std::fabs(double(w[i]) - double(cents[size_t(j)]));
          if (er > 0) {
            if (er > cut.thr) f.push_back(i);
            else if (er == cut.thr) tt.push_back(i);
          }
        }
      }
    }
  });
  if (want) {
    t.sidecar_pos = cand.merge(cut.tie_quota);
    t.sidecar_val.resize(t.sidecar_pos.size());
    for (size_t s = 0; s < t.sidecar_pos.size(); ++s) t.sidecar_val[s] = w[t.sidecar_pos[s]];
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// helix-substrate's Lloyd codebook (+ float32-argmin indices); any sidecar.

HxqTensor encode_lloyd(const float* w, int64_t rows, int64_t cols, const EncodeOptions& o, const uint16_t* codes,
                       DType code_dt) {
  const int64_t n = rows * cols;
  HxqTensor t;
  t.rows = rows;
  t.cols = cols;
  const auto sample = helix::kmeans_sample(w, n);
  const auto cents = helix::kmeans_codebook(sample.data(), int64_t(sample.size()), o.k);
  fill_codebook(t, cents);
  t.indices.resize(size_t(n));
  if (codes && std::is_sorted(cents.begin(), cents.end())) {
    // the assignment is a function of the value: tabulate it once per 16-bit code
    std::vector<uint8_t> tab(65536);
    for (uint32_t c = 0; c < 65536; ++c) {
      const float v = code_dt == DType::BF16 ? bf16_to_f32(uint16_t(c)) : f16_to_f32(uint16_t(c));
      tab[c] = std::isfinite(v) ? helix::assign_one_f32(v, cents.data(), int(cents.size())) : 0;
    }
    pool().parallel_for(
        n, [&](int64_t b, int64_t e, int) {
          for (int64_t i = b; i < e; ++i) t.indices[size_t(i)] = tab[codes[i]];
        },
        kChunk);
  } else {
    helix::assign_f32(w, n, cents.data(), int(cents.size()), t.indices.data());
  }
  if (o.sidecar == SidecarMethod::Error) {
    const int64_t nc = nchunks(n);
    // error per element; cut by weighted selection over all elements with error > 0
    std::vector<std::pair<double, int64_t>> items;
    for (int64_t i = 0; i < n; ++i) {
      const double e = std::fabs(double(w[i]) - double(cents[t.indices[size_t(i)]]));
      if (e > 0) items.push_back({e, 1});
    }
    const Cut cut = select_cut(std::move(items), error_budget(o, n));
    Candidates cand(nc);
    pool().parallel_for(nc, [&](int64_t b, int64_t e, int) {
      for (int64_t ch = b; ch < e; ++ch)
        for (int64_t i = ch * kChunk, i1 = std::min(n, ch * kChunk + kChunk); i < i1; ++i) {
          const double er = std::fabs(double(w[i]) - double(cents[t.indices[size_t(i)]]));
          if (er > 0) {
            if (er > cut.thr) cand.full[size_t(ch)].push_back(i);
            else if (er == cut.thr) cand.tie[size_t(ch)].push_back(i);
          }
        }
    });
    t.sidecar_pos = cand.merge(cut.tie_quota);
    t.sidecar_val.resize(t.sidecar_pos.size());
    for (size_t s = 0; s < t.sidecar_pos.size(); ++s) t.sidecar_val[s] = w[t.sidecar_pos[s]];
  }
  return t;
}

void check_options(const EncodeOptions& o, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) fail("encode: negative shape [{}, {}]", rows, cols);
  if (o.k < 1 || o.k > 256) fail("encode: codebook size k = {} not in [1, 256]", o.k);
  if (o.sidecar == SidecarMethod::Error) error_budget(o, 1);
}

void add_magnitude_sidecar(HxqTensor& t, const float* w, const EncodeOptions& o) {
  auto pol = helix::sidecar_policy_for(o.module);
  if (o.sidecar_percentile > 0) pol.percentile = o.sidecar_percentile;
  if (o.sidecar_max > 0) pol.max_corrections = o.sidecar_max;
  helix::magnitude_sidecar(w, t.rows * t.cols, pol, t.sidecar_pos, t.sidecar_val);
}

// CodebookPrecision::Bf16: rounds t's centroids to BF16, re-assigns every weight w[i] to the
// nearest rounded centroid and redoes an Error sidecar on the new errors (same rule as the
// encoders: the budget largest errors > 0, ties at the cut by lowest position). With the 16-bit
// codes of the weights (codes[i] encodes w[i] in code_dt), index and error are tabulated per code.
void round_codebook_bf16(HxqTensor& t, const float* w, const EncodeOptions& o, const uint16_t* codes = nullptr,
                         DType code_dt = DType::F32) {
  const int64_t n = t.rows * t.cols;
  std::vector<float> cents;
  for (float c : t.codebook) {
    const float r = bf16_to_f32(f32_to_bf16(c));
    if (!std::isfinite(r)) fail("encode: centroid {} does not round to a finite BF16 value", c);
    cents.push_back(r == 0.f ? 0.f : r);
  }
  std::sort(cents.begin(), cents.end());
  cents.erase(std::unique(cents.begin(), cents.end()), cents.end());
  fill_codebook(t, cents);
  const int k = int(cents.size());
  const Nearest near(cents.data(), k);
  const bool want = o.sidecar == SidecarMethod::Error;
  const int64_t nc = nchunks(n);
  if (codes) {
    std::vector<int64_t> hist(65536, 0);
    for (int64_t i = 0; i < n; ++i) hist[codes[i]]++;
    std::vector<uint8_t> idx(65536, 0);
    std::vector<double> err(65536, 0.0);
    std::vector<std::pair<double, int64_t>> items;
    for (uint32_t c = 0; c < 65536; ++c) {
      if (!hist[c]) continue;
      const float v = code_dt == DType::BF16 ? bf16_to_f32(uint16_t(c)) : f16_to_f32(uint16_t(c));
      idx[c] = uint8_t(near.find(double(v)));
      err[c] = std::fabs(double(v) - double(cents[idx[c]]));
      if (err[c] > 0) items.push_back({err[c], hist[c]});
    }
    pool().parallel_for(
        n, [&](int64_t b, int64_t e, int) {
          for (int64_t i = b; i < e; ++i) t.indices[size_t(i)] = idx[codes[i]];
        },
        kChunk);
    if (!want) return;
    const Cut cut = select_cut(std::move(items), error_budget(o, n));
    t.sidecar_pos.clear();
    t.sidecar_val.clear();
    int64_t quota = cut.tie_quota;
    for (int64_t i = 0; i < n; ++i) {
      const double er = err[codes[i]];
      if (er > 0 && (er > cut.thr || (er == cut.thr && quota-- > 0))) {
        t.sidecar_pos.push_back(i);
        t.sidecar_val.push_back(w[i]);
      }
    }
    return;
  }
  std::vector<std::vector<double>> errs(size_t(want ? nc : 0));
  pool().parallel_for(nc, [&](int64_t b, int64_t e, int) {
    for (int64_t ch = b; ch < e; ++ch)
      for (int64_t i = ch * kChunk, i1 = std::min(n, ch * kChunk + kChunk); i < i1; ++i) {
        const int j = near.find(double(w[i]));
        t.indices[size_t(i)] = uint8_t(j);
        if (want) {
          const double er = std::fabs(double(w[i]) - double(cents[size_t(j)]));
          if (er > 0) errs[size_t(ch)].push_back(er);
        }
      }
  });
  if (!want) return;
  std::vector<double> all;
  for (auto& v : errs) all.insert(all.end(), v.begin(), v.end());
  std::vector<std::vector<double>>().swap(errs);
  const int64_t budget = error_budget(o, n);
  Cut cut;  // thr = inf: nothing
  if (budget > 0 && int64_t(all.size()) <= budget) {
    cut.thr = 0;
  } else if (budget > 0) {
    std::nth_element(all.begin(), all.begin() + (budget - 1), all.end(), std::greater<>());
    cut.thr = all[size_t(budget - 1)];
    int64_t above = 0;
    for (double x : all) above += x > cut.thr;
    cut.tie_quota = budget - above;
  }
  t.sidecar_pos.clear();
  t.sidecar_val.clear();
  int64_t quota = cut.tie_quota;
  for (int64_t i = 0; i < n; ++i) {
    const double er = std::fabs(double(w[i]) - double(t.codebook[t.indices[size_t(i)]]));
    if (!(er > 0)) continue;
    if (er > cut.thr || (er == cut.thr && quota-- > 0)) {
      t.sidecar_pos.push_back(i);
      t.sidecar_val.push_back(w[i]);
    }
  }
}

}  // namespace

uint8_t nearest_index(float x, const float* c, int k) {
  int lo = 0, hi = k - 1;
  while (lo < hi) {
    const int m = (lo + hi) >> 1;
    if (double(x) > (double(c[m]) + double(c[m + 1])) * 0.5) lo = m + 1;
    else hi = m;
  }
  return uint8_t(lo);
}

namespace {
HxqTensor encode_impl(const void* data, DType dt, int64_t rows, int64_t cols, const EncodeOptions& o);
}

HxqTensor encode(const void* data, DType dt, int64_t rows, int64_t cols, const EncodeOptions& o) {
  HxqTensor t = encode_impl(data, dt, rows, cols, o);
  if (o.codebook_precision == CodebookPrecision::Bf16 && rows * cols > 0) {
    std::vector<float> f;
    const float* w = static_cast<const float*>(data);
    if (dt != DType::F32 || reinterpret_cast<uintptr_t>(data) % alignof(float)) {
      f = to_float_vector(data, dt, rows * cols);
      w = f.data();
    }
    if (dt == DType::F32) {
      round_codebook_bf16(t, w, o);
    } else {
      std::vector<uint16_t> copy;
      const uint16_t* codes = static_cast<const uint16_t*>(data);
      if (reinterpret_cast<uintptr_t>(data) % alignof(uint16_t)) {
        copy.resize(size_t(rows * cols));
        std::memcpy(copy.data(), data, copy.size() * 2);
        codes = copy.data();
      }
      round_codebook_bf16(t, w, o, codes, dt);
    }
  }
  return t;
}

namespace {
HxqTensor encode_impl(const void* data, DType dt, int64_t rows, int64_t cols, const EncodeOptions& o) {
  check_options(o, rows, cols);
  if (dt != DType::F32 && dt != DType::F16 && dt != DType::BF16)
    fail("encode: unsupported source dtype {} (need F32, F16 or BF16)", dtype_name(dt));
  const int64_t n = rows * cols;
  HxqTensor t;
  if (n == 0) {
    t.rows = rows;
    t.cols = cols;
    t.codebook.assign(256, 0.f);
    return t;
  }
  if (o.codebook == CodebookMethod::Optimal && dt != DType::F32) {
    // 16-bit codes; unaligned storage is copied into an aligned buffer
    std::vector<uint16_t> copy;
    const uint16_t* codes = static_cast<const uint16_t*>(data);
    if (reinterpret_cast<uintptr_t>(data) % alignof(uint16_t)) {
      copy.resize(size_t(n));
      std::memcpy(copy.data(), data, size_t(n) * 2);
      codes = copy.data();
    }
    t = encode_codes16(codes, dt, rows, cols, o);
    if (o.sidecar == SidecarMethod::Magnitude) {
      const auto f = to_float_vector(data, dt, n);
      add_magnitude_sidecar(t, f.data(), o);
    }
    return t;
  }
  std::vector<float> f;
  const float* w = static_cast<const float*>(data);
  if (dt != DType::F32 || reinterpret_cast<uintptr_t>(data) % alignof(float)) {
    f = to_float_vector(data, dt, n);
    w = f.data();
  }
  if (o.codebook == CodebookMethod::Lloyd) {
    std::vector<uint16_t> copy;
    const uint16_t* codes = nullptr;
    if (dt != DType::F32) {
      codes = static_cast<const uint16_t*>(data);
      if (reinterpret_cast<uintptr_t>(data) % alignof(uint16_t)) {
        copy.resize(size_t(n));
        std::memcpy(copy.data(), data, size_t(n) * 2);
        codes = copy.data();
      }
    }
    t = encode_lloyd(w, rows, cols, o, codes, dt);
  } else {
    t = encode_f32_optimal(w, rows, cols, o);
  }
  if (o.sidecar == SidecarMethod::Magnitude) add_magnitude_sidecar(t, w, o);
  return t;
}
}  // namespace

HxqTensor encode(const float* w, int64_t rows, int64_t cols, const EncodeOptions& o) {
  check_options(o, rows, cols);
  const int64_t n = rows * cols;
  if (o.codebook == CodebookMethod::Optimal && (o.source_dtype == DType::BF16 || o.source_dtype == DType::F16) &&
      n > 0) {
    // exact 16-bit codes when every value is representable
    std::vector<uint16_t> codes(static_cast<size_t>(n));
    std::atomic<bool> exact{true};
    const bool bf = o.source_dtype == DType::BF16;
    pool().parallel_for(nchunks(n), [&](int64_t b, int64_t e, int) {
      bool ok = true;
      for (int64_t i = b * kChunk, end = std::min(n, e * kChunk); i < end && ok; ++i) {
        const float x = w[i];
        const uint16_t c = bf ? f32_to_bf16(x) : f32_to_f16(x);
        const float back = bf ? bf16_to_f32(c) : f16_to_f32(c);
        if (!(back == x) || std::signbit(back) != std::signbit(x)) ok = false;
        codes[size_t(i)] = c;
      }
      if (!ok) exact = false;
    });
    if (exact) {
      HxqTensor t = encode_codes16(codes.data(), o.source_dtype, rows, cols, o);
      if (o.sidecar == SidecarMethod::Magnitude) add_magnitude_sidecar(t, w, o);
      if (o.codebook_precision == CodebookPrecision::Bf16) round_codebook_bf16(t, w, o, codes.data(), o.source_dtype);
      return t;
    }
  }
  return encode(static_cast<const void*>(w), DType::F32, rows, cols, o);
}

void validate(const HxqTensor& t) {
  if (t.rows < 0 || t.cols < 0) fail("HXQ tensor: negative shape [{}, {}]", t.rows, t.cols);
  const int64_t n = t.rows * t.cols;
  if (t.codebook.size() != 256) fail("HXQ tensor: codebook has {} entries (need 256)", t.codebook.size());
  if (int64_t(t.indices.size()) != n) fail("HXQ tensor: {} indices for shape [{}, {}]", t.indices.size(), t.rows, t.cols);
  if (t.sidecar_pos.size() != t.sidecar_val.size())
    fail("HXQ tensor: {} sidecar positions but {} values", t.sidecar_pos.size(), t.sidecar_val.size());
  for (size_t i = 0; i < t.sidecar_pos.size(); ++i) {
    if (t.sidecar_pos[i] < 0 || t.sidecar_pos[i] >= n)
      fail("HXQ tensor: sidecar position {} out of range [0, {})", t.sidecar_pos[i], n);
    if (i && t.sidecar_pos[i] <= t.sidecar_pos[i - 1])
      fail("HXQ tensor: sidecar positions not strictly ascending at entry {}", i);
  }
}

void decode(const HxqTensor& t, float* out) {
  validate(t);
  const int64_t n = t.rows * t.cols;
  const float* cb = t.codebook.data();
  const uint8_t* idx = t.indices.data();
  pool().parallel_for(
      n, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) out[i] = cb[idx[i]];
      },
      kChunk);
  for (size_t s = 0; s < t.sidecar_pos.size(); ++s) out[t.sidecar_pos[s]] = t.sidecar_val[s];
}

EncodeStats encode_stats(const void* data, DType dt, const HxqTensor& t) {
  validate(t);
  const int64_t n = t.rows * t.cols;
  const int64_t nc = nchunks(n);
  struct Acc {
    long double sw2 = 0, se = 0, se_vq = 0;
    double maxe = 0;
  };
  std::vector<Acc> acc(static_cast<size_t>(nc));
  pool().parallel_for(nc, [&](int64_t b, int64_t e, int) {
    std::vector<float> buf(static_cast<size_t>(kChunk));
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t i0 = ch * kChunk, i1 = std::min(n, i0 + kChunk);
      to_f32(dt, static_cast<const char*>(data) + i0 * int64_t(dtype_size(dt)), buf.data(), size_t(i1 - i0));
      auto sb = std::lower_bound(t.sidecar_pos.begin(), t.sidecar_pos.end(), i0);
      Acc a;
      for (int64_t i = i0; i < i1; ++i) {
        const double x = buf[size_t(i - i0)];
        const double q = t.codebook[t.indices[size_t(i)]];
        double d = x - q;
        a.se_vq += (long double)(d * d);
        if (sb != t.sidecar_pos.end() && *sb == i) {
          d = x - double(t.sidecar_val[size_t(sb - t.sidecar_pos.begin())]);
          ++sb;
        }
        a.sw2 += (long double)(x * x);
        a.se += (long double)(d * d);
        a.maxe = std::max(a.maxe, std::fabs(d));
      }
      acc[size_t(ch)] = a;
    }
  });
  Acc tot;
  for (auto& a : acc) {
    tot.sw2 += a.sw2;
    tot.se += a.se;
    tot.se_vq += a.se_vq;
    tot.maxe = std::max(tot.maxe, a.maxe);
  }
  EncodeStats s;
  if (n == 0) return s;
  s.mse = double(tot.se / n);
  s.mse_vq = double(tot.se_vq / n);
  s.max_abs_err = tot.maxe;
  s.sqnr_db = tot.se > 0 ? double(10.0L * std::log10(tot.sw2 / tot.se)) : std::numeric_limits<double>::infinity();
  return s;
}

EncodeStats encode_stats(const float* w, const HxqTensor& t) { return encode_stats(w, DType::F32, t); }

}  // namespace hxq
