#include "tokenizer/bpe.h"

#include <algorithm>
#include <mutex>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace hxq::tok {

namespace {
constexpr int64_t kMaxId = int64_t(1) << 28;  // sanity bound for ids read from the file

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

std::optional<std::string> opt_string(const json& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) fail("{}: model.{} must be a string or null", path, key);
  return it->get<std::string>();
}

bool opt_bool(const json& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return false;
  if (!it->is_boolean()) fail("{}: model.{} must be a boolean", path, key);
  return it->get<bool>();
}
}  // namespace

void StringIndex::build(std::vector<std::string> keys, std::vector<int32_t> values) {
  keys_ = std::move(keys);
  values_ = std::move(values);
  size_t cap = 16;
  while (cap < keys_.size() * 2) cap *= 2;
  slots_.assign(cap, Slot{0, -1});
  mask_ = cap - 1;
  for (size_t k = 0; k < keys_.size(); ++k) {
    uint64_t h = std::hash<std::string_view>{}(keys_[k]);
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.index < 0) {
        s = Slot{h, int32_t(k)};
        break;
      }
      if (s.hash == h && keys_[size_t(s.index)] == keys_[k]) {
        s.index = int32_t(k);  // duplicate key: the last one wins
        break;
      }
    }
  }
}

std::optional<int32_t> StringIndex::find(std::string_view key) const {
  if (slots_.empty()) return std::nullopt;
  uint64_t h = std::hash<std::string_view>{}(key);
  for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.index < 0) return std::nullopt;
    if (s.hash == h && keys_[size_t(s.index)] == key) return values_[size_t(s.index)];
  }
}

BpeModel::BpeModel(const json& model, const std::string& path) {
  auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object()) fail("{}: BPE model has no \"vocab\" object", path);
  int64_t max_id = -1;
  {
    std::vector<std::string> keys;
    std::vector<int32_t> ids;
    keys.reserve(vit->size());
    ids.reserve(vit->size());
    for (auto it = vit->begin(); it != vit->end(); ++it) {
      if (!it.value().is_number_integer()) fail("{}: vocab entry '{}' has a non-integer id", path, it.key());
      int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= kMaxId) fail("{}: vocab entry '{}' has id {} out of range", path, it.key(), id);
      keys.push_back(it.key());
      ids.push_back(int32_t(id));
      max_id = std::max(max_id, id);
    }
    vocab_.build(std::move(keys), std::move(ids));
  }
  id_to_token_.resize(size_t(max_id + 1));
  id_present_.assign(size_t(max_id + 1), 0);
  for (size_t k = 0; k < vocab_.size(); ++k) {
    size_t id = size_t(vocab_.values()[k]);
    id_to_token_[id] = vocab_.keys()[k];
    id_present_[id] = 1;
  }

  prefix_ = opt_string(model, "continuing_subword_prefix", path).value_or("");
  suffix_ = opt_string(model, "end_of_word_suffix", path).value_or("");
  fuse_unk_ = opt_bool(model, "fuse_unk", path);
  byte_fallback_ = opt_bool(model, "byte_fallback", path);
  ignore_merges_ = opt_bool(model, "ignore_merges", path);
  // "dropout" only matters for training-time sampling; inference runs deterministic BPE.
  if (auto unk = opt_string(model, "unk_token", path)) {
    unk_id_ = vocab_.find(*unk);
    if (!unk_id_) fail("{}: unk_token '{}' is not in the vocabulary", path, *unk);
  }
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = vocab_.find(fmt::format("<0x{:02X}>", b)).value_or(-1);
  }

  auto mit = model.find("merges");
  if (mit == model.end() || mit->is_null()) return;  // a BPE without merges is legal
  if (!mit->is_array()) fail("{}: model.merges must be an array", path);
  merges_.reserve(mit->size());
  auto lookup = [&](const std::string& t, size_t rank) {
    auto id = vocab_.find(t);
    if (!id) fail("{}: merge #{} references unknown token '{}'", path, rank, t);
    return *id;
  };
  int32_t rank = 0;
  for (const auto& m : *mit) {
    std::string a, b;
    if (m.is_string()) {
      const auto& s = m.get_ref<const std::string&>();
      auto sp = s.find(' ');
      if (sp == std::string::npos) fail("{}: merge #{} '{}' is not two space-separated tokens", path, rank, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail("{}: merge #{} must be \"a b\" or [\"a\", \"b\"]", path, rank);
    }
    int32_t ia = lookup(a, size_t(rank)), ib = lookup(b, size_t(rank));
    // The right part's continuing-subword prefix disappears inside the merged token.
    bool has_prefix = !prefix_.empty() && b.compare(0, prefix_.size(), prefix_) == 0;
    std::string merged = a + (has_prefix ? b.substr(prefix_.size()) : b);
    int32_t inew = lookup(merged, size_t(rank));
    merges_[pair_key(ia, ib)] = MergeInfo{rank, inew};  // a later duplicate wins, as in HF
    ++rank;
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const { return vocab_.find(token); }

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_token_.size() || !id_present_[size_t(id)]) return nullptr;
  return &id_to_token_[size_t(id)];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = vocab_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  bool cacheable = word.size() <= kMaxCachedWord;
  if (cacheable) {
    std::shared_lock lk(cache_mu_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t before = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lk(cache_mu_);
    if (cache_.size() < kCacheCapacity)
      cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + std::ptrdiff_t(before), out.end()));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id, prev, next, len;
  };
  std::vector<Sym> syms;
  syms.reserve(w.size());
  auto add = [&](int32_t id, size_t len) {
    int32_t n = int32_t(syms.size());
    syms.push_back(Sym{id, n - 1, -1, int32_t(len)});
    if (n > 0) syms[size_t(n - 1)].next = n;
  };
  int32_t unk = -1;  // pending unknown run (fuse_unk): its id and byte length
  size_t unk_len = 0;
  auto flush_unk = [&] {
    if (unk >= 0) add(unk, unk_len);
    unk = -1;
  };
  std::string tmp;
  for (size_t i = 0; i < w.size();) {
    size_t clen = utf8_valid_len(w, i);
    if (clen == 0) clen = 1;
    size_t end = i + clen;
    bool last = end >= w.size();
    std::string_view s = w.substr(i, clen);
    if ((i > 0 && !prefix_.empty()) || (last && !suffix_.empty())) {
      tmp.assign(i > 0 ? prefix_ : std::string());
      tmp.append(s);
      if (last) tmp.append(suffix_);
      s = tmp;
    }
    if (auto id = vocab_.find(s)) {
      flush_unk();
      add(*id, clen);
    } else {
      bool done = false;
      if (byte_fallback_) {
        bool all = std::all_of(s.begin(), s.end(), [&](char c) { return byte_ids_[uint8_t(c)] >= 0; });
        if (all) {
          flush_unk();
          for (char c : s) add(byte_ids_[uint8_t(c)], 1);
          done = true;
        }
      }
      if (!done && unk_id_) {
        if (unk >= 0 && fuse_unk_) {
          unk_len += clen;
        } else {
          flush_unk();
          unk = *unk_id_;
          unk_len = clen;
        }
      }
    }
    i = end;
  }
  flush_unk();

  // Merge the lowest-ranked pair first (leftmost among equal ranks), validating queued
  // candidates lazily, exactly like tokenizers' Word::merge_all.
  struct Cand {
    int32_t rank, pos, new_id;
  };
  auto worse = [](const Cand& a, const Cand& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
  std::vector<Cand> heap;
  auto find = [&](int32_t a, int32_t b) -> const MergeInfo* {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t k = 0; k + 1 < syms.size(); ++k)
    if (auto m = find(syms[k].id, syms[k + 1].id)) heap.push_back(Cand{m->rank, int32_t(k), m->new_id});
  std::make_heap(heap.begin(), heap.end(), worse);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    Cand top = heap.back();
    heap.pop_back();
    Sym& cur = syms[size_t(top.pos)];
    if (cur.len == 0 || cur.next < 0) continue;
    int32_t next_pos = cur.next;
    Sym right = syms[size_t(next_pos)];
    auto m = find(cur.id, right.id);
    if (!m || m->new_id != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    syms[size_t(next_pos)].len = 0;
    if (right.next >= 0) syms[size_t(right.next)].prev = top.pos;
    if (cur.prev >= 0) {
      if (auto pm = find(syms[size_t(cur.prev)].id, cur.id)) {
        heap.push_back(Cand{pm->rank, cur.prev, pm->new_id});
        std::push_heap(heap.begin(), heap.end(), worse);
      }
    }
    if (cur.next >= 0) {
      if (auto nm = find(cur.id, syms[size_t(cur.next)].id)) {
        heap.push_back(Cand{nm->rank, top.pos, nm->new_id});
        std::push_heap(heap.begin(), heap.end(), worse);
      }
    }
  }
  for (const auto& s : syms)
    if (s.len != 0) out.push_back(s.id);
}

}  // namespace hxq::tok
