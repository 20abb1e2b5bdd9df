#include "core/output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace hxq {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_interrupted{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void hxq_on_signal(int) {
  g_interrupted.store(1, std::memory_order_relaxed);
  static const char msg[] = "\nhxq: interrupted; cleaning up (press Ctrl-C again to stop at once)\n";
  ssize_t r = ::write(2, msg, sizeof msg - 1);
  (void)r;
}

bool looks_like_checkpoint_or_empty(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_empty(dir, ec) && !ec) return true;
  for (const char* f : {"config.json", "model.safetensors", "model.safetensors.index.json"})
    if (fs::exists(dir / f, ec)) return true;
  return false;
}

// true when `outer` is `inner` or one of its ancestors (both absolute and normalized)
bool is_same_or_ancestor(const fs::path& outer, const fs::path& inner) {
  auto o = outer.begin(), i = inner.begin();
  for (; o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // trailing separator
    if (i == inner.end() || *o != *i) return false;
  }
  return true;
}

void fsync_tree(const fs::path& dir) {
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() || (e.is_directory() && !e.is_symlink())) fsync_path(e.path().string());
  }
  fsync_path(dir.string());
}

}  // namespace

void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = hxq_on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second signal gets the default action (terminate)
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

bool interrupted() { return g_interrupted.load(std::memory_order_relaxed) != 0; }

void check_interrupted() {
  if (interrupted()) throw Interrupted("interrupted");
}

void clear_interrupted() { g_interrupted.store(0, std::memory_order_relaxed); }

void write_file_checked(const std::string& path, std::string_view bytes, bool do_fsync) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create: {}", path, std::strerror(errno));
  const char* p = bytes.data();
  size_t n = bytes.size();
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      fail("{}: write failed: {}", path, std::strerror(e));
    }
    p += w;
    n -= size_t(w);
  }
  if (do_fsync && ::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    fail("{}: fsync failed: {}", path, std::strerror(e));
  }
  if (::close(fd) != 0) fail("{}: close failed: {}", path, std::strerror(errno));
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open for fsync: {}", path, std::strerror(errno));
  int r = ::fsync(fd);
  int e = errno;
  ::close(fd);
  // EINVAL: the file system does not support fsync on this kind of file; nothing to do
  if (r != 0 && e != EINVAL) fail("{}: fsync failed: {}", path, std::strerror(e));
}

AtomicOutputDir::AtomicOutputDir(std::string target, bool overwrite, std::vector<std::string> inputs)
    : overwrite_(overwrite) {
  if (target.empty()) fail("output path is empty");
  std::error_code ec;
  fs::path t = fs::path(target).lexically_normal();
  if (t.has_filename() == false && t.has_parent_path()) t = t.parent_path();  // "out/" -> "out"
  auto fname = t.filename().string();
  if (fname.empty() || fname == "." || fname == "..") fail("{}: cannot be used as an output directory", target);
  fs::path abs = fs::absolute(t, ec);
  if (ec) fail("{}: cannot resolve: {}", target, ec.message());
  fs::path parent = abs.parent_path();
  if (!fs::is_directory(parent, ec)) fail("{}: parent directory {} does not exist", target, parent.string());
  target_ = t.string();

  // the target must not be (or contain) an input
  fs::path tcanon = fs::weakly_canonical(abs, ec);
  if (ec) tcanon = abs;
  for (auto& in : inputs) {
    if (in.empty() || !fs::exists(in, ec)) continue;
    fs::path icanon = fs::canonical(in, ec);
    if (ec) continue;
    if (fs::exists(tcanon, ec) && fs::equivalent(tcanon, icanon, ec))
      fail("{}: output would overwrite the input {}", target_, in);
    if (is_same_or_ancestor(tcanon, icanon))
      fail("{}: output directory contains the input {}; choose another output", target_, in);
  }

  auto st = fs::symlink_status(t, ec);
  if (fs::exists(st)) {
    if (!overwrite_) fail("{}: already exists (use --overwrite to replace it)", target_);
    if (!fs::is_directory(t, ec)) fail("{}: exists and is not a directory; refusing to replace it", target_);
    if (!looks_like_checkpoint_or_empty(t))
      fail("{}: exists and does not look like a checkpoint (no config.json or model.safetensors); refusing to "
           "replace it",
           target_);
  }

  tmp_ = target_ + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp_, ec);  // stale leftover of a killed process with the same pid
  if (!fs::create_directory(tmp_, ec)) fail("{}: cannot create temporary directory: {}", tmp_, ec.message());
}

AtomicOutputDir::~AtomicOutputDir() {
  if (!committed_ && !tmp_.empty()) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void AtomicOutputDir::commit() {
  if (committed_) return;
  try {
    fsync_tree(tmp_);
  } catch (const fs::filesystem_error& e) {
    fail("{}: {}", tmp_, e.code().message());
  }
  std::error_code ec;
  const bool exists = fs::exists(fs::symlink_status(target_, ec));
  if (exists) {
    if (!overwrite_) fail("{}: appeared while writing; not replacing it", target_);
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
      committed_ = true;  // tmp_ now holds the old target
      fs::remove_all(tmp_, ec);
    } else if (errno == EINVAL || errno == ENOSYS) {
      // no atomic exchange on this file system: move the old one aside first
      std::string old = target_ + ".old-" + std::to_string(::getpid());
      fs::remove_all(old, ec);
      if (::rename(target_.c_str(), old.c_str()) != 0)
        fail("{}: cannot move aside to {}: {}", target_, old, std::strerror(errno));
      if (::rename(tmp_.c_str(), target_.c_str()) != 0) {
        int e = errno;
        ::rename(old.c_str(), target_.c_str());
        fail("{}: cannot rename {} to it: {}", target_, tmp_, std::strerror(e));
      }
      committed_ = true;
      fs::remove_all(old, ec);
    } else {
      fail("{}: cannot replace with {}: {}", target_, tmp_, std::strerror(errno));
    }
  } else {
    int r = ::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_NOREPLACE);
    if (r != 0 && (errno == EINVAL || errno == ENOSYS)) r = ::rename(tmp_.c_str(), target_.c_str());
    if (r != 0) fail("{}: cannot rename {} to it: {}", target_, tmp_, std::strerror(errno));
    committed_ = true;
  }
  fs::path parent = fs::absolute(target_, ec).parent_path();
  try {
    fsync_path(parent.string());
  } catch (const Error&) {
    // the rename happened; failing to make it durable is not worth reporting as a failure
  }
}

}  // namespace hxq
