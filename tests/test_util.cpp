#include "test_util.h"

#include "io/json.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
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

std::vector<int32_t> ids_of(const TensorInfo& t) {
  std::vector<int32_t> v;
  EXPECT_EQ(t.dtype, DType::I64) << t.name;
  if (t.dtype != DType::I64) return v;
  const auto* p = reinterpret_cast<const int64_t*>(t.data);
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(int32_t(p[i]));
  return v;
}

std::vector<float> floats_of(const TensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

int32_t argmax(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

void write_edited_checkpoint(const std::string& src_dir, const std::string& dst_dir, const std::string& config_json,
                             const std::function<bool(EditedTensor&)>& edit, const std::vector<EditedTensor>& extra) {
  fs::create_directories(dst_dir);
  write_file(dst_dir + "/config.json", config_json);
  auto src = TensorStore::open(src_dir + "/model.safetensors");
  SafetensorsWriter::Options o;
  o.fsync = false;
  SafetensorsWriter w(dst_dir + "/model.safetensors", o);
  auto put = [&](const EditedTensor& t) {
    w.add(t.name, DType::F32, t.shape, t.data.data(), t.data.size() * sizeof(float));
  };
  for (auto& n : src.names()) {
    const auto& t = src.get(n);
    EditedTensor e{n, t.shape, floats_of(t)};
    if (edit && !edit(e)) continue;
    put(e);
  }
  for (auto& e : extra) put(e);
  w.finish();
}

std::string patched_config(const std::string& src_dir, const std::string& patch_json) {
  json c = parse_json_file(src_dir + "/config.json");
  c.merge_patch(json::parse(patch_json));
  return c.dump(2);
}

}  // namespace hxq::test
