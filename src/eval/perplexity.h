// Perplexity and KL divergence over a token stream, with the window protocols of Hugging Face
// (sliding windows, each token scored once) and llama.cpp's llama-perplexity (halves of chunks).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <span>
#include <vector>

#include "kernels/hxq_gemm.h"
#include "models/model.h"

namespace hxq {

struct EvalWindow {
  int64_t begin = 0, end = 0;  // tokens [begin, end) are fed to the model (fresh state)
  int64_t first = 0;           // targets first..end-1 are scored (first > begin)
  bool bos_first = false;      // llama.cpp: the first token of the window is replaced by BOS
  int64_t count() const { return end - first; }
};

// Hugging Face's recipe: windows of ctx tokens starting every stride tokens; every token after
// the first scored once, in the first window that reaches it; stops at the window ending at n.
std::vector<EvalWindow> hf_windows(int64_t n, int64_t ctx, int64_t stride);
// llama.cpp's llama-perplexity: n / ctx disjoint chunks, the second half of each scored
// (targets ctx/2+1 .. ctx-1 of the chunk), first token replaced by BOS when the model uses one.
std::vector<EvalWindow> llamacpp_windows(int64_t n, int64_t ctx, bool bos);

// The usage checks of plan_windows alone, before any tokenizing: protocol "hf" or "llamacpp",
// ctx <= 0 (the default) or >= 2, stride >= 1 and <= ctx for hf, stride 512 (untouched) for
// llamacpp. Throws UsageError.
void check_window_options(const std::string& protocol, int64_t ctx, int64_t stride);
// The windows of an evaluation of n tokens as `hxq perplexity` / `hxq kl` choose them: protocol
// "hf" (ctx default 2048, windows every `stride` tokens) or "llamacpp" (ctx default 512; BOS
// replaces each chunk's first token when `bos` is set). ctx <= 0 means the protocol's default.
// The options are checked as check_window_options does; nothing to score (or less than one
// chunk) fails naming `source`.
std::vector<EvalWindow> plan_windows(int64_t n, const std::string& protocol, int64_t ctx, int64_t stride,
                                     std::optional<int32_t> bos, const std::string& source);

struct WindowNll {
  EvalWindow w;
  double nll = 0;  // sum over the window's scored tokens
};

struct PerplexityResult {
  double nll = 0;  // total
  int64_t count = 0;
  double ppl = 0, ppl_stderr = 0;  // stderr by the delta method: ppl * sd(token nll) / sqrt(count)
  std::vector<WindowNll> windows;
  double seconds = 0;
};

// progress(windows_done, windows_total, tokens_scored_so_far, running_ppl)
using EvalProgress = std::function<void(size_t, size_t, int64_t, double)>;

struct EvalOptions {
  // Score the way generation runs: the unscored head of each window as one prefill, then every
  // scored position as its own one-token forward (recurrent state / KV cache, decode kernels).
  bool stepwise = false;
  // HXQ kernel math per model (kl: base, other); unset = the process default (hxq_math()).
  std::optional<HxqMath> math, other_math;
};

PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, const std::vector<EvalWindow>& windows,
                            std::optional<int32_t> bos, const EvalProgress& progress = {},
                            const EvalOptions& opt = {});

struct KlResult {
  PerplexityResult base, other;
  double kl_mean = 0, kl_p99 = 0, kl_max = 0;  // KL(base ‖ other) per scored token, nats
  double top1_agreement = 0;                    // fraction of scored tokens with equal argmax
  double seconds = 0;
};

KlResult kl_divergence(const Model& base, const Model& other, std::span<const int32_t> ids,
                       const std::vector<EvalWindow>& windows, std::optional<int32_t> bos,
                       const EvalProgress& progress = {}, const EvalOptions& opt = {});

}  // namespace hxq
