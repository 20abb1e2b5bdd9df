// Loading model parameters from a checkpoint by name: linear layers (dense or HXQ, whichever
// the checkpoint stores) and small float vectors (norms, biases, SSM parameters) as float32.
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/linear.h"

namespace hxq {

std::string strip_weight(const std::string& tensor_name);  // "a.b.weight" -> "a.b"

// True when the checkpoint stores module `m` in any supported form (m.weight or HXQ tensors).
bool is_hxq_module(const TensorStore& store, const std::string& m);

// Linear layer `m` (dense `m.weight` or HXQ `m.codebook`/`m.indices`/...), with `m.bias` when
// `bias` is true and the checkpoint has it.
Linear load_linear(const TensorStore& store, const std::string& m, bool bias = false);

// Tensor `name` as float32, checking that it has `numel` elements (any shape).
std::vector<float> load_vector(const TensorStore& store, const std::string& name, int64_t numel);

}  // namespace hxq
