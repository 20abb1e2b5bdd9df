// The hxq binary: exit codes (0 ok, 1 bad input, 2 usage), one-line errors, `hxq logits`.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tolerances.h"

using namespace hxq;
using test::run_cli;

namespace {

int count_lines(const std::string& s) { return int(std::count(s.begin(), s.end(), '\n')); }

TEST(Cli, UsageErrorsExitTwo) {
  auto r = run_cli({});
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_cli({"no-such-command"});
  EXPECT_EQ(r.code, 2);
  r = run_cli({"logits", "--bogus"});
  EXPECT_EQ(r.code, 2);
  r = run_cli({"logits", "--ids-file", "x"});  // -m missing
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;
  r = run_cli({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("logits"), std::string::npos);
}

TEST(Cli, BadInputExitsOneWithOneLine) {
  auto dir = test::temp_dir("cli-bad");
  test::write_file(dir + "/ids.bin", std::string("\x01\x00\x00", 3));
  auto r = run_cli({"logits", "-m", dir + "/missing", "--ids-file", dir + "/ids.bin", "--out", dir + "/o"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("ids.bin"), std::string::npos) << r.err;  // ids are read (and rejected) first
  EXPECT_FALSE(std::filesystem::exists(dir + "/o"));

  test::write_file(dir + "/ids.bin", std::string("\x01\x00\x00\x00", 4));
  r = run_cli({"logits", "-m", dir + "/missing", "--ids-file", dir + "/ids.bin", "--out", dir + "/o"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("missing"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/o"));
}

TEST(Cli, LogitsMatchReference) {
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/reference.safetensors");
  const auto mdir = test::data_path("fixtures/hf/mamba2-tiny");
  auto ref = TensorStore::open(mdir + "/reference.safetensors");
  const auto& in = ref.get("input_ids");
  std::string ids;
  for (int64_t i = 0; i < in.numel(); ++i) {
    int32_t v = int32_t(reinterpret_cast<const int64_t*>(in.data)[i]);
    ids.append(reinterpret_cast<const char*>(&v), 4);
  }
  auto dir = test::temp_dir("cli-logits");
  test::write_file(dir + "/ids.bin", ids);
  auto r = run_cli({"logits", "-m", mdir, "--ids-file", dir + "/ids.bin", "--out", dir + "/l.bin", "--chunk", "7",
                    "--threads", "2", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"tokens\":45"), std::string::npos) << r.out;
  auto got = test::read_f32_file(dir + "/l.bin");
  const auto& want = ref.get("logits");
  ASSERT_EQ(int64_t(got.size()), want.numel());
  const float* w = reinterpret_cast<const float*>(want.data);
  float err = 0;
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::fabs(got[i] - w[i]));
  EXPECT_LE(err, tol::kLogitAbs);

  // token id outside the vocabulary
  int32_t big = 5000;
  test::write_file(dir + "/bad.bin", std::string(reinterpret_cast<const char*>(&big), 4));
  r = run_cli({"logits", "-m", mdir, "--ids-file", dir + "/bad.bin", "--out", dir + "/l2.bin"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("5000"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/l2.bin"));
}

}  // namespace

namespace {

std::vector<int64_t> json_ids(const std::string& out, const std::string& key) {
  auto p = out.find("\"" + key + "\":[");
  std::vector<int64_t> v;
  if (p == std::string::npos) return v;
  p = out.find('[', p) + 1;
  while (out[p] != ']') {
    size_t used = 0;
    v.push_back(std::stoll(out.substr(p), &used));
    p += used;
    if (out[p] == ',') ++p;
  }
  return v;
}

TEST(CliGenerate, GreedyMatchesTransformers) {
  HXQ_REQUIRE_DATA("models/mamba2-neox-17m/reference.safetensors");
  const auto mdir = test::data_path("models/mamba2-neox-17m");
  auto ref = TensorStore::open(mdir + "/reference.safetensors");
  const auto& g = ref.get("gen_ids");
  std::vector<int64_t> want(reinterpret_cast<const int64_t*>(g.data), reinterpret_cast<const int64_t*>(g.data) + g.numel());
  auto r = run_cli({"generate", "-m", mdir, "-p", "The future of artificial intelligence", "-n", "48",
                    "--temperature", "0", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto prompt = json_ids(r.out, "prompt_ids");
  auto ids = json_ids(r.out, "ids");
  ASSERT_EQ(prompt.size() + ids.size(), want.size()) << r.out;
  EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), want.begin()));
  EXPECT_TRUE(std::equal(ids.begin(), ids.end(), want.begin() + ptrdiff_t(prompt.size())));
  EXPECT_NE(r.out.find("\"decode_tokens_per_s\""), std::string::npos);

  // Streaming text mode prints the prompt and the same continuation; speeds go to stderr.
  auto t = run_cli({"generate", "-m", mdir, "-p", "The future of artificial intelligence", "-n", "48"});
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.out.find("The future of artificial intelligence . The first time"), std::string::npos) << t.out;
  EXPECT_NE(t.err.find("tokens/s"), std::string::npos) << t.err;
}

TEST(CliGenerate, Stories260KGreedyTextFromBos) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/greedy.txt");
  const auto mdir = test::data_path("models/stories260K-hf");
  std::ifstream f(mdir + "/greedy.txt", std::ios::binary);
  std::string want((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto r = run_cli({"generate", "-m", mdir, "-p", "", "-n", "200", "--temperature", "0"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, want);
}

TEST(CliGenerate, SeededSamplingIsReproducible) {
  HXQ_REQUIRE_DATA("models/mamba2-neox-17m/model.safetensors");
  const auto mdir = test::data_path("models/mamba2-neox-17m");
  std::vector<std::string> args{"generate", "-m", mdir, "-p", "Hello", "-n", "12", "--temperature", "0.8",
                                "--top-k", "40", "--top-p", "0.9", "--seed", "7", "--json"};
  auto a = run_cli(args), b = run_cli(args);
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(json_ids(a.out, "ids"), json_ids(b.out, "ids"));
  EXPECT_EQ(json_ids(a.out, "ids").size(), 12u);
}

TEST(CliGenerate, UsageErrors) {
  auto r = run_cli({"generate", "-m", "x", "-p", "y", "--top-p", "0"});
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_cli({"generate", "-m", "x", "-p", "y", "--temperature", "-1"});
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_cli({"generate", "-p", "y"});
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_cli({"generate", "-m", "/nonexistent", "-p", "y"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("/nonexistent"), std::string::npos);
}

}  // namespace

namespace {

TEST(CliPerplexity, JsonWindowsAndUsage) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/model.safetensors");
  const auto mdir = test::data_path("models/stories260K-hf");
  auto dir = test::temp_dir("cli-ppl");
  test::write_file(dir + "/t.txt", "Once upon a time, there was a little girl named Lily. She loved to play outside. "
                                   "One day she saw a big red ball in the park and ran to get it.");
  // --max-tokens smaller than --ctx: one window scoring every token after the first
  auto r = run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--ctx", "512", "--max-tokens", "20", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"scored_tokens\":19"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"windows\":[[0,20,"), std::string::npos) << r.out;
  EXPECT_TRUE(r.err.empty()) << r.err;  // --json keeps stderr quiet
  // stride == ctx: disjoint windows, their first tokens unscored
  r = run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--ctx", "8", "--stride", "8", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"windows\":[[0,8,"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[8,16,"), std::string::npos) << r.out;
  // usage errors
  EXPECT_EQ(run_cli({"perplexity", "-m", mdir}).code, 2);
  EXPECT_EQ(run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--ids-file", dir + "/t.txt"}).code, 2);
  EXPECT_EQ(run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--ctx", "8", "--stride", "9"}).code, 2);
  EXPECT_EQ(run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--protocol", "nope"}).code, 2);
  // llama.cpp protocol needs at least one chunk
  r = run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--protocol", "llamacpp"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("t.txt"), std::string::npos) << r.err;
  // missing text file
  r = run_cli({"perplexity", "-m", mdir, "-f", dir + "/missing.txt"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("missing.txt"), std::string::npos) << r.err;
}

TEST(CliKl, IdenticalModelsAgree) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/model.safetensors");
  const auto mdir = test::data_path("models/stories260K-hf");
  auto dir = test::temp_dir("cli-kl");
  test::write_file(dir + "/t.txt", "Once upon a time, there was a little girl named Lily. She loved to play outside.");
  auto r = run_cli({"kl", "-m", mdir, "--other", mdir, "-f", dir + "/t.txt", "--ctx", "16", "--stride", "8", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"kl_mean\":0.0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"top1_agreement\":1.0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"delta_ppl_percent\":0.0"), std::string::npos) << r.out;
}

// --stepwise, --exact and --base-exact: accepted by the evaluation commands; on a dense model the
// HXQ math changes nothing and stepwise scoring gives the prefill's numbers.
TEST(CliKl, StepwiseAndExactFlags) {
  HXQ_REQUIRE_DATA("models/stories260K-hf/model.safetensors");
  const auto mdir = test::data_path("models/stories260K-hf");
  auto dir = test::temp_dir("cli-kl2");
  test::write_file(dir + "/t.txt", "Once upon a time, there was a little girl named Lily. She loved to play outside.");
  auto r = run_cli({"kl", "-m", mdir, "--other", mdir, "-f", dir + "/t.txt", "--ctx", "16", "--stride", "8",
                    "--stepwise", "--base-exact", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"kl_mean\":0.0"), std::string::npos) << r.out;
  auto a = run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--ctx", "16", "--stride", "8", "--json"});
  auto b = run_cli({"perplexity", "-m", mdir, "-f", dir + "/t.txt", "--ctx", "16", "--stride", "8", "--stepwise",
                    "--exact", "--json"});
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  const double pa = json::parse(a.out)["ppl"].get<double>(), pb = json::parse(b.out)["ppl"].get<double>();
  EXPECT_NEAR(pb / pa, 1.0, 1e-5);
}

}  // namespace

namespace {

// `hxq compress --codebook-precision bf16` records the precision; a bad value is a usage error.
TEST(CliCompress, CodebookPrecisionBf16) {
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny/model.safetensors");
  const auto src = test::data_path("fixtures/hf/mamba2-tiny");
  const auto dir = test::temp_dir("cli-b16");
  EXPECT_EQ(run_cli({"compress", src, dir + "/o", "--format", "helix", "--codebook-precision", "f16"}).code, 2);
  // helix-only options with the (default) v2 format are usage errors, not silently ignored
  EXPECT_EQ(run_cli({"compress", src, dir + "/o", "--codebook-precision", "bf16"}).code, 2);
  auto r = run_cli({"compress", src, dir + "/o", "--format", "helix", "--codebook-precision", "bf16", "--no-fsync", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream f(dir + "/o/config.json");
  const std::string cfg((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(cfg.find("\"hxq_codebook_precision\": \"bf16\""), std::string::npos) << cfg;
  r = run_cli({"compress", src, dir + "/d", "--format", "helix", "--no-fsync", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream g(dir + "/d/config.json");
  const std::string dcfg((std::istreambuf_iterator<char>(g)), std::istreambuf_iterator<char>());
  EXPECT_EQ(dcfg.find("hxq_codebook_precision"), std::string::npos);  // default output unchanged
  std::filesystem::remove_all(dir);
}

}  // namespace
