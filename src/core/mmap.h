// Read-only memory-mapped file (RAII). Checkpoint tensors are used in place from the mapping,
// so loading a model costs page-cache, not heap.
#pragma once
#include <cstddef>
#include <string>

namespace hxq {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws Error naming the path
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) file into a string; throws Error naming the path.
std::string read_text_file(const std::string& path);

}  // namespace hxq
