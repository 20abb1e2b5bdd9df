// The model interface every architecture implements (Mamba2 first), and the loader that reads a
// checkpoint directory's config.json and builds the right model from its safetensors.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/json.h"

namespace hxq {

// Per-sequence mutable state: the recurrent SSM/conv state or a KV cache.
class ModelState {
 public:
  virtual ~ModelState() = default;
  virtual void reset() = 0;
  virtual int64_t position() const = 0;  // tokens consumed so far
  virtual size_t bytes() const = 0;      // memory held by the state
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

  // Bytes read from weights per decoded token (for bandwidth figures).
  virtual uint64_t decode_weight_bytes() const = 0;
};

struct LoadOptions {
  // Mamba2 gated RMSNorm: -1 = from the checkpoint format (transformers: whole d_inner;
  // mamba_ssm-style config: per group), 0 = force whole, 1 = force grouped.
  int grouped_norm = -1;
};

std::unique_ptr<Model> load_model(const std::string& dir, const LoadOptions& opt = {});
std::vector<std::string> supported_model_types();

// Reads <dir>/config.json (one-line errors naming it).
json load_config(const std::string& dir);

}  // namespace hxq
