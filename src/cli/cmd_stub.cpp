// Temporary registrations until the subcommands land (replaced in the next commits).
#include "cli/commands.h"
#include "core/error.h"

namespace hxq::cli {
void add_generate(CLI::App& app) { app.add_subcommand("generate", "Generate text")->callback([] { fail("generate: not built yet"); }); }
void add_logits(CLI::App& app) { app.add_subcommand("logits", "Write logits")->callback([] { fail("logits: not built yet"); }); }
}  // namespace hxq::cli
