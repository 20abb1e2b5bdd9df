// SentencePiece tokenizer.model files through Debian's libsentencepiece (the reference
// implementation itself, hence bit-exact with the Python `sentencepiece` package).
#include <sentencepiece_processor.h>

#include "core/error.h"
#include "tokenizer/backend.h"

namespace hxq::tok {

namespace {

class SpmBackend final : public Backend {
 public:
  explicit SpmBackend(const std::string& path) : path_(path) {
    auto st = sp_.Load(path);
    if (!st.ok()) fail("{}: cannot load SentencePiece model: {}", path, st.ToString());
    size_ = sp_.GetPieceSize();
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    auto st = sp_.Encode(text, &ids);
    if (!st.ok()) fail("{}: SentencePiece encode failed: {}", path_, st.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::vector<int> keep;
    keep.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id >= size_) continue;  // unknown ids are skipped, as in tokenizers
      if (skip_special && is_special(id)) continue;
      keep.push_back(id);
    }
    std::string out;
    auto st = sp_.Decode(keep, &out);
    if (!st.ok()) fail("{}: SentencePiece decode failed: {}", path_, st.ToString());
    return out;
  }

  int64_t vocab_size() const override { return size_; }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    int id = sp_.PieceToId(token);
    if (id < 0 || id >= size_ || sp_.IdToPiece(id) != token) return std::nullopt;  // unk fallback
    return id;
  }
  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id < 0 || id >= size_) return std::nullopt;
    return sp_.IdToPiece(id);
  }
  bool is_special(int32_t id) const override {
    return id >= 0 && id < size_ && (sp_.IsControl(id) || sp_.IsUnknown(id));
  }
  // Llama convention: BOS in front of every sequence (SentencePiece itself adds nothing).
  std::vector<int32_t> post_prefix() const override {
    if (auto b = native_bos()) return {*b};
    return {};
  }
  std::vector<int32_t> post_suffix() const override { return {}; }
  std::optional<int32_t> native_bos() const override {
    int b = sp_.bos_id();
    return b >= 0 && b < size_ ? std::optional<int32_t>(b) : std::nullopt;
  }
  std::optional<int32_t> native_eos() const override {
    int e = sp_.eos_id();
    return e >= 0 && e < size_ ? std::optional<int32_t>(e) : std::nullopt;
  }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  int size_ = 0;
};

}  // namespace

std::shared_ptr<Backend> make_spm_backend(const std::string& tokenizer_model) {
  return std::make_shared<SpmBackend>(tokenizer_model);
}

}  // namespace hxq::tok
