// `hxq compress` as a library call: streams a checkpoint tensor by tensor, encodes the selected
// linear weights to HXQ, copies everything else bit-exact, and returns a receipt of what it did.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "codec/hxq_codec.h"
#include "io/json.h"

namespace hxq {

// Default error-driven sidecar budget (fraction of a tensor's weights stored exactly), capped per
// tensor so that codebook + indices + sidecar stay within kMaxBitsPerWeight.
inline constexpr double kDefaultSidecarFraction = 0.001;
inline constexpr double kMaxBitsPerWeight = 8.1;

// Output format: helix-substrate's "hxq" (one 256-entry codebook per tensor, u8 indices; bit for bit
// what earlier releases wrote) or HXQ v2 (docs/FORMAT.md: group-scaled codebooks at 4-8 bits).
enum class CompressFormat { Helix, V2 };

struct CompressOptions {
  CompressFormat format = CompressFormat::Helix;  // library default; `hxq compress` defaults to V2
  // V2: bit width of every compressed tensor (4, 5, 6, 8), scale group size (16, 32), and the
  // error sidecar fraction (0: none). bpw > 0: a mixed-precision plan instead of one bit width,
  // spending a total budget of bpw bits per compressed weight (see plan_bits in compress.cpp).
  int bits = 8;
  int group = 32;
  double v2_sidecar_fraction = 0;
  double bpw = 0;
  EncodeOptions encode;                  // helix: codebook / sidecar method and fraction
  bool embeddings = false;               // also the token embedding (and an untied lm_head)
  std::vector<std::string> only, skip;   // glob patterns on module names (tensor name minus .weight)
  // A PEFT LoRA adapter directory (codec/lora.h) whose deltas are added to the source weights
  // (converted to float32: W += s·B·A, lora_merge) before compressing; a merged module that is not
  // compressed is written as F32. Every adapter module must be a dense float weight of the
  // checkpoint with the adapter's shape (checked before anything is written). Empty: none.
  std::string merge_lora;
  uint64_t max_shard_bytes = 4'000'000'000ull;  // output shards above this size
  bool overwrite = false;
  bool fsync = true;
};

struct TensorReceipt {
  std::string module;
  int bits = 8;  // index bits (8 for helix)
  int64_t rows = 0, cols = 0;
  std::string source_dtype;
  int64_t sidecar = 0;
  double bits_per_weight = 0, sqnr_db = 0, max_abs_err = 0, mse = 0, seconds = 0;
};

struct CompressReceipt {
  std::string format = "helix";  // "helix" or "v2"
  int bits = 8, group = 0;       // v2: the requested bit width (0 with a bpw plan) and group size
  double bpw_target = 0;         // v2 with a plan
  uint64_t shared_codebook_bytes = 0;
  std::string input, output, codebook, sidecar;
  double sidecar_fraction = 0;
  std::vector<TensorReceipt> modules;  // compressed modules, in file order
  int64_t exact_tensors = 0, total_keys = 0;
  uint64_t input_bytes = 0, output_bytes = 0;
  uint64_t compressed_weights = 0, compressed_bytes = 0;  // of the compressed modules only
  double seconds = 0;
  // With CompressOptions::merge_lora: the adapter, how many modules were merged, and those of them
  // written dense (F32) because they were not compressed.
  std::string merged_lora;
  int64_t merged_lora_modules = 0;
  std::vector<std::string> merged_lora_dense;

  int64_t sidecar_entries() const {
    int64_t n = 0;
    for (auto& m : modules) n += m.sidecar;
    return n;
  }
  double ratio() const { return output_bytes ? double(input_bytes) / double(output_bytes) : 0.0; }
  double bits_per_weight() const { return compressed_weights ? 8.0 * double(compressed_bytes) / double(compressed_weights) : 0; }
  double mb_per_s() const { return seconds > 0 ? double(input_bytes) / 1e6 / seconds : 0.0; }
  json to_json() const;
};

// progress(bytes_of_input_done, bytes_total, current_module)
using CompressProgress = std::function<void(uint64_t, uint64_t, const std::string&)>;

// True when `name` matches the glob (`*` any run of characters, `?` one character).
bool glob_match(std::string_view pattern, std::string_view name);

// Which 2-D weights a compress run picks by default: every linear layer's weight (Mamba2
// in_proj/out_proj; q/k/v/o/gate/up/down projections), never norms, convolutions, SSM
// parameters or biases; embeddings and lm_head only with `embeddings`.
bool is_default_linear(const std::string& tensor_name, const std::vector<int64_t>& shape, bool embeddings);

CompressReceipt compress_checkpoint(const std::string& in_dir, const std::string& out_dir, const CompressOptions& opt,
                                    const CompressProgress& progress = {});

// Writes a dense copy of an HXQ checkpoint: every compressed module decoded (codebook lookup,
// sidecar replacing) to an F32 `.weight`, everything else copied, quantization_config removed.
// Used to check that running from the compressed form equals running the decoded weights.
void decompress_checkpoint(const std::string& in_dir, const std::string& out_dir, bool overwrite = false);

}  // namespace hxq
