// Byte-pair-encoding model of tokenizer.json ("model": {"type": "BPE"}): vocabulary, ranked
// merges, unk / byte_fallback / ignore_merges, with a bounded, thread-safe word cache.
#pragma once
#include <cstdint>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/json.h"

namespace hxq::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// Open-addressing string -> id index (hash codes kept next to the slots, so probing rarely
// touches the strings); built once, read-only afterwards.
class StringIndex {
 public:
  void build(std::vector<std::string> keys, std::vector<int32_t> values);
  std::optional<int32_t> find(std::string_view key) const;
  size_t size() const { return keys_.size(); }
  const std::vector<std::string>& keys() const { return keys_; }
  const std::vector<int32_t>& values() const { return values_; }

 private:
  struct Slot {
    uint64_t hash;
    int32_t index;  // into keys_/values_, -1 when empty
  };
  std::vector<std::string> keys_;
  std::vector<int32_t> values_;
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
};

class BpeModel {
 public:
  // `model` is the "model" object of tokenizer.json; errors name `path`.
  BpeModel(const json& model, const std::string& path);

  // Appends the ids of one pre-token (a "word") to `out`.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr if unknown
  int32_t max_id() const { return int32_t(id_to_token_.size()) - 1; }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  StringIndex vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> id_present_;
  struct MergeInfo {
    int32_t rank, new_id;
  };
  std::unordered_map<uint64_t, MergeInfo> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
  int32_t byte_ids_[256];        // ids of "<0xXX>", -1 when absent

  static constexpr size_t kCacheCapacity = 1 << 17;
  static constexpr size_t kMaxCachedWord = 256;  // bytes
  mutable std::shared_mutex cache_mu_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

}  // namespace hxq::tok
