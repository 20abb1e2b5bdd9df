#include "codec/kmeans1d.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/threadpool.h"

namespace hxq {

namespace {

struct Pre {
  double w, s, q;  // prefix sums of w, w·(v−μ), w·(v−μ)² over points [0, i)
};

inline double seg_cost(const Pre* p, int64_t a, int64_t b) {  // cluster [a, b), b > a
  const double w = p[b].w - p[a].w;
  const double s = p[b].s - p[a].s;
  const double q = p[b].q - p[a].q;
  const double c = q - s * s / w;
  return c > 0 ? c : 0;
}

// out[t] = prev[t] + cost of the cluster (a0 + t, i], for m consecutive split points. Cloned for
// AVX2 (runtime dispatch); no FMA contraction (ISO C++ mode), so both clones round identically.
__attribute__((target_clones("avx2", "default"))) void cost_block(const double* W, const double* S,
                                                                  const double* Q, const double* prev, double wi,
                                                                  double si, double qi, int64_t m, double* out) {
  for (int64_t t = 0; t < m; ++t) {
    const double w = wi - W[t], s = si - S[t], q = qi - Q[t];
    double c = q - s * s / w;
    c = c > 0 ? c : 0;
    out[t] = prev[t] + c;
  }
}

void check_points(const WeightedPoints& pts, int k) {
  if (k < 1) fail("kmeans1d: k must be >= 1 (got {})", k);
  if (pts.value.size() != pts.weight.size()) fail("kmeans1d: {} values but {} weights", pts.value.size(), pts.weight.size());
  for (size_t i = 0; i < pts.value.size(); ++i) {
    if (!std::isfinite(pts.value[i]) || !(pts.weight[i] > 0) || !std::isfinite(pts.weight[i]))
      fail("kmeans1d: point {} has a non-finite value or a non-positive weight", i);
    if (i && !(pts.value[i] > pts.value[i - 1])) fail("kmeans1d: values are not strictly ascending at {}", i);
  }
}

template <typename Idx>
class Solver {
 public:
  Solver(const Pre* pre, const double* W, const double* S, const double* Q, int64_t n, int k)
      : pre_(pre), W_(W), S_(S), Q_(Q), n_(n), k_(k) {
    arg_.assign(size_t(k_ + 1) * size_t(n_ + 1), Idx(0));
  }

  std::vector<int64_t> run() {
    std::vector<double> prev(size_t(n_ + 1), 0.0), cur(size_t(n_ + 1), 0.0);
    for (int64_t i = 1; i <= n_; ++i) prev[size_t(i)] = seg_cost(pre_, 0, i);
    for (int j = 2; j < k_; ++j) {
      layer(j, prev.data(), cur.data());
      std::swap(prev, cur);
    }
    std::vector<int64_t> starts(size_t(k_), 0);
    if (k_ >= 2) {  // last layer: only i = n is needed
      double best = std::numeric_limits<double>::infinity();
      int64_t ba = k_ - 1;
      for (int64_t a = k_ - 1; a <= n_ - 1; ++a) {
        const double v = prev[size_t(a)] + seg_cost(pre_, a, n_);
        if (v < best) best = v, ba = a;
      }
      int64_t i = ba;
      starts[size_t(k_ - 1)] = ba;
      for (int j = k_ - 1; j >= 2; --j) {
        i = int64_t(arg_[size_t(j) * size_t(n_ + 1) + size_t(i)]);
        starts[size_t(j - 1)] = i;
      }
    }
    return starts;
  }

 private:
  struct Seg {
    int64_t ilo, ihi, alo, ahi;
  };

  // D_j[i] = min_{a in [j-1, i-1]} D_{j-1}[a] + cost(a, i) for i in [j, n-(k-j)].
  void layer(int j, const double* prev, double* cur) {
    const int64_t ilo = j, ihi = n_ - (k_ - j);
    const int threads = pool().size();
    const int64_t work = (ihi - ilo + 1);
    if (threads <= 1 || work < 4096) {
      solve(j, prev, cur, ilo, ihi, 0, n_);
      return;
    }
    // Expand the top levels serially, then solve the independent sub-ranges in parallel.
    std::vector<Seg> segs{{ilo, ihi, 0, n_}};
    int depth = 2;
    while ((1 << depth) < 4 * threads) ++depth;
    for (int d = 0; d < depth; ++d) {
      std::vector<Seg> next;
      for (const Seg& s : segs) {
        if (s.ilo > s.ihi) continue;
        const int64_t mid = (s.ilo + s.ihi) / 2;
        const int64_t ba = eval(j, prev, cur, mid, s.alo, s.ahi);
        next.push_back({s.ilo, mid - 1, s.alo, ba});
        next.push_back({mid + 1, s.ihi, ba, s.ahi});
      }
      segs.swap(next);
    }
    pool().parallel_for(int64_t(segs.size()), [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        const Seg& s = segs[size_t(t)];
        solve(j, prev, cur, s.ilo, s.ihi, s.alo, s.ahi);
      }
    });
  }

  int64_t eval(int j, const double* prev, double* cur, int64_t i, int64_t alo, int64_t ahi) {
    // Knuth–Yao: the last cluster of the best j-clustering of [0, i) starts no earlier than that
    // of the best (j-1)-clustering.
    int64_t lo = std::max<int64_t>(alo, j - 1);
    if (j > 2) lo = std::max<int64_t>(lo, int64_t(arg_[size_t(j - 1) * size_t(n_ + 1) + size_t(i)]));
    const int64_t hi = std::min<int64_t>(ahi, i - 1);
    double best = std::numeric_limits<double>::infinity();
    int64_t ba = lo;
    const double wi = W_[i], si = S_[i], qi = Q_[i];
    const double* W = W_;
    const double* S = S_;
    const double* Q = Q_;
    // two passes: a vectorisable cost loop into a buffer, then the first minimum
    constexpr int64_t kBlock = 256;
    double tb[kBlock];
    for (int64_t a0 = lo; a0 <= hi; a0 += kBlock) {
      const int64_t m = std::min<int64_t>(kBlock, hi - a0 + 1);
      cost_block(W + a0, S + a0, Q + a0, prev + a0, wi, si, qi, m, tb);
      for (int64_t t = 0; t < m; ++t)
        if (tb[t] < best) best = tb[t], ba = a0 + t;
    }
    cur[i] = best;
    arg_[size_t(j) * size_t(n_ + 1) + size_t(i)] = Idx(ba);
    return ba;
  }

  void solve(int j, const double* prev, double* cur, int64_t ilo, int64_t ihi, int64_t alo, int64_t ahi) {
    while (ilo <= ihi) {
      const int64_t mid = (ilo + ihi) / 2;
      const int64_t ba = eval(j, prev, cur, mid, alo, ahi);
      // recurse into the smaller half, loop on the larger one
      if (mid - ilo < ihi - mid) {
        solve(j, prev, cur, ilo, mid - 1, alo, ba);
        ilo = mid + 1;
        alo = ba;
      } else {
        solve(j, prev, cur, mid + 1, ihi, ba, ahi);
        ihi = mid - 1;
        ahi = ba;
      }
    }
  }

  const Pre* pre_;
  const double *W_, *S_, *Q_;
  int64_t n_;
  int k_;
  std::vector<Idx> arg_;
};

long double weighted_mean(const WeightedPoints& pts, int64_t a, int64_t b) {
  long double sw = 0, sv = 0;
  for (int64_t i = a; i < b; ++i) {
    sw += pts.weight[size_t(i)];
    sv += (long double)pts.weight[size_t(i)] * pts.value[size_t(i)];
  }
  return sv / sw;
}

}  // namespace

double kmeans1d_sse(const WeightedPoints& pts, const std::vector<int64_t>& starts) {
  const int64_t n = pts.size();
  long double total = 0;
  for (size_t j = 0; j < starts.size(); ++j) {
    const int64_t a = starts[j], b = j + 1 < starts.size() ? starts[j + 1] : n;
    if (b <= a) continue;
    const long double m = weighted_mean(pts, a, b);
    for (int64_t i = a; i < b; ++i) {
      const long double d = (long double)pts.value[size_t(i)] - m;
      total += (long double)pts.weight[size_t(i)] * d * d;
    }
  }
  return double(total);
}

void kmeans1d_finish(const WeightedPoints& pts, KMeans1DResult& r) {
  const int64_t n = pts.size();
  r.centroids.resize(r.starts.size());
  for (size_t j = 0; j < r.starts.size(); ++j) {
    const int64_t a = r.starts[j], b = j + 1 < r.starts.size() ? r.starts[j + 1] : n;
    r.centroids[j] = float(weighted_mean(pts, a, b));
  }
  r.sse = kmeans1d_sse(pts, r.starts);
}

KMeans1DResult kmeans1d_optimal(const WeightedPoints& pts, int k) {
  check_points(pts, k);
  const int64_t n = pts.size();
  KMeans1DResult r;
  if (n == 0) return r;
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) r.starts.push_back(i);
    kmeans1d_finish(pts, r);
    return r;
  }
  // Prefix sums of the centred values (long double accumulation, stored as double).
  long double sw = 0, sv = 0;
  for (int64_t i = 0; i < n; ++i) {
    sw += pts.weight[size_t(i)];
    sv += (long double)pts.weight[size_t(i)] * pts.value[size_t(i)];
  }
  const long double mu = sv / sw;
  std::vector<Pre> pre(static_cast<size_t>(n + 1));
  long double aw = 0, as = 0, aq = 0;
  pre[0] = {0, 0, 0};
  for (int64_t i = 0; i < n; ++i) {
    const long double w = pts.weight[size_t(i)];
    const long double d = (long double)pts.value[size_t(i)] - mu;
    aw += w;
    as += w * d;
    aq += w * d * d;
    pre[size_t(i + 1)] = {double(aw), double(as), double(aq)};
  }
  std::vector<double> W(size_t(n + 1)), S(size_t(n + 1)), Q(size_t(n + 1));
  for (int64_t i = 0; i <= n; ++i) W[size_t(i)] = pre[size_t(i)].w, S[size_t(i)] = pre[size_t(i)].s, Q[size_t(i)] = pre[size_t(i)].q;
  if (k == 1) {
    r.starts = {0};
  } else if (n <= 65535) {
    r.starts = Solver<uint16_t>(pre.data(), W.data(), S.data(), Q.data(), n, k).run();
  } else {
    r.starts = Solver<uint32_t>(pre.data(), W.data(), S.data(), Q.data(), n, k).run();
  }
  kmeans1d_finish(pts, r);
  return r;
}

KMeans1DResult kmeans1d_bruteforce(const WeightedPoints& pts, int k) {
  check_points(pts, k);
  const int64_t n = pts.size();
  KMeans1DResult r;
  if (n == 0) return r;
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) r.starts.push_back(i);
    kmeans1d_finish(pts, r);
    return r;
  }
  // cost[a][b] for cluster [a, b), computed directly
  std::vector<long double> cost(size_t((n + 1) * (n + 1)), 0);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = a + 1; b <= n; ++b) {
      const long double m = weighted_mean(pts, a, b);
      long double c = 0;
      for (int64_t i = a; i < b; ++i) {
        const long double d = (long double)pts.value[size_t(i)] - m;
        c += (long double)pts.weight[size_t(i)] * d * d;
      }
      cost[size_t(a * (n + 1) + b)] = c;
    }
  const long double inf = std::numeric_limits<long double>::infinity();
  std::vector<std::vector<long double>> D(size_t(k + 1), std::vector<long double>(size_t(n + 1), inf));
  std::vector<std::vector<int64_t>> A(size_t(k + 1), std::vector<int64_t>(size_t(n + 1), 0));
  for (int64_t i = 1; i <= n; ++i) D[1][size_t(i)] = cost[size_t(i)];
  for (int j = 2; j <= k; ++j)
    for (int64_t i = j; i <= n; ++i)
      for (int64_t a = j - 1; a < i; ++a) {
        const long double v = D[size_t(j - 1)][size_t(a)] + cost[size_t(a * (n + 1) + i)];
        if (v < D[size_t(j)][size_t(i)]) D[size_t(j)][size_t(i)] = v, A[size_t(j)][size_t(i)] = a;
      }
  r.starts.assign(size_t(k), 0);
  int64_t i = n;
  for (int j = k; j >= 2; --j) {
    i = A[size_t(j)][size_t(i)];
    r.starts[size_t(j - 1)] = i;
  }
  kmeans1d_finish(pts, r);
  return r;
}

}  // namespace hxq
