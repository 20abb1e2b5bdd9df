#include "server/state_cache.h"

#include <algorithm>

namespace hxq::server {

std::pair<std::unique_ptr<ModelState>, int64_t> StateCache::lookup(const std::vector<int32_t>& prompt) {
  std::lock_guard lk(mu_);
  if (prompt.size() < 2) return {nullptr, 0};
  const int64_t limit = int64_t(prompt.size()) - 1;
  auto best = lru_.end();
  int64_t best_n = 0;
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    const auto& t = it->tokens;
    const size_t m = std::min(t.size(), prompt.size());
    const int64_t common = int64_t(std::mismatch(t.begin(), t.begin() + ptrdiff_t(m), prompt.begin()).first - t.begin());
    // Usable: the whole snapshot when it is a prefix within the limit; otherwise only a state that
    // can be truncated (KV caches) gives the common part.
    int64_t n = 0;
    if (common == int64_t(t.size()) && common <= limit) n = common;
    else if (it->state->can_truncate()) n = std::min(common, limit);
    if (n > best_n) {
      best_n = n;
      best = it;
    }
  }
  if (best == lru_.end()) return {nullptr, 0};
  lru_.splice(lru_.begin(), lru_, best);  // most recently used
  auto st = best->state->clone();
  if (best_n < st->position() && !st->truncate(best_n)) return {nullptr, 0};
  return {std::move(st), best_n};
}

void StateCache::insert(std::vector<int32_t> tokens, std::unique_ptr<ModelState> state) {
  if (!state || tokens.empty() || max_bytes_ == 0) return;
  std::lock_guard lk(mu_);
  for (auto it = lru_.begin(); it != lru_.end(); ++it)
    if (it->tokens == tokens) {
      bytes_ -= it->bytes;
      lru_.erase(it);
      break;
    }
  Entry e;
  e.tokens = std::move(tokens);
  e.bytes = state->bytes() + e.tokens.size() * sizeof(int32_t);
  e.state = std::move(state);
  if (e.bytes > max_bytes_) return;  // would evict everything and still not fit
  bytes_ += e.bytes;
  lru_.push_front(std::move(e));
  evict_locked();
}

void StateCache::evict_locked() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    bytes_ -= lru_.back().bytes;
    lru_.pop_back();
  }
}

size_t StateCache::bytes() const {
  std::lock_guard lk(mu_);
  return bytes_;
}

size_t StateCache::size() const {
  std::lock_guard lk(mu_);
  return lru_.size();
}

}  // namespace hxq::server
