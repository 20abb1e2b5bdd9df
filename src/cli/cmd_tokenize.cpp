// `hxq tokenize`: text (a file or -p) -> token ids, as JSON on stdout or little-endian int32.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "core/mmap.h"
#include "tokenizer/tokenizer.h"

namespace hxq::cli {

namespace {
struct TokenizeOpts {
  std::string model, file, prompt, out;
  bool add_special = false, json = false;
};

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string s = "{\"ids\":[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  s += "], \"count\": " + std::to_string(ids.size()) + "}\n";
  return s;
}

void write_or_fail(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail("{}: cannot open for writing", path);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  f.close();
  if (!f) fail("{}: write failed", path);
}

void run(const TokenizeOpts& o) {
  if (!o.file.empty() && !o.prompt.empty()) usage_fail("tokenize: give either -f FILE or -p TEXT, not both");
  if (o.file.empty() && o.prompt.empty()) usage_fail("tokenize: give the text with -f FILE or -p TEXT");
  Tokenizer tok = Tokenizer::load(o.model);
  std::string text = o.file.empty() ? o.prompt : read_text_file(o.file);
  std::vector<int32_t> ids = tok.encode(text, o.add_special);
  if (o.out.empty()) {
    std::cout << ids_json(ids);
    std::cout.flush();
    return;
  }
  if (o.json) {
    write_or_fail(o.out, ids_json(ids));
    return;
  }
  std::string bytes(ids.size() * 4, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    auto v = uint32_t(ids[i]);
    for (int b = 0; b < 4; ++b) bytes[i * 4 + size_t(b)] = char((v >> (8 * b)) & 0xFF);  // little-endian
  }
  write_or_fail(o.out, bytes);
}
}  // namespace

void add_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOpts>();
  auto* cmd = app.add_subcommand("tokenize", "Turn text into token ids (Hugging Face / SentencePiece tokenizers)");
  cmd->add_option("-m,--model", o->model, "Model directory, or a directory holding tokenizer.json / tokenizer.model")
      ->required();
  cmd->add_option("-f,--file", o->file, "Read the text from this file (raw bytes, UTF-8)");
  cmd->add_option("-p,--prompt", o->prompt, "The text itself");
  cmd->add_option("--out", o->out, "Write the ids to this file as little-endian int32 (JSON with --json)");
  cmd->add_flag("--add-special", o->add_special, "Add the special tokens of the post-processor (BOS/EOS)");
  cmd->add_flag("--json", o->json, "With --out: write the JSON form to the file instead of int32");
  cmd->callback([o] { run(*o); });
}

}  // namespace hxq::cli
