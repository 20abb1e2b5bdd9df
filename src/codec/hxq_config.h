// The `quantization_config` of an HXQ checkpoint's config.json (helix-substrate's "hxq", "helix"
// and "cdna_v3" spellings): parsing, validation and the list of compressed modules.
#pragma once
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "io/json.h"

namespace hxq {

class TensorStore;

// quant_method of HXQ v2 checkpoints (docs/FORMAT.md): a value helix-substrate's loader rejects,
// so it never mis-reads v2 tensors as its own format.
inline constexpr const char* kHxq2QuantMethod = "hxq_v2";

struct HxqQuantConfig {
  std::string quant_method;                      // "hxq", "helix", "cdna_v3" or "hxq_v2"
  int codebook_size = 256;                       // "codebook_size" or "n_clusters"
  bool sidecar_enabled = true;
  std::vector<std::string> compressed_modules;   // module paths (tensor name minus ".weight")
  std::vector<std::string> exact_patterns;       // informational only
  std::map<std::string, int> module_k_map;       // per-module codebook sizes, when given
  std::string index_packing;                     // e.g. "12bit"; empty when absent

  bool is_compressed(const std::string& module) const { return module_set.count(module) != 0; }

  std::set<std::string> module_set;              // compressed_modules as a set (for lookups)
};

// Parses config["quantization_config"]. Returns nullopt when the key is absent; throws Error
// "<what>: quantization_config: ..." when it is malformed or names an unsupported method.
std::optional<HxqQuantConfig> parse_hxq_config(const json& config, const std::string& what);

// Reads <path>/config.json (or `path` itself when it is a file) and parses its quantization_config.
std::optional<HxqQuantConfig> read_hxq_config(const std::string& path);

// Checks that every compressed module has `.codebook` and `.indices` tensors in the store and no
// dense `.weight`. Throws Error naming `what` and the first offending module.
void check_hxq_modules(const HxqQuantConfig& cfg, const TensorStore& store, const std::string& what);

}  // namespace hxq
