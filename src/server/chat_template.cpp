#include "server/chat_template.h"

#include <sys/stat.h>

#include "core/error.h"
#include "core/mmap.h"
#include "io/json.h"

namespace hxq {

namespace {

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// A special token of tokenizer_config.json: "<s>", {"content": "<s>", ...} or null / absent
// (then "": the template sees no such variable).
std::string token_of(const json& cfg, const char* key, const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  fail("{}: \"{}\" must be a string or an object with a \"content\" string", path, key);
}

// tokenizer_config.json's "chat_template": a string, or named templates [{"name", "template"}]
// of which transformers uses "default".
std::optional<std::string> template_of(const json& cfg, const std::string& path) {
  auto it = cfg.find("chat_template");
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const json& e : *it) {
      if (!e.is_object() || !e.contains("name") || !e.contains("template") || !e["template"].is_string())
        fail("{}: \"chat_template\" list entries must be {{\"name\": ..., \"template\": \"...\"}}", path);
      if (e["name"] == "default") return e["template"].get<std::string>();
    }
    fail("{}: \"chat_template\" has several named templates but none named \"default\"", path);
  }
  fail("{}: \"chat_template\" must be a string or a list of named templates", path);
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::load(const std::string& model_dir, const std::string& override_file) {
  std::string bos, eos;
  const std::string cfg_path = model_dir + "/tokenizer_config.json";
  json cfg = json::object();
  if (is_file(cfg_path)) {
    cfg = parse_json_file(cfg_path);
    if (!cfg.is_object()) fail("{}: expected a JSON object", cfg_path);
    bos = token_of(cfg, "bos_token", cfg_path);
    eos = token_of(cfg, "eos_token", cfg_path);
  }
  if (!override_file.empty()) return from_string(read_text_file(override_file), override_file, bos, eos);
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  if (is_file(jinja_path)) return from_string(read_text_file(jinja_path), jinja_path, bos, eos);
  const std::string json_path = model_dir + "/chat_template.json";  // processors of multimodal models
  if (is_file(json_path)) {
    json j = parse_json_file(json_path);
    if (!j.is_object()) fail("{}: expected a JSON object", json_path);
    if (auto t = template_of(j, json_path)) return from_string(std::move(*t), json_path, bos, eos);
  }
  if (auto t = template_of(cfg, cfg_path)) return from_string(std::move(*t), cfg_path, bos, eos);
  return std::nullopt;
}

ChatTemplate ChatTemplate::from_string(std::string source_text, std::string source_name, std::string bos_token,
                                       std::string eos_token) {
  jinja::Template t(source_text, std::move(source_name));
  return ChatTemplate(std::move(source_text), std::move(t), std::move(bos_token), std::move(eos_token));
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra, const jinja::RenderOptions& options) const {
  if (!messages.is_array()) fail("chat template {}: messages must be a JSON array, not {}", source_name(), messages.type_name());
  for (size_t i = 0; i < messages.size(); ++i)
    if (!messages[i].is_object())
      fail("chat template {}: messages[{}] must be a JSON object, not {}", source_name(), i, messages[i].type_name());
  if (!extra.is_object()) fail("chat template {}: template arguments must be a JSON object, not {}", source_name(), extra.type_name());

  // The variables of transformers' apply_chat_template, in its order; `extra` goes over them.
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  vars["messages"] = messages;
  vars["tools"] = nullptr;
  vars["documents"] = nullptr;
  vars["add_generation_prompt"] = add_generation_prompt;
  if (!bos_token_.empty()) vars["bos_token"] = bos_token_;
  if (!eos_token_.empty()) vars["eos_token"] = eos_token_;
  for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = it.value();
  return template_.render(vars, options);
}

}  // namespace hxq
