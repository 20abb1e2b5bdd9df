// Optimal (globally minimum-SSE) 1-D k-means on a weighted set of sorted distinct values, by
// dynamic programming with the divide-and-conquer (monotone argmin) speed-up: O(k·n·log n).
#pragma once
#include <cstdint>
#include <vector>

namespace hxq {

// Weighted 1-D points: values strictly ascending, weights > 0 (typically occurrence counts).
struct WeightedPoints {
  std::vector<double> value;
  std::vector<double> weight;
  int64_t size() const { return int64_t(value.size()); }
};

struct KMeans1DResult {
  // starts[j] = index of the first point of cluster j (starts[0] = 0); clusters are the
  // contiguous ranges [starts[j], starts[j+1]) of the sorted points, all non-empty.
  std::vector<int64_t> starts;
  // Weighted mean of every cluster (computed in long double, rounded to float32); strictly
  // ascending when the values are float32 numbers (each mean lies between its cluster's ends).
  std::vector<float> centroids;
  double sse = 0;  // weighted sum of squared distances to the (unrounded) cluster means
};

// Minimum-SSE partition of the points into min(k, n) contiguous clusters (k >= 1).
//
// Exactness: the DP minimises the cost Σ w(v − mean)² over all partitions, evaluated from prefix
// sums of w, w·(v−μ), w·(v−μ)² (μ = global weighted mean; accumulated in long double, stored
// as double). The cost of any cluster is therefore evaluated with an absolute error of a few
// ulps of Σ w·(v−μ)² (the total variance), i.e. the partition found is optimal up to that
// rounding, far below the SSE differences between distinct partitions of real weights.
// Deterministic: ties keep the smallest split index. Uses pool() for large n·k.
KMeans1DResult kmeans1d_optimal(const WeightedPoints& pts, int k);

// Reference O(k·n²) DP with every cluster cost computed directly (two-pass, long double) — for
// tests only.
KMeans1DResult kmeans1d_bruteforce(const WeightedPoints& pts, int k);

// Σ w(v − mean)² of the clusters [starts[j], starts[j+1]) computed directly in long double
// (two-pass), independent of the DP's prefix sums.
double kmeans1d_sse(const WeightedPoints& pts, const std::vector<int64_t>& starts);

// Fills centroids (weighted means, long double -> float32) and sse for the given starts.
void kmeans1d_finish(const WeightedPoints& pts, KMeans1DResult& r);

}  // namespace hxq
