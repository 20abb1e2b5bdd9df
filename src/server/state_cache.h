// Prefix-state reuse: snapshots of model states after known token sequences (the end of a
// prompt, the end of a generation), so that a request whose prompt continues one of them — the
// next turn of a chat — prefills only its new tokens. For recurrent models (Mamba, Zamba2) a
// snapshot is usable only when its whole sequence is a prefix of the prompt; a KV-cache state can
// also be truncated to the common prefix. Bounded in bytes, least recently used evicted first.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "models/model.h"

namespace hxq::server {

class StateCache {
 public:
  explicit StateCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  // The longest usable prefix of `prompt` (fewer tokens than the prompt: the last prompt token
  // must still be fed to get logits): a fresh state (a copy; the cache keeps its snapshot) that
  // has consumed prompt[0, n), and n. Returns {nullptr, 0} when nothing matches.
  std::pair<std::unique_ptr<ModelState>, int64_t> lookup(const std::vector<int32_t>& prompt);

  // Keeps `state` (which has consumed exactly `tokens`) as a snapshot; takes ownership. An entry
  // for the same sequence is replaced; entries whose sequence is a prefix of `tokens` stay (other
  // conversations may branch from them) until evicted.
  void insert(std::vector<int32_t> tokens, std::unique_ptr<ModelState> state);

  size_t bytes() const;
  size_t size() const;
  size_t max_bytes() const { return max_bytes_; }

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    std::unique_ptr<ModelState> state;
    size_t bytes = 0;
  };
  void evict_locked();

  mutable std::mutex mu_;
  std::list<Entry> lru_;  // most recently used first
  size_t max_bytes_, bytes_ = 0;
};

}  // namespace hxq::server
