#include "models/model.h"

#include <filesystem>

#include "core/error.h"
#include "models/mamba1.h"
#include "models/mamba2.h"
#include "models/transformer.h"
#include "models/zamba2.h"

namespace hxq {

std::vector<std::string> supported_model_types() {
  return {"mamba", "falcon_mamba", "mamba2", "zamba2", "llama", "qwen2"};
}

json load_config(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("{}: not a model directory", dir);
  auto path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(path, ec)) fail("{}: missing config.json", dir);
  json cfg = parse_json_file(path);
  if (!cfg.is_object()) fail("{}: expected a JSON object", path);
  return cfg;
}

std::unique_ptr<Model> load_model(const std::string& dir, const LoadOptions& opt) {
  json cfg = load_config(dir);
  std::string type;
  if (cfg.contains("model_type") && cfg["model_type"].is_string()) {
    type = cfg["model_type"].get<std::string>();
  } else if (cfg.contains("ssm_cfg") && cfg.contains("d_model")) {
    // mamba_ssm-style config (state-spaces releases): its layer is Mamba1 unless ssm_cfg says "Mamba2"
    const json& ssm = cfg["ssm_cfg"];
    type = ssm.is_object() && ssm.contains("layer") && ssm["layer"] == "Mamba2" ? "mamba2" : "mamba";
  }
  if (type == "mamba" || type == "falcon_mamba") return load_mamba1(dir, cfg, opt);
  if (type == "mamba2") return load_mamba2(dir, cfg, opt);
  if (type == "zamba2") return load_zamba2(dir, cfg, opt);
  if (type == "llama" || type == "qwen2") return load_transformer(dir, cfg, opt);
  std::string list;
  for (auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
  if (type.empty()) fail("{}/config.json: no \"model_type\" (supported: {})", dir, list);
  fail("{}/config.json: unsupported model_type \"{}\" (supported: {})", dir, type, list);
}

}  // namespace hxq
