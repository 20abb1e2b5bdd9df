#include "io/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors_writer.h"

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

std::string printable_name(std::string_view s, size_t max_len) {
  std::string out;
  size_t i = 0;
  for (; i < s.size() && out.size() < max_len; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += char(c);  // printable ASCII, or a byte of (already validated) UTF-8
    }
  }
  if (i < s.size()) {
    // do not cut a UTF-8 sequence in half
    while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xc0) == 0x80) out.pop_back();
    if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xc0) out.pop_back();
    out += "...";
  }
  return out;
}

namespace {

// Thrown from inside the JSON parser callback (never escapes this file).
struct HeaderShapeError {
  std::string msg;
};

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(path) {
  const size_t fsize = map_.size();
  if (fsize < 8) fail("{}: truncated safetensors file ({} bytes, need at least 8)", path, fsize);
  uint64_t hlen = 0;
  std::memcpy(&hlen, map_.data(), 8);  // little-endian on every platform we build for
  if (hlen > kMaxSafetensorsHeader)
    fail("{}: safetensors header length {} exceeds the {} byte limit (not a safetensors file?)", path, hlen,
         kMaxSafetensorsHeader);
  if (hlen > fsize - 8)
    fail("{}: safetensors header length {} runs past the end of the file ({} bytes)", path, hlen, fsize);
  if (hlen < 2) fail("{}: safetensors header too short ({} bytes)", path, hlen);
  const char* hbeg = reinterpret_cast<const char*>(map_.data()) + 8;
  const std::byte* data0 = map_.data() + 8 + hlen;
  const uint64_t data_size = fsize - 8 - hlen;
  header_bytes_ = hlen;
  // nlohmann's parser stops at a NUL byte as if the input ended there; the reference
  // implementation rejects it (trailing characters). Reject it here, before parsing.
  if (const void* z = std::memchr(hbeg, 0, hlen))
    fail("{}: safetensors header contains a NUL byte at offset {}", path,
         static_cast<const char*>(z) - hbeg + 8);

  // A valid header is {"name": {"dtype": s, "shape": [n...], "data_offsets": [b, e]}, ...,
  // "__metadata__": {k: s}}: containers nest at most 3 deep. Deeper nesting and duplicate keys
  // at any level are rejected while parsing (a duplicate would make the file mean different
  // things to different readers; bounded depth keeps every later walk over the JSON shallow).
  json header;
  std::vector<std::set<std::string>> keys;  // one key set per open object
  try {
    json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
      switch (ev) {
        case json::parse_event_t::object_start:
        case json::parse_event_t::array_start:
          if (depth >= 3) throw HeaderShapeError{"JSON nests deeper than a safetensors header can"};
          if (ev == json::parse_event_t::object_start) keys.emplace_back();
          break;
        case json::parse_event_t::object_end:
          if (!keys.empty()) keys.pop_back();
          break;
        case json::parse_event_t::key: {
          auto k = parsed.get<std::string>();
          if (!keys.empty() && !keys.back().insert(k).second) {
            if (depth == 1) throw HeaderShapeError{fmt::format("tensor '{}' appears twice in the header", printable_name(k))};
            throw HeaderShapeError{fmt::format("key '{}' appears twice in one header object", printable_name(k))};
          }
          break;
        }
        default:
          break;
      }
      return true;
    };
    header = json::parse(hbeg, hbeg + hlen, cb);
  } catch (const json::exception& e) {
    fail("{}: invalid safetensors header JSON: {}", path, clean_json_error(e.what()));
  } catch (const HeaderShapeError& e) {
    fail("{}: invalid safetensors header: {}", path, e.msg);
  }
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path);

  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ is not an object of strings", path);
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string()) fail("{}: __metadata__ value '{}' is not a string", path, printable_name(k));
        metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    const std::string pname = printable_name(name);
    if (!v.is_object()) fail("{}: tensor '{}': entry is not an object", path, pname);
    if (!v.contains("dtype") || !v["dtype"].is_string())
      fail("{}: tensor '{}': missing or non-string dtype", path, pname);
    if (!v.contains("shape") || !v["shape"].is_array())
      fail("{}: tensor '{}': missing or non-array shape", path, pname);
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail("{}: tensor '{}': data_offsets must be an array of two integers", path, pname);
    TensorInfo t;
    t.name = name;
    t.file = path;
    auto ds = v["dtype"].get<std::string>();
    auto dt = dtype_from_name(ds);
    if (!dt)
      fail("{}: tensor '{}': unsupported dtype '{}' (supported: F32, F16, BF16, I64, I32, U8, U16)", path, pname,
           printable_name(ds, 32));
    t.dtype = *dt;
    // numel must stay below 2^62 / dtype size so that byte sizes cannot overflow
    const uint64_t limit = (uint64_t(1) << 62) / dtype_size(t.dtype);
    uint64_t numel = 1;
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned())
        fail("{}: tensor '{}': shape entries must be non-negative integers, got {}", path, pname,
             printable_name(d.dump(), 40));
      uint64_t x = d.get<uint64_t>();
      if (x > limit || (x != 0 && numel > limit / x))
        fail("{}: tensor '{}': shape {} is absurdly large", path, pname, printable_name(v["shape"].dump(), 200));
      numel *= x;
      t.shape.push_back(int64_t(x));
    }
    auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail("{}: tensor '{}': data_offsets must be non-negative integers", path, pname);
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e) fail("{}: tensor '{}': data_offsets [{}, {}] are reversed", path, pname, b, e);
    if (e > data_size)
      fail("{}: tensor '{}': data range [{}, {}] runs past the end of the data ({} bytes); file truncated?", path,
           pname, b, e, data_size);
    uint64_t want = numel * dtype_size(t.dtype);
    if (e - b != want)
      fail("{}: tensor '{}': {} bytes of data but shape {} of {} needs {}", path, pname, e - b, t.shape_str(), ds,
           want);
    t.data = data0 + b;
    t.nbytes = size_t(want);
    t.data_offset = b;
    tensors_.push_back(std::move(t));
  }
  // As in the reference implementation, the tensors must tile the data section exactly: no
  // overlaps, no holes, nothing after the last tensor.
  std::vector<const TensorInfo*> by_off;
  for (auto& t : tensors_) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) {
    return a->data_offset != b->data_offset ? a->data_offset < b->data_offset : a->nbytes < b->nbytes;
  });
  uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (auto* t : by_off) {
    if (t->data_offset < pos)
      fail("{}: tensors '{}' and '{}' have overlapping data ranges", path, printable_name(prev->name),
           printable_name(t->name));
    if (t->data_offset > pos)
      fail("{}: tensor '{}': {} bytes of the data section before it belong to no tensor (hole at offset {})", path,
           printable_name(t->name), t->data_offset - pos, pos);
    pos = t->data_offset + t->nbytes;
    prev = t;
  }
  if (pos != data_size)
    fail("{}: {} bytes after the last tensor's data belong to no tensor (data section {} bytes, tensors end at {})",
         path, data_size - pos, data_size, pos);
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
      const std::string ipath = index.string();
      json j = parse_json_file(ipath);
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail("{}: missing \"weight_map\" object", ipath);
      if (j["weight_map"].empty()) fail("{}: \"weight_map\" lists no tensors", ipath);
      std::map<std::string, std::string> wm;
      std::set<std::string> shard_names;
      for (auto& [name, f] : j["weight_map"].items()) {
        if (!f.is_string()) fail("{}: weight_map entry '{}' is not a file name", ipath, printable_name(name));
        auto fn = f.get<std::string>();
        if (fn.empty() || fn.find('/') != std::string::npos || fn.find('\0') != std::string::npos || fn == "." ||
            fn == "..")
          fail("{}: weight_map entry '{}' names an invalid shard file '{}' (must be a plain file name in the same "
               "directory)",
               ipath, printable_name(name), printable_name(fn));
        wm[name] = fn;
        shard_names.insert(fn);
      }
      std::map<std::string, SafetensorsFile*> shard;
      for (auto& fn : shard_names) {
        auto sp = (dir / fn).string();
        if (!fs::exists(sp, ec)) fail("{}: shard file {} named in the index does not exist", ipath, sp);
        s.files_.push_back(std::make_unique<SafetensorsFile>(sp));
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
          fail("{}: tensor '{}' listed in the index is missing from shard {}", ipath, printable_name(name),
               (dir / fn).string());
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

TensorStore TensorStore::from_memory(std::vector<TensorInfo> tensors, const std::string& location) {
  TensorStore s;
  s.location_ = location;
  for (auto& t : tensors) {
    if (t.name.empty()) fail("{}: a tensor without a name", location);
    if (s.by_name_.count(t.name)) fail("{}: tensor '{}' given twice", location, printable_name(t.name));
    const uint64_t want =
        SafetensorsWriter::tensor_nbytes(t.dtype, t.shape, fmt::format("{}: tensor '{}'", location, printable_name(t.name)));
    if (want != t.nbytes)
      fail("{}: tensor '{}': {} bytes for shape {} of {} (expected {})", location, printable_name(t.name), t.nbytes,
           t.shape_str(), dtype_name(t.dtype), want);
    if (t.nbytes > 0 && !t.data) fail("{}: tensor '{}': no data", location, printable_name(t.name));
    t.file = location;
    s.memory_.push_back(std::make_unique<TensorInfo>(std::move(t)));
    s.by_name_[s.memory_.back()->name] = s.memory_.back().get();
  }
  return s;
}

const TensorInfo* TensorStore::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorInfo& TensorStore::get(std::string_view name) const {
  auto* t = find(name);
  if (!t) fail("{}: missing tensor '{}'", location_, printable_name(name));
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

uint64_t TensorStore::tensor_bytes() const {
  uint64_t n = 0;
  for (auto& [_, t] : by_name_) n += t->nbytes;
  return n;
}

}  // namespace hxq
