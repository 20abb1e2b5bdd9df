// Internal interface behind hxq::Tokenizer: one implementation for tokenizer.json (the Hugging
// Face pipeline) and one for SentencePiece tokenizer.model files.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hxq::tok {

class Backend {
 public:
  virtual ~Backend() = default;
  // `text` is valid UTF-8; no special tokens added.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;
  virtual bool is_special(int32_t id) const = 0;
  // Ids the post-processor puts before / after a single sequence.
  virtual std::vector<int32_t> post_prefix() const = 0;
  virtual std::vector<int32_t> post_suffix() const = 0;
  // BOS / EOS the file itself knows about (SentencePiece model ids), if any.
  virtual std::optional<int32_t> native_bos() const { return std::nullopt; }
  virtual std::optional<int32_t> native_eos() const { return std::nullopt; }
};

std::shared_ptr<Backend> make_hf_backend(const std::string& tokenizer_json);
std::shared_ptr<Backend> make_spm_backend(const std::string& tokenizer_model);

}  // namespace hxq::tok
