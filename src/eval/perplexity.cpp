#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/threadpool.h"

namespace hxq {

std::vector<EvalWindow> hf_windows(int64_t n, int64_t ctx, int64_t stride) {
  if (ctx < 2) usage_fail("context length must be at least 2, got {}", ctx);
  if (stride < 1 || stride > ctx) usage_fail("stride must be in [1, ctx={}], got {}", ctx, stride);
  std::vector<EvalWindow> w;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    int64_t end = std::min(begin + ctx, n);
    int64_t first = std::max(prev_end, begin + 1);
    if (first < end) w.push_back({begin, end, first, false});
    prev_end = end;
    if (end == n) break;
  }
  return w;
}

std::vector<EvalWindow> llamacpp_windows(int64_t n, int64_t ctx, bool bos) {
  if (ctx < 4) usage_fail("context length must be at least 4, got {}", ctx);
  std::vector<EvalWindow> w;
  for (int64_t i = 0; (i + 1) * ctx <= n; ++i) w.push_back({i * ctx, (i + 1) * ctx, i * ctx + ctx / 2 + 1, bos});
  return w;
}

namespace {

// Rows of logits per forward call while scoring: bounds memory to rows × vocab floats.
constexpr int64_t kScoreRows = 512;

// Runs one window and calls on_rows(logits, rows, first_target_index) for consecutive blocks of
// the logits that predict targets [first, end).
template <typename F>
void run_window(const Model& m, ModelState& st, std::span<const int32_t> ids, const EvalWindow& w,
                std::optional<int32_t> bos, std::vector<float>& buf, bool stepwise, std::optional<HxqMath> math,
                F&& on_rows) {
  std::optional<HxqMathScope> scope;
  if (math) scope.emplace(*math);
  const int64_t V = m.vocab_size();
  std::vector<int32_t> x(ids.begin() + w.begin, ids.begin() + w.end);
  if (w.bos_first && bos) x[0] = *bos;
  st.reset();
  // Positions before first-1 produce no scored logits: feed them without the lm_head.
  const int64_t lead = w.first - 1 - w.begin;
  if (lead > 0) m.forward(st, std::span(x).first(size_t(lead)), lead, nullptr);
  const int64_t step = stepwise ? 1 : kScoreRows;
  for (int64_t p = lead; p < int64_t(x.size()) - 1; p += step) {
    int64_t rows = std::min<int64_t>(step, int64_t(x.size()) - 1 - p);
    buf.resize(size_t(rows * V));
    m.forward(st, std::span(x).subspan(size_t(p), size_t(rows)), 0, buf.data());
    on_rows(buf.data(), rows, w.begin + p + 1);
  }
}

// log-softmax pieces of one row: returns (max, log(sum(exp(x - max)))).
std::pair<double, double> lse(const float* x, int64_t V) {
  float mx = *std::max_element(x, x + V);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(double(x[i] - mx));
  return {double(mx), std::log(s)};
}

void finish(PerplexityResult& r, double sum_sq) {
  if (r.count == 0) fail("perplexity: no token was scored (input too short?)");
  double mean = r.nll / double(r.count);
  r.ppl = std::exp(mean);
  double var = std::max(0.0, sum_sq / double(r.count) - mean * mean);
  r.ppl_stderr = r.count > 1 ? r.ppl * std::sqrt(var / double(r.count - 1)) : 0.0;
}

}  // namespace

void check_window_options(const std::string& protocol, int64_t ctx, int64_t stride) {
  if (protocol != "hf" && protocol != "llamacpp") usage_fail("unknown protocol \"{}\" (hf or llamacpp)", protocol);
  if (ctx > 0 && ctx < 2) usage_fail("ctx {} must be at least 2", ctx);
  if (stride < 1) usage_fail("stride {} must be at least 1", stride);
  if (protocol == "llamacpp" && stride != 512) usage_fail("stride applies to the hf protocol only");
  if (protocol == "hf" && stride > (ctx > 0 ? ctx : 2048))
    usage_fail("stride {} is larger than ctx {}", stride, ctx > 0 ? ctx : 2048);
}

std::vector<EvalWindow> plan_windows(int64_t n, const std::string& protocol, int64_t ctx, int64_t stride,
                                     std::optional<int32_t> bos, const std::string& source) {
  check_window_options(protocol, ctx, stride);
  std::vector<EvalWindow> w;
  if (protocol == "hf") {
    w = hf_windows(n, ctx > 0 ? ctx : 2048, stride);
  } else {
    if (ctx <= 0) ctx = 512;
    w = llamacpp_windows(n, ctx, bos.has_value());
    if (w.empty()) fail("{}: {} tokens is less than one chunk of {} tokens", source, n, ctx);
  }
  if (w.empty()) fail("{}: {} tokens: nothing to score", source, n);
  return w;
}

PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, const std::vector<EvalWindow>& windows,
                            std::optional<int32_t> bos, const EvalProgress& progress, const EvalOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  const int64_t V = model.vocab_size();
  for (auto id : ids)
    if (id < 0 || id >= V) fail("token id {} outside the vocabulary [0, {})", id, V);
  PerplexityResult r;
  double sum_sq = 0;
  auto st = model.new_state();
  std::vector<float> buf;
  std::vector<double> row_nll;
  for (size_t wi = 0; wi < windows.size(); ++wi) {
    const auto& w = windows[wi];
    WindowNll wn{w, 0.0};
    run_window(model, *st, ids, w, bos, buf, opt.stepwise, opt.math, [&](const float* logits, int64_t rows, int64_t tgt0) {
      row_nll.assign(size_t(rows), 0.0);
      pool().parallel_for(rows, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) {
          const int64_t tgt = tgt0 + i;
          if (tgt < w.first) continue;
          const float* row = logits + i * V;
          auto [mx, l] = lse(row, V);
          row_nll[size_t(i)] = mx + l - double(row[ids[size_t(tgt)]]);
        }
      }, 8);
      for (int64_t i = 0; i < rows; ++i) {
        if (tgt0 + i < w.first) continue;
        wn.nll += row_nll[size_t(i)];
        sum_sq += row_nll[size_t(i)] * row_nll[size_t(i)];
      }
    });
    r.nll += wn.nll;
    r.count += w.count();
    r.windows.push_back(wn);
    if (progress) progress(wi + 1, windows.size(), r.count, std::exp(r.nll / double(std::max<int64_t>(1, r.count))));
  }
  finish(r, sum_sq);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

KlResult kl_divergence(const Model& base, const Model& other, std::span<const int32_t> ids,
                       const std::vector<EvalWindow>& windows, std::optional<int32_t> bos,
                       const EvalProgress& progress, const EvalOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  const int64_t V = base.vocab_size();
  if (other.vocab_size() != V) fail("kl: vocabulary sizes differ ({} vs {})", V, other.vocab_size());
  for (auto id : ids)
    if (id < 0 || id >= V) fail("token id {} outside the vocabulary [0, {})", id, V);
  KlResult k;
  std::vector<float> kls;
  int64_t agree = 0;
  double sq_b = 0, sq_o = 0;
  auto sb = base.new_state(), so = other.new_state();
  std::vector<float> bufb, bufo;
  for (size_t wi = 0; wi < windows.size(); ++wi) {
    const auto& w = windows[wi];
    // Collect the base logits of the window block by block, then the other model's, and compare.
    std::vector<float> base_logits;
    run_window(base, *sb, ids, w, bos, bufb, opt.stepwise, opt.math, [&](const float* lg, int64_t rows, int64_t) {
      base_logits.insert(base_logits.end(), lg, lg + rows * V);
    });
    int64_t off = 0;
    WindowNll wb{w, 0.0}, wo{w, 0.0};
    run_window(other, *so, ids, w, bos, bufo, opt.stepwise, opt.other_math, [&](const float* lo, int64_t rows, int64_t tgt0) {
      const size_t R = static_cast<size_t>(rows);
      std::vector<double> kl(R), nb(R), no(R);
      std::vector<char> same(R);
      pool().parallel_for(rows, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) {
          const float* pb = base_logits.data() + (off + i) * V;
          const float* po = lo + i * V;
          auto [mb, lb] = lse(pb, V);
          auto [mo, lo2] = lse(po, V);
          double s = 0;
          for (int64_t v = 0; v < V; ++v) {
            double lpb = double(pb[v]) - mb - lb, lpo = double(po[v]) - mo - lo2;
            s += std::exp(lpb) * (lpb - lpo);
          }
          kl[size_t(i)] = std::max(0.0, s);
          const int32_t t = ids[size_t(tgt0 + i)];
          nb[size_t(i)] = mb + lb - double(pb[t]);
          no[size_t(i)] = mo + lo2 - double(po[t]);
          same[size_t(i)] = (std::max_element(pb, pb + V) - pb) == (std::max_element(po, po + V) - po);
        }
      }, 8);
      for (int64_t i = 0; i < rows; ++i) {
        if (tgt0 + i < w.first) continue;
        kls.push_back(float(kl[size_t(i)]));
        agree += same[size_t(i)];
        wb.nll += nb[size_t(i)];
        wo.nll += no[size_t(i)];
        sq_b += nb[size_t(i)] * nb[size_t(i)];
        sq_o += no[size_t(i)] * no[size_t(i)];
      }
      off += rows;
    });
    k.base.nll += wb.nll;
    k.other.nll += wo.nll;
    k.base.count += w.count();
    k.other.count += w.count();
    k.base.windows.push_back(wb);
    k.other.windows.push_back(wo);
    if (progress)
      progress(wi + 1, windows.size(), k.base.count, std::exp(k.other.nll / double(std::max<int64_t>(1, k.other.count))));
  }
  finish(k.base, sq_b);
  finish(k.other, sq_o);
  double s = 0;
  for (float v : kls) s += v;
  k.kl_mean = s / double(kls.size());
  std::vector<float> sorted = kls;
  std::sort(sorted.begin(), sorted.end());
  k.kl_p99 = sorted[std::min(sorted.size() - 1, size_t(std::ceil(0.99 * double(sorted.size()))) - 1)];
  k.kl_max = sorted.back();
  k.top1_agreement = double(agree) / double(kls.size());
  k.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  k.base.seconds = k.other.seconds = k.seconds;
  return k;
}

}  // namespace hxq
