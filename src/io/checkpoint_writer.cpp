#include "io/checkpoint_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/output.h"
#include "io/safetensors.h"

namespace hxq {

namespace fs = std::filesystem;

std::string CheckpointWriter::shard_name(size_t i, size_t n) {
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", i, n);
}

CheckpointWriter::CheckpointWriter(std::string out_dir, uint64_t max_shard_bytes, Options opt)
    : dir_(std::move(out_dir)), max_shard_(max_shard_bytes), opt_(std::move(opt)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (!fs::is_directory(dir_, ec)) fail("{}: cannot create output directory", dir_);
}

CheckpointWriter::~CheckpointWriter() {
  if (!finished_) cleanup();
}

void CheckpointWriter::cleanup() noexcept {
  for (auto& s : shards_) s.w.reset();  // unfinished writers remove their own file
  for (auto& p : created_) ::unlink(p.c_str());
  shards_.clear();
}

void CheckpointWriter::route(std::string_view name, uint64_t nbytes) {
  if (finished_) fail("{}: tensor '{}' added after finish()", dir_, printable_name(name));
  if (open_tensor_) fail("{}: tensor '{}' added while another tensor is still open", dir_, printable_name(name));
  if (where_.count(std::string(name))) fail("{}: tensor '{}' added twice", dir_, printable_name(name));
  bool need_new = shards_.empty() ||
                  (max_shard_ != 0 && shards_.back().bytes > 0 && shards_.back().bytes + nbytes > max_shard_);
  if (need_new) {
    if (!shards_.empty()) shards_.back().w->finish();
    Shard s;
    s.tmp_name = fmt::format("model-part-{:05d}.safetensors.partial", shards_.size() + 1);
    SafetensorsWriterOptions wo;
    wo.header_reserve = opt_.header_reserve;
    wo.compact_below = opt_.compact_below;
    wo.fsync = opt_.fsync;
    auto p = (fs::path(dir_) / s.tmp_name).string();
    s.w = std::make_unique<SafetensorsWriter>(p, wo);
    created_.push_back(p);
    for (auto& [k, v] : opt_.file_metadata) s.w->set_metadata(k, v);
    shards_.push_back(std::move(s));
  }
}

void CheckpointWriter::begin_tensor(std::string_view name, DType dtype, const std::vector<int64_t>& shape) {
  uint64_t nb = SafetensorsWriter::tensor_nbytes(dtype, shape, fmt::format("{}: tensor '{}'", dir_, printable_name(name)));
  route(name, nb);
  auto& s = shards_.back();
  s.w->begin_tensor(name, dtype, shape);
  s.bytes += nb;
  s.tensors.emplace_back(name);
  where_[std::string(name)] = shards_.size() - 1;
  total_ += nb;
  open_tensor_ = true;
}

void CheckpointWriter::write(const void* data, size_t nbytes) {
  if (!open_tensor_) fail("{}: write() outside begin_tensor()/end_tensor()", dir_);
  shards_.back().w->write(data, nbytes);
}

void CheckpointWriter::end_tensor() {
  if (!open_tensor_) fail("{}: end_tensor() without begin_tensor()", dir_);
  shards_.back().w->end_tensor();
  open_tensor_ = false;
}

void CheckpointWriter::add(std::string_view name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                           size_t nbytes) {
  uint64_t want = SafetensorsWriter::tensor_nbytes(dtype, shape, fmt::format("{}: tensor '{}'", dir_, printable_name(name)));
  if (want != nbytes)
    fail("{}: tensor '{}': {} bytes given but shape of {} needs {}", dir_, printable_name(name), nbytes,
         dtype_name(dtype), want);
  begin_tensor(name, dtype, shape);
  write(data, nbytes);
  end_tensor();
}

void CheckpointWriter::add(const TensorInfo& t) { add(t.name, t); }

void CheckpointWriter::add(std::string_view name, const TensorInfo& t) {
  add(name, t.dtype, t.shape, t.data, t.nbytes);
}

void CheckpointWriter::set_index_metadata(const std::string& key, json value) {
  if (key == "total_size") fail("{}: index metadata 'total_size' is computed by the writer", dir_);
  index_meta_[key] = std::move(value);
}

std::vector<std::string> CheckpointWriter::finish() {
  if (finished_) fail("{}: finish() called twice", dir_);
  if (open_tensor_) fail("{}: finish() while a tensor is still open", dir_);
  try {
    if (shards_.empty()) route("(none)", 0);  // an empty checkpoint is one empty file
    shards_.back().w->finish();
    const size_t n = shards_.size();
    std::vector<std::string> out;
    for (size_t i = 0; i < n; ++i) {
      auto& s = shards_[i];
      s.final_name = n == 1 ? "model.safetensors" : shard_name(i + 1, n);
      auto from = (fs::path(dir_) / s.tmp_name).string();
      auto to = (fs::path(dir_) / s.final_name).string();
      created_.push_back(to);
      if (::rename(from.c_str(), to.c_str()) != 0)
        fail("{}: cannot rename to {}: {}", from, to, std::strerror(errno));
      out.push_back(s.final_name);
    }
    if (n > 1) {
      json meta = index_meta_;
      meta["total_size"] = total_;
      json wm = json::object();
      for (auto& [name, i] : where_) wm[name] = shards_[i].final_name;
      json index = {{"metadata", std::move(meta)}, {"weight_map", std::move(wm)}};
      auto ip = (fs::path(dir_) / "model.safetensors.index.json").string();
      created_.push_back(ip);
      // sorted keys (json objects are std::map), ASCII-escaped like Python's json.dumps
      write_file_checked(ip, index.dump(2, ' ', true) + "\n", opt_.fsync);
      out.push_back("model.safetensors.index.json");
    }
    finished_ = true;
    return out;
  } catch (...) {
    cleanup();
    finished_ = true;  // nothing left to finish; the destructor has nothing to do
    created_.clear();
    throw;
  }
}

}  // namespace hxq
