// Writes a Hugging Face-style checkpoint directory: one model.safetensors, or shards
// model-0000i-of-0000N.safetensors plus model.safetensors.index.json when a size cap is exceeded.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/json.h"
#include "io/safetensors_writer.h"

namespace hxq {

struct CheckpointWriterOptions {
  uint64_t header_reserve = 256 << 10;  // per file; see SafetensorsWriterOptions
  uint64_t compact_below = 64 << 20;    // per file; see SafetensorsWriterOptions
  bool fsync = true;
  // "__metadata__" of every file written. transformers writes {"format": "pt"} and some loaders
  // insist on it, so that is the default.
  std::vector<std::pair<std::string, std::string>> file_metadata = {{"format", "pt"}};
};

// Tensors are routed in the order added: a new shard starts when adding a tensor would take the
// current shard's data past max_shard_bytes (a tensor bigger than the cap gets a shard of its
// own, as transformers does); max_shard_bytes = 0 means no cap. Shards are written under
// temporary names and renamed at finish() once their count N is known; with N = 1 the file is
// model.safetensors and no index is written. The index is transformers' format:
// {"metadata": {"total_size": <sum of tensor data bytes>, ...}, "weight_map": {name: file}}
// with sorted keys, 2-space indent and a final newline. out_dir is created if missing; files in
// it with the same names are replaced. Destroyed without finish() (or after an error), the writer
// removes the files it created. Not thread-safe.
class CheckpointWriter {
 public:
  using Options = CheckpointWriterOptions;

  CheckpointWriter(std::string out_dir, uint64_t max_shard_bytes, Options opt = {});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // As SafetensorsWriter; names must be unique across the whole checkpoint.
  void add(std::string_view name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  void add(const TensorInfo& t);
  void add(std::string_view name, const TensorInfo& t);
  void begin_tensor(std::string_view name, DType dtype, const std::vector<int64_t>& shape);
  void write(const void* data, size_t nbytes);
  void end_tensor();

  // Extra keys for the index's "metadata" object (only written when sharded).
  void set_index_metadata(const std::string& key, json value);

  // Finishes every shard, renames them, writes the index. Returns the file names written
  // (relative to out_dir): {"model.safetensors"} or the shards followed by the index.
  std::vector<std::string> finish();

  const std::string& out_dir() const { return dir_; }
  size_t shard_count() const { return shards_.size(); }
  uint64_t total_bytes() const { return total_; }  // tensor data bytes added so far
  bool contains(std::string_view name) const { return where_.count(std::string(name)) != 0; }

  // "model-00002-of-00005.safetensors"
  static std::string shard_name(size_t index_from_1, size_t count);

 private:
  void route(std::string_view name, uint64_t nbytes);  // picks/starts the shard for a tensor
  void cleanup() noexcept;

  std::string dir_;
  uint64_t max_shard_ = 0;
  Options opt_;
  struct Shard {
    std::string tmp_name, final_name;
    std::unique_ptr<SafetensorsWriter> w;
    uint64_t bytes = 0;
    std::vector<std::string> tensors;
  };
  std::vector<Shard> shards_;
  std::map<std::string, size_t> where_;  // tensor -> shard index
  json index_meta_ = json::object();
  uint64_t total_ = 0;
  bool open_tensor_ = false;
  bool finished_ = false;
  std::vector<std::string> created_;  // paths to remove on failure
};

}  // namespace hxq
