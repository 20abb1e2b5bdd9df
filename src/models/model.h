// The model interface every architecture implements (Mamba2 first), and the loader that reads a
// checkpoint directory's config.json and builds the right model from its safetensors.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/threadpool.h"
#include "io/json.h"

namespace hxq {

class Linear;
struct LoraAdapter;

// Per-sequence mutable state: the recurrent SSM/conv state or a KV cache. One state belongs to
// one sequence; states of one model are independent of each other (any number may be alive).
class ModelState {
 public:
  virtual ~ModelState() = default;
  virtual void reset() = 0;
  virtual int64_t position() const = 0;  // tokens consumed so far
  virtual size_t bytes() const = 0;      // memory held by the state

  // A deep copy of the state proper — conv windows, SSM states, the KV cache up to position(),
  // the position and the rotary state — that continues exactly as this one would, independently
  // of it. Scratch buffers are not copied, and the KV copy holds only the used prefix.
  virtual std::unique_ptr<ModelState> clone() const = 0;
  // Makes this state a deep copy of `other` (a state of the same model), reusing this state's
  // memory where it is large enough; fails with a one-line error for a state of another kind.
  virtual void copy_from(const ModelState& other) = 0;
  // Rewinds to the state after the first n tokens, true when it could. A KV cache (transformers)
  // can for any 0 <= n <= position(): positions n.. are dropped and the next forward continues at
  // n (the rotary state is kept, as when transformers crops its cache). A recurrent state (Mamba,
  // Zamba2) cannot forget tokens: true only for n == position() (nothing to do); otherwise it
  // returns false and the state is unchanged. n outside [0, position()] returns false.
  virtual bool truncate(int64_t n) { return n == position(); }
  // Whether truncate() works for every n in [0, position()] (a KV cache), not only n == position().
  virtual bool can_truncate() const { return false; }
};

// Optional per-layer outputs, for checking against transformers' output_hidden_states. For Mamba2
// (as transformers' Mamba2Model returns them): entry i is the output of layer i (residual stream),
// the last entry the final-norm output.
struct ForwardTrace {
  std::vector<std::vector<float>> hidden_states;  // each [T, hidden]
};

struct ModelSummary {
  std::string arch;               // "mamba2", ...
  int64_t layers = 0, hidden = 0, vocab = 0;
  uint64_t weight_bytes = 0;      // bytes of weight data the model reads (as stored)
  int64_t params = 0;
  int64_t hxq_modules = 0;        // linear layers running from HXQ storage
  int64_t hxq_fast_modules = 0;   // of those, layers with a fast decode kernel on this machine
};

class Model {
 public:
  virtual ~Model() = default;
  virtual ModelSummary summary() const = 0;
  int64_t vocab_size() const { return summary().vocab; }
  virtual std::unique_ptr<ModelState> new_state() const = 0;

  // Consumes ids (appended after what `state` has seen). When `logits` is not null, writes the
  // logits of positions [logits_from, ids.size()) as (ids.size() - logits_from) × vocab floats.
  virtual void forward(ModelState& state, std::span<const int32_t> ids, int64_t logits_from, float* logits,
                       ForwardTrace* trace = nullptr) const = 0;

  // Advances states[i] by the one token ids[i] (i < B = states.size()) in one pass: every weight
  // is read once for all B sequences (the linears run on B rows), the per-sequence parts
  // (conv/SSM recurrences, attention over each sequence's own KV cache at its own position, RoPE
  // at each one's position) run per sequence. logits (when not null) gets B × vocab floats, row i
  // equal to what forward(*states[i], {ids[i]}, 0, ...) would give: the same math, for B = 1 bit
  // for bit; for B > 1 float rounding may differ, and HXQ layers may switch between their fast and
  // exact decode math with the row count (kernels/hxq_gemm.h). States may be at different
  // positions. A state appearing twice, a null state or one of another model, ids.size() != B, an
  // id outside the vocabulary or a state at its context limit fail with one-line errors
  // (forward()'s for the last two) before any state is changed. Buffers are the model's, reused
  // from call to call (no allocation once warm); concurrent calls on one model are serialised.
  // The default (for architectures without a batched pass) runs forward() per sequence, checking
  // the ids first; a context error there leaves the sequences before it advanced.
  virtual void decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, float* logits) const;

  // Bytes read from weights per decoded token (for bandwidth figures).
  virtual uint64_t decode_weight_bytes() const = 0;

  // Calls fn once on every linear layer the model runs that may carry a LoRA adapter, named as
  // the checkpoint stores it (Linear::name): the projections (a Zamba2 shared block's once, under
  // the hybrid layer that stores it) and an untied lm_head — never the token embedding, nor a
  // head tied to it. The default visits none (a model that cannot carry adapters).
  virtual void visit_linears(FnRef<void(Linear&)> fn) {}

  // Attaches every module of `adapter` to the linear layer of the same name (Linear::set_lora),
  // after checking them all: a module the model does not have (an embedding, an lm_head tied to
  // the embedding, a layer of another architecture) or whose [out, in] differs from the layer's
  // fails with one line naming the adapter directory and the module, and nothing is attached.
  // Not to be called while forwards run.
  void attach_lora(const LoraAdapter& adapter);
  // Linear layers carrying a LoRA adapter (0 without one), and the adapter's directory.
  int64_t lora_layers() const { return lora_layers_; }
  const std::string& lora_dir() const { return lora_dir_; }

 private:
  int64_t lora_layers_ = 0;
  std::string lora_dir_;
};

struct LoadOptions {
  // Mamba2 gated RMSNorm: -1 = from the checkpoint format (transformers: whole d_inner;
  // mamba_ssm-style config: per group), 0 = force whole, 1 = force grouped.
  int grouped_norm = -1;
  // A PEFT LoRA adapter directory (codec/lora.h) attached after loading (Model::attach_lora);
  // empty: none.
  std::string lora;
};

// The checks of decode_batch common to every architecture, failing with one-line errors:
// ids.size() == states.size(), no null and no repeated state, then per entry in order as forward()
// checks a one-token call: the context limit (max_context > 0: position() + 1 <= max_context, the
// message naming `location`) and the id (inside [0, vocab)).
void check_decode_batch(std::span<ModelState* const> states, std::span<const int32_t> ids, int64_t vocab,
                        int64_t max_context = 0, const std::string& location = {});

std::unique_ptr<Model> load_model(const std::string& dir, const LoadOptions& opt = {});
std::vector<std::string> supported_model_types();


}  // namespace hxq
