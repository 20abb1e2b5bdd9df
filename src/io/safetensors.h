// Safetensors checkpoints: a strictly validated, memory-mapped reader for single files and
// sharded directories (model.safetensors.index.json). Tensors are views into the mapping.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/mmap.h"

namespace hxq {

struct TensorInfo {
  std::string name;
  DType dtype{};
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;  // inside the file mapping; not necessarily aligned
  size_t nbytes = 0;
  std::string file;  // path of the file holding it, for error messages
  uint64_t data_offset = 0;  // start of the data relative to the file's data section

  int64_t numel() const;
  int64_t dim(size_t i) const { return shape.at(i); }
  std::string shape_str() const;  // "[3, 4]"
};

// A name from a file, made safe for a one-line error message: control bytes become \xNN and
// names longer than max_len bytes are cut (at a UTF-8 boundary) and end in "...".
std::string printable_name(std::string_view s, size_t max_len = 120);

// Largest header we accept (the format's own reference implementation caps it at 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

// One .safetensors file, validated as strictly as the format's reference implementation does:
// header length within the file and <= 100 MB; header a JSON object (valid UTF-8, no duplicate
// keys) of tensor entries and an optional "__metadata__" object of strings; supported dtypes;
// shapes whose byte size cannot overflow; data ranges matching shape x dtype size that tile the
// data section exactly (no overlap, no hole, no trailing bytes). Any violation throws Error
// naming the file (and the tensor). The file is mapped read-only; it must not be truncated by
// someone else while in use (that would be SIGBUS, not an Error).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // validates everything; throws Error
  const std::string& path() const { return map_.path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t header_bytes() const { return header_bytes_; }  // JSON length (the 8-byte prefix not counted)
  uint64_t file_bytes() const { return map_.size(); }

 private:
  MappedFile map_;
  uint64_t header_bytes_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory (or of one .safetensors file), by name.
class TensorStore {
 public:
  // `path` is a directory holding model.safetensors or model.safetensors.index.json (+ shards),
  // or a single .safetensors file.
  static TensorStore open(const std::string& path);
  // Tensors that live in memory owned by the caller (which keeps it alive and unchanged while the
  // store and anything loaded from it are in use), e.g. arrays handed over by Python. Checked as a
  // file's entries are: unique non-empty names, nbytes == numel × dtype size, data not null unless
  // empty. `location` names the store in error messages (and is each tensor's `file`).
  static TensorStore from_memory(std::vector<TensorInfo> tensors, const std::string& location);

  const TensorInfo* find(std::string_view name) const;
  const TensorInfo& get(std::string_view name) const;  // throws Error naming the checkpoint
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  std::vector<std::string> names() const;  // sorted
  const std::string& location() const { return location_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  uint64_t total_bytes() const;   // sum of file sizes
  uint64_t tensor_bytes() const;  // sum of the data bytes of the tensors the store exposes

 private:
  std::string location_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::unique_ptr<TensorInfo>> memory_;  // from_memory(): the entries themselves
  std::map<std::string, const TensorInfo*, std::less<>> by_name_;
};

}  // namespace hxq
