#include "io/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/json.h"

namespace hxq {

namespace fs = std::filesystem;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(path) {
  const size_t fsize = map_.size();
  if (fsize < 8) fail("{}: truncated safetensors file ({} bytes, need at least 8)", path, fsize);
  uint64_t hlen = 0;
  std::memcpy(&hlen, map_.data(), 8);  // little-endian on every platform we build for
  if (hlen > kMaxSafetensorsHeader)
    fail("{}: safetensors header length {} exceeds the {} byte limit", path, hlen, kMaxSafetensorsHeader);
  if (hlen > fsize - 8)
    fail("{}: safetensors header length {} runs past the end of the file ({} bytes)", path, hlen, fsize);
  if (hlen < 2) fail("{}: safetensors header too short ({} bytes)", path, hlen);
  const char* hbeg = reinterpret_cast<const char*>(map_.data()) + 8;
  const std::byte* data0 = map_.data() + 8 + hlen;
  const uint64_t data_size = fsize - 8 - hlen;

  json header;
  std::set<std::string> seen;
  std::string dup;
  try {
    json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
      if (ev == json::parse_event_t::key && depth == 1) {
        auto k = parsed.get<std::string>();
        if (!seen.insert(k).second && dup.empty()) dup = k;
      }
      return true;
    };
    header = json::parse(hbeg, hbeg + hlen, cb);
  } catch (const json::exception& e) {
    std::string msg = e.what();
    if (auto p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
    fail("{}: invalid safetensors header JSON: {}", path, msg);
  }
  if (!dup.empty()) fail("{}: tensor '{}' appears twice in the safetensors header", path, dup);
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path);

  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ is not an object", path);
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string()) fail("{}: __metadata__ value '{}' is not a string", path, k);
        metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail("{}: tensor '{}': entry is not an object", path, name);
    if (!v.contains("dtype") || !v["dtype"].is_string())
      fail("{}: tensor '{}': missing or non-string dtype", path, name);
    if (!v.contains("shape") || !v["shape"].is_array())
      fail("{}: tensor '{}': missing or non-array shape", path, name);
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail("{}: tensor '{}': data_offsets must be an array of two integers", path, name);
    TensorInfo t;
    t.name = name;
    t.file = path;
    auto ds = v["dtype"].get<std::string>();
    auto dt = dtype_from_name(ds);
    if (!dt)
      fail("{}: tensor '{}': unsupported dtype {} (supported: F32, F16, BF16, I64, I32, U8, U16)", path, name, ds);
    t.dtype = *dt;
    // numel must stay below 2^62 / dtype size so that byte sizes cannot overflow
    const uint64_t limit = (uint64_t(1) << 62) / dtype_size(t.dtype);
    uint64_t numel = 1;
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned())
        fail("{}: tensor '{}': shape entries must be non-negative integers, got {}", path, name, d.dump());
      uint64_t x = d.get<uint64_t>();
      if (x != 0 && numel > limit / x) fail("{}: tensor '{}': shape {} is absurdly large", path, name, v["shape"].dump());
      numel *= x;
      t.shape.push_back(int64_t(x));
    }
    auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail("{}: tensor '{}': data_offsets must be non-negative integers", path, name);
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e) fail("{}: tensor '{}': data_offsets [{}, {}] are reversed", path, name, b, e);
    if (e > data_size)
      fail("{}: tensor '{}': data range [{}, {}] runs past the end of the data ({} bytes); file truncated?", path,
           name, b, e, data_size);
    uint64_t want = numel * dtype_size(t.dtype);
    if (e - b != want)
      fail("{}: tensor '{}': {} bytes of data but shape {} of {} needs {}", path, name, e - b, v["shape"].dump(), ds,
           want);
    t.data = data0 + b;
    t.nbytes = size_t(want);
    tensors_.push_back(std::move(t));
  }
  // Ranges must not overlap.
  std::vector<const TensorInfo*> by_off;
  for (auto& t : tensors_) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_off.size(); ++i) {
    auto* p = by_off[i - 1];
    if (p->nbytes && by_off[i]->nbytes && p->data + p->nbytes > by_off[i]->data)
      fail("{}: tensors '{}' and '{}' have overlapping data ranges", path, p->name, by_off[i]->name);
  }
}

TensorStore TensorStore::open(const std::string& path) {
  TensorStore s;
  s.location_ = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("{}: no such file or directory", path);
  if (fs::is_directory(path, ec)) {
    fs::path dir(path);
    auto index = dir / "model.safetensors.index.json";
    auto single = dir / "model.safetensors";
    if (fs::exists(index, ec)) {
      json j = parse_json_file(index.string());
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail("{}: missing \"weight_map\" object", index.string());
      std::map<std::string, std::string> wm;
      std::set<std::string> shard_names;
      for (auto& [name, f] : j["weight_map"].items()) {
        if (!f.is_string()) fail("{}: weight_map entry '{}' is not a file name", index.string(), name);
        auto fn = f.get<std::string>();
        if (fn.empty() || fn.find('/') != std::string::npos || fn == "." || fn == "..")
          fail("{}: weight_map entry '{}' names an invalid shard file '{}'", index.string(), name, fn);
        wm[name] = fn;
        shard_names.insert(fn);
      }
      std::map<std::string, SafetensorsFile*> shard;
      for (auto& fn : shard_names) {
        s.files_.push_back(std::make_unique<SafetensorsFile>((dir / fn).string()));
        shard[fn] = s.files_.back().get();
      }
      for (auto& f : s.files_)
        for (auto& t : f->tensors()) {
          auto it = wm.find(t.name);
          if (it == wm.end()) continue;  // stray tensor in a shard: the index decides
          if (shard[it->second] != f.get()) continue;
          s.by_name_[t.name] = &t;
        }
      for (auto& [name, fn] : wm)
        if (!s.by_name_.count(name))
          fail("{}: tensor '{}' listed in the index is missing from shard {}", index.string(), name, fn);
      return s;
    }
    if (!fs::exists(single, ec))
      fail("{}: no model.safetensors or model.safetensors.index.json in this directory", path);
    s.files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
  } else {
    s.files_.push_back(std::make_unique<SafetensorsFile>(path));
  }
  for (auto& t : s.files_.front()->tensors()) s.by_name_[t.name] = &t;
  return s;
}

const TensorInfo* TensorStore::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorInfo& TensorStore::get(std::string_view name) const {
  auto* t = find(name);
  if (!t) fail("{}: missing tensor '{}'", location_, name);
  return *t;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> v;
  for (auto& [k, _] : by_name_) v.push_back(k);
  return v;
}

uint64_t TensorStore::total_bytes() const {
  uint64_t n = 0;
  for (auto& f : files_) {
    struct stat st {};
    if (::stat(f->path().c_str(), &st) == 0) n += uint64_t(st.st_size);
  }
  return n;
}

}  // namespace hxq
