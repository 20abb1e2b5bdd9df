#include "codec/hxq_config.h"

#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"

namespace hxq {

namespace {

std::vector<std::string> string_list(const json& q, const char* key, const std::string& what, bool required) {
  std::vector<std::string> out;
  if (!q.contains(key)) {
    if (required) fail("{}: quantization_config: missing \"{}\"", what, key);
    return out;
  }
  const json& a = q[key];
  if (!a.is_array()) fail("{}: quantization_config: \"{}\" must be an array of strings", what, key);
  for (const auto& e : a) {
    if (!e.is_string() || e.get<std::string>().empty())
      fail("{}: quantization_config: \"{}\" has a non-string or empty entry {}", what, key, e.dump());
    out.push_back(e.get<std::string>());
  }
  return out;
}

int codebook_size(const json& v, const std::string& what, const std::string& key) {
  if (!v.is_number_integer()) fail("{}: quantization_config: \"{}\" must be an integer, got {}", what, key, v.dump());
  const auto k = v.get<int64_t>();
  if (k < 1 || k > 65536) fail("{}: quantization_config: \"{}\" = {} not in [1, 65536]", what, key, k);
  return int(k);
}

}  // namespace

std::optional<HxqQuantConfig> parse_hxq_config(const json& config, const std::string& what) {
  if (!config.is_object()) fail("{}: config is not a JSON object", what);
  if (!config.contains("quantization_config")) return std::nullopt;
  const json& q = config["quantization_config"];
  if (!q.is_object()) fail("{}: quantization_config is not an object", what);
  HxqQuantConfig c;
  if (!q.contains("quant_method") || !q["quant_method"].is_string())
    fail("{}: quantization_config: missing or non-string \"quant_method\"", what);
  c.quant_method = q["quant_method"].get<std::string>();
  if (c.quant_method != "hxq" && c.quant_method != "helix" && c.quant_method != "cdna_v3" &&
      c.quant_method != kHxq2QuantMethod)
    fail("{}: quantization_config: unsupported quant_method '{}' (supported: hxq, helix, cdna_v3, {})", what,
         c.quant_method, kHxq2QuantMethod);
  if (q.contains("codebook_size")) c.codebook_size = codebook_size(q["codebook_size"], what, "codebook_size");
  else if (q.contains("n_clusters")) c.codebook_size = codebook_size(q["n_clusters"], what, "n_clusters");
  if (q.contains("sidecar_enabled")) {
    if (!q["sidecar_enabled"].is_boolean()) fail("{}: quantization_config: \"sidecar_enabled\" must be a boolean", what);
    c.sidecar_enabled = q["sidecar_enabled"].get<bool>();
  }
  c.compressed_modules = string_list(q, "compressed_modules", what, true);
  c.exact_patterns = string_list(q, "exact_patterns", what, false);
  for (const auto& m : c.compressed_modules)
    if (!c.module_set.insert(m).second) fail("{}: quantization_config: module '{}' listed twice", what, m);
  if (q.contains("module_k_map")) {
    const json& mk = q["module_k_map"];
    if (!mk.is_object()) fail("{}: quantization_config: \"module_k_map\" must be an object", what);
    for (auto& [m, v] : mk.items()) c.module_k_map[m] = codebook_size(v, what, "module_k_map." + m);
  }
  if (q.contains("index_packing") && !q["index_packing"].is_null()) {
    if (!q["index_packing"].is_string()) fail("{}: quantization_config: \"index_packing\" must be a string", what);
    c.index_packing = q["index_packing"].get<std::string>();
  }
  return c;
}

std::optional<HxqQuantConfig> read_hxq_config(const std::string& path) {
  std::error_code ec;
  std::string file = std::filesystem::is_directory(path, ec) ? path + "/config.json" : path;
  return parse_hxq_config(parse_json_file(file), file);
}

void check_hxq_modules(const HxqQuantConfig& cfg, const TensorStore& store, const std::string& what) {
  for (const auto& m : cfg.compressed_modules) {
    if (cfg.quant_method == kHxq2QuantMethod) {
      for (const char* sfx : {".qparams", ".packed_indices", ".scales", ".scale_params"})
        if (!store.contains(m + sfx))
          fail("{}: compressed module '{}' has no '{}{}' tensor in {}", what, m, m, sfx, store.location());
    } else if (!store.contains(m + ".codebook") || !store.contains(m + ".indices"))
      fail("{}: compressed module '{}' has no '{}.codebook' / '{}.indices' tensors in {}", what, m, m, m,
           store.location());
    if (store.contains(m + ".weight"))
      fail("{}: compressed module '{}' also has a dense '{}.weight' tensor in {}", what, m, m, store.location());
  }
}

}  // namespace hxq
