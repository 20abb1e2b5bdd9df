// Streaming safetensors writer: each tensor's data goes to the file as soon as it is added (RAM
// stays small); the JSON header is written at finish() into space reserved at the file's start.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace hxq {

struct TensorInfo;

struct SafetensorsWriterOptions {
  // Bytes reserved for the JSON header in front of the data (rounded up to a multiple of 8). A
  // header entry costs about 70 bytes plus the name (see header_estimate()). If the final header
  // does not fit, finish() writes a new file (header + a copy of the data) and renames it over
  // the first: correct, but it costs a copy of the data.
  uint64_t header_reserve = 256 << 10;
  // When the data section is smaller than this (0: never), finish() always produces the reference library's
  // exact layout (header padded with spaces only up to a multiple of 8), copying the data once
  // if the reserve was larger than needed. Bigger files keep the unused reserve as trailing
  // spaces inside the header, which every safetensors reader accepts.
  uint64_t compact_below = 64 << 20;
  bool fsync = true;  // fsync the file in finish()
};

// Writes one .safetensors file. Tensors are stored in the order added, their data contiguous
// (the format forbids holes), so a tensor's offset is 8-byte aligned only if the tensors before
// it have sizes that are multiples of 8; the data section itself starts 8-byte aligned. The file
// is byte-identical to what the reference implementation writes for the same tensor order and
// metadata order when the compact layout applies. Not thread-safe. Errors throw Error naming
// the file (and tensor); a writer that is destroyed without finish() (or after an error) removes
// its file.
class SafetensorsWriter {
 public:
  using Options = SafetensorsWriterOptions;

  explicit SafetensorsWriter(std::string path, Options opt = {});  // creates/truncates the file
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // "__metadata__" entries, written in the order first set (setting a key again replaces its value).
  void set_metadata(std::string_view key, std::string_view value);

  // Adds a whole tensor. nbytes must equal product(shape) * dtype_size(dtype); data may be null
  // only when nbytes is 0. Names must be non-empty valid UTF-8, unique, and not "__metadata__".
  void add(std::string_view name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  void add(const TensorInfo& t);  // copies a tensor from a reader, under its own name
  void add(std::string_view name, const TensorInfo& t);  // ... under another name

  // The same in pieces, for a tensor produced chunk by chunk: begin_tensor(), then write() the
  // data in order, then end_tensor() (which checks that exactly the right byte count came).
  void begin_tensor(std::string_view name, DType dtype, const std::vector<int64_t>& shape);
  void write(const void* data, size_t nbytes);
  void end_tensor();

  // Writes the header, fsyncs (if asked) and closes. Afterwards the writer only answers queries.
  void finish();

  const std::string& path() const { return path_; }
  bool contains(std::string_view name) const { return names_.count(std::string(name)) != 0; }
  size_t tensor_count() const { return entries_.size(); }
  uint64_t data_bytes() const { return data_end_; }  // data bytes written so far
  bool finished() const { return finished_; }

  // product(shape) * dtype_size, with shape entries checked non-negative and the product
  // checked against overflow; throws Error mentioning `what`.
  static uint64_t tensor_nbytes(DType dtype, const std::vector<int64_t>& shape, std::string_view what);
  // A generous header size for n tensors whose names total name_bytes bytes.
  static uint64_t header_estimate(size_t n_tensors, size_t name_bytes, size_t metadata_bytes = 0);

 private:
  struct Entry {
    std::string json_name;  // the name as a JSON string literal
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::string check_name(std::string_view name) const;  // returns the JSON literal
  std::string build_header() const;
  void raw_write(const void* p, size_t n);
  void flush_buffer();
  void rewrite_into_new_file(const std::string& header);
  void abandon() noexcept;  // close and remove the file

  std::string path_;
  Options opt_;
  int fd_ = -1;
  uint64_t reserve_ = 0;
  uint64_t data_end_ = 0;  // bytes of data accepted (buffered or written)
  std::vector<char> buf_;
  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  bool open_tensor_ = false;
  uint64_t open_remaining_ = 0;
  bool finished_ = false;
  bool broken_ = false;
};

}  // namespace hxq
