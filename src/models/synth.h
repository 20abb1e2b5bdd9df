// Random-weight checkpoints with the exact shapes of real model releases (state-spaces' Mamba2
// family), written in Hugging Face layout, for speed and scale tests without downloads.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace hxq {

struct SynthOptions {
  std::string arch = "mamba2";
  std::string preset = "130m";
  DType dtype = DType::BF16;
  uint64_t seed = 1;
  uint64_t max_shard_bytes = 0;  // 0: one model.safetensors
  bool overwrite = false;        // replace an existing checkpoint directory
};

std::vector<std::string> synth_presets(const std::string& arch);
// Writes config.json + model.safetensors into out_dir atomically (nothing is left there on failure).
// Returns the number of parameters.
int64_t write_synthetic_model(const std::string& out_dir, const SynthOptions& opt);

}  // namespace hxq
