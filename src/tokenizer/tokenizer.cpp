#include "tokenizer/tokenizer.h"

#include <filesystem>

#include "core/error.h"
#include "io/json.h"
#include "tokenizer/backend.h"
#include "tokenizer/unicode.h"

namespace hxq {

namespace fs = std::filesystem;

struct Tokenizer::State {
  std::shared_ptr<tok::Backend> be;
  std::vector<int32_t> prefix, suffix;
  std::optional<int32_t> bos, eos;
  std::string source;
};

namespace {

// A token entry of tokenizer_config.json: "<s>", {"content": "<s>", ...} or null.
std::optional<std::string> config_token(const json& cfg, const char* key, const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail("{}: {} must be a string, an object with \"content\", or null", path, key);
}

std::optional<bool> config_bool(const json& cfg, const char* key, const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) fail("{}: {} must be a boolean", path, key);
  return it->get<bool>();
}

}  // namespace

static std::shared_ptr<const Tokenizer::State> make_state(std::shared_ptr<tok::Backend> be, const std::string& source,
                                                          const std::string& config_path) {
  auto s = std::make_shared<Tokenizer::State>();
  s->be = std::move(be);
  s->source = source;
  s->prefix = s->be->post_prefix();
  s->suffix = s->be->post_suffix();
  s->bos = s->be->native_bos();
  s->eos = s->be->native_eos();
  if (!s->bos && !s->prefix.empty()) s->bos = s->prefix.front();
  if (!s->eos && !s->suffix.empty()) s->eos = s->suffix.back();

  if (!config_path.empty() && fs::is_regular_file(config_path)) {
    json cfg = parse_json_file(config_path);
    if (!cfg.is_object()) fail("{}: must be a JSON object", config_path);
    auto lookup = [&](const char* key, std::optional<int32_t>& slot) {
      if (!cfg.contains(key)) return;
      auto name = config_token(cfg, key, config_path);
      slot = name ? s->be->token_to_id(*name) : std::nullopt;
      if (name && !slot) fail("{}: {} '{}' is not in the vocabulary", config_path, key, *name);
    };
    lookup("bos_token", s->bos);
    lookup("eos_token", s->eos);
    // transformers' Llama-style tokenizers rebuild the post-processor from these flags.
    if (auto add_bos = config_bool(cfg, "add_bos_token", config_path)) {
      s->prefix.clear();
      if (*add_bos && s->bos) s->prefix.push_back(*s->bos);
    }
    if (auto add_eos = config_bool(cfg, "add_eos_token", config_path)) {
      s->suffix.clear();
      if (*add_eos && s->eos) s->suffix.push_back(*s->eos);
    }
  }
  return s;
}

Tokenizer Tokenizer::load(const std::string& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir, ec)) {
    if (dir.size() >= 6 && dir.compare(dir.size() - 6, 6, ".model") == 0) return from_spm_file(dir);
    return from_json_file(dir);
  }
  if (!fs::is_directory(dir, ec)) fail("{}: no such tokenizer directory or file", dir);
  fs::path d(dir);
  std::string config = (d / "tokenizer_config.json").string();
  Tokenizer t;
  if (fs::is_regular_file(d / "tokenizer.json")) {
    std::string file = (d / "tokenizer.json").string();
    t.s_ = make_state(tok::make_hf_backend(file), file, config);
  } else if (fs::is_regular_file(d / "tokenizer.model")) {
    std::string file = (d / "tokenizer.model").string();
    t.s_ = make_state(tok::make_spm_backend(file), file, config);
  } else {
    fail("{}: no tokenizer.json or tokenizer.model in this directory", dir);
  }
  return t;
}

Tokenizer Tokenizer::from_json_file(const std::string& tokenizer_json) {
  Tokenizer t;
  t.s_ = make_state(tok::make_hf_backend(tokenizer_json), tokenizer_json, "");
  return t;
}

Tokenizer Tokenizer::from_spm_file(const std::string& tokenizer_model) {
  Tokenizer t;
  t.s_ = make_state(tok::make_spm_backend(tokenizer_model), tokenizer_model, "");
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> ids;
  if (tok::utf8_is_valid(text)) {
    ids = s_->be->encode(text);
  } else {
    std::string fixed = tok::utf8_lossy(text);
    ids = s_->be->encode(fixed);
  }
  if (add_special && (!s_->prefix.empty() || !s_->suffix.empty())) {
    ids.insert(ids.begin(), s_->prefix.begin(), s_->prefix.end());
    ids.insert(ids.end(), s_->suffix.begin(), s_->suffix.end());
  }
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  return s_->be->decode(ids, skip_special);
}

int64_t Tokenizer::vocab_size() const { return s_->be->vocab_size(); }
std::optional<int32_t> Tokenizer::bos_id() const { return s_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return s_->eos; }
bool Tokenizer::add_bos_by_default() const { return s_->bos && !s_->prefix.empty() && s_->prefix.front() == *s_->bos; }
std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const { return s_->be->token_to_id(token); }
std::optional<std::string> Tokenizer::id_to_token(int32_t id) const { return s_->be->id_to_token(id); }
bool Tokenizer::is_special(int32_t id) const { return s_->be->is_special(id); }
const std::vector<int32_t>& Tokenizer::special_prefix() const { return s_->prefix; }
const std::vector<int32_t>& Tokenizer::special_suffix() const { return s_->suffix; }
const std::string& Tokenizer::source() const { return s_->source; }

// ---------------------------------------------------------------- streaming

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special) : tok_(tok), skip_special_(skip_special) {}

static bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::string s = tok_.decode(ids_, skip_special_);
  if (s.size() <= prefix_.size() || ends_with_replacement(s)) return {};
  // The context chunk normally decodes to the same prefix; if a decoder rewrote it, emit only
  // what follows the common part.
  size_t common = 0;
  while (common < prefix_.size() && s[common] == prefix_[common]) ++common;
  std::string out = s.substr(common);
  size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + std::ptrdiff_t(prefix_index_));
  prefix_ = tok_.decode(ids_, skip_special_);
  prefix_index_ = new_prefix_index;
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  if (ids_.size() > prefix_index_) {
    std::string s = tok_.decode(ids_, skip_special_);
    size_t common = 0;
    while (common < prefix_.size() && common < s.size() && s[common] == prefix_[common]) ++common;
    out = s.substr(common);
  }
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
  return out;
}

}  // namespace hxq
