// helix-substrate's own HXQ quantizer (k-means codebook, indices, magnitude sidecar) reproduced
// bit for bit, with the numpy 1.24 behaviours it depends on (percentile, float32 mean, argsort).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hxq::helix {

// ---- numpy 1.24 behaviours -------------------------------------------------------------------

// numpy's float32 add-reduction of a contiguous array (what arr.sum() / arr.mean() use): pairwise
// summation (8 accumulators, blocks of <= 128, halving split rounded to a multiple of 8) inside
// each inner-loop call; the reduction feeds the inner loop `block` elements at a time (numpy's
// 8192-element buffer: its nditer never grows the inner loop of a buffered reduction) and adds
// the partial sums to a float32 accumulator starting at 0. block = 0: one call for all.
// (The 59 anchor modules give identical codebooks with block = 0, so they cannot tell them apart.)
float np_sum_f32(const float* a, int64_t n, int64_t block = 8192);
// np.mean of a float32 array: float32 sum, divided by the count in float64, rounded to float32.
float np_mean_f32(const float* a, int64_t n, int64_t block = 8192);

// np.percentile(x, q) with the default "linear" method, where `sorted` holds x ascending.
// q is the fraction (percentile/100) as numpy computes it. Result in float64 as numpy returns it.
double np_quantile_linear(const float* sorted, int64_t n, double q);

// The fractions numpy's percentile(x, linspace(0, 100, k)) uses: linspace's i*step (+ exact
// endpoint) divided by 100.
std::vector<double> np_linspace_percent_fractions(int k);

// MT19937 exactly as numpy's legacy RandomState seeds and draws it.
class Mt19937 {
 public:
  explicit Mt19937(uint32_t seed);
  uint32_t next_u32();
  uint64_t next_u64();  // (hi << 32) | lo, as numpy's legacy next_uint64
  double next_double();  // numpy's random_sample(): 53-bit from two draws
 private:
  uint32_t mt_[624];
  int pos_;
};

// RandomState(seed).permutation(n) (Fisher–Yates from the end, numpy's random_interval draws).
std::vector<int64_t> np_legacy_permutation(uint32_t seed, int64_t n);

// np.argsort(v) with the default kind ("quicksort": numpy 1.24's introsort — median-of-3
// quicksort, insertion sort below 16 elements, heapsort past the depth limit). Not stable; this
// reproduces numpy's exact order of equal keys.
std::vector<int64_t> np_argsort_quicksort(const std::vector<float>& v);

// ---- helix-substrate's quantizer ---------------------------------------------------------

// Tensors with more elements than this are clustered on a RandomState(42) sample of this size.
inline constexpr int64_t kKmeansMaxSamples = 500000;

// The sample helix-substrate clusters: all elements when n <= 500,000, otherwise
// flat[RandomState(42).choice(n, 500000, replace=False)] (in that order).
std::vector<float> kmeans_sample(const float* flat, int64_t n);

// _simple_kmeans(data, 256, max_iters=10): k = min(max_k, #distinct values); percentile init;
// float32 nearest-centroid assignment (lowest index on ties); float32 numpy means; stop when the
// largest centroid move < 0.001·(c[k-1]−c[0]), returning the centroids before that update.
// Returns k <= max_k centroids (ascending for every non-degenerate input).
// Zeros are canonicalised to +0.0 before anything (numpy's choice between −0.0 and +0.0 in a
// partition is unspecified); NaN/Inf inputs are rejected.
std::vector<float> kmeans_codebook(const float* data, int64_t n, int max_k = 256, int max_iters = 10,
                                   int64_t sum_block = 8192);

// helix-substrate's assignment: argmin_j |x − c[j]| computed in float32, lowest j on ties.
// Works for any codebook order; fast when the codebook is ascending. Multithreaded.
void assign_f32(const float* x, int64_t n, const float* codebook, int k, uint8_t* out);
uint8_t assign_one_f32(float x, const float* codebook, int k);

struct SidecarPolicy {
  double percentile = 99.9;  // outliers: x < percentile(100-p) or x > percentile(p)
  int64_t max_corrections = 512;  // keep the largest |x| when there are more (0 = no cap)
};
// The default policy helix-substrate's tensor_policy assigns to a module (tensor name minus
// ".weight", or the tensor name): q_proj/k_proj (and GGUF attn_q/attn_k) 99.95 %, cap 512;
// other known projections (v/o/gate/up/down, in/out/B/C_proj, lm_head) 99.9 %, cap 512;
// anything else 99.9 %, cap 256.
SidecarPolicy sidecar_policy_for(const std::string& module);

// find_outliers_percentile + top-|x| cap: positions ascending, values = float16(x) as float32.
void magnitude_sidecar(const float* flat, int64_t n, const SidecarPolicy& pol, std::vector<int64_t>& pos,
                       std::vector<float>& val);

}  // namespace hxq::helix
