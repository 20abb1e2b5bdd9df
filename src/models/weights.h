// Loading model parameters from a checkpoint by name: linear layers (dense or HXQ, whichever
// the checkpoint stores) and small float vectors (norms, biases, SSM parameters) as float32.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "codec/hxq_weight.h"
#include "models/linear.h"

namespace hxq {


// Linear layer `m` (dense `m.weight` or HXQ `m.codebook`/`m.indices`/...), with `m.bias` when
// `bias` is true and the checkpoint has it, named `m` (Linear::name, which LoRA adapters match).
Linear load_linear(const TensorStore& store, const std::string& m, bool bias = false);

// Tensor `name` as float32, checking that it has `numel` elements (any shape).
std::vector<float> load_vector(const TensorStore& store, const std::string& name, int64_t numel);

// Whether linear module `m` is stored (dense `m.weight` or HXQ tensors).
bool has_linear(const TensorStore& store, const std::string& m);

// load_linear, then a one-line error naming the module and config.json unless its shape is [out, in]
// (and, when `bias`, unless `m.bias` is stored).
Linear load_linear_checked(const TensorStore& store, const std::string& m, int64_t out, int64_t in, bool bias = false);

// Depthwise Conv1d weight `name` [C, 1, K] as float32 [C, K] (shape checked).
std::vector<float> load_conv_weight(const TensorStore& store, const std::string& name, int64_t C, int64_t K);

struct ModelSummary;

// The token embedding [>= vocab, hidden] (the first of `names` that is stored) and the output head:
// `lm_head` when stored and either `stored_head` is kStoredHeadWins or the config does not tie
// them (transformers ignores a stored lm_head when tie_word_embeddings is true), else the
// embedding itself.
struct EmbeddingHead {
  enum HeadRule { kStoredHeadWins, kTieWins };
  Linear embedding, lm_head;
  bool separate = false;

  static EmbeddingHead load(const TensorStore& store, const std::vector<std::string>& names, int64_t vocab,
                            int64_t hidden, bool tie, HeadRule rule);
  const Linear& head() const { return separate ? lm_head : embedding; }
  // h [ids.size(), hidden] = embedding rows (ids checked against vocab).
  void embed(std::span<const int32_t> ids, int64_t vocab, float* h) const;
  void count(ModelSummary& s) const;  // parameters and HXQ modules of embedding and head
};

}  // namespace hxq
