#include "io/safetensors_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"

namespace hxq {

namespace {

constexpr size_t kBufferBytes = 1 << 20;

void write_all_at(int fd, const void* p, size_t n, uint64_t off, const std::string& path) {
  auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, c, std::min<size_t>(n, 1 << 30), off_t(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", path, std::strerror(errno));
    }
    c += w;
    n -= size_t(w);
    off += uint64_t(w);
  }
}

// Copies n bytes from in_fd at in_off to out_fd at out_off.
void copy_range(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t n, const std::string& path) {
  bool use_cfr = true;
  std::vector<char> buf;
  while (n > 0) {
    if (use_cfr) {
      loff_t io = loff_t(in_off), oo = loff_t(out_off);
      ssize_t c = ::copy_file_range(in_fd, &io, out_fd, &oo, std::min<uint64_t>(n, 1 << 30), 0);
      if (c > 0) {
        in_off += uint64_t(c);
        out_off += uint64_t(c);
        n -= uint64_t(c);
        continue;
      }
      if (c < 0 && errno == EINTR) continue;
      if (c == 0) fail("{}: unexpected end of data while copying", path);
      use_cfr = false;  // EXDEV, ENOSYS, EINVAL, ...: fall back to read/write
      buf.resize(kBufferBytes);
    }
    size_t want = size_t(std::min<uint64_t>(n, buf.size()));
    ssize_t r = ::pread(in_fd, buf.data(), want, off_t(in_off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail("{}: read failed while copying: {}", path, std::strerror(errno));
    }
    if (r == 0) fail("{}: unexpected end of data while copying", path);
    write_all_at(out_fd, buf.data(), size_t(r), out_off, path);
    in_off += uint64_t(r);
    out_off += uint64_t(r);
    n -= uint64_t(r);
  }
}

void do_fsync(int fd, const std::string& path) {
  if (::fsync(fd) != 0) fail("{}: fsync failed: {}", path, std::strerror(errno));
}

}  // namespace

uint64_t SafetensorsWriter::tensor_nbytes(DType dtype, const std::vector<int64_t>& shape, std::string_view what) {
  const uint64_t limit = (uint64_t(1) << 62) / dtype_size(dtype);
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("{}: negative dimension in shape", what);
    uint64_t x = uint64_t(d);
    if (x > limit || (x != 0 && numel > limit / x)) fail("{}: shape is absurdly large", what);
    numel *= x;
  }
  return numel * dtype_size(dtype);
}

uint64_t SafetensorsWriter::header_estimate(size_t n_tensors, size_t name_bytes, size_t metadata_bytes) {
  // {"<name>":{"dtype":"BF16","shape":[d,d,d,d],"data_offsets":[b,e]}, with 4 dims of up to 7
  // digits and offsets of up to 12 digits is < 100 bytes plus the name; names may need escaping.
  return 64 + 2 * uint64_t(name_bytes) + 100 * uint64_t(n_tensors) + 2 * uint64_t(metadata_bytes) + 32;
}

SafetensorsWriter::SafetensorsWriter(std::string path, Options opt) : path_(std::move(path)), opt_(opt) {
  if (opt_.header_reserve > kMaxSafetensorsHeader) opt_.header_reserve = kMaxSafetensorsHeader;
  reserve_ = (opt_.header_reserve + 7) / 8 * 8;
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", path_, std::strerror(errno));
  buf_.reserve(kBufferBytes);
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_) abandon();
}

void SafetensorsWriter::abandon() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
  }
  broken_ = true;
}

std::string SafetensorsWriter::check_name(std::string_view name) const {
  if (name.empty()) fail("{}: empty tensor name", path_);
  if (name == "__metadata__") fail("{}: '__metadata__' is reserved and cannot name a tensor", path_);
  std::string lit;
  try {
    lit = json(std::string(name)).dump();
  } catch (const json::exception&) {
    fail("{}: tensor name '{}' is not valid UTF-8", path_, printable_name(name));
  }
  if (names_.count(std::string(name))) fail("{}: tensor '{}' added twice", path_, printable_name(name));
  return lit;
}

void SafetensorsWriter::set_metadata(std::string_view key, std::string_view value) {
  if (finished_) fail("{}: set_metadata() after finish()", path_);
  try {
    (void)json(std::string(key)).dump();
    (void)json(std::string(value)).dump();
  } catch (const json::exception&) {
    fail("{}: __metadata__ entry '{}' is not valid UTF-8", path_, printable_name(key));
  }
  for (auto& [k, v] : metadata_)
    if (k == key) {
      v = std::string(value);
      return;
    }
  metadata_.emplace_back(std::string(key), std::string(value));
}

void SafetensorsWriter::begin_tensor(std::string_view name, DType dtype, const std::vector<int64_t>& shape) {
  if (finished_) fail("{}: tensor '{}' added after finish()", path_, printable_name(name));
  if (broken_) fail("{}: writer unusable after an earlier error", path_);
  if (open_tensor_)
    fail("{}: begin_tensor('{}') while tensor {} is still open", path_, printable_name(name),
         entries_.back().json_name);
  std::string lit = check_name(name);
  uint64_t nb = tensor_nbytes(dtype, shape, fmt::format("{}: tensor '{}'", path_, printable_name(name)));
  names_.insert(std::string(name));
  entries_.push_back(Entry{std::move(lit), dtype, shape, data_end_, data_end_ + nb});
  open_tensor_ = true;
  open_remaining_ = nb;
}

void SafetensorsWriter::write(const void* data, size_t nbytes) {
  if (!open_tensor_) fail("{}: write() outside begin_tensor()/end_tensor()", path_);
  if (broken_) fail("{}: writer unusable after an earlier error", path_);
  if (nbytes > open_remaining_)
    fail("{}: tensor {}: {} more bytes written than its shape holds", path_, entries_.back().json_name,
         nbytes - open_remaining_);
  try {
    if (nbytes && !data) fail("{}: tensor {}: null data pointer", path_, entries_.back().json_name);
    raw_write(data, nbytes);
  } catch (...) {
    abandon();
    throw;
  }
  open_remaining_ -= nbytes;
}

void SafetensorsWriter::end_tensor() {
  if (!open_tensor_) fail("{}: end_tensor() without begin_tensor()", path_);
  if (open_remaining_ != 0) {
    auto name = entries_.back().json_name;
    abandon();
    fail("{}: tensor {}: {} bytes missing at end_tensor()", path_, name, open_remaining_);
  }
  open_tensor_ = false;
}

void SafetensorsWriter::add(std::string_view name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                            size_t nbytes) {
  if (finished_) fail("{}: tensor '{}' added after finish()", path_, printable_name(name));
  uint64_t want = tensor_nbytes(dtype, shape, fmt::format("{}: tensor '{}'", path_, printable_name(name)));
  if (want != nbytes)
    fail("{}: tensor '{}': {} bytes given but shape of {} needs {}", path_, printable_name(name), nbytes,
         dtype_name(dtype), want);
  if (nbytes && !data) fail("{}: tensor '{}': null data pointer", path_, printable_name(name));
  begin_tensor(name, dtype, shape);
  write(data, nbytes);
  end_tensor();
}

void SafetensorsWriter::add(const TensorInfo& t) { add(t.name, t); }

void SafetensorsWriter::add(std::string_view name, const TensorInfo& t) {
  add(name, t.dtype, t.shape, t.data, t.nbytes);
}

void SafetensorsWriter::flush_buffer() {
  if (buf_.empty()) return;
  write_all_at(fd_, buf_.data(), buf_.size(), 8 + reserve_ + data_end_ - buf_.size(), path_);
  buf_.clear();
}

void SafetensorsWriter::raw_write(const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  if (buf_.size() + n <= kBufferBytes) {
    buf_.insert(buf_.end(), c, c + n);
    data_end_ += n;
    return;
  }
  flush_buffer();
  if (n >= kBufferBytes / 2) {
    write_all_at(fd_, c, n, 8 + reserve_ + data_end_, path_);
    data_end_ += n;
  } else {
    buf_.insert(buf_.end(), c, c + n);
    data_end_ += n;
  }
}

std::string SafetensorsWriter::build_header() const {
  std::string h = "{";
  bool first = true;
  if (!metadata_.empty()) {
    h += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata_.size(); ++i) {
      if (i) h += ',';
      h += json(metadata_[i].first).dump();
      h += ':';
      h += json(metadata_[i].second).dump();
    }
    h += '}';
    first = false;
  }
  for (auto& e : entries_) {
    if (!first) h += ',';
    first = false;
    h += e.json_name;
    h += ":{\"dtype\":\"";
    h += dtype_name(e.dtype);
    h += "\",\"shape\":[";
    for (size_t i = 0; i < e.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(e.shape[i]);
    }
    h += "],\"data_offsets\":[";
    h += std::to_string(e.begin);
    h += ',';
    h += std::to_string(e.end);
    h += "]}";
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

void SafetensorsWriter::rewrite_into_new_file(const std::string& header) {
  const std::string tmp = path_ + ".rewrite-tmp";
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) fail("{}: cannot create: {}", tmp, std::strerror(errno));
  try {
    uint64_t hlen = header.size();
    char prefix[8];
    std::memcpy(prefix, &hlen, 8);  // little-endian
    write_all_at(out, prefix, 8, 0, tmp);
    write_all_at(out, header.data(), header.size(), 8, tmp);
    copy_range(fd_, 8 + reserve_, out, 8 + hlen, data_end_, tmp);
    if (opt_.fsync) do_fsync(out, tmp);
    if (::close(out) != 0) {
      out = -1;
      fail("{}: close failed: {}", tmp, std::strerror(errno));
    }
    out = -1;
    if (::rename(tmp.c_str(), path_.c_str()) != 0)
      fail("{}: cannot rename to {}: {}", tmp, path_, std::strerror(errno));
  } catch (...) {
    if (out >= 0) ::close(out);
    ::unlink(tmp.c_str());
    throw;
  }
}

void SafetensorsWriter::finish() {
  if (finished_) return;
  if (broken_) fail("{}: writer unusable after an earlier error", path_);
  if (open_tensor_) {
    auto name = entries_.back().json_name;
    abandon();
    fail("{}: finish() while tensor {} is still open", path_, name);
  }
  try {
    flush_buffer();
    std::string header = build_header();
    if (header.size() > kMaxSafetensorsHeader)
      fail("{}: header of {} bytes exceeds the format's {} byte limit (too many tensors for one file)", path_,
           header.size(), kMaxSafetensorsHeader);
    const bool compact = data_end_ < opt_.compact_below;
    if (header.size() > reserve_ || (compact && header.size() != reserve_)) {
      rewrite_into_new_file(header);
      ::close(fd_);
      fd_ = -1;
    } else {
      header.append(reserve_ - header.size(), ' ');
      uint64_t hlen = header.size();
      char prefix[8];
      std::memcpy(prefix, &hlen, 8);
      write_all_at(fd_, prefix, 8, 0, path_);
      write_all_at(fd_, header.data(), header.size(), 8, path_);
      if (opt_.fsync) do_fsync(fd_, path_);
      int fd = fd_;
      fd_ = -1;
      if (::close(fd) != 0) fail("{}: close failed: {}", path_, std::strerror(errno));
    }
  } catch (...) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
    broken_ = true;
    throw;
  }
  finished_ = true;
  buf_ = {};
}

}  // namespace hxq
