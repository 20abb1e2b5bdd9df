#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
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
  check_strings(Tokenizer::from_json_file(test::data_path(kNeox)), "gpt-neox-20b", true);
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
  check_wiki(Tokenizer::from_json_file(test::data_path(kNeox)), "gpt-neox-20b");
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
  check_strings(Tokenizer::from_json_file(test::data_path(kQwen)), "qwen3", true);
}

TEST(TokenizerQwen3, WikiTestRaw) {
  HXQ_REQUIRE_DATA(kQwen);
  HXQ_REQUIRE_DATA(kWiki);
  check_wiki(Tokenizer::from_json_file(test::data_path(kQwen)), "qwen3");
}

TEST(TokenizerQwen3, ConfigAndSpecialTokens) {
  HXQ_REQUIRE_DATA(kQwenDir);
  auto tok = Tokenizer::load(test::data_path(kQwenDir));
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
