// Loading model parameters from a checkpoint by name: linear layers (dense or HXQ, whichever
// the checkpoint stores) and small float vectors (norms, biases, SSM parameters) as float32.
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "codec/hxq_weight.h"
#include "kernels/linear.h"

namespace hxq {


// Linear layer `m` (dense `m.weight` or HXQ `m.codebook`/`m.indices`/...), with `m.bias` when
// `bias` is true and the checkpoint has it.
Linear load_linear(const TensorStore& store, const std::string& m, bool bias = false);

// Tensor `name` as float32, checking that it has `numel` elements (any shape).
std::vector<float> load_vector(const TensorStore& store, const std::string& name, int64_t numel);

}  // namespace hxq
