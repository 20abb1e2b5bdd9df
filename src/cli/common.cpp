#include "cli/common.h"

#include <cstring>

#include "core/error.h"
#include "core/mmap.h"
#include "core/threadpool.h"
#include "kernels/hxq_gemm.h"

namespace hxq::cli {

void add_threads_option(CLI::App* sub, int& threads) {
  sub->add_option("--threads", threads, "Worker threads (default: all cores)")->check(CLI::Range(1, 1024));
}

void apply_threads(int threads) { set_num_threads(threads); }

void add_exact_option(CLI::App* sub, bool& exact) {
  sub->add_flag("--exact", exact, "HXQ: exact float32 codebook math in the decode kernels (default: fast 16-bit integer "
                                  "kernels where the CPU has AVX-512 VNNI; same as HXQ_EXACT=1)");
}

void apply_exact(bool exact) {
  if (exact) set_hxq_math(HxqMath::Exact);
}

void add_lora_option(CLI::App* sub, std::string& dir, const std::string& flag, const std::string& which) {
  sub->add_option(flag, dir,
                  "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) applied to " + which +
                      " without merging");
}

std::vector<int32_t> read_ids_file(const std::string& path) {
  std::string bytes = read_text_file(path);
  if (bytes.size() % 4 != 0)
    fail("{}: size {} is not a multiple of 4 (expected little-endian int32 token ids)", path, bytes.size());
  std::vector<int32_t> ids(bytes.size() / 4);
  if (!ids.empty()) std::memcpy(ids.data(), bytes.data(), bytes.size());
  return ids;
}

}  // namespace hxq::cli
