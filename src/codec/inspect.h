// `hxq inspect` as a library call: what a checkpoint directory holds (dense or HXQ), as JSON.
#pragma once
#include <string>

#include "io/json.h"

namespace hxq {

// A summary of the checkpoint in `dir` (config.json + safetensors), checking an HXQ checkpoint's
// modules as a load would. Keys: dir, model_type ("?" when absent), format ("dense", "hxq" or
// "hxq_v2"), quant_method (HXQ only), files, total_keys, file_bytes, dense_params (elements of
// float tensors outside HXQ modules), hxq_modules, hxq_weights, hxq_bytes, hxq_bits_per_weight,
// sidecar_entries, modules_by_bits (v2 only: {"8": n, ...}) and dtypes ({"F32": {"tensors": n,
// "bytes": b}, ...}). Throws hxq::Error (one line naming the file) on a bad checkpoint.
json inspect_checkpoint(const std::string& dir);

}  // namespace hxq
