// Output that appears whole or not at all: a temporary directory next to the target, renamed into
// place at commit(); Ctrl-C/SIGTERM turned into an exception that unwinds (and cleans up); checked writes.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace hxq {

// Thrown by check_interrupted() after SIGINT/SIGTERM; the CLI may map it to exit code 130.
class Interrupted : public Error {
 public:
  using Error::Error;
};

// Installs SIGINT and SIGTERM handlers that only set a flag (and restore the default action, so
// a second Ctrl-C kills the process at once). Long loops call check_interrupted() between steps.
void install_interrupt_handlers();
bool interrupted();
void check_interrupted();   // throws Interrupted("interrupted") when the flag is set
void clear_interrupted();   // resets the flag (tests; or after handling)

// Writes bytes to path (created or truncated), checking every step; optional fsync.
void write_file_checked(const std::string& path, std::string_view bytes, bool fsync = false);

// fsync of one file or directory (directories: makes renames/creations inside them durable).
void fsync_path(const std::string& path);

// Usage: AtomicOutputDir out(target, overwrite, {input_dir}); write into out.path(); out.commit().
// The constructor checks the target: an existing target is refused unless `overwrite`, and even
// then only a directory that is empty or looks like a model checkpoint (holds config.json,
// model.safetensors or model.safetensors.index.json) is replaced; a target that is one of
// `inputs` (paths the operation reads) or contains one is refused. It then creates the empty
// directory "<target>.tmp-<pid>" next to the target. commit() fsyncs every file in it and the
// directory, renames it to the target (atomically exchanging with an existing target when
// overwriting, then deleting the old one), and fsyncs the parent. Destroyed without commit() (error, Interrupted), it removes the
// temporary directory, so nothing half-written is ever left at the target. (A process killed
// outright leaves "<target>.tmp-<pid>" behind; the next run with the same pid removes it.)
class AtomicOutputDir {
 public:
  explicit AtomicOutputDir(std::string target, bool overwrite = false, std::vector<std::string> inputs = {});
  ~AtomicOutputDir();
  AtomicOutputDir(const AtomicOutputDir&) = delete;
  AtomicOutputDir& operator=(const AtomicOutputDir&) = delete;

  const std::string& path() const { return tmp_; }  // where to write
  const std::string& target() const { return target_; }
  std::string file(std::string_view name) const { return tmp_ + "/" + std::string(name); }
  void commit();
  bool committed() const { return committed_; }

 private:
  std::string target_, tmp_;
  bool overwrite_ = false;
  bool committed_ = false;
};

}  // namespace hxq
