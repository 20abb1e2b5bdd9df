#include "codec/hxq2_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "codec/kmeans1d.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace hxq {

bool hxq2_bits_supported(int bits) { return bits == 4 || bits == 5 || bits == 6 || bits == 8; }
bool hxq2_group_supported(int group) { return group == 16 || group == 32; }

int64_t hxq2_chunks(int64_t cols) { return (cols + kHxq2Chunk - 1) / kHxq2Chunk; }
int64_t hxq2_row_bytes(int64_t cols, int bits) { return hxq2_packed_row_bytes(cols, bits); }
int64_t hxq2_groups(int64_t cols, int group) { return (cols + group - 1) / group; }
int64_t hxq2_scale_bytes(int64_t rows, int64_t cols, int group) { return (rows * hxq2_groups(cols, group) * 6 + 7) / 8; }

void hxq2_unpack_row(const uint8_t* row, int bits, int64_t cols, uint8_t* idx) {
  uint8_t tmp[32];
  for (int64_t ch = 0; ch * 32 < cols; ++ch) {
    const int64_t n = std::min<int64_t>(32, cols - ch * 32);
    if (n == 32) hxq2_unpack_chunk(row + ch * 4 * bits, bits, tmp);
    else hxq2_unpack_tail(row + ch * 4 * bits, n, bits, tmp);
    std::memcpy(idx + ch * 32, tmp, size_t(n));
  }
}

uint32_t hxq2_scale_code(const uint8_t* s, int64_t g) {
  const int64_t bit = 6 * g, byte = bit >> 3;
  const int sh = int(bit & 7);
  uint32_t v = s[byte] >> sh;
  if (sh > 2) v |= uint32_t(s[byte + 1]) << (8 - sh);
  return v & 63;
}

void hxq2_set_scale_code(uint8_t* s, int64_t g, uint32_t q) {
  const int64_t bit = 6 * g, byte = bit >> 3;
  const int sh = int(bit & 7);
  const uint32_t cur = uint32_t(s[byte]) | (sh > 2 ? uint32_t(s[byte + 1]) << 8 : 0u);
  const uint32_t v = (cur & ~(63u << sh)) | ((q & 63u) << sh);
  s[byte] = uint8_t(v);
  if (sh > 2) s[byte + 1] = uint8_t(v >> 8);
}

void hxq2_scale_table(float scale_max, float scale_step, float* lut) {
  for (int q = 0; q < kHxq2Codes; ++q)
    lut[q] = float(double(scale_max) * std::exp2(-double(q) * double(scale_step)));
}

uint64_t Hxq2Tensor::stored_bytes() const {
  return (shared_codebook ? 0 : codebook.size() * 4) + indices.size() + scales.size() + 8 + 8 +
         sidecar_pos.size() * 12;
}

void Hxq2Histogram::add(const Hxq2Histogram& o) {
  for (int i = 0; i < kHxq2HistBins; ++i) {
    w[size_t(i)] += o.w[size_t(i)];
    wu[size_t(i)] += o.wu[size_t(i)];
  }
}

namespace {

// Nearest-entry search in an ascending codebook: the number of midpoints (c[j] + c[j+1]) / 2
// strictly below u (lower index on exact ties), started from a bucket table over [c0, c_last].
class Nearest {
 public:
  explicit Nearest(const std::vector<float>& cb) : k_(int(cb.size())) {
    // k − 1 midpoints and a +inf sentinel (the scan below needs no bound check).
    mid_.assign(size_t(k_), std::numeric_limits<float>::infinity());
    for (int j = 0; j + 1 < k_; ++j) mid_[size_t(j)] = float(0.5 * (double(cb[size_t(j)]) + double(cb[size_t(j) + 1])));
    lo_ = cb.front();
    hi_ = cb.back();
    inv_ = hi_ > lo_ ? float(kBuckets) / (hi_ - lo_) : 0.0f;
    lut_.resize(kBuckets + 2);
    int j = 0;
    for (int b = 0; b <= kBuckets + 1; ++b) {
      // Conservative start: midpoints below the previous bucket's start value.
      const float v = b == 0 ? lo_ : lo_ + float(b - 1) / (inv_ > 0 ? inv_ : 1.0f);
      while (j < k_ - 1 && mid_[size_t(j)] < v) ++j;
      lut_[size_t(b)] = uint16_t(j);
    }
  }
  // u <= c0 gives bucket 0 and no midpoint below it: 0. The bucket table leaves at most one or
  // two midpoints to step over in most buckets: two branch-free steps, then a loop for the rest.
  uint32_t operator()(float u) const {
    if (u >= hi_) return uint32_t(k_ - 1);
    const int b = std::clamp(int((u - lo_) * inv_), 0, kBuckets + 1);
    uint32_t j = lut_[size_t(b)];
    j += uint32_t(mid_[j] < u);
    j += uint32_t(mid_[j] < u);
    while (mid_[j] < u) ++j;
    return j;
  }

 private:
  static constexpr int kBuckets = 4096;
  int k_;
  float lo_ = 0, hi_ = 0, inv_ = 0;
  std::vector<float> mid_;
  std::vector<uint16_t> lut_;
};

// Rows per histogram chunk: at most 64 chunks, independent of the thread count (determinism).
int64_t hist_chunk_rows(int64_t rows) { return std::max<int64_t>(1, (rows + 63) / 64); }

int bin_of(float u) {
  const float x = std::clamp(u, -kHxq2HistRange, kHxq2HistRange);
  int b = int((x + kHxq2HistRange) * (float(kHxq2HistBins) / (2 * kHxq2HistRange)));
  return std::clamp(b, 0, kHxq2HistBins - 1);
}

// Squared error of n weights under scale s and codebook c (nearest entries); stops early (returning
// a value > limit) once the partial sum exceeds `limit`.
inline double group_error(const float* w, int64_t n, float s, const Nearest& nn, const float* c, double limit) {
  const float inv = 1.0f / s;
  double e = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float d = s * c[nn(w[i] * inv)];
    const double r = double(w[i]) - double(d);
    e += r * r;
    if (e > limit) return e;
  }
  return e;
}

// The same for small codebooks (k <= kSmallK), branch-free over a whole group (n <= 32) so that
// the compiler vectorises it: each weight's entry is found by stepping over the k − 1 ascending
// midpoints (u > mid[m] selects c[m + 1]: exactly c[nearest]); float32 sum of the n squares.
constexpr int kSmallK = 64;
__attribute__((target_clones("avx2", "default"))) float group_error_small(const float* w, int n, float s,
                                                                           const float* mid, const float* c, int k) {
  float u[32], v[32];
  const float inv = 1.0f / s;
  for (int i = 0; i < 32; ++i) {
    u[i] = i < n ? w[i] * inv : 0.0f;
    v[i] = c[0];
  }
  for (int m = 0; m + 1 < k; ++m) {
    const float mm = mid[m], cm = c[m + 1];
    for (int i = 0; i < 32; ++i) v[i] = u[i] > mm ? cm : v[i];
  }
  float e = 0;
  for (int i = 0; i < 32; ++i) {
    const float r = i < n ? w[i] - s * v[i] : 0.0f;
    e += r * r;
  }
  return e;
}

// For every group: the code among the neighbours of the no-clipping code q0 (the one whose scale
// maps the group's max |w| onto the codebook's largest |entry|) with the least squared error, in
// a window q0 − below .. q0 + above per codebook size. Measured on mamba2-neox-17m (every group
// searched over q0 − 8 .. q0 + 6): at 8 bits no group chose above q0 + 1 and many chose down to
// q0 − 8 (a larger scale keeps a group off the codebook's sparse outer entries), at 6 bits up to
// q0 + 2, at 5 bits q0 + 3, at 4 bits q0 + 5. Median SQNR against the former q0 − 2 .. q0 + 5 for
// all: 8 bits +0.16 dB, 6 bits +0.09, 5 bits +0.07 (q0 − 6), 4 bits +0.009 (q0 − 6: not worth
// its 1.75x search time, so 4 bits keeps q0 − 2). At 4 bits, group 16, widening the window to
// q0 + 10 or q0 + 16 gave the same SQNR and mean KL (first 8,192 WikiText-2 tokens).
struct SearchWindow {
  int below, above;
};
SearchWindow search_window(int k) {
  if (k <= 16) return {2, 5};
  if (k <= 32) return {6, 3};
  if (k <= 64) return {6, 2};
  return {6, 1};
}

// refine: only the codes next to each group's current one (the second round, after the codebook
// was refitted to the first round's scales: on mamba2-neox-17m the full window there gave the
// the same median SQNR to 0.003 dB at every width; 8 bits, synthetic Mamba2-370m: 33 -> 25 s).
void search_scales(const float* w, int64_t rows, int64_t cols, int group, const std::vector<float>& cb,
                   Hxq2Scales& s, bool refine = false) {
  float lut[kHxq2Codes];
  hxq2_scale_table(s.scale_max, s.scale_step, lut);
  const Nearest nn(cb);
  const int k = int(cb.size());
  const bool small = k <= kSmallK;
  std::vector<float> mid(size_t(k), 0.0f);
  for (int j = 0; j + 1 < k; ++j) mid[size_t(j)] = float(0.5 * (double(cb[size_t(j)]) + double(cb[size_t(j) + 1])));
  const double cm = std::max(std::fabs(double(cb.front())), std::fabs(double(cb.back())));
  const int64_t ng = hxq2_groups(cols, group);
  pool().parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < ng; ++g) {
        const float* x = w + r * cols + g * group;
        const int64_t n = std::min<int64_t>(group, cols - g * group);
        float a = 0;
        for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
        int q0 = kHxq2Codes - 1;
        if (a > 0 && cm > 0) {
          const double f = std::floor(std::log2(double(s.scale_max) * cm / double(a)) / double(s.scale_step));
          q0 = int(std::clamp(f, 0.0, double(kHxq2Codes - 1)));
        }
        // The no-clipping code first (usually the best, so the others stop early); the lowest code
        // wins ties, so the result does not depend on the order of evaluation.
        int best = q0;
        double be = std::numeric_limits<double>::infinity();
        auto error = [&](int q, double limit) {
          return small ? double(group_error_small(x, int(n), lut[q], mid.data(), cb.data(), k))
                       : group_error(x, n, lut[q], nn, cb.data(), limit);
        };
        if (a > 0) {
          SearchWindow sw = search_window(k);
          if (refine) {
            q0 = s.code[size_t(r * ng + g)];
            best = q0;
            sw = {1, 1};
          }
          be = error(q0, be);
          // First round: every second code of the window (and its ends); the second round's
          // refinement fills the gaps next to the winner.
          // (4 bits: median SQNR −0.0004 dB on mamba2-neox-17m for 0.77x the time; at 5–8 bits
          // it cost 0.04–0.17 dB, so they try every code.)
          const int stride = refine || k > 16 ? 1 : 2;
          for (int q = std::max(0, q0 - sw.below); q <= std::min(kHxq2Codes - 1, q0 + sw.above); ++q) {
            if (q == q0 || ((q - q0) % stride != 0 && q != q0 - sw.below && q != q0 + sw.above)) continue;
            const double e = error(q, be);
            if (e < be || (e == be && q < best)) {
              be = e;
              best = q;
            }
          }
        }
        s.code[size_t(r * ng + g)] = uint8_t(best);
      }
  }, 16);
}

void check_finite(const float* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(w[i])) fail("encode2: non-finite weight at flat position {}", i);
}

}  // namespace

Hxq2Scales hxq2_initial_scales(const float* w, int64_t rows, int64_t cols, int group) {
  const int64_t ng = hxq2_groups(cols, group);
  std::vector<float> amax(size_t(rows * ng), 0.0f);
  pool().parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        float& m = amax[size_t(r * ng + c / group)];
        m = std::max(m, std::fabs(w[r * cols + c]));
      }
  }, 16);
  Hxq2Scales s;
  s.code.assign(amax.size(), uint8_t(kHxq2Codes - 1));
  float smax = 0;
  std::vector<float> nz;
  nz.reserve(amax.size());
  for (float a : amax) {
    smax = std::max(smax, a);
    if (a > 0) nz.push_back(a);
  }
  if (smax == 0) {
    s.scale_max = 1.0f;
    s.scale_step = 1.0f / 16;
    return s;
  }
  // The step covers the spread between the largest group and the 2nd percentile of the others in
  // 63 codes, never finer than 0.04 octave (on stories260K, 8 bits: step 1/16 gave mean KL 1.04e-3,
  // 0.05 8.8e-4, 0.04 8.6e-4, 0.03 9.2e-4, 0.02 1.14e-3).
  const size_t p = nz.size() / 50;
  std::nth_element(nz.begin(), nz.begin() + ptrdiff_t(p), nz.end());
  const double spread = std::log2(double(smax) / double(nz[p]));
  s.scale_max = smax;
  s.scale_step = float(std::clamp(spread / (kHxq2Codes - 1), 0.04, 1.0));
  float lut[kHxq2Codes];
  hxq2_scale_table(s.scale_max, s.scale_step, lut);
  for (size_t i = 0; i < amax.size(); ++i) {
    if (amax[i] == 0) continue;
    const double f = std::floor(std::log2(double(smax) / double(amax[i])) / double(s.scale_step));
    s.code[i] = uint8_t(std::clamp(f, 0.0, double(kHxq2Codes - 1)));
  }
  return s;
}

Hxq2Histogram hxq2_histogram(const float* w, int64_t rows, int64_t cols, int group, const Hxq2Scales& s) {
  float lut[kHxq2Codes];
  hxq2_scale_table(s.scale_max, s.scale_step, lut);
  const int64_t ng = hxq2_groups(cols, group), cr = hist_chunk_rows(rows), nchunks = (rows + cr - 1) / cr;
  std::vector<Hxq2Histogram> parts(static_cast<size_t>(nchunks));
  pool().parallel_for(nchunks, [&](int64_t c0, int64_t c1, int) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      Hxq2Histogram& h = parts[size_t(ch)];
      for (int64_t r = ch * cr; r < std::min(rows, (ch + 1) * cr); ++r)
        for (int64_t g = 0; g < ng; ++g) {
          const float sc = lut[s.code[size_t(r * ng + g)]], inv = 1.0f / sc;
          const double wt = double(sc) * double(sc);
          for (int64_t c = g * group; c < std::min(cols, (g + 1) * group); ++c) {
            const float u = std::clamp(w[r * cols + c] * inv, -kHxq2HistRange, kHxq2HistRange);
            const int b = bin_of(u);
            h.w[size_t(b)] += wt;
            h.wu[size_t(b)] += wt * double(u);
          }
        }
    }
  });
  Hxq2Histogram out;
  for (auto& h : parts) out.add(h);
  return out;
}

Hxq2Histogram hxq2_searched_histogram(const float* w, int64_t rows, int64_t cols, int group,
                                      const std::vector<float>& codebook) {
  Hxq2Scales s = hxq2_initial_scales(w, rows, cols, group);
  search_scales(w, rows, cols, group, codebook, s);
  return hxq2_histogram(w, rows, cols, group, s);
}

namespace {

// Lloyd iterations on sorted weighted points from ascending centroids c, until no point changes
// cluster (at most max_iter): each iteration is O(k log n) with prefix sums, the clusters being
// the ranges between the midpoints of consecutive centroids (a point on a midpoint goes to the
// lower one, as the encoder's nearest-entry search does). An empty cluster keeps its centroid.
void lloyd_refine(const WeightedPoints& pts, std::vector<double>& c, int max_iter) {
  const int64_t n = pts.size();
  const int k = int(c.size());
  std::vector<double> pw(size_t(n + 1), 0.0), pv(size_t(n + 1), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    pw[size_t(i + 1)] = pw[size_t(i)] + pts.weight[size_t(i)];
    pv[size_t(i + 1)] = pv[size_t(i)] + pts.weight[size_t(i)] * pts.value[size_t(i)];
  }
  std::vector<int64_t> bound(size_t(k + 1), 0), prev;
  bound[size_t(k)] = n;
  for (int it = 0; it < max_iter; ++it) {
    for (int j = 0; j + 1 < k; ++j) {
      const double mid = 0.5 * (c[size_t(j)] + c[size_t(j) + 1]);
      bound[size_t(j) + 1] = std::upper_bound(pts.value.begin(), pts.value.end(), mid) - pts.value.begin();
    }
    if (bound == prev) break;
    prev = bound;
    for (int j = 0; j < k; ++j) {
      const int64_t a = bound[size_t(j)], b = bound[size_t(j) + 1];
      if (b > a) c[size_t(j)] = (pv[size_t(b)] - pv[size_t(a)]) / (pw[size_t(b)] - pw[size_t(a)]);
    }
  }
}

// Consecutive points merged in runs of m (weighted means): the coarse problem the DP solves
// before Lloyd refines on all points.
WeightedPoints coarsen(const WeightedPoints& pts, int64_t m) {
  WeightedPoints out;
  for (int64_t i = 0; i < pts.size(); i += m) {
    double w = 0, wv = 0;
    for (int64_t j = i; j < std::min(pts.size(), i + m); ++j) {
      w += pts.weight[size_t(j)];
      wv += pts.weight[size_t(j)] * pts.value[size_t(j)];
    }
    const double v = wv / w;
    if (!out.value.empty() && v <= out.value.back()) {
      out.weight.back() += w;
      continue;
    }
    out.value.push_back(v);
    out.weight.push_back(w);
  }
  return out;
}

}  // namespace

std::vector<float> hxq2_fit_codebook(const Hxq2Histogram& h, int bits, const std::vector<float>* init) {
  const int k = 1 << bits;
  WeightedPoints pts;
  for (int b = 0; b < kHxq2HistBins; ++b) {
    if (!(h.w[size_t(b)] > 0)) continue;
    const double lo = -double(kHxq2HistRange) + 2.0 * kHxq2HistRange * b / kHxq2HistBins;
    const double hi = lo + 2.0 * kHxq2HistRange / kHxq2HistBins;
    const double v = std::clamp(h.wu[size_t(b)] / h.w[size_t(b)], lo, hi);
    if (!pts.value.empty() && v <= pts.value.back()) {
      pts.weight.back() += h.w[size_t(b)];
      continue;
    }
    pts.value.push_back(v);
    pts.weight.push_back(h.w[size_t(b)]);
  }
  if (pts.value.empty()) return std::vector<float>(size_t(k), 0.0f);
  std::vector<double> c;
  if (init && int(init->size()) == k && k >= kHxq2CoarseFitK) {
    c.assign(init->begin(), init->end());
    lloyd_refine(pts, c, kHxq2LloydIters);
  } else if (k >= kHxq2CoarseFitK && pts.size() > 8 * int64_t(k)) {
    const KMeans1DResult km = kmeans1d_optimal(coarsen(pts, (pts.size() + 8 * k - 1) / (8 * k)), k);
    c.assign(km.centroids.begin(), km.centroids.end());
    if (int(c.size()) == k) lloyd_refine(pts, c, kHxq2LloydIters);
  } else {
    const KMeans1DResult km = kmeans1d_optimal(pts, k);
    c.assign(km.centroids.begin(), km.centroids.end());
  }
  std::vector<float> cb(c.begin(), c.end());
  for (size_t i = 1; i < cb.size(); ++i) cb[i] = std::max(cb[i], cb[i - 1]);
  while (int(cb.size()) < k) cb.push_back(cb.back());
  return cb;
}

Hxq2Tensor encode2(const float* w, int64_t rows, int64_t cols, const Encode2Options& o) {
  if (!hxq2_bits_supported(o.bits)) fail("encode2: unsupported bit width {} (supported: 4, 5, 6, 8)", o.bits);
  if (!hxq2_group_supported(o.group)) fail("encode2: unsupported group size {} (supported: 16, 32)", o.group);
  if (rows <= 0 || cols <= 0) fail("encode2: empty shape [{}, {}]", rows, cols);
  if (o.sidecar_fraction < 0 || o.sidecar_fraction > 0.5) fail("encode2: sidecar fraction {} outside [0, 0.5]", o.sidecar_fraction);
  const int k = 1 << o.bits;
  check_finite(w, rows * cols);
  Hxq2Tensor t;
  t.rows = rows;
  t.cols = cols;
  t.bits = o.bits;
  t.group = o.group;
  Hxq2Scales s = hxq2_initial_scales(w, rows, cols, o.group);
  if (o.codebook) {
    if (int(o.codebook->size()) != k) fail("encode2: shared codebook has {} entries, expected {}", o.codebook->size(), k);
    t.codebook = *o.codebook;
    t.shared_codebook = true;
    search_scales(w, rows, cols, o.group, t.codebook, s);
  } else {
    // Fit, choose scales, fit again on the chosen scales, choose again.
    t.codebook = hxq2_fit_codebook(hxq2_histogram(w, rows, cols, o.group, s), o.bits);
    search_scales(w, rows, cols, o.group, t.codebook, s);
    t.codebook = hxq2_fit_codebook(hxq2_histogram(w, rows, cols, o.group, s), o.bits, &t.codebook);
    search_scales(w, rows, cols, o.group, t.codebook, s, true);
  }
  t.scale_max = s.scale_max;
  t.scale_step = s.scale_step;
  const int64_t ng = hxq2_groups(cols, o.group), rb = hxq2_row_bytes(cols, o.bits),
                sb = hxq2_scale_bytes(rows, cols, o.group);
  t.indices.assign(size_t(rows * rb), 0);
  t.scales.assign(size_t(sb), 0);
  for (size_t i = 0; i < s.code.size(); ++i) hxq2_set_scale_code(t.scales.data(), int64_t(i), s.code[i]);
  float lut[kHxq2Codes];
  hxq2_scale_table(s.scale_max, s.scale_step, lut);
  const Nearest nn(t.codebook);
  const bool sidecar = o.sidecar_fraction > 0;
  std::vector<float> err(sidecar ? size_t(rows * cols) : 0);
  pool().parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<uint8_t> idx(size_t(hxq2_chunks(cols) * 32), 0);
    for (int64_t r = r0; r < r1; ++r) {
      std::fill(idx.begin(), idx.end(), 0);
      for (int64_t g = 0; g < ng; ++g) {
        const uint32_t q = s.code[size_t(r * ng + g)];
        const float sc = lut[q], inv = 1.0f / sc;
        for (int64_t c = g * o.group; c < std::min(cols, (g + 1) * o.group); ++c) {
          const uint32_t j = nn(w[r * cols + c] * inv);
          idx[size_t(c)] = uint8_t(j);
          if (sidecar) err[size_t(r * cols + c)] = std::fabs(w[r * cols + c] - sc * t.codebook[j]);
        }
      }
      for (int64_t ch = 0; ch < hxq2_chunks(cols); ++ch) {
        const int64_t n = std::min<int64_t>(32, cols - ch * 32);
        uint8_t* dst = t.indices.data() + r * rb + ch * 4 * o.bits;
        if (n == 32) hxq2_pack_chunk(idx.data() + ch * 32, o.bits, dst);
        else hxq2_pack_tail(idx.data() + ch * 32, n, o.bits, dst);
      }
    }
  }, 16);
  if (sidecar) {
    const int64_t numel = rows * cols, budget = int64_t(std::floor(o.sidecar_fraction * double(numel)));
    std::vector<int64_t> pos;
    for (int64_t i = 0; i < numel; ++i)
      if (err[size_t(i)] > 0) pos.push_back(i);
    auto worse = [&](int64_t a, int64_t b) { return err[size_t(a)] != err[size_t(b)] ? err[size_t(a)] > err[size_t(b)] : a < b; };
    if (int64_t(pos.size()) > budget) {
      std::nth_element(pos.begin(), pos.begin() + budget, pos.end(), worse);
      pos.resize(size_t(budget));
    }
    std::sort(pos.begin(), pos.end());
    t.sidecar_pos = pos;
    for (int64_t p : pos) t.sidecar_val.push_back(w[p]);
  }
  return t;
}

Hxq2Tensor encode2(const void* data, DType dtype, int64_t rows, int64_t cols, const Encode2Options& o) {
  if (dtype == DType::F32) return encode2(static_cast<const float*>(data), rows, cols, o);
  std::vector<float> w(size_t(rows * cols));
  to_f32(dtype, data, w.data(), w.size());
  return encode2(w.data(), rows, cols, o);
}

void validate(const Hxq2Tensor& t) {
  if (!hxq2_bits_supported(t.bits)) fail("unsupported bit width {}", t.bits);
  if (!hxq2_group_supported(t.group)) fail("unsupported group size {}", t.group);
  if (t.rows <= 0 || t.cols <= 0) fail("empty shape [{}, {}]", t.rows, t.cols);
  if (int64_t(t.codebook.size()) != (int64_t(1) << t.bits))
    fail("codebook has {} entries, expected {}", t.codebook.size(), int64_t(1) << t.bits);
  for (size_t i = 0; i < t.codebook.size(); ++i) {
    if (!std::isfinite(t.codebook[i])) fail("codebook entry {} is not finite", i);
    if (i && t.codebook[i] < t.codebook[i - 1]) fail("codebook is not ascending at entry {}", i);
  }
  if (uint64_t(t.indices.size()) != uint64_t(t.rows * hxq2_row_bytes(t.cols, t.bits)))
    fail("indices have {} bytes, expected {}", t.indices.size(), t.rows * hxq2_row_bytes(t.cols, t.bits));
  if (uint64_t(t.scales.size()) != uint64_t(hxq2_scale_bytes(t.rows, t.cols, t.group)))
    fail("scales have {} bytes, expected {}", t.scales.size(), hxq2_scale_bytes(t.rows, t.cols, t.group));
  if (!(t.scale_max > 0) || !std::isfinite(t.scale_max) || !(t.scale_step > 0) || !(t.scale_step <= 4))
    fail("scale parameters ({}, {}) out of range (max > 0, 0 < step <= 4)", t.scale_max, t.scale_step);
  if (t.sidecar_pos.size() != t.sidecar_val.size())
    fail("sidecar has {} positions and {} values", t.sidecar_pos.size(), t.sidecar_val.size());
  for (size_t i = 0; i < t.sidecar_pos.size(); ++i) {
    if (t.sidecar_pos[i] < 0 || t.sidecar_pos[i] >= t.rows * t.cols)
      fail("sidecar position {} out of range [0, {})", t.sidecar_pos[i], t.rows * t.cols);
    if (i && t.sidecar_pos[i] <= t.sidecar_pos[i - 1]) fail("sidecar positions not strictly ascending at entry {}", i);
    if (!std::isfinite(t.sidecar_val[i])) fail("sidecar value {} is not finite", i);
  }
}

void decode_row(const Hxq2Tensor& t, int64_t r, float* out) {
  float lut[kHxq2Codes];
  hxq2_scale_table(t.scale_max, t.scale_step, lut);
  std::vector<uint8_t> idx(size_t(hxq2_chunks(t.cols) * 32));
  hxq2_unpack_row(t.indices.data() + r * hxq2_row_bytes(t.cols, t.bits), t.bits, t.cols, idx.data());
  const int64_t g0 = r * hxq2_groups(t.cols, t.group);
  for (int64_t c = 0; c < t.cols; ++c)
    out[c] = lut[hxq2_scale_code(t.scales.data(), g0 + c / t.group)] * t.codebook[idx[size_t(c)]];
  auto it = std::lower_bound(t.sidecar_pos.begin(), t.sidecar_pos.end(), r * t.cols);
  for (; it != t.sidecar_pos.end() && *it < (r + 1) * t.cols; ++it)
    out[*it - r * t.cols] = t.sidecar_val[size_t(it - t.sidecar_pos.begin())];
}

void decode(const Hxq2Tensor& t, float* out) {
  validate(t);
  for (int64_t r = 0; r < t.rows; ++r) decode_row(t, r, out + r * t.cols);
}

EncodeStats encode_stats(const void* data, DType dtype, const Hxq2Tensor& t) {
  validate(t);
  struct RowStat {
    double sse = 0, sse_vq = 0, sig = 0, maxe = 0;
  };
  std::vector<RowStat> rs(size_t(t.rows));
  pool().parallel_for(t.rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> w(static_cast<size_t>(t.cols)), d(static_cast<size_t>(t.cols));
    for (int64_t r = r0; r < r1; ++r) {
      to_f32(dtype, static_cast<const std::byte*>(data) + size_t(r * t.cols) * dtype_size(dtype), w.data(), w.size());
      decode_row(t, r, d.data());
      RowStat& s = rs[size_t(r)];
      for (int64_t c = 0; c < t.cols; ++c) {
        const double e = double(w[size_t(c)]) - double(d[size_t(c)]);
        s.sse += e * e;
        s.sig += double(w[size_t(c)]) * double(w[size_t(c)]);
        s.maxe = std::max(s.maxe, std::fabs(e));
      }
    }
  }, 16);
  RowStat tot;
  for (auto& s : rs) {
    tot.sse += s.sse;
    tot.sig += s.sig;
    tot.maxe = std::max(tot.maxe, s.maxe);
  }
  EncodeStats st;
  const double n = double(t.rows) * double(t.cols);
  st.mse = tot.sse / n;
  st.sqnr_db = tot.sse > 0 ? 10.0 * std::log10(tot.sig / tot.sse) : std::numeric_limits<double>::infinity();
  st.max_abs_err = tot.maxe;
  st.mse_vq = st.mse;
  return st;
}

}  // namespace hxq
