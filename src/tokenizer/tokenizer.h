// Text <-> token ids, bit-exact with Hugging Face `tokenizers` (tokenizer.json: byte-level and
// SentencePiece-style BPE) and with SentencePiece (tokenizer.model), plus streaming decoding.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

// Supported tokenizer.json parts (anything else is a one-line Error naming file and type):
//   model: BPE (vocab, merges "a b" or ["a","b"], unk_token, fuse_unk, byte_fallback,
//          ignore_merges, continuing_subword_prefix, end_of_word_suffix; dropout is ignored)
//   normalizer: NFC NFD NFKC NFKD Lowercase Strip StripAccents Prepend Replace Sequence
//   pre_tokenizer: ByteLevel Split Metaspace Digits WhitespaceSplit Sequence
//   decoder: ByteLevel ByteFallback Fuse Strip Replace Metaspace Sequence
//   post_processor: ByteLevel TemplateProcessing BertProcessing RobertaProcessing Sequence
//   added_tokens: special / normalized / lstrip / rstrip / single_word
namespace hxq {

namespace tok {
class Backend;
}

class Tokenizer {
 public:
  // `dir` holds tokenizer.json (+ optional tokenizer_config.json), or tokenizer.model only
  // (SentencePiece). A path to a tokenizer.json or tokenizer.model file is accepted too.
  static Tokenizer load(const std::string& dir);
  // tokenizer.json alone: BOS/EOS come from its post-processor template, if any.
  static Tokenizer from_json_file(const std::string& tokenizer_json);
  // SentencePiece model file alone (BOS added by default when the model has one, as Llama does).
  static Tokenizer from_spm_file(const std::string& tokenizer_model);

  // Invalid UTF-8 in `text` is replaced by U+FFFD first. add_special: apply the post-processor
  // (BOS/EOS template, or tokenizer_config's add_bos_token / add_eos_token).
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
  // Ids that are not in the vocabulary are skipped (as `tokenizers` does).
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  int64_t vocab_size() const;  // highest id + 1 (model vocabulary and added tokens)
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  bool add_bos_by_default() const;  // whether encode(text, true) starts with bos_id()

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;  // the raw vocabulary string
  bool is_special(int32_t id) const;                         // control / special added token
  // Ids encode(text, true) puts around the text.
  const std::vector<int32_t>& special_prefix() const;
  const std::vector<int32_t>& special_suffix() const;
  const std::string& source() const;  // file or directory it was loaded from

  struct State;  // opaque, shared by copies (copying a Tokenizer is cheap)

 private:
  Tokenizer() = default;  // always made by load() / from_*_file()
  std::shared_ptr<const State> s_;
};

// Incremental decoding for streaming generation: push ids, get the text that became complete
// (incomplete UTF-8 sequences and byte-fallback runs are held back); flush() at the end.
// Mirrors tokenizers' DecodeStream: the previous chunk is kept as context so that decoders that
// strip a leading space (SentencePiece) or merge byte tokens behave as in a full decode.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  Tokenizer tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  std::string prefix_;
  size_t prefix_index_ = 0;
};

}  // namespace hxq
