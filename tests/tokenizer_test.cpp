#include <gtest/gtest.h>

#include <cstring>
#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace hxq;

namespace {

constexpr const char* kNeox = "data/tokenizers/gpt-neox-20b/20B_tokenizer.json";
constexpr const char* kNeoxModel = "models/mamba2-neox-17m";
constexpr const char* kQwen = "data/tokenizers/qwen3/tokenizer.json";
constexpr const char* kQwenDir = "data/tokenizers/qwen3";
constexpr const char* kStories = "models/stories260K-hf";
constexpr const char* kSpmDir = "data/tokenizers/llama2-spm";
constexpr const char* kGoldens = "data/tokenizer-goldens/goldens.json";
constexpr const char* kWiki = "data/wikitext-2-raw/wiki.test.raw";

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> read_i32(const std::string& p) {
  std::string s = slurp(p);
  std::vector<int32_t> v(s.size() / 4);
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t x = 0;
    for (int b = 0; b < 4; ++b) x |= uint32_t(uint8_t(s[i * 4 + size_t(b)])) << (8 * b);
    v[i] = int32_t(x);
  }
  return v;
}

// Loading Qwen3's 11 MB tokenizer.json takes a moment; tests share one instance per file.
const Tokenizer& cached(const char* rel) {
  static std::map<std::string, Tokenizer> loaded;
  auto it = loaded.find(rel);
  if (it == loaded.end()) it = loaded.emplace(rel, Tokenizer::load(test::data_path(rel))).first;
  return it->second;
}

const json& goldens() {
  static const json g = parse_json_file(test::data_path(kGoldens));
  return g;
}

// Index of the first difference, for readable failures on 300k-id sequences.
::testing::AssertionResult same_ids(const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t n = std::min(got.size(), want.size());
  for (size_t i = 0; i < n; ++i)
    if (got[i] != want[i])
      return ::testing::AssertionFailure() << "first difference at " << i << ": got " << got[i] << ", want "
                                           << want[i] << " (sizes " << got.size() << " vs " << want.size() << ")";
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  return ::testing::AssertionSuccess();
}

void check_strings(const Tokenizer& tok, const char* name, bool round_trip) {
  const auto& g = goldens();
  const auto& strings = g["test_strings"];
  const auto& want = g[name]["strings"];
  ASSERT_EQ(strings.size(), want.size());
  for (size_t i = 0; i < strings.size(); ++i) {
    auto s = strings[i].get<std::string>();
    auto ids = tok.encode(s);
    EXPECT_TRUE(same_ids(ids, want[i].get<std::vector<int32_t>>())) << "string #" << i << " '" << s << "'";
    if (round_trip) {
      EXPECT_EQ(tok.decode(ids), s) << "string #" << i;
    }
  }
}

void check_wiki(const Tokenizer& tok, const char* name) {
  std::string text = slurp(test::data_path(kWiki));
  auto want = read_i32(test::data_path(std::string("data/tokenizer-goldens/wiki.test.raw.") + name + ".i32"));
  ASSERT_EQ(int64_t(want.size()), goldens()[name]["wiki.test.raw tokens"].get<int64_t>());
  auto ids = tok.encode(text);
  EXPECT_TRUE(same_ids(ids, want));
  EXPECT_TRUE(tok.decode(ids) == text) << "wiki.test.raw does not round-trip";
}

}  // namespace

// ------------------------------------------------------------------ GPT-NeoX

TEST(TokenizerNeox, GoldenStrings) {
  HXQ_REQUIRE_DATA(kNeox);
  HXQ_REQUIRE_DATA(kGoldens);
  check_strings(cached(kNeox), "gpt-neox-20b", true);
}

TEST(TokenizerNeox, GoldenStringsModelDir) {
  HXQ_REQUIRE_DATA(kNeoxModel);
  HXQ_REQUIRE_DATA(kGoldens);
  auto tok = Tokenizer::load(test::data_path(kNeoxModel));
  check_strings(tok, "gpt-neox-20b", true);
  EXPECT_EQ(tok.vocab_size(), 50277);
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 0);
  EXPECT_FALSE(tok.add_bos_by_default());
}

TEST(TokenizerNeox, WikiTestRaw) {
  HXQ_REQUIRE_DATA(kNeox);
  HXQ_REQUIRE_DATA(kWiki);
  check_wiki(cached(kNeox), "gpt-neox-20b");
}

TEST(TokenizerNeox, WikiTestRawModelDir) {
  HXQ_REQUIRE_DATA(kNeoxModel);
  HXQ_REQUIRE_DATA(kWiki);
  check_wiki(Tokenizer::load(test::data_path(kNeoxModel)), "gpt-neox-20b");
}

// ------------------------------------------------------------------ Qwen3

TEST(TokenizerQwen3, GoldenStrings) {
  HXQ_REQUIRE_DATA(kQwen);
  HXQ_REQUIRE_DATA(kGoldens);
  check_strings(cached(kQwen), "qwen3", true);
}

TEST(TokenizerQwen3, WikiTestRaw) {
  HXQ_REQUIRE_DATA(kQwen);
  HXQ_REQUIRE_DATA(kWiki);
  check_wiki(cached(kQwen), "qwen3");
}

TEST(TokenizerQwen3, ConfigAndSpecialTokens) {
  HXQ_REQUIRE_DATA(kQwenDir);
  auto tok = cached(kQwenDir);
  EXPECT_EQ(tok.vocab_size(), 151669);
  EXPECT_FALSE(tok.bos_id().has_value());  // bos_token: null
  EXPECT_EQ(tok.eos_id(), 151645);         // <|im_end|>
  EXPECT_FALSE(tok.add_bos_by_default());
  // Special tokens are matched before pre-tokenization, anywhere in the text.
  auto ids = tok.encode("<|im_start|>user\nHi<|im_end|>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(ids.back(), 151645);
  EXPECT_TRUE(tok.is_special(151644));
  EXPECT_FALSE(tok.is_special(151667));  // <think> is an added, non-special token
  EXPECT_EQ(tok.decode(ids), "<|im_start|>user\nHi<|im_end|>");
  EXPECT_EQ(tok.decode(ids, /*skip_special=*/true), "user\nHi");
  EXPECT_EQ(tok.encode("<think>x</think>").front(), 151667);
  EXPECT_EQ(tok.decode(tok.encode("<think>x</think>"), true), "<think>x</think>");
}

// ------------------------------------------------------------------ SentencePiece-style BPE (tokenizer.json)

namespace {
// tools/gen_refs.py STORIES_GOLDEN: the text whose ids (after BOS) are in reference.safetensors.
constexpr const char* kStoriesGolden =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

std::vector<int32_t> tensor_ids(const TensorInfo& t) {
  std::vector<int32_t> v;
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t x;
    std::memcpy(&x, t.data + i * 8, 8);
    v.push_back(int32_t(x));
  }
  return v;
}
}  // namespace

TEST(TokenizerStories, MatchesReferenceInputIds) {
  HXQ_REQUIRE_DATA(std::string(kStories) + "/reference.safetensors");
  auto tok = Tokenizer::load(test::data_path(kStories));
  auto store = TensorStore::open(test::data_path(std::string(kStories) + "/reference.safetensors"));
  const auto& t = store.get("input_ids");
  ASSERT_EQ(t.dtype, DType::I64);
  auto want = tensor_ids(t);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_TRUE(tok.add_bos_by_default());
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_TRUE(same_ids(tok.encode(kStoriesGolden, true), want));
  auto plain = tok.encode(kStoriesGolden);
  EXPECT_EQ(plain.size() + 1, want.size());
  EXPECT_EQ(tok.decode(plain), kStoriesGolden);
  EXPECT_EQ(tok.decode(tok.encode(kStoriesGolden, true), true), kStoriesGolden);
  // Without tokenizer_config.json the TemplateProcessing post-processor still adds <s>.
  auto bare = Tokenizer::from_json_file(test::data_path(std::string(kStories) + "/tokenizer.json"));
  EXPECT_TRUE(same_ids(bare.encode(kStoriesGolden, true), want));
  EXPECT_EQ(bare.bos_id(), 1);
}

TEST(TokenizerStories, GreedyTextAndByteFallbackRoundTrip) {
  HXQ_REQUIRE_DATA(std::string(kStories) + "/greedy.txt");
  auto tok = Tokenizer::load(test::data_path(kStories));
  std::string greedy = slurp(test::data_path(std::string(kStories) + "/greedy.txt"));
  EXPECT_EQ(tok.decode(tok.encode(greedy)), greedy);
  // Characters outside the 512-token vocabulary go through <0xXX> byte tokens and come back.
  for (std::string s : {"Führer 🦙 naïve", "  two  spaces", "\ttab\nnewline", "日本語", " leading", ""}) {
    auto ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), s) << s;
  }
  auto ids = tok.encode("\xF0\x9F\xA6\x99");  // U+1F999: ▁ + four byte tokens
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_EQ(*tok.id_to_token(ids[0]), "\xE2\x96\x81");
  EXPECT_EQ(*tok.id_to_token(ids[1]), "<0xF0>");
  EXPECT_EQ(*tok.id_to_token(ids[4]), "<0x99>");
  // An invalid byte run decodes to one U+FFFD per byte (ByteFallback decoder).
  std::vector<int32_t> broken{ids[1], ids[2]};
  EXPECT_EQ(tok.decode(broken), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TokenizerStories, GoldenStringsRoundTrip) {
  HXQ_REQUIRE_DATA(kStories);
  HXQ_REQUIRE_DATA(kGoldens);
  auto tok = Tokenizer::load(test::data_path(kStories));
  for (const auto& s : goldens()["test_strings"]) {
    auto str = s.get<std::string>();
    EXPECT_EQ(tok.decode(tok.encode(str)), str) << str;
  }
}

// ------------------------------------------------------------------ SentencePiece tokenizer.model

TEST(TokenizerSpm, GoldenStrings) {
  HXQ_REQUIRE_DATA(std::string(kSpmDir) + "/tokenizer.model");
  HXQ_REQUIRE_DATA(kGoldens);
  auto tok = Tokenizer::load(test::data_path(kSpmDir));
  check_strings(tok, "llama2-spm", false);
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_TRUE(tok.add_bos_by_default());
  auto ids = tok.encode("Hello world", true);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tok.decode(ids, true), "Hello world");
}

TEST(TokenizerSpm, WikiTestRaw) {
  HXQ_REQUIRE_DATA(std::string(kSpmDir) + "/tokenizer.model");
  HXQ_REQUIRE_DATA(kWiki);
  auto tok = Tokenizer::load(test::data_path(kSpmDir));
  std::string text = slurp(test::data_path(kWiki));
  auto want = read_i32(test::data_path("data/tokenizer-goldens/wiki.test.raw.llama2-spm.i32"));
  ASSERT_EQ(want.size(), 335687u);
  EXPECT_TRUE(same_ids(tok.encode(text), want));
}

// ------------------------------------------------------------------ synthetic tokenizer.json files

namespace {

// A character-level BPE over printable ASCII (+ "▁"), ids 0..95, plus "ab" (96), "bc" (97),
// "abc" (98); the caller adds merges, added tokens and pipeline parts.
json tiny_tokenizer(json merges = json::array()) {
  json vocab = json::object();
  int id = 0;
  for (char c = ' '; c <= '~'; ++c) vocab[std::string(1, c)] = id++;
  vocab["\xE2\x96\x81"] = id++;  // 95
  vocab["ab"] = 96;
  vocab["bc"] = 97;
  vocab["abc"] = 98;
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = nullptr;
  j["decoder"] = {{"type", "Fuse"}};
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  return j;
}

json added(int id, const std::string& content, bool special, bool normalized, bool lstrip = false,
           bool rstrip = false, bool single_word = false) {
  return {{"id", id},           {"content", content}, {"special", special}, {"normalized", normalized},
          {"lstrip", lstrip},   {"rstrip", rstrip},   {"single_word", single_word}};
}

std::string write_tokenizer(const json& j, const std::string& tag) {
  auto dir = test::temp_dir(tag);
  test::write_file(dir + "/tokenizer.json", j.dump());
  return dir;
}

int32_t ch(char c) { return int32_t(c - ' '); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(TokenizerSynthetic, MergeRanksAndBothMergeForms) {
  auto t1 = Tokenizer::load(write_tokenizer(tiny_tokenizer({"b c", "a b", "ab c"}), "m1"));
  auto t2 = Tokenizer::load(write_tokenizer(tiny_tokenizer(json::array({json::array({"b", "c"}), json::array({"a", "b"}), json::array({"ab", "c"})})), "m2"));
  // "b c" has the lowest rank, so "abc" -> a + bc (there is no "a bc" merge).
  EXPECT_EQ(t1.encode("abc"), (std::vector<int32_t>{ch('a'), 97}));
  EXPECT_EQ(t2.encode("abc"), (std::vector<int32_t>{ch('a'), 97}));
  auto t3 = Tokenizer::load(write_tokenizer(tiny_tokenizer({"a b", "b c", "ab c"}), "m3"));
  EXPECT_EQ(t3.encode("abc"), (std::vector<int32_t>{98}));
  EXPECT_EQ(t3.encode("abab c"), (std::vector<int32_t>{96, 96, ch(' '), ch('c')}));
  EXPECT_EQ(t3.decode(t3.encode("abab c")), "abab c");
}

TEST(TokenizerSynthetic, AddedTokenEdgeCases) {
  json j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  j["added_tokens"] = {added(200, "<sp>", true, false),       added(201, "<sp>x", true, false),
                       added(202, "<l>", true, false, true),  added(203, "<r>", true, false, false, true),
                       added(204, "Word", false, true, false, false, true), added(205, "<UP>", true, false)};
  auto tok = Tokenizer::load(write_tokenizer(j, "added"));
  EXPECT_EQ(tok.encode("x<sp>y"), (std::vector<int32_t>{ch('x'), 200, ch('y')}));
  EXPECT_EQ(tok.encode("<sp>x"), (std::vector<int32_t>{201}));  // leftmost-longest
  EXPECT_EQ(tok.encode("<sp><sp>"), (std::vector<int32_t>{200, 200}));
  // lstrip / rstrip swallow the whitespace next to the token.
  EXPECT_EQ(tok.encode("x  <l>y"), (std::vector<int32_t>{ch('x'), 202, ch('y')}));
  EXPECT_EQ(tok.encode("x<r> \t y"), (std::vector<int32_t>{ch('x'), 203, ch('y')}));
  EXPECT_EQ(tok.encode("x <r>y"), (std::vector<int32_t>{ch('x'), ch(' '), 203, ch('y')}));
  // A normalized token matches the normalized (lowercased) text, only as a single word.
  EXPECT_EQ(tok.encode("a WORD b"), (std::vector<int32_t>{ch('a'), ch(' '), 204, ch(' '), ch('b')}));
  EXPECT_EQ(tok.encode("awordb"), (std::vector<int32_t>{ch('a'), ch('w'), ch('o'), ch('r'), ch('d'), ch('b')}));
  // A non-normalized token matches the raw text only.
  EXPECT_EQ(tok.encode("<UP>"), (std::vector<int32_t>{205}));
  EXPECT_EQ(tok.encode("<up>").size(), 4u);
  EXPECT_EQ(tok.encode("<Up>").size(), 4u);
  // Decoding: added tokens verbatim, specials skippable.
  EXPECT_EQ(tok.decode(std::vector<int32_t>{ch('x'), 200, 204, 205}), "x<sp>Word<UP>");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{ch('x'), 200, 204, 205}, true), "xWord");
  EXPECT_TRUE(tok.is_special(200));
  EXPECT_FALSE(tok.is_special(204));
  EXPECT_EQ(tok.token_to_id("<sp>x"), 201);
  EXPECT_EQ(tok.vocab_size(), 206);
  // Unknown ids are skipped when decoding.
  EXPECT_EQ(tok.decode(std::vector<int32_t>{ch('a'), 150, -3, 1 << 30, ch('b')}), "ab");
}

TEST(TokenizerSynthetic, MetaspaceSplitDigitsAndTemplate) {
  json j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}},
                          {{"type", "Digits"}, {"individual_digits", true}}}}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}};
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                  {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
      {"special_tokens",
       {{"<s>", {{"id", "<s>"}, {"ids", {300}}, {"tokens", {"<s>"}}}},
        {"</s>", {{"id", "</s>"}, {"ids", {301}}, {"tokens", {"</s>"}}}}}}};
  j["added_tokens"] = {added(300, "<s>", true, false), added(301, "</s>", true, false)};
  auto tok = Tokenizer::load(write_tokenizer(j, "meta"));
  const int32_t sp = 95;
  EXPECT_EQ(tok.encode("a b12"), (std::vector<int32_t>{sp, ch('a'), sp, ch('b'), ch('1'), ch('2')}));
  // prepend_scheme "first": no "▁" in front of text that follows a special token.
  EXPECT_EQ(tok.encode("<s>a"), (std::vector<int32_t>{300, ch('a')}));
  EXPECT_EQ(tok.encode("a b", true), (std::vector<int32_t>{300, sp, ch('a'), sp, ch('b'), 301}));
  EXPECT_EQ(tok.bos_id(), 300);
  EXPECT_EQ(tok.eos_id(), 301);
  EXPECT_TRUE(tok.add_bos_by_default());
  EXPECT_EQ(tok.decode(tok.encode("a b12")), "a b12");
}

TEST(TokenizerSynthetic, SplitBehaviors) {
  auto run = [](const std::string& behavior, bool invert) {
    json j = tiny_tokenizer();
    j["pre_tokenizer"] = {{"type", "Split"},
                          {"pattern", {{"String", "-"}}},
                          {"behavior", behavior},
                          {"invert", invert}};
    // One BPE word per pre-token: with the "a b" merge, "ab" only forms inside one piece.
    j["model"]["merges"] = {"a -", "- b", "a b"};
    j["model"]["vocab"]["a-"] = 99;
    j["model"]["vocab"]["-b"] = 100;
    return Tokenizer::load(write_tokenizer(j, "split")).encode("a-b--ab");
  };
  const int32_t a = ch('a'), b = ch('b'), d = ch('-');
  EXPECT_EQ(run("Isolated", false), (std::vector<int32_t>{a, d, b, d, d, 96}));
  EXPECT_EQ(run("Removed", false), (std::vector<int32_t>{a, b, 96}));
  EXPECT_EQ(run("MergedWithPrevious", false), (std::vector<int32_t>{99, b, d, d, 96}));
  EXPECT_EQ(run("MergedWithNext", false), (std::vector<int32_t>{a, 100, d, d, 96}));
  EXPECT_EQ(run("Contiguous", false), (std::vector<int32_t>{a, d, b, d, d, 96}));
}

TEST(TokenizerSynthetic, InvalidUtf8IsReplaced) {
  HXQ_REQUIRE_DATA(kNeox);
  auto tok = cached(kNeox);
  EXPECT_EQ(tok.encode("a\xFF" "b\xE2\x82"), tok.encode("a\xEF\xBF\xBD" "b\xEF\xBF\xBD"));
}

TEST(TokenizerErrors, MalformedFilesNameTheFile) {
  auto dir = test::temp_dir("bad");
  auto path = dir + "/tokenizer.json";
  auto expect_error = [&](const std::string& content, const std::string& needle) {
    test::write_file(path, content);
    std::string msg = error_of([&] { Tokenizer::from_json_file(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    msg = error_of([&] { Tokenizer::load(dir); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
  };
  expect_error("{ \"model\": ", "invalid JSON");
  expect_error("[1, 2]", "object");
  expect_error(R"({"version": "1.0"})", "model");
  json j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "FancySplit"}};
  expect_error(j.dump(), "FancySplit");
  j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  expect_error(j.dump(), "Precompiled");
  j = tiny_tokenizer();
  j["decoder"] = {{"type", "CTC"}};
  expect_error(j.dump(), "CTC");
  j = tiny_tokenizer();
  j["post_processor"] = {{"type", "Mystery"}};
  expect_error(j.dump(), "Mystery");
  j = tiny_tokenizer();
  j["model"]["type"] = "Unigram";
  expect_error(j.dump(), "Unigram");
  expect_error(tiny_tokenizer({"a zz"}).dump(), "zz");
  expect_error(tiny_tokenizer(json::array({json::array({"q", "\xE2\x96\x81\xE2\x96\x81"})})).dump(), "unknown token");
  expect_error(tiny_tokenizer({"ab"}).dump(), "merge #0");
  expect_error(tiny_tokenizer({"x y"}).dump(), "'xy'");  // the merged token is missing
  j = tiny_tokenizer();
  j["model"]["vocab"]["bad"] = -4;
  expect_error(j.dump(), "out of range");
  j = tiny_tokenizer();
  j["model"]["unk_token"] = "<unk>";
  expect_error(j.dump(), "<unk>");
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_error(j.dump(), "regex");
  j = tiny_tokenizer();
  j["added_tokens"] = {{{"content", "<x>"}}};
  expect_error(j.dump(), "added token");
}

TEST(TokenizerErrors, MissingAndBadFiles) {
  auto dir = test::temp_dir("empty");
  std::string msg = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  msg = error_of([&] { Tokenizer::load(dir + "/nope"); });
  EXPECT_NE(msg.find("nope"), std::string::npos) << msg;
  test::write_file(dir + "/tokenizer.model", "this is not a protobuf");
  msg = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(msg.find(dir + "/tokenizer.model"), std::string::npos) << msg;
  // A bad tokenizer_config.json next to a good tokenizer.json.
  auto d2 = write_tokenizer(tiny_tokenizer(), "cfg");
  test::write_file(d2 + "/tokenizer_config.json", "{\"bos_token\": 5");
  msg = error_of([&] { Tokenizer::load(d2); });
  EXPECT_NE(msg.find(d2 + "/tokenizer_config.json"), std::string::npos) << msg;
  test::write_file(d2 + "/tokenizer_config.json", R"({"bos_token": "<nothere>"})");
  msg = error_of([&] { Tokenizer::load(d2); });
  EXPECT_NE(msg.find("<nothere>"), std::string::npos) << msg;
}

// ------------------------------------------------------------------ streaming decoder

namespace {
void check_stream(const Tokenizer& tok, const std::string& text, bool expect_no_replacement) {
  auto ids = tok.encode(text);
  StreamDecoder sd(tok);
  std::string acc;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    if (expect_no_replacement) {
      EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "partial character emitted";
    }
    acc += piece;
  }
  acc += sd.flush();
  EXPECT_EQ(acc, tok.decode(ids)) << text;
}
constexpr const char* kStreamText =
    "Hello 🦙 world! 我想在apple工作 нещо на Български ½ 😶\u200d🌫️ \n\n  indented";
}  // namespace

TEST(TokenizerStream, ByteLevelHoldsBackPartialCharacters) {
  HXQ_REQUIRE_DATA(kNeox);
  auto tok = cached(kNeox);
  check_stream(tok, kStreamText, true);
  // Three byte tokens of one emoji: nothing until the character is complete.
  auto ids = tok.encode("🦙");  // "ðŁ", "¦", "Ļ"
  ASSERT_EQ(ids.size(), 3u);
  StreamDecoder sd(tok);
  EXPECT_EQ(sd.push(ids[0]), "");
  EXPECT_EQ(sd.push(ids[1]), "");
  EXPECT_EQ(sd.push(ids[2]), "🦙");
  EXPECT_EQ(sd.flush(), "");
  // An incomplete character left at the end comes out as U+FFFD on flush.
  StreamDecoder sd2(tok);
  EXPECT_EQ(sd2.push(ids[0]), "");
  EXPECT_EQ(sd2.flush(), "\xEF\xBF\xBD");
}

TEST(TokenizerStream, QwenAndSentencePieceStyle) {
  HXQ_REQUIRE_DATA(kQwen);
  HXQ_REQUIRE_DATA(kStories);
  check_stream(cached(kQwen), kStreamText, true);
  auto stories = Tokenizer::load(test::data_path(kStories));
  check_stream(stories, kStreamText, true);
  check_stream(stories, " Once upon a time", true);
  // Word by word: the leading-space strip of the decoder applies only to the very first token.
  auto ids = stories.encode("Once upon a time");
  StreamDecoder sd(stories);
  std::string acc;
  for (auto id : ids) acc += sd.push(id);
  EXPECT_EQ(acc + sd.flush(), "Once upon a time");
}

TEST(TokenizerStream, SentencePieceModel) {
  HXQ_REQUIRE_DATA(std::string(kSpmDir) + "/tokenizer.model");
  check_stream(Tokenizer::load(test::data_path(kSpmDir)), kStreamText, true);
}

// ------------------------------------------------------------------ concurrency

TEST(TokenizerThreads, ConcurrentEncodeSharesCacheSafely) {
  HXQ_REQUIRE_DATA(kNeox);
  HXQ_REQUIRE_DATA(kWiki);
  auto tok = cached(kNeox);
  std::string text = slurp(test::data_path(kWiki)).substr(0, 200000);
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::vector<std::vector<int32_t>> want;
  {
    auto fresh = Tokenizer::from_json_file(test::data_path(kNeox));
    for (auto& l : lines) want.push_back(fresh.encode(l));
  }
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      Tokenizer copy = tok;  // copies share the model and its cache
      for (size_t i = size_t(t); i < lines.size(); i += 2)
        if (copy.encode(lines[i]) != want[i]) ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// ------------------------------------------------------------------ CLI

TEST(TokenizeCli, PromptToJson) {
  HXQ_REQUIRE_DATA(kNeoxModel);
  auto r = test::run_cli({"tokenize", "-m", test::data_path(kNeoxModel), "-p", "Hello world"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = parse_json_text(r.out, "stdout");
  EXPECT_EQ(j["ids"], json({12092, 1533}));
  EXPECT_EQ(j["count"], 2);
}

TEST(TokenizeCli, FileToInt32AndJson) {
  HXQ_REQUIRE_DATA(kNeoxModel);
  HXQ_REQUIRE_DATA(kWiki);
  auto dir = test::temp_dir("cli-tok");
  auto r = test::run_cli({"tokenize", "-m", test::data_path(kNeoxModel), "-f", test::data_path(kWiki), "--out",
                          dir + "/ids.i32"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(slurp(dir + "/ids.i32"), slurp(test::data_path("data/tokenizer-goldens/wiki.test.raw.gpt-neox-20b.i32")));
  test::write_file(dir + "/in.txt", "Hello world");
  r = test::run_cli({"tokenize", "-m", test::data_path(kNeoxModel), "-f", dir + "/in.txt", "--out",
                     dir + "/ids.json", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(parse_json_file(dir + "/ids.json")["ids"], json({12092, 1533}));
}

TEST(TokenizeCli, AddSpecialAndTokenizerOnlyDir) {
  HXQ_REQUIRE_DATA(kStories);
  HXQ_REQUIRE_DATA(kSpmDir);
  auto r = test::run_cli({"tokenize", "-m", test::data_path(kStories), "-p", "Once", "--add-special"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto ids = parse_json_text(r.out, "stdout")["ids"];
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  r = test::run_cli({"tokenize", "-m", test::data_path(kSpmDir), "-p", "Hello world"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(parse_json_text(r.out, "stdout")["ids"], json({15043, 3186}));
}

TEST(TokenizeCli, UsageAndInputErrors) {
  auto dir = test::temp_dir("cli-err");
  auto r = test::run_cli({"tokenize", "-m", dir, "-p", "x", "-f", dir + "/a.txt"});
  EXPECT_EQ(r.code, 2) << r.err;
  r = test::run_cli({"tokenize", "-m", dir});
  EXPECT_EQ(r.code, 2) << r.err;
  r = test::run_cli({"tokenize", "-p", "x"});
  EXPECT_EQ(r.code, 2) << r.err;
  r = test::run_cli({"tokenize", "-m", dir, "-p", "x"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(dir), std::string::npos) << r.err;
  HXQ_REQUIRE_DATA(kNeoxModel);
  r = test::run_cli({"tokenize", "-m", test::data_path(kNeoxModel), "-f", dir + "/missing.txt"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("missing.txt"), std::string::npos) << r.err;
}
