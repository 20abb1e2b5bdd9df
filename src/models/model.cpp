#include "models/model.h"

#include <filesystem>

#include "core/error.h"
#include "models/mamba2.h"
#include "models/transformer.h"

namespace hxq {

std::vector<std::string> supported_model_types() { return {"mamba2", "llama", "qwen2"}; }

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
    type = "mamba2";  // mamba_ssm-style config (state-spaces releases)
  }
  if (type == "mamba2") return load_mamba2(dir, cfg, opt);
  if (type == "llama" || type == "qwen2") return load_transformer(dir, cfg, opt);
  std::string list;
  for (auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
  if (type.empty()) fail("{}/config.json: no \"model_type\" (supported: {})", dir, list);
  fail("{}/config.json: unsupported model_type \"{}\" (supported: {})", dir, type, list);
}

}  // namespace hxq
