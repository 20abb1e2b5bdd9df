// A model's chat template: found in its directory as transformers finds it, parsed once at load
// (a syntax error is a one-line Error at start-up), rendered per request with the conversation.
#pragma once
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "server/jinja.h"

namespace hxq {

class ChatTemplate {
 public:
  // The template of the model in `model_dir`: `override_file` (--chat-template-file) if given,
  // else <dir>/chat_template.jinja, else <dir>/chat_template.json's "chat_template", else
  // tokenizer_config.json's "chat_template" (a string, or a list of {"name", "template"} whose
  // "default" entry is used). std::nullopt when the model has none. bos/eos tokens come from
  // tokenizer_config.json ("bos_token": a string or {"content": ...}; absent/null: undefined).
  static std::optional<ChatTemplate> load(const std::string& model_dir, const std::string& override_file = "");

  // `source_name` names the template in error messages ("chat template <source_name>:<line>").
  // An empty bos / eos leaves that variable undefined, as transformers does for a missing token.
  static ChatTemplate from_string(std::string source_text, std::string source_name, std::string bos_token,
                                  std::string eos_token);

  // Renders `messages` (a JSON array of message objects: role, content as a string or a list of
  // {"type": "text", "text"} parts, tool_calls, ...; passed to the template as they are) with the
  // variables transformers' apply_chat_template sets: messages, tools=None, documents=None,
  // add_generation_prompt, bos_token, eos_token, then every member of `extra` (e.g. "tools",
  // "enable_thinking", "date_string") over those.
  //
  // Keep the request's key order (parse it as ordered_json): templates print dicts, e.g. tool
  // arguments with tojson, and Python keeps insertion order. Errors: a malformed `messages` or
  // `extra` is an Error; the template failing is a jinja::RenderError, and the template refusing
  // the conversation (raise_exception) a jinja::RaisedError, both naming the template and line.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object(),
                     const jinja::RenderOptions& options = {}) const;

  const std::string& source_text() const { return source_text_; }
  const std::string& source_name() const { return template_.name(); }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 private:
  ChatTemplate(std::string source_text, jinja::Template t, std::string bos, std::string eos)
      : source_text_(std::move(source_text)), template_(std::move(t)), bos_token_(std::move(bos)), eos_token_(std::move(eos)) {}

  std::string source_text_;
  jinja::Template template_;
  std::string bos_token_, eos_token_;
};

}  // namespace hxq
