// Safetensors reader (malformed-file corpus, real fixtures), streaming writer, checkpoint writer
// (sharding + index), atomic output directories and interrupt handling.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/output.h"
#include "io/checkpoint_writer.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "test_util.h"

using namespace hxq;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// A safetensors file from a header text and data bytes (the header is NOT padded: readers must
// not depend on padding).
std::string st_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

std::string bytes_of(const TensorInfo& t) { return std::string(reinterpret_cast<const char*>(t.data), t.nbytes); }

std::string pattern(size_t n, unsigned seed = 1) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = char(x >> 24);
  }
  return s;
}

// Runs f, which must throw hxq::Error whose message is one line, mentions `path` and every
// string in `want`, and is printable ASCII apart from (valid UTF-8 of) tensor names.
template <typename F>
void expect_error(F&& f, const std::string& path, const std::vector<std::string>& want, const std::string& label) {
  try {
    f();
    ADD_FAILURE() << label << ": no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << label << ": message does not name " << path << ": " << m;
    for (auto& w : want) EXPECT_NE(m.find(w), std::string::npos) << label << ": expected '" << w << "' in: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << label << ": multi-line message: " << m;
    EXPECT_LT(m.size(), 1200u) << label << ": message too long";
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": threw a non-hxq exception: " << e.what();
  }
}

struct BadFile {
  std::string label;
  std::string bytes;
  std::vector<std::string> want;  // substrings of the message besides the path
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offs) {
  return "\"" + name + "\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offs + "}";
}

std::vector<BadFile> malformed_corpus() {
  std::vector<BadFile> v;
  auto one = [&](std::string label, std::string ent, std::string data, std::vector<std::string> want) {
    v.push_back({std::move(label), st_bytes("{" + ent + "}", std::move(data)), std::move(want)});
  };
  // --- framing
  v.push_back({"empty", "", {"truncated"}});
  v.push_back({"truncated_5_bytes", std::string("\x10\0\0\0\0", 5), {"truncated"}});
  v.push_back({"hlen_past_eof", le64(100) + "{}", {"runs past the end of the file"}});
  v.push_back({"hlen_absurd", le64(200ull << 20) + "{}", {"exceeds"}});
  v.push_back({"hlen_max", le64(~0ull) + "{}", {"exceeds"}});
  v.push_back({"hlen_zero", le64(0), {"too short"}});
  v.push_back({"hlen_one", le64(1) + "{", {"too short"}});
  v.push_back({"pytorch_zip", std::string("PK\x03\x04\x14\0\0\0\0\0", 10) + std::string(100, 'x'), {"exceeds"}});
  // --- header JSON
  v.push_back({"not_json", st_bytes("this is not json", ""), {"invalid safetensors header JSON"}});
  v.push_back({"json_cut", st_bytes("{\"a\":{\"dtype\":\"F32\"", ""), {"invalid safetensors header JSON"}});
  v.push_back({"json_array", st_bytes("[1,2,3]", ""), {"not a JSON object"}});
  v.push_back({"json_string", st_bytes("\"abc\"", ""), {"not a JSON object"}});
  v.push_back({"json_number", st_bytes("42", ""), {"not a JSON object"}});
  v.push_back({"json_trailing_garbage", st_bytes("{} x", ""), {"invalid safetensors header JSON"}});
  v.push_back({"nul_padding", st_bytes(std::string("{}\0\0\0\0\0\0", 8), ""), {"NUL byte at offset 10"}});
  v.push_back({"nul_then_garbage", st_bytes(std::string("{}\0{\"a\":5}", 9), ""), {"NUL byte"}});
  v.push_back({"nul_in_name", st_bytes(std::string("{\"a\0b\":{}}", 10), ""), {"NUL byte"}});
  v.push_back({"deep_nesting_top", st_bytes(std::string(200000, '['), ""), {"nests deeper"}});
  v.push_back({"deep_nesting_shape",
               st_bytes("{" + entry("w", "\"F32\"", std::string(100000, '[') + std::string(100000, ']'), "[0,4]") + "}",
                        "abcd"),
               {"nests deeper"}});
  v.push_back({"non_utf8_name", st_bytes("{" + entry("w\xff\xfe", "\"F32\"", "[1]", "[0,4]") + "}", "abcd"),
               {"invalid safetensors header JSON", "UTF-8"}});
  v.push_back({"non_utf8_overlong", st_bytes("{" + entry("\xc0\xaf", "\"F32\"", "[1]", "[0,4]") + "}", "abcd"),
               {"invalid safetensors header JSON"}});
  v.push_back({"non_utf8_surrogate", st_bytes("{" + entry("\xed\xa0\x80", "\"F32\"", "[1]", "[0,4]") + "}", "abcd"),
               {"invalid safetensors header JSON"}});
  v.push_back({"duplicate_names",
               st_bytes("{" + entry("w", "\"F32\"", "[1]", "[0,4]") + "," + entry("w", "\"F32\"", "[1]", "[4,8]") + "}",
                        "abcdefgh"),
               {"'w'", "twice"}});
  v.push_back({"duplicate_field",
               st_bytes("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", "abcd"),
               {"dtype", "twice"}});
  // --- entries
  one("entry_not_object", "\"w\":5", "", {"'w'", "not an object"});
  one("missing_dtype", "\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}", "abcd", {"'w'", "dtype"});
  one("missing_shape", "\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}", "abcd", {"'w'", "shape"});
  one("missing_offsets", "\"w\":{\"dtype\":\"F32\",\"shape\":[1]}", "abcd", {"'w'", "data_offsets"});
  one("dtype_not_string", entry("w", "5", "[1]", "[0,4]"), "abcd", {"'w'", "dtype"});
  one("shape_not_array", entry("w", "\"F32\"", "1", "[0,4]"), "abcd", {"'w'", "shape"});
  for (const char* dt : {"F64", "I8", "BOOL", "I16", "U32", "U64", "F8_E4M3", "F8_E5M2", "C64", "f32", ""})
    one(std::string("dtype_") + (*dt ? dt : "empty"), entry("w", std::string("\"") + dt + "\"", "[1]", "[0,4]"), "abcd",
        {"'w'", "unsupported dtype"});
  one("shape_negative", entry("w", "\"F32\"", "[-1]", "[0,4]"), "abcd", {"'w'", "non-negative integers"});
  one("shape_float", entry("w", "\"F32\"", "[1.0]", "[0,4]"), "abcd", {"'w'", "non-negative integers"});
  one("shape_string", entry("w", "\"F32\"", "[\"1\"]", "[0,4]"), "abcd", {"'w'", "non-negative integers"});
  one("shape_null", entry("w", "\"F32\"", "[null]", "[0,4]"), "abcd", {"'w'", "non-negative integers"});
  one("shape_2pow64", entry("w", "\"F32\"", "[18446744073709551616]", "[0,4]"), "abcd", {"'w'"});
  one("shape_2pow63", entry("w", "\"U8\"", "[9223372036854775808]", "[0,4]"), "abcd", {"'w'", "absurdly large"});
  one("shape_product_overflow", entry("w", "\"F32\"", "[4294967296,4294967296,4294967296]", "[0,4]"), "abcd",
      {"'w'", "absurdly large"});
  one("shape_product_wraps_to_small", entry("w", "\"U8\"", "[4294967296,4294967296]", "[0,0]"), "",
      {"'w'", "absurdly large"});
  one("offsets_reversed", entry("w", "\"U8\"", "[4]", "[4,0]"), "abcd", {"'w'", "reversed"});
  one("offsets_past_end", entry("w", "\"U8\"", "[4]", "[0,1000]"), "abcd", {"'w'", "past the end of the data"});
  one("offsets_huge", entry("w", "\"U8\"", "[4]", "[18446744073709551611,18446744073709551615]"), "abcd",
      {"'w'", "past the end of the data"});
  one("offsets_negative", entry("w", "\"U8\"", "[4]", "[-4,0]"), "abcd", {"'w'", "non-negative integers"});
  one("offsets_float", entry("w", "\"U8\"", "[4]", "[0.0,4.0]"), "abcd", {"'w'", "non-negative integers"});
  one("offsets_three", entry("w", "\"U8\"", "[4]", "[0,2,4]"), "abcd", {"'w'", "two integers"});
  one("offsets_not_array", entry("w", "\"U8\"", "[4]", "{}"), "abcd", {"'w'", "two integers"});
  one("offsets_strings", entry("w", "\"U8\"", "[4]", "[\"0\",\"4\"]"), "abcd", {"'w'", "non-negative integers"});
  one("bytes_ne_shape", entry("w", "\"F32\"", "[3]", "[0,8]"), "abcdefgh", {"'w'", "8 bytes", "needs 12"});
  one("bytes_ne_shape_bf16", entry("w", "\"BF16\"", "[2,2]", "[0,4]"), "abcd", {"'w'", "needs 8"});
  one("data_truncated", entry("w", "\"F32\"", "[4]", "[0,16]"), "abcdefgh", {"'w'", "past the end of the data", "truncated"});
  v.push_back({"overlap",
               st_bytes("{" + entry("a", "\"U8\"", "[8]", "[0,8]") + "," + entry("b", "\"U8\"", "[8]", "[4,12]") + "}",
                        std::string(12, 'x')),
               {"'a'", "'b'", "overlapping"}});
  v.push_back({"same_range",
               st_bytes("{" + entry("a", "\"U8\"", "[4]", "[0,4]") + "," + entry("b", "\"U8\"", "[4]", "[0,4]") + "}",
                        std::string(4, 'x')),
               {"overlapping"}});
  v.push_back({"hole",
               st_bytes("{" + entry("a", "\"U8\"", "[4]", "[0,4]") + "," + entry("b", "\"U8\"", "[4]", "[8,12]") + "}",
                        std::string(12, 'x')),
               {"'b'", "hole"}});
  v.push_back({"leading_hole", st_bytes("{" + entry("a", "\"U8\"", "[4]", "[4,8]") + "}", std::string(8, 'x')),
               {"'a'", "hole"}});
  v.push_back({"trailing_bytes", st_bytes("{" + entry("a", "\"U8\"", "[4]", "[0,4]") + "}", std::string(9, 'x')),
               {"5 bytes after the last tensor"}});
  v.push_back({"no_tensors_but_data", st_bytes("{}", "abcd"), {"4 bytes after the last tensor"}});
  // --- __metadata__
  v.push_back({"metadata_array", st_bytes("{\"__metadata__\":[\"a\"]}", ""), {"__metadata__"}});
  v.push_back({"metadata_string", st_bytes("{\"__metadata__\":\"format\"}", ""), {"__metadata__"}});
  v.push_back({"metadata_number_value", st_bytes("{\"__metadata__\":{\"format\":1}}", ""), {"__metadata__", "'format'"}});
  v.push_back({"metadata_object_value", st_bytes("{\"__metadata__\":{\"format\":{\"x\":\"y\"}}}", ""), {"__metadata__"}});
  v.push_back({"metadata_null", st_bytes("{\"__metadata__\":null}", ""), {"__metadata__"}});
  v.push_back({"metadata_duplicate_key", st_bytes("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", ""), {"'a'", "twice"}});
  v.push_back({"metadata_bad_utf8", st_bytes("{\"__metadata__\":{\"a\":\"\xff\"}}", ""), {"invalid safetensors header JSON"}});
  // --- names that would break a one-line message
  v.push_back({"control_chars_in_name", st_bytes("{" + entry("a\\u0000b\\nc\\u001b[31m", "\"F64\"", "[1]", "[0,8]") + "}",
                                                 std::string(8, 'x')),
               {"a\\x00b\\x0ac\\x1b[31m", "unsupported dtype"}});
  v.push_back({"very_long_name", st_bytes("{" + entry(std::string(1 << 20, 'n'), "\"F64\"", "[1]", "[0,8]") + "}",
                                          std::string(8, 'x')),
               {"nnnn...", "unsupported dtype"}});
  return v;
}

}  // namespace

// ---------------------------------------------------------------- reader: malformed input

TEST(SafetensorsRead, MalformedCorpusThrowsNamedErrors) {
  auto dir = test::temp_dir("st-bad");
  auto corpus = malformed_corpus();
  ASSERT_GT(corpus.size(), 70u);
  for (auto& bf : corpus) {
    auto path = dir + "/" + bf.label + ".safetensors";
    test::write_file(path, bf.bytes);
    expect_error([&] { SafetensorsFile f(path); }, path, bf.want, bf.label);
    // the same through the store (a single file)
    expect_error([&] { (void)TensorStore::open(path); }, path, {}, bf.label + " (store)");
  }
  fs::remove_all(dir);
}

TEST(SafetensorsRead, NonUtf8ErrorMessageIsAscii) {
  auto dir = test::temp_dir("st-utf8");
  auto path = dir + "/bad.safetensors";
  test::write_file(path, st_bytes("{" + entry("w\xff\xfe", "\"F32\"", "[1]", "[0,4]") + "}", "abcd"));
  try {
    SafetensorsFile f(path);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    for (unsigned char c : m.substr(path.size())) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << m;
  }
  fs::remove_all(dir);
}

TEST(SafetensorsRead, MissingAndSpecialPaths) {
  auto dir = test::temp_dir("st-paths");
  expect_error([&] { SafetensorsFile f(dir + "/nope.safetensors"); }, dir + "/nope.safetensors", {"cannot open"}, "missing");
  expect_error([&] { SafetensorsFile f(dir); }, dir, {"not a regular file"}, "directory");
  expect_error([&] { (void)TensorStore::open(dir + "/nope"); }, dir + "/nope", {"no such file"}, "store missing");
  expect_error([&] { (void)TensorStore::open(dir); }, dir, {"no model.safetensors"}, "store empty dir");
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- reader: sharded index

namespace {

// dir with shard files a.safetensors (tensor x) and b.safetensors (tensor y) and the given index
std::string sharded_dir(const std::string& tag, const std::string& index_json) {
  auto dir = test::temp_dir(tag);
  test::write_file(dir + "/a.safetensors", st_bytes("{" + entry("x", "\"U8\"", "[4]", "[0,4]") + "}", "abcd"));
  test::write_file(dir + "/b.safetensors", st_bytes("{" + entry("y", "\"U8\"", "[2]", "[0,2]") + "," +
                                                        entry("stray", "\"U8\"", "[1]", "[2,3]") + "}",
                                                    "efg"));
  test::write_file(dir + "/model.safetensors.index.json", index_json);
  return dir;
}

}  // namespace

TEST(SafetensorsRead, ShardedIndexErrors) {
  struct Case {
    std::string label, index;
    std::vector<std::string> want;
    bool names_shard = false;  // the message names a shard file rather than the index
  };
  std::vector<Case> cases = {
      {"missing_shard", R"({"weight_map":{"x":"a.safetensors","z":"c.safetensors"}})", {"c.safetensors", "does not exist"}},
      {"tensor_absent", R"({"weight_map":{"x":"a.safetensors","q":"b.safetensors"}})", {"'q'", "b.safetensors", "missing"}},
      {"tensor_in_other_shard", R"({"weight_map":{"x":"b.safetensors"}})", {"'x'", "missing from shard"}},
      {"dotdot", R"({"weight_map":{"x":"../a.safetensors"}})", {"'x'", "invalid shard file", "../a.safetensors"}},
      {"dotdot_bare", R"({"weight_map":{"x":".."}})", {"invalid shard file"}},
      {"absolute", R"({"weight_map":{"x":"/etc/passwd"}})", {"invalid shard file"}},
      {"subdir", R"({"weight_map":{"x":"sub/a.safetensors"}})", {"invalid shard file"}},
      {"empty_name", R"({"weight_map":{"x":""}})", {"invalid shard file"}},
      {"nul_name", R"({"weight_map":{"x":"a.safetensors\u0000.txt"}})", {"invalid shard file"}},
      {"not_string", R"({"weight_map":{"x":1}})", {"'x'", "not a file name"}},
      {"no_weight_map", R"({"metadata":{}})", {"weight_map"}},
      {"weight_map_array", R"({"weight_map":["a.safetensors"]})", {"weight_map"}},
      {"weight_map_empty", R"({"weight_map":{}})", {"no tensors"}},
      {"index_array", R"([1])", {"weight_map"}},
      {"index_not_json", R"({"weight_map":)", {"invalid JSON"}},
  };
  for (auto& c : cases) {
    auto dir = sharded_dir("st-idx-" + c.label, c.index);
    expect_error([&] { (void)TensorStore::open(dir); }, dir + "/model.safetensors.index.json", c.want, c.label);
    fs::remove_all(dir);
  }
  // a malformed shard: the message names the shard
  auto dir = sharded_dir("st-idx-badshard", R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  test::write_file(dir + "/b.safetensors", "garbage");
  expect_error([&] { (void)TensorStore::open(dir); }, dir + "/b.safetensors", {"truncated"}, "bad shard");
  fs::remove_all(dir);
}

TEST(SafetensorsRead, ShardedIndexReadsWhatItLists) {
  auto dir = sharded_dir("st-idx-ok", R"({"metadata":{"total_size":6},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  auto s = TensorStore::open(dir);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(bytes_of(s.get("x")), "abcd");
  EXPECT_EQ(bytes_of(s.get("y")), "ef");
  EXPECT_FALSE(s.contains("stray"));  // in a shard but not in the index: the index decides
  EXPECT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.tensor_bytes(), 6u);
  EXPECT_EQ(s.get("y").file, dir + "/b.safetensors");
  expect_error([&] { (void)s.get("nope"); }, dir, {"missing tensor 'nope'"}, "get");
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- reader: valid input

TEST(SafetensorsRead, AllDtypesZeroSizeAndScalars) {
  // built by hand (independent of the writer), unpadded header, tensors listed out of offset order
  struct T {
    std::string name, dtype, shape;
    DType dt;
    std::vector<int64_t> dims;
    size_t nbytes;
  };
  std::vector<T> ts = {
      {"f32", "F32", "[2,3]", DType::F32, {2, 3}, 24}, {"f16", "F16", "[3]", DType::F16, {3}, 6},
      {"bf16", "BF16", "[1,1,2]", DType::BF16, {1, 1, 2}, 4}, {"i64", "I64", "[2]", DType::I64, {2}, 16},
      {"i32", "I32", "[1]", DType::I32, {1}, 4}, {"u8", "U8", "[5]", DType::U8, {5}, 5},
      {"u16", "U16", "[2,1]", DType::U16, {2, 1}, 4}, {"empty0", "F32", "[0]", DType::F32, {0}, 0},
      {"empty30", "BF16", "[3,0]", DType::BF16, {3, 0}, 0}, {"scalar", "F32", "[]", DType::F32, {}, 4},
  };
  std::string data = pattern(24 + 6 + 4 + 16 + 4 + 5 + 4 + 4, 7);
  std::vector<std::string> ents;
  size_t off = 0;
  std::map<std::string, std::pair<size_t, size_t>> where;
  for (auto& t : ts) {
    ents.push_back(entry(t.name, "\"" + t.dtype + "\"", t.shape,
                         std::string("[") + std::to_string(off) + std::string(",") + std::to_string(off + t.nbytes) + "]"));
    where[t.name] = {off, t.nbytes};
    off += t.nbytes;
  }
  ASSERT_EQ(off, data.size());
  std::reverse(ents.begin(), ents.end());
  std::string header = "{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"}";
  for (auto& e : ents) header += "," + e;
  header += "}";
  auto dir = test::temp_dir("st-dtypes");
  auto path = dir + "/all.safetensors";
  test::write_file(path, st_bytes(header, data));
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), ts.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("k"), "v");
  EXPECT_EQ(f.header_bytes(), header.size());
  auto s = TensorStore::open(path);
  for (auto& t : ts) {
    auto& ti = s.get(t.name);
    EXPECT_EQ(ti.dtype, t.dt) << t.name;
    EXPECT_EQ(ti.shape, t.dims) << t.name;
    EXPECT_EQ(ti.nbytes, t.nbytes) << t.name;
    EXPECT_EQ(ti.data_offset, where[t.name].first) << t.name;
    EXPECT_EQ(bytes_of(ti), data.substr(where[t.name].first, t.nbytes)) << t.name;
    EXPECT_EQ(ti.file, path);
  }
  EXPECT_EQ(s.get("scalar").numel(), 1);
  EXPECT_EQ(s.get("empty30").numel(), 0);
  // an empty header and a metadata-only header are valid files
  test::write_file(dir + "/e.safetensors", st_bytes("{}", ""));
  EXPECT_TRUE(SafetensorsFile(dir + "/e.safetensors").tensors().empty());
  test::write_file(dir + "/m.safetensors", st_bytes("{\"__metadata__\":{}}   ", ""));
  EXPECT_TRUE(SafetensorsFile(dir + "/m.safetensors").tensors().empty());
  fs::remove_all(dir);
}

TEST(SafetensorsRead, RealFixtures) {
  HXQ_REQUIRE_DATA("fixtures/hf");
  int n = 0;
  for (auto& e : fs::directory_iterator(test::data_path("fixtures/hf"))) {
    auto m = e.path() / "model.safetensors";
    auto r = e.path() / "reference.safetensors";
    if (!fs::exists(m) || !fs::exists(r)) continue;
    SafetensorsFile mf(m.string());
    EXPECT_GT(mf.tensors().size(), 5u) << m;
    EXPECT_EQ(mf.metadata().at("format"), "pt") << m;
    auto store = TensorStore::open(e.path().string());  // directory form
    EXPECT_EQ(store.names().size(), mf.tensors().size());
    auto ref = TensorStore::open(r.string());
    auto& ids = ref.get("input_ids");
    EXPECT_EQ(ids.dtype, DType::I64);
    EXPECT_EQ(ids.shape, (std::vector<int64_t>{1, 45}));
    auto& logits = ref.get("logits");
    EXPECT_EQ(logits.dtype, DType::F32);
    EXPECT_EQ(logits.shape, (std::vector<int64_t>{1, 45, 1024}));
    ++n;
  }
  EXPECT_EQ(n, 6);
  if (test::have_data("fixtures/hf/mamba2-tiny-bf16/model.safetensors")) {
    auto s = TensorStore::open(test::data_path("fixtures/hf/mamba2-tiny-bf16"));
    EXPECT_EQ(s.get("backbone.embeddings.weight").dtype, DType::BF16);
    EXPECT_EQ(s.get("backbone.embeddings.weight").shape, (std::vector<int64_t>{1024, 64}));
  }
  if (test::have_data("fixtures/anchor-hxq/mamba2-tiny/model.safetensors")) {
    SafetensorsFile a(test::data_path("fixtures/anchor-hxq/mamba2-tiny/model.safetensors"));
    EXPECT_EQ(a.tensors().size(), 33u);  // fixtures/anchor-hxq/README.md
    std::set<DType> dts;
    for (auto& t : a.tensors()) dts.insert(t.dtype);
    EXPECT_TRUE(dts.count(DType::U8) && dts.count(DType::I64) && dts.count(DType::F16) && dts.count(DType::F32));
  }
}

// ---------------------------------------------------------------- writer

namespace {

struct Src {
  std::string name;
  DType dt;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<Src> sample_tensors() {
  std::vector<Src> v = {
      {"model.embed.weight", DType::BF16, {16, 8}, {}}, {"a.f32", DType::F32, {3, 5}, {}}, {"a.f16", DType::F16, {7}, {}},
      {"ids", DType::I64, {2, 3}, {}},  {"i32", DType::I32, {1}, {}},   {"u8 odd", DType::U8, {13}, {}},
      {"u16", DType::U16, {3, 1}, {}},  {"zero", DType::F32, {0, 4}, {}}, {"scalar", DType::F32, {}, {}},
      {"ünïcode/名前", DType::U8, {2}, {}}, {"quote\"back\\slash\ttab", DType::U8, {1}, {}},
  };
  unsigned seed = 3;
  for (auto& s : v) s.bytes = pattern(SafetensorsWriter::tensor_nbytes(s.dt, s.shape, "t"), seed++);
  return v;
}

void check_matches(const std::string& path, const std::vector<Src>& src) {
  auto s = TensorStore::open(path);
  ASSERT_EQ(s.names().size(), src.size());
  for (auto& t : src) {
    auto& ti = s.get(t.name);
    EXPECT_EQ(ti.dtype, t.dt) << t.name;
    EXPECT_EQ(ti.shape, t.shape) << t.name;
    EXPECT_EQ(bytes_of(ti), t.bytes) << t.name;
  }
}

uint64_t header_len(const std::string& path) {
  auto b = slurp(path);
  uint64_t h = 0;
  std::memcpy(&h, b.data(), 8);
  return h;
}

}  // namespace

TEST(SafetensorsWriter, RoundTripCompact) {
  auto dir = test::temp_dir("stw-rt");
  auto path = dir + "/out.safetensors";
  auto src = sample_tensors();
  {
    SafetensorsWriter w(path);
    w.set_metadata("format", "pt");
    w.set_metadata("note", "x");
    w.set_metadata("format", "pt2");  // replaces, keeps position
    for (auto& t : src) w.add(t.name, t.dt, t.shape, t.bytes.data(), t.bytes.size());
    EXPECT_EQ(w.tensor_count(), src.size());
    EXPECT_TRUE(w.contains("ids"));
    w.finish();
    EXPECT_TRUE(w.finished());
  }
  check_matches(path, src);
  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata().at("format"), "pt2");
  EXPECT_EQ(f.metadata().at("note"), "x");
  // compact layout: header padded only up to a multiple of 8
  uint64_t h = header_len(path);
  EXPECT_EQ(h % 8, 0u);
  auto raw = slurp(path);
  std::string header = raw.substr(8, h);
  EXPECT_LT(header.size() - (header.find_last_not_of(' ') + 1), 8u);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt2\",\"note\":\"x\"},\"model.embed.weight\":{\"dtype\":"
                         "\"BF16\",\"shape\":[16,8],\"data_offsets\":[0,256]},",
                         0),
            0u)
      << header;
  EXPECT_EQ(fs::directory_iterator(dir)->path().filename(), "out.safetensors");  // no temp left
  fs::remove_all(dir);
}

TEST(SafetensorsWriter, ReserveKeptForLargeFilesAndRewriteWhenTooSmall) {
  auto dir = test::temp_dir("stw-reserve");
  auto src = sample_tensors();
  for (uint64_t reserve : {0ull, 8ull, 100ull, 4096ull}) {
    auto path = dir + std::string("/r") + std::to_string(reserve) + ".safetensors";
    SafetensorsWriterOptions o;
    o.header_reserve = reserve;
    o.compact_below = 0;  // behave as for a big file
    o.fsync = false;
    SafetensorsWriter w(path, o);
    for (auto& t : src) w.add(t.name, t.dt, t.shape, t.bytes.data(), t.bytes.size());
    w.finish();
    check_matches(path, src);
    uint64_t h = header_len(path);
    EXPECT_EQ(h % 8, 0u);
    if (reserve == 4096) EXPECT_EQ(h, 4096u);  // fits: the reserve is kept, padded with spaces
    else EXPECT_LT(h, 4096u);                  // did not fit: rewritten compactly
  }
  std::vector<std::string> left;
  for (auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"r0.safetensors", "r100.safetensors", "r4096.safetensors", "r8.safetensors"}));
  fs::remove_all(dir);
}

TEST(SafetensorsWriter, DataIsOnDiskBeforeFinishAndChunkedWrites) {
  auto dir = test::temp_dir("stw-stream");
  auto path = dir + "/big.safetensors";
  SafetensorsWriterOptions o;
  o.header_reserve = 1024;
  o.compact_below = 0;
  o.fsync = false;
  const std::string big = pattern(3 << 20, 11);  // larger than the internal buffer
  {
    SafetensorsWriter w(path, o);
    w.add("big", DType::F32, {int64_t(big.size() / 4)}, big.data(), big.size());
    EXPECT_GE(fs::file_size(path), 8 + 1024 + big.size());  // streamed, not held in RAM
    // chunked: 1000 x 999 bytes of U8 in pieces of uneven size
    const std::string chunked = pattern(999000, 12);
    w.begin_tensor("chunked", DType::U8, {1000, 999});
    for (size_t p = 0; p < chunked.size();) {
      size_t n = std::min<size_t>(chunked.size() - p, 1 + (p * 7919) % 100000);
      w.write(chunked.data() + p, n);
      p += n;
    }
    w.end_tensor();
    for (int i = 0; i < 300; ++i) {  // many small tensors through the buffer
      auto b = pattern(size_t(i % 17), unsigned(i));
      w.add(fmt::format("s{}", i), DType::U8, {int64_t(b.size())}, b.data(), b.size());
    }
    w.finish();
    EXPECT_EQ(w.data_bytes(), big.size() + chunked.size() + [] {
      size_t n = 0;
      for (int i = 0; i < 300; ++i) n += size_t(i % 17);
      return n;
    }());
    auto s = TensorStore::open(path);
    EXPECT_EQ(bytes_of(s.get("big")), big);
    EXPECT_EQ(bytes_of(s.get("chunked")), chunked);
    for (int i = 0; i < 300; ++i) EXPECT_EQ(bytes_of(s.get(fmt::format("s{}", i))), pattern(size_t(i % 17), unsigned(i)));
  }
  fs::remove_all(dir);
}

TEST(SafetensorsWriter, RejectsBadInputAndCleansUp) {
  auto dir = test::temp_dir("stw-bad");
  auto path = dir + "/w.safetensors";
  const char d[16] = {};
  {
    SafetensorsWriter w(path);
    w.add("a", DType::F32, {2}, d, 8);
    expect_error([&] { w.add("a", DType::F32, {2}, d, 8); }, path, {"'a'", "twice"}, "dup");
    expect_error([&] { w.add("", DType::F32, {2}, d, 8); }, path, {"empty"}, "empty name");
    expect_error([&] { w.add("__metadata__", DType::F32, {2}, d, 8); }, path, {"reserved"}, "reserved");
    expect_error([&] { w.add("bad\xff", DType::U8, {1}, d, 1); }, path, {"UTF-8"}, "utf8");
    expect_error([&] { w.add("neg", DType::F32, {-2}, d, 8); }, path, {"'neg'", "negative"}, "neg");
    expect_error([&] { w.add("big", DType::F32, {int64_t(1) << 40, int64_t(1) << 40}, d, 8); }, path, {"absurdly"}, "huge");
    expect_error([&] { w.add("size", DType::F32, {3}, d, 8); }, path, {"'size'", "needs 12"}, "size");
    expect_error([&] { w.add("null", DType::F32, {2}, nullptr, 8); }, path, {"null"}, "null");
    expect_error([&] { w.set_metadata("k", "\xfe"); }, path, {"UTF-8"}, "meta utf8");
    w.add("b", DType::U8, {0}, nullptr, 0);  // zero bytes: null is fine; earlier errors did not break the writer
    w.finish();
    expect_error([&] { w.add("c", DType::U8, {1}, d, 1); }, path, {"after finish"}, "after finish");
  }
  auto s = TensorStore::open(path);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b"}));
  // chunk errors break the writer and remove the file
  auto p2 = dir + "/w2.safetensors";
  {
    SafetensorsWriter w(p2);
    w.begin_tensor("t", DType::U8, {4});
    expect_error([&] { w.write(d, 5); }, p2, {"more bytes"}, "overflow");
    w.write(d, 3);
    expect_error([&] { w.end_tensor(); }, p2, {"missing"}, "short");
    EXPECT_FALSE(fs::exists(p2));
    expect_error([&] { w.finish(); }, p2, {"unusable"}, "finish after error");
  }
  // destroyed without finish(): no file
  {
    SafetensorsWriter w(p2);
    w.add("t", DType::U8, {4}, d, 4);
    EXPECT_TRUE(fs::exists(p2));
  }
  EXPECT_FALSE(fs::exists(p2));
  expect_error([&] { SafetensorsWriter w(dir + "/no/such/dir/x.safetensors"); }, dir + "/no/such/dir/x.safetensors",
               {"cannot create"}, "bad dir");
  fs::remove_all(dir);
}

TEST(SafetensorsWriter, ByteIdenticalToReferenceLibraryFiles) {
  // Rewriting every real fixture (written by the reference Python/Rust library, or by
  // helix-substrate) in its own tensor and metadata order must reproduce it byte for byte.
  HXQ_REQUIRE_DATA("fixtures/hf");
  std::vector<std::string> files;
  for (auto root : {"fixtures/hf", "fixtures/anchor-hxq", "models"}) {
    if (!test::have_data(root)) continue;
    for (auto& e : fs::recursive_directory_iterator(test::data_path(root)))
      if (e.path().extension() == ".safetensors" && e.file_size() < (48u << 20)) files.push_back(e.path().string());
  }
  ASSERT_GE(files.size(), 12u);
  auto dir = test::temp_dir("stw-ident");
  for (auto& in : files) {
    SafetensorsFile f(in);
    auto raw = slurp(in);
    uint64_t h = header_len(in);
    auto header = nlohmann::ordered_json::parse(raw.substr(8, h));
    std::vector<const TensorInfo*> order;
    for (auto& t : f.tensors()) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->data_offset < b->data_offset; });
    auto out = dir + "/copy.safetensors";
    SafetensorsWriterOptions o;
    o.fsync = false;
    SafetensorsWriter w(out, o);
    if (header.contains("__metadata__"))
      for (auto& [k, v] : header["__metadata__"].items()) w.set_metadata(k, v.get<std::string>());
    for (auto* t : order) w.add(*t);
    w.finish();
    EXPECT_TRUE(slurp(out) == raw) << in;
  }
  fs::remove_all(dir);
}

TEST(SafetensorsWriter, HeaderEstimateIsGenerous) {
  auto dir = test::temp_dir("stw-est");
  auto path = dir + "/e.safetensors";
  size_t name_bytes = 0;
  std::vector<std::string> names;
  for (int i = 0; i < 500; ++i) {
    names.push_back(std::string("backbone.layers.") + std::to_string(i) + ".mixer.in_proj.codebook");
    name_bytes += names.back().size();
  }
  SafetensorsWriterOptions o;
  o.header_reserve = SafetensorsWriter::header_estimate(names.size(), name_bytes, 20);
  o.compact_below = 0;
  o.fsync = false;
  SafetensorsWriter w(path, o);
  w.set_metadata("format", "pt");
  const char d[8] = {};
  for (auto& n : names) w.add(n, DType::BF16, {1234567, 0, 7654321, 0}, d, 0);
  w.finish();
  EXPECT_EQ(header_len(path), (o.header_reserve + 7) / 8 * 8);  // used the reserve: no rewrite needed
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- checkpoint writer

TEST(CheckpointWriter, SingleFileWhenItFits) {
  auto dir = test::temp_dir("ckw-single");
  auto src = sample_tensors();
  CheckpointWriter cw(dir + "/out", 1 << 20);
  for (auto& t : src) cw.add(t.name, t.dt, t.shape, t.bytes.data(), t.bytes.size());
  auto files = cw.finish();
  EXPECT_EQ(files, (std::vector<std::string>{"model.safetensors"}));
  EXPECT_FALSE(fs::exists(dir + "/out/model.safetensors.index.json"));
  check_matches(dir + "/out", src);
  EXPECT_EQ(SafetensorsFile(dir + "/out/model.safetensors").metadata().at("format"), "pt");
  size_t n = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir + "/out")) ++n;
  EXPECT_EQ(n, 1u);
  fs::remove_all(dir);
}

TEST(CheckpointWriter, ShardsAndIndexInTransformersFormat) {
  auto dir = test::temp_dir("ckw-shards");
  auto out = dir + "/out";
  std::vector<Src> src;
  // 400-byte tensors with a 1000-byte cap: two per shard; "huge" (2400 bytes) gets its own shard
  for (int i = 0; i < 5; ++i) src.push_back({fmt::format("t{}", i), DType::F32, {100}, pattern(400, unsigned(i))});
  src.insert(src.begin() + 3, Src{"huge", DType::U8, {2400}, pattern(2400, 99)});
  {
    CheckpointWriter cw(out, 1000);
    cw.set_index_metadata("total_parameters", 100);
    for (auto& t : src) {
      if (t.name == "t4") {  // chunked route too
        cw.begin_tensor(t.name, t.dt, t.shape);
        cw.write(t.bytes.data(), 100);
        cw.write(t.bytes.data() + 100, 300);
        cw.end_tensor();
      } else {
        cw.add(t.name, t.dt, t.shape, t.bytes.data(), t.bytes.size());
      }
    }
    expect_error([&] { cw.add("t0", DType::U8, {1}, "x", 1); }, out, {"'t0'", "twice"}, "dup across shards");
    EXPECT_EQ(cw.total_bytes(), 4400u);
    auto files = cw.finish();
    EXPECT_EQ(files, (std::vector<std::string>{"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                               "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                               "model.safetensors.index.json"}));
  }
  // t0 t1 | t2 | huge | t3 t4
  std::string want = R"({
  "metadata": {
    "total_parameters": 100,
    "total_size": 4400
  },
  "weight_map": {
    "huge": "model-00003-of-00004.safetensors",
    "t0": "model-00001-of-00004.safetensors",
    "t1": "model-00001-of-00004.safetensors",
    "t2": "model-00002-of-00004.safetensors",
    "t3": "model-00004-of-00004.safetensors",
    "t4": "model-00004-of-00004.safetensors"
  }
}
)";
  EXPECT_EQ(slurp(out + "/model.safetensors.index.json"), want);
  check_matches(out, src);
  size_t n = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(out)) ++n;
  EXPECT_EQ(n, 5u);  // no .partial files left
  EXPECT_EQ(CheckpointWriter::shard_name(2, 17), "model-00002-of-00017.safetensors");
  fs::remove_all(dir);
}

TEST(CheckpointWriter, EmptyAndAbandoned) {
  auto dir = test::temp_dir("ckw-misc");
  {
    CheckpointWriter cw(dir + "/empty", 0);
    EXPECT_EQ(cw.finish(), (std::vector<std::string>{"model.safetensors"}));
    EXPECT_TRUE(TensorStore::open(dir + "/empty").names().empty());
  }
  {
    CheckpointWriter cw(dir + "/abandoned", 100);
    const std::string b = pattern(80);
    for (int i = 0; i < 5; ++i) cw.add(fmt::format("x{}", i), DType::U8, {80}, b.data(), b.size());
    EXPECT_EQ(cw.shard_count(), 5u);
  }
  EXPECT_TRUE(fs::is_empty(dir + "/abandoned"));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- atomic output directory

TEST(AtomicOutputDir, CommitAndAbandon) {
  auto dir = test::temp_dir("aod");
  auto target = dir + "/out";
  {
    AtomicOutputDir o(target);
    EXPECT_EQ(o.path(), target + std::string(".tmp-") + std::to_string(::getpid()));
    write_file_checked(o.file("config.json"), "{}\n");
    CheckpointWriter cw(o.path(), 0);
    cw.add("w", DType::U8, {3}, "abc", 3);
    cw.finish();
    EXPECT_FALSE(fs::exists(target));
    o.commit();
    EXPECT_TRUE(o.committed());
  }
  EXPECT_EQ(bytes_of(TensorStore::open(target).get("w")), "abc");
  EXPECT_FALSE(fs::exists(target + std::string(".tmp-") + std::to_string(::getpid())));
  // failure while writing: nothing is left
  auto t2 = dir + "/out2";
  try {
    AtomicOutputDir o(t2);
    write_file_checked(o.file("config.json"), "{}");
    throw Error("simulated failure");
  } catch (const Error&) {
  }
  EXPECT_FALSE(fs::exists(t2));
  EXPECT_FALSE(fs::exists(t2 + std::string(".tmp-") + std::to_string(::getpid())));
  // a trailing slash still puts the temporary directory next to the target
  {
    AtomicOutputDir o(dir + "/out3/");
    EXPECT_EQ(o.path(), dir + std::string("/out3.tmp-") + std::to_string(::getpid()));
    o.commit();
  }
  EXPECT_TRUE(fs::is_directory(dir + "/out3"));
  fs::remove_all(dir);
}

TEST(AtomicOutputDir, RefusalsAndOverwrite) {
  auto dir = test::temp_dir("aod-refuse");
  auto target = dir + "/out";
  fs::create_directory(target);
  test::write_file(target + "/config.json", "old");
  test::write_file(target + "/model.safetensors", "old");
  expect_error([&] { AtomicOutputDir o(target); }, target, {"already exists", "--overwrite"}, "exists");
  EXPECT_EQ(slurp(target + "/config.json"), "old");
  {
    AtomicOutputDir o(target, true);
    write_file_checked(o.file("config.json"), "new");
    o.commit();
  }
  EXPECT_EQ(slurp(target + "/config.json"), "new");
  EXPECT_FALSE(fs::exists(target + "/model.safetensors"));  // the old directory was replaced, not merged
  size_t n = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir)) ++n;
  EXPECT_EQ(n, 1u);  // no .tmp-/.old- leftovers
  // overwrite refused for things that do not look like a checkpoint
  auto home = dir + "/precious";
  fs::create_directory(home);
  test::write_file(home + "/thesis.tex", "x");
  expect_error([&] { AtomicOutputDir o(home, true); }, home, {"does not look like a checkpoint"}, "precious");
  test::write_file(dir + "/file", "x");
  expect_error([&] { AtomicOutputDir o(dir + "/file", true); }, dir + "/file", {"not a directory"}, "file");
  // the input itself, or a directory containing it
  auto in = dir + "/model";
  fs::create_directories(in + "/sub");
  test::write_file(in + "/config.json", "{}");
  expect_error([&] { AtomicOutputDir o(in, true, {in}); }, in, {"input"}, "same");
  expect_error([&] { AtomicOutputDir o(in + "/", true, {in + "/./"}); }, in, {"input"}, "same2");
  expect_error([&] { AtomicOutputDir o(dir, true, {in}); }, dir, {"contains the input"}, "ancestor");
  EXPECT_NO_THROW({ AtomicOutputDir o(in + "/sub/out", false, {in}); });  // inside the input is fine
  expect_error([&] { AtomicOutputDir o(dir + "/no/parent"); }, dir + "/no/parent", {"does not exist"}, "parent");
  expect_error([&] { AtomicOutputDir o("."); }, ".", {"cannot be used"}, "dot");
  fs::remove_all(dir);
}

TEST(AtomicOutputDir, InterruptUnwindsAndCleansUp) {
  auto dir = test::temp_dir("aod-int");
  auto target = dir + "/out";
  clear_interrupted();
  install_interrupt_handlers();
  EXPECT_FALSE(interrupted());
  bool caught = false;
  try {
    AtomicOutputDir o(target);
    CheckpointWriter cw(o.path(), 0);
    for (int i = 0; i < 100; ++i) {
      if (i == 3) std::raise(SIGINT);  // as if the user pressed Ctrl-C
      check_interrupted();
      cw.add(fmt::format("t{}", i), DType::U8, {1}, "x", 1);
    }
    cw.finish();
    o.commit();
  } catch (const Interrupted& e) {
    caught = true;
    EXPECT_STREQ(e.what(), "interrupted");
  }
  EXPECT_TRUE(caught);
  EXPECT_TRUE(interrupted());
  EXPECT_TRUE(fs::is_empty(dir));  // neither the target nor the temporary directory
  clear_interrupted();
  EXPECT_FALSE(interrupted());
  EXPECT_NO_THROW(check_interrupted());
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- JSON files (io/json.h)

TEST(JsonHardening, RejectsNulAndKeepsMessagesOneLineAscii) {
  expect_error([] { (void)parse_json_text(std::string("{}\0{\"a\":1}", 10), "cfg.json"); }, "cfg.json",
               {"NUL byte at offset 2"}, "nul");
  try {
    (void)parse_json_text("{\"a\": \"\xff\xfe\"}", "cfg.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    std::string m = e.what();
    for (unsigned char c : m) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << m;
  }
  // deep nesting in a config file parses without recursion trouble (the parser is iterative)
  std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_NO_THROW((void)parse_json_text(deep, "deep.json"));
  EXPECT_THROW((void)parse_json_text(std::string(100000, '['), "deep.json"), Error);
}

TEST(TensorStore, FromMemoryViewsCallerArraysAndChecksEntries) {
  std::vector<float> a{1, 2, 3, 4, 5, 6};
  std::vector<uint8_t> b{7, 8};
  auto info = [](std::string name, DType dt, std::vector<int64_t> shape, const void* p, size_t n) {
    TensorInfo t;
    t.name = std::move(name);
    t.dtype = dt;
    t.shape = std::move(shape);
    t.data = static_cast<const std::byte*>(p);
    t.nbytes = n;
    return t;
  };
  auto s = TensorStore::from_memory({info("w.a", DType::F32, {2, 3}, a.data(), 24), info("w.b", DType::U8, {2}, b.data(), 2)},
                                    "<mem>");
  ASSERT_NE(s.find("w.a"), nullptr);
  EXPECT_EQ(static_cast<const void*>(s.get("w.a").data), static_cast<const void*>(a.data()));  // a view, not a copy
  EXPECT_EQ(s.get("w.b").file, "<mem>");
  EXPECT_EQ(s.names(), (std::vector<std::string>{"w.a", "w.b"}));
  EXPECT_EQ(s.tensor_bytes(), 26u);
  auto fails = [&](std::vector<TensorInfo> v, const std::string& what) {
    try {
      (void)TensorStore::from_memory(std::move(v), "<mem>");
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
  };
  fails({info("x", DType::F32, {2, 3}, a.data(), 20)}, "20 bytes for shape [2, 3]");
  fails({info("x", DType::F32, {1}, a.data(), 4), info("x", DType::F32, {1}, a.data(), 4)}, "given twice");
  fails({info("", DType::F32, {1}, a.data(), 4)}, "without a name");
  fails({info("x", DType::F32, {-1}, a.data(), 4)}, "negative dimension");
  fails({info("x", DType::F32, {1}, nullptr, 4)}, "no data");
  EXPECT_NO_THROW((void)TensorStore::from_memory({info("empty", DType::F32, {0, 3}, nullptr, 0)}, "<mem>"));
}
