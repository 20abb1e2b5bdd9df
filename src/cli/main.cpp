// Entry point of the `hxq` binary: dispatches to subcommands, maps errors to exit codes
// (1: bad input or failure, 2: usage) and prints them as one line on stderr.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/output.h"

int main(int argc, char** argv) {
  CLI::App app{"hxq: calibration-free HXQ weight compression and inference for language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "hxq 0.1.0");
  hxq::cli::add_compress(app);
  hxq::cli::add_decompress(app);
  hxq::cli::add_inspect(app);
  hxq::cli::add_generate(app);
  hxq::cli::add_logits(app);
  hxq::cli::add_tokenize(app);
  hxq::cli::add_perplexity(app);
  hxq::cli::add_kl(app);
  hxq::cli::add_synth(app);
  hxq::cli::add_bench(app);
  hxq::cli::add_serve(app);
  hxq::install_interrupt_handlers();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fflush(stdout);
    std::cerr << "hxq: " << e.what() << "\n";
    std::cerr << "Run 'hxq --help' or 'hxq <command> --help' for usage.\n";
    return 2;
  } catch (const hxq::Interrupted&) {
    std::fflush(stdout);
    std::cerr << "hxq: interrupted; no output was written\n";
    return 130;
  } catch (const hxq::UsageError& e) {
    std::fflush(stdout);
    std::cerr << "hxq: " << e.what() << "\n";
    return 2;
  } catch (const hxq::Error& e) {
    std::fflush(stdout);
    std::cerr << "hxq: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::cerr << "hxq: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "hxq: internal error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
