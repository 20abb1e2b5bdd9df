// Helpers shared by the subcommands: thread-count option, reading token-id files, timing.
#pragma once
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace hxq::cli {

// Adds --threads N (default: all cores) and returns the storage it writes to.
void add_threads_option(CLI::App* sub, int& threads);
void apply_threads(int threads);
// Adds --exact: HXQ products with exact float32 codebook values instead of the fast 16-bit
// integer decode kernels (same as HXQ_EXACT=1).
void add_exact_option(CLI::App* sub, bool& exact);
void apply_exact(bool exact);

// Adds `flag` DIR (default --lora): a PEFT LoRA adapter directory applied to the model at load
// (LoadOptions::lora) without merging.
void add_lora_option(CLI::App* sub, std::string& dir, const std::string& flag = "--lora",
                     const std::string& which = "the model");

// Little-endian int32 token ids (throws Error naming the file if the size is not a multiple of 4).
std::vector<int32_t> read_ids_file(const std::string& path);

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace hxq::cli
