// The hxq command-line tool: one function per subcommand that registers its options and action
// on the CLI11 app. Actions throw hxq::Error (exit 1) or hxq::UsageError (exit 2).
#pragma once
#include <CLI/CLI.hpp>

namespace hxq::cli {

void add_generate(CLI::App& app);
void add_logits(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_kl(CLI::App& app);
void add_synth(CLI::App& app);
void add_compress(CLI::App& app);
void add_inspect(CLI::App& app);
void add_decompress(CLI::App& app);
void add_bench(CLI::App& app);
void add_serve(CLI::App& app);

}  // namespace hxq::cli
