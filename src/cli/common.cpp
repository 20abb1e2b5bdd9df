#include "cli/common.h"

#include <cstring>

#include "core/error.h"
#include "core/mmap.h"
#include "core/threadpool.h"

namespace hxq::cli {

void add_threads_option(CLI::App* sub, int& threads) {
  sub->add_option("--threads", threads, "Worker threads (default: all cores)")->check(CLI::Range(1, 1024));
}

void apply_threads(int threads) { set_num_threads(threads); }

std::vector<int32_t> read_ids_file(const std::string& path) {
  std::string bytes = read_text_file(path);
  if (bytes.size() % 4 != 0)
    fail("{}: size {} is not a multiple of 4 (expected little-endian int32 token ids)", path, bytes.size());
  std::vector<int32_t> ids(bytes.size() / 4);
  if (!ids.empty()) std::memcpy(ids.data(), bytes.data(), bytes.size());
  return ids;
}

}  // namespace hxq::cli
