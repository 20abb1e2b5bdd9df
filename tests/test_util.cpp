#include "test_util.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

extern char** environ;

namespace hxq::test {

namespace fs = std::filesystem;

std::string data_dir() {
  if (const char* e = std::getenv("HXQ_TEST_DATA"); e && *e) return e;
  return std::string(HXQ_SOURCE_DIR) + "/../shared";
}

std::string data_path(const std::string& rel) { return data_dir() + "/" + rel; }

bool have_data(const std::string& rel) { return fs::exists(data_path(rel)); }

namespace {
// Removes every directory temp_dir() handed out when the test program exits.
struct TempDirs {
  std::mutex mu;
  std::vector<fs::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (auto& d : dirs) fs::remove_all(d, ec);
  }
};
TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}
}  // namespace

std::string temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto& reg = temp_dirs();
  auto base = fs::temp_directory_path() /
              ("hxq-test-" + std::to_string(::getpid()) + "-" + tag + "-" + std::to_string(counter++));
  fs::remove_all(base);
  fs::create_directories(base);
  {
    std::lock_guard<std::mutex> lk(reg.mu);
    reg.dirs.push_back(base);
  }
  return base.string();
}

static std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

CliResult run_cli(const std::vector<std::string>& args) {
  auto dir = temp_dir("cli");
  std::string out = dir + "/stdout", err = dir + "/stderr";
  std::vector<std::string> full{HXQ_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid;
  CliResult r;
  if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0) {
    int st = 0;
    waitpid(pid, &st, 0);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  posix_spawn_file_actions_destroy(&fa);
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove_all(dir);
  return r;
}

std::vector<float> read_f32_file(const std::string& path) {
  auto s = slurp(path);
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

}  // namespace hxq::test
