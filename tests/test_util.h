// Shared helpers of the test suite: where the reference data lives (HXQ_TEST_DATA, default
// ../shared next to the source tree), skipping when it is absent, and running the CLI binary.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hxq {
struct TensorInfo;
}

namespace hxq::test {

std::string data_dir();                          // HXQ_TEST_DATA or <source>/../shared
std::string data_path(const std::string& rel);  // data_dir() + "/" + rel
bool have_data(const std::string& rel);
std::string temp_dir(const std::string& tag);  // a fresh, empty directory for this test

struct CliResult {
  int code = -1;
  std::string out, err;
};
// Runs build/hxq with the given arguments (no shell), capturing stdout and stderr.
CliResult run_cli(const std::vector<std::string>& args);

std::vector<float> read_f32_file(const std::string& path);

// Reference tensors: I64 ids as int32, any float dtype as float32; comparisons.
std::vector<int32_t> ids_of(const TensorInfo& t);
std::vector<float> floats_of(const TensorInfo& t);
float max_abs_diff(const float* a, const float* b, size_t n);
int32_t argmax(const float* x, int64_t n);
void write_file(const std::string& path, const std::string& bytes);

// A tensor of an edited checkpoint (float32).
struct EditedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// Writes dst_dir/config.json (`config_json`) and dst_dir/model.safetensors (all float32): every
// tensor of src_dir/model.safetensors passed through `edit` (which may rename, reshape or change
// it, or return false to drop it; null keeps all), then `extra`.
void write_edited_checkpoint(const std::string& src_dir, const std::string& dst_dir, const std::string& config_json,
                             const std::function<bool(EditedTensor&)>& edit,
                             const std::vector<EditedTensor>& extra = {});
// src_dir/config.json parsed, with `patch` (a JSON object) merged over it, as text.
std::string patched_config(const std::string& src_dir, const std::string& patch_json);

}  // namespace hxq::test

// Skips the current test with a clear message when a reference file is missing.
#define HXQ_REQUIRE_DATA(rel)                                                                         \
  do {                                                                                                \
    if (!::hxq::test::have_data(rel))                                                                 \
      GTEST_SKIP() << "test data " << ::hxq::test::data_path(rel) << " absent (set HXQ_TEST_DATA)"; \
  } while (0)
