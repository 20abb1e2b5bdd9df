// The Hugging Face tokenizer.json pipeline: added tokens -> normalizer -> pre-tokenizer -> BPE
// -> post-processor, and ids -> tokens -> decoder chain. Behaviour follows `tokenizers` (Rust).
#include <algorithm>
#include <array>
#include <unordered_map>

#include "core/error.h"
#include "core/mmap.h"
#include "io/json.h"
#include "tokenizer/backend.h"
#include "tokenizer/bpe.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace hxq::tok {

namespace {

using Spans = std::vector<std::pair<size_t, size_t>>;

// ---------------------------------------------------------------- small JSON helpers
struct Ctx {
  std::string path;
};

std::string type_of(const json& j, const Ctx& c, const char* section) {
  if (!j.is_object()) fail("{}: {} must be an object", c.path, section);
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) fail("{}: {} has no \"type\"", c.path, section);
  return it->get<std::string>();
}

bool get_bool(const json& j, const char* key, bool dflt, const Ctx& c, const char* section) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail("{}: {}.{} must be a boolean", c.path, section, key);
  return it->get<bool>();
}

std::string get_string(const json& j, const char* key, const Ctx& c, const char* section) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) fail("{}: {}.{} must be a string", c.path, section, key);
  return it->get<std::string>();
}

const json& get_array(const json& j, const char* key, const Ctx& c, const char* section) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) fail("{}: {}.{} must be an array", c.path, section, key);
  return *it;
}

char32_t single_char(const std::string& s, const Ctx& c, const char* section) {
  size_t len = 0;
  if (s.empty() || utf8_valid_len(s, 0) != s.size()) fail("{}: {} must be a single character", c.path, section);
  return utf8_decode(s, 0, &len);
}

// ---------------------------------------------------------------- patterns (Split, Replace)
// {"String": literal} or {"Regex": oniguruma pattern}
class Pattern {
 public:
  Pattern(const json& j, const Ctx& c, const char* section) {
    if (j.is_object() && j.contains("String") && j["String"].is_string()) {
      literal_ = j["String"].get<std::string>();
    } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
      re_ = std::make_unique<Regex>(onig_to_pcre2(j["Regex"].get<std::string>()),
                                    fmt::format("{}: {}", c.path, section));
    } else {
      fail("{}: {}.pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", c.path, section);
    }
  }
  void find_all(std::string_view s, Spans& out) const {
    if (re_) return re_->find_all(s, out);
    out.clear();
    if (literal_.empty()) return;
    for (size_t p = s.find(literal_); p != std::string_view::npos; p = s.find(literal_, p + literal_.size()))
      out.emplace_back(p, p + literal_.size());
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> re_;
};

std::string replace_all(std::string_view s, const Spans& m, std::string_view content) {
  std::string out;
  out.reserve(s.size());
  size_t prev = 0;
  for (auto [b, e] : m) {
    out.append(s.substr(prev, b - prev));
    out.append(content);
    prev = e;
  }
  out.append(s.substr(prev));
  return out;
}

// ---------------------------------------------------------------- normalizers
struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s) const = 0;
};

struct FormNorm : Normalizer {
  NormForm form;
  explicit FormNorm(NormForm f) : form(f) {}
  void apply(std::string& s) const override { normalize_form(s, form); }
};
struct SeqNorm : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  void apply(std::string& s) const override {
    for (auto& p : parts) p->apply(s);
  }
};
struct PrependNorm : Normalizer {
  std::string prefix;
  void apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};
struct ReplaceNorm : Normalizer {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void apply(std::string& s) const override {
    Spans m;
    pattern->find_all(s, m);
    if (!m.empty()) s = replace_all(s, m, content);
  }
};
struct LowercaseNorm : Normalizer {
  void apply(std::string& s) const override { lowercase(s); }
};
struct StripNorm : Normalizer {
  bool left = true, right = true;
  void apply(std::string& s) const override {
    if (right) s.resize(s.size() - trailing_whitespace_bytes(s));
    if (left) s.erase(0, leading_whitespace_bytes(s));
  }
};
struct StripAccentsNorm : Normalizer {
  void apply(std::string& s) const override {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      size_t len;
      char32_t c = utf8_decode(s, i, &len);
      if (!is_nonspacing_mark(c)) out.append(s, i, len);
      i += len;
    }
    s = std::move(out);
  }
};

std::unique_ptr<Normalizer> make_normalizer(const json& j, const Ctx& c) {
  std::string t = type_of(j, c, "normalizer");
  if (t == "NFC") return std::make_unique<FormNorm>(NormForm::NFC);
  if (t == "NFD") return std::make_unique<FormNorm>(NormForm::NFD);
  if (t == "NFKC") return std::make_unique<FormNorm>(NormForm::NFKC);
  if (t == "NFKD") return std::make_unique<FormNorm>(NormForm::NFKD);
  if (t == "Sequence") {
    auto n = std::make_unique<SeqNorm>();
    for (const auto& p : get_array(j, "normalizers", c, "normalizer")) n->parts.push_back(make_normalizer(p, c));
    return n;
  }
  if (t == "Prepend") {
    auto n = std::make_unique<PrependNorm>();
    n->prefix = get_string(j, "prepend", c, "Prepend normalizer");
    return n;
  }
  if (t == "Replace") {
    auto n = std::make_unique<ReplaceNorm>();
    if (!j.contains("pattern")) fail("{}: Replace normalizer has no pattern", c.path);
    n->pattern = std::make_unique<Pattern>(j["pattern"], c, "Replace normalizer");
    n->content = get_string(j, "content", c, "Replace normalizer");
    return n;
  }
  if (t == "Lowercase") return std::make_unique<LowercaseNorm>();
  if (t == "Strip") {
    auto n = std::make_unique<StripNorm>();
    n->left = get_bool(j, "strip_left", true, c, "Strip normalizer");
    n->right = get_bool(j, "strip_right", true, c, "Strip normalizer");
    return n;
  }
  if (t == "StripAccents") return std::make_unique<StripAccentsNorm>();
  fail("{}: unsupported normalizer type '{}'", c.path, t);
}

// ---------------------------------------------------------------- pre-tokenizers
struct Piece {
  std::string text;
  bool at_start;  // begins at offset 0 of the original input (Metaspace prepend_scheme "first")
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const json& j, const Ctx& c) {
  std::string b = j.is_string() ? j.get<std::string>() : std::string();
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  fail("{}: unsupported split behavior '{}'", c.path, j.dump());
}

struct Mark {
  size_t b, e;
  bool match;
};

// Turns matches into a full cover of [0, n) (tokenizers' Pattern::find_matches).
void cover(size_t n, const Spans& m, std::vector<Mark>& out) {
  out.clear();
  if (n == 0) {
    out.push_back({0, 0, false});
    return;
  }
  size_t prev = 0;
  for (auto [b, e] : m) {
    if (prev != b) out.push_back({prev, b, false});
    out.push_back({b, e, true});
    prev = e;
  }
  if (prev != n) out.push_back({prev, n, false});
}

// NormalizedString::split: applies the behavior, drops removed and empty parts.
void split_piece(const Piece& p, std::vector<Mark>& marks, bool invert, Behavior beh, std::vector<Piece>& out) {
  if (invert)
    for (auto& m : marks) m.match = !m.match;
  std::vector<Mark> res;  // match flag now means "remove"
  res.reserve(marks.size());
  switch (beh) {
    case Behavior::Isolated:
      for (auto& m : marks) res.push_back({m.b, m.e, false});
      break;
    case Behavior::Removed:
      res = marks;
      break;
    case Behavior::Contiguous: {
      bool prev = false;
      for (auto& m : marks) {
        if (m.match == prev && !res.empty()) {
          res.back().e = m.e;
        } else {
          res.push_back({m.b, m.e, false});
        }
        prev = m.match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev = false;
      for (auto& m : marks) {
        if (m.match && !prev && !res.empty()) {
          res.back().e = m.e;
        } else {
          res.push_back({m.b, m.e, false});
        }
        prev = m.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev = false;
      for (size_t k = marks.size(); k-- > 0;) {
        auto& m = marks[k];
        if (m.match && !prev && !res.empty()) {
          res.back().b = m.b;
        } else {
          res.push_back({m.b, m.e, false});
        }
        prev = m.match;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
  }
  for (auto& r : res) {
    if (r.match || r.e == r.b) continue;
    out.push_back(Piece{p.text.substr(r.b, r.e - r.b), p.at_start && r.b == 0});
  }
}

// Each code point satisfying `pred` is a match of its own.
template <typename Pred>
void char_matches(std::string_view s, Pred pred, Spans& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    size_t len;
    char32_t c = utf8_decode(s, i, &len);
    if (pred(c)) out.emplace_back(i, i + len);
    i += len;
  }
}

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void apply(std::vector<Piece>& pieces) const = 0;
};

// GPT-2's pattern, as `tokenizers` writes it for Oniguruma.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPre : PreTokenizer {
  bool add_prefix_space = true, use_regex = true;
  std::unique_ptr<Regex> re;
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 2);
    Spans m;
    std::vector<Mark> marks;
    for (auto& p : pieces) {
      if (add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (use_regex) {
        re->find_all(p.text, m);
        cover(p.text.size(), m, marks);
        split_piece(p, marks, false, Behavior::Isolated, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
    }
    for (auto& p : out) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (char ch : p.text) mapped += byte_to_unicode(uint8_t(ch));
      p.text = std::move(mapped);
    }
    pieces = std::move(out);
  }
};

struct SplitPre : PreTokenizer {
  std::unique_ptr<Pattern> pattern;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 2);
    Spans m;
    std::vector<Mark> marks;
    for (auto& p : pieces) {
      pattern->find_all(p.text, m);
      cover(p.text.size(), m, marks);
      split_piece(p, marks, invert, behavior, out);
    }
    pieces = std::move(out);
  }
};

struct SeqPre : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void apply(std::vector<Piece>& pieces) const override {
    for (auto& p : parts) p->apply(pieces);
  }
};

enum class Prepend { Always, First, Never };

struct MetaspacePre : PreTokenizer {
  char32_t replacement = 0x2581;
  std::string rep;
  Prepend scheme = Prepend::Always;
  bool split = true;
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    Spans m;
    std::vector<Mark> marks;
    for (auto& p : pieces) {
      std::string t;
      for (char ch : p.text) {
        if (ch == ' ') {
          t += rep;
        } else {
          t += ch;
        }
      }
      bool starts = t.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == Prepend::Always || (scheme == Prepend::First && p.at_start))) t.insert(0, rep);
      Piece q{std::move(t), p.at_start};
      if (split) {
        char_matches(q.text, [&](char32_t c) { return c == replacement; }, m);
        cover(q.text.size(), m, marks);
        split_piece(q, marks, false, Behavior::MergedWithNext, out);
      } else if (!q.text.empty()) {
        out.push_back(std::move(q));
      }
    }
    pieces = std::move(out);
  }
};

struct CharClassPre : PreTokenizer {  // Digits, WhitespaceSplit
  bool (*pred)(char32_t) = nullptr;
  Behavior behavior = Behavior::Isolated;
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    Spans m;
    std::vector<Mark> marks;
    for (auto& p : pieces) {
      char_matches(p.text, pred, m);
      cover(p.text.size(), m, marks);
      split_piece(p, marks, false, behavior, out);
    }
    pieces = std::move(out);
  }
};

Prepend parse_prepend(const json& j, const Ctx& c) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
    auto s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return Prepend::Always;
    if (s == "first") return Prepend::First;
    if (s == "never") return Prepend::Never;
    fail("{}: unsupported Metaspace prepend_scheme '{}'", c.path, s);
  }
  return get_bool(j, "add_prefix_space", true, c, "Metaspace") ? Prepend::Always : Prepend::Never;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const Ctx& c) {
  std::string t = type_of(j, c, "pre_tokenizer");
  if (t == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPre>();
    p->add_prefix_space = get_bool(j, "add_prefix_space", true, c, "ByteLevel pre_tokenizer");
    p->use_regex = get_bool(j, "use_regex", true, c, "ByteLevel pre_tokenizer");
    if (p->use_regex) p->re = std::make_unique<Regex>(onig_to_pcre2(kGpt2Pattern), c.path + ": ByteLevel");
    return p;
  }
  if (t == "Split") {
    auto p = std::make_unique<SplitPre>();
    if (!j.contains("pattern")) fail("{}: Split pre_tokenizer has no pattern", c.path);
    p->pattern = std::make_unique<Pattern>(j["pattern"], c, "Split pre_tokenizer");
    p->behavior = parse_behavior(j.value("behavior", json()), c);
    p->invert = get_bool(j, "invert", false, c, "Split pre_tokenizer");
    return p;
  }
  if (t == "Sequence") {
    auto p = std::make_unique<SeqPre>();
    for (const auto& q : get_array(j, "pretokenizers", c, "pre_tokenizer")) p->parts.push_back(make_pre_tokenizer(q, c));
    return p;
  }
  if (t == "Metaspace") {
    auto p = std::make_unique<MetaspacePre>();
    if (j.contains("replacement")) {
      p->replacement = single_char(get_string(j, "replacement", c, "Metaspace"), c, "Metaspace replacement");
    }
    utf8_append(p->rep, p->replacement);
    p->scheme = parse_prepend(j, c);
    p->split = get_bool(j, "split", true, c, "Metaspace");
    return p;
  }
  if (t == "Digits") {
    auto p = std::make_unique<CharClassPre>();
    p->pred = is_numeric;
    p->behavior = get_bool(j, "individual_digits", false, c, "Digits") ? Behavior::Isolated : Behavior::Contiguous;
    return p;
  }
  if (t == "WhitespaceSplit") {
    auto p = std::make_unique<CharClassPre>();
    p->pred = is_whitespace;
    p->behavior = Behavior::Removed;
    return p;
  }
  fail("{}: unsupported pre_tokenizer type '{}'", c.path, t);
}

// ---------------------------------------------------------------- decoders
struct Decoder {
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string>& toks) const = 0;
};

struct ByteLevelDec : Decoder {
  void apply(std::vector<std::string>& toks) const override {
    std::string bytes;
    for (const auto& t : toks) {
      size_t start = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < t.size();) {
        size_t len;
        char32_t c = utf8_decode(t, i, &len);
        int b = unicode_to_byte(c);
        if (b < 0) {
          ok = false;
          break;
        }
        bytes += char(b);
        i += len;
      }
      if (!ok) {  // a token outside the byte alphabet (added token) is used verbatim
        bytes.resize(start);
        bytes += t;
      }
    }
    toks.assign(1, utf8_lossy(bytes));
  }
};

struct ReplaceDec : Decoder {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void apply(std::vector<std::string>& toks) const override {
    Spans m;
    for (auto& t : toks) {
      pattern->find_all(t, m);
      if (!m.empty()) t = replace_all(t, m, content);
    }
  }
};

struct ByteFallbackDec : Decoder {
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char h) {
      if (h >= '0' && h <= '9') return h - '0';
      if (h >= 'A' && h <= 'F') return h - 'A' + 10;
      if (h >= 'a' && h <= 'f') return h - 'a' + 10;
      return -1;
    };
    int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
  void apply(std::vector<std::string>& toks) const override {
    std::vector<std::string> out;
    out.reserve(toks.size());
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (utf8_is_valid(run)) {
        out.push_back(run);
      } else {
        for (size_t k = 0; k < run_len; ++k) out.push_back("\xEF\xBF\xBD");
      }
      run.clear();
      run_len = 0;
    };
    for (auto& t : toks) {
      int b = byte_of(t);
      if (b >= 0) {
        run += char(b);
        ++run_len;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    toks = std::move(out);
  }
};

struct FuseDec : Decoder {
  void apply(std::vector<std::string>& toks) const override {
    std::string all;
    for (auto& t : toks) all += t;
    toks.assign(1, std::move(all));
  }
};

struct StripDec : Decoder {
  char32_t content = ' ';
  size_t start = 0, stop = 0;
  void apply(std::vector<std::string>& toks) const override {
    for (auto& t : toks) {
      std::vector<std::pair<size_t, size_t>> chars;  // (offset, len)
      for (size_t i = 0; i < t.size();) {
        size_t len;
        utf8_decode(t, i, &len);
        chars.emplace_back(i, len);
        i += len;
      }
      auto is_c = [&](size_t k) {
        size_t len;
        return utf8_decode(t, chars[k].first, &len) == content;
      };
      size_t start_cut = 0;
      for (size_t k = 0; k < std::min(start, chars.size()); ++k) {
        if (!is_c(k)) break;
        start_cut = k + 1;
      }
      size_t stop_cut = chars.size();
      for (size_t k = 0; k < std::min(stop, chars.size()); ++k) {
        size_t idx = chars.size() - k - 1;
        if (!is_c(idx)) break;
        stop_cut = idx;
      }
      if (stop_cut <= start_cut) {
        t.clear();
        continue;
      }
      size_t b = chars[start_cut].first;
      size_t e = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
      t = t.substr(b, e - b);
    }
  }
};

struct MetaspaceDec : Decoder {
  char32_t replacement = 0x2581;
  Prepend scheme = Prepend::Always;
  void apply(std::vector<std::string>& toks) const override {
    for (size_t k = 0; k < toks.size(); ++k) {
      std::string out;
      const auto& t = toks[k];
      for (size_t i = 0; i < t.size();) {
        size_t len;
        char32_t c = utf8_decode(t, i, &len);
        if (c == replacement) {
          if (!(k == 0 && scheme != Prepend::Never)) out += ' ';
        } else {
          out.append(t, i, len);
        }
        i += len;
      }
      toks[k] = std::move(out);
    }
  }
};

struct SeqDec : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  void apply(std::vector<std::string>& toks) const override {
    for (auto& p : parts) p->apply(toks);
  }
};

std::unique_ptr<Decoder> make_decoder(const json& j, const Ctx& c) {
  std::string t = type_of(j, c, "decoder");
  if (t == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (t == "Replace") {
    auto d = std::make_unique<ReplaceDec>();
    if (!j.contains("pattern")) fail("{}: Replace decoder has no pattern", c.path);
    d->pattern = std::make_unique<Pattern>(j["pattern"], c, "Replace decoder");
    d->content = get_string(j, "content", c, "Replace decoder");
    return d;
  }
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (t == "Fuse") return std::make_unique<FuseDec>();
  if (t == "Strip") {
    auto d = std::make_unique<StripDec>();
    d->content = single_char(get_string(j, "content", c, "Strip decoder"), c, "Strip decoder content");
    auto num = [&](const char* k) -> size_t {
      auto it = j.find(k);
      if (it == j.end() || it->is_null()) return 0;
      if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
        fail("{}: Strip decoder {} must be a non-negative integer", c.path, k);
      return it->get<size_t>();
    };
    d->start = num("start");
    d->stop = num("stop");
    return d;
  }
  if (t == "Metaspace") {
    auto d = std::make_unique<MetaspaceDec>();
    if (j.contains("replacement"))
      d->replacement = single_char(get_string(j, "replacement", c, "Metaspace"), c, "Metaspace replacement");
    d->scheme = parse_prepend(j, c);
    return d;
  }
  if (t == "Sequence") {
    auto d = std::make_unique<SeqDec>();
    for (const auto& q : get_array(j, "decoders", c, "decoder")) d->parts.push_back(make_decoder(q, c));
    return d;
  }
  fail("{}: unsupported decoder type '{}'", c.path, t);
}

// ---------------------------------------------------------------- post-processors
void parse_post_processor(const json& j, const Ctx& c, std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  std::string t = type_of(j, c, "post_processor");
  if (t == "ByteLevel") return;  // only adjusts offsets
  if (t == "Sequence") {
    for (const auto& p : get_array(j, "processors", c, "post_processor")) {
      std::vector<int32_t> pre, suf;
      parse_post_processor(p, c, pre, suf);
      prefix.insert(prefix.begin(), pre.begin(), pre.end());
      suffix.insert(suffix.end(), suf.begin(), suf.end());
    }
    return;
  }
  if (t == "BertProcessing" || t == "RobertaProcessing") {
    auto id_of = [&](const char* k) -> int32_t {
      auto it = j.find(k);
      if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer())
        fail("{}: {}.{} must be [token, id]", c.path, t, k);
      return (*it)[1].get<int32_t>();
    };
    prefix.push_back(id_of("cls"));
    suffix.push_back(id_of("sep"));
    return;
  }
  if (t == "TemplateProcessing") {
    const json& single = get_array(j, "single", c, "TemplateProcessing");
    auto st = j.find("special_tokens");
    bool seen_seq = false;
    for (const auto& piece : single) {
      if (piece.is_object() && piece.contains("Sequence")) {
        seen_seq = true;
        continue;
      }
      if (!piece.is_object() || !piece.contains("SpecialToken") || !piece["SpecialToken"].contains("id") ||
          !piece["SpecialToken"]["id"].is_string())
        fail("{}: TemplateProcessing.single has an unsupported item {}", c.path, piece.dump());
      auto name = piece["SpecialToken"]["id"].get<std::string>();
      if (st == j.end() || !st->is_object() || !st->contains(name) || !(*st)[name].contains("ids") ||
          !(*st)[name]["ids"].is_array())
        fail("{}: TemplateProcessing special token '{}' is not defined in special_tokens", c.path, name);
      for (const auto& id : (*st)[name]["ids"]) {
        if (!id.is_number_integer()) fail("{}: TemplateProcessing special token '{}' has a bad id", c.path, name);
        (seen_seq ? suffix : prefix).push_back(id.get<int32_t>());
      }
    }
    return;
  }
  fail("{}: unsupported post_processor type '{}'", c.path, t);
}

// ---------------------------------------------------------------- added tokens
struct AddedToken {
  int32_t id;
  std::string content;
  bool single_word, lstrip, rstrip, normalized, special;
};

// Byte trie answering "longest added token starting here" (aho-corasick leftmost-longest when
// scanned left to right).
class Trie {
 public:
  Trie() {
    nodes_.emplace_back();
    root_.fill(-1);
  }
  bool empty() const { return nodes_.size() == 1; }
  void insert(std::string_view s, int32_t value) {
    int32_t n = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      uint8_t b = uint8_t(s[i]);
      int32_t next = child(n, b);
      if (next < 0) {
        next = int32_t(nodes_.size());
        nodes_.emplace_back();
        if (n == 0) {
          root_[b] = next;
        } else {
          nodes_[size_t(n)].kids.emplace_back(b, next);
        }
      }
      n = next;
    }
    if (nodes_[size_t(n)].value < 0) nodes_[size_t(n)].value = value;  // first one wins
  }
  // (value, length) of the longest entry that is a prefix of s[i..]; value -1 if none.
  std::pair<int32_t, size_t> longest(std::string_view s, size_t i) const {
    int32_t n = root_[uint8_t(s[i])];
    std::pair<int32_t, size_t> best{-1, 0};
    size_t k = i + 1;
    while (n >= 0) {
      if (nodes_[size_t(n)].value >= 0) best = {nodes_[size_t(n)].value, k - i};
      if (k >= s.size()) break;
      n = child(n, uint8_t(s[k++]));
    }
    return best;
  }
  bool can_start(uint8_t b) const { return root_[b] >= 0; }

 private:
  int32_t child(int32_t n, uint8_t b) const {
    if (n == 0) return root_[b];
    for (auto& [kb, kn] : nodes_[size_t(n)].kids)
      if (kb == b) return kn;
    return -1;
  }
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> kids;
    int32_t value = -1;
  };
  std::vector<Node> nodes_;
  std::array<int32_t, 256> root_;
};

struct Segment {
  std::string_view text;  // view into the piece being split
  int32_t id;             // added token id, or -1 for plain text
  size_t begin;           // offset in the piece
};

// ---------------------------------------------------------------- the backend
class HfBackend final : public Backend {
 public:
  explicit HfBackend(const std::string& path);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    if (auto it = added_by_content_.find(token); it != added_by_content_.end()) return added_[it->second].id;
    return model_->token_to_id(token);
  }
  std::optional<std::string> id_to_token(int32_t id) const override {
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return added_[it->second].content;
    if (auto t = model_->id_to_token(id)) return *t;
    return std::nullopt;
  }
  bool is_special(int32_t id) const override {
    auto it = added_by_id_.find(id);
    return it != added_by_id_.end() && added_[it->second].special;
  }
  std::vector<int32_t> post_prefix() const override { return prefix_; }
  std::vector<int32_t> post_suffix() const override { return suffix_; }

 private:
  void split_added(std::string_view s, const Trie& trie, std::vector<Segment>& out) const;
  void tokenize_text(std::string text, bool at_start, std::vector<int32_t>& ids) const;

  std::string path_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<int32_t> prefix_, suffix_;
  std::vector<AddedToken> added_;
  std::unordered_map<int32_t, size_t> added_by_id_;
  StringMap<size_t> added_by_content_;
  Trie raw_trie_, norm_trie_;  // added tokens matched before / after normalization
  int64_t vocab_size_ = 0;
};

HfBackend::HfBackend(const std::string& path) : path_(path) {
  json j;
  {
    std::string text = read_text_file(path);
    try {
      j = json::parse(text);  // fast path: tokenizer.json is plain JSON
    } catch (const json::exception&) {
      j = parse_json_text(text, path);  // non-finite numbers, or the error message naming the file
    }
  }
  Ctx c{path};
  if (!j.is_object()) fail("{}: tokenizer.json must be a JSON object", path);

  auto mit = j.find("model");
  if (mit == j.end() || mit->is_null()) fail("{}: no \"model\" section", path);
  if (!mit->is_object()) fail("{}: \"model\" must be an object", path);
  std::string mtype;
  if (mit->contains("type") && (*mit)["type"].is_string()) {
    mtype = (*mit)["type"].get<std::string>();
  } else if (mit->contains("merges")) {
    mtype = "BPE";  // old files omit the tag
  }
  if (mtype != "BPE") fail("{}: unsupported model type '{}'", path, mtype.empty() ? "(none)" : mtype);
  model_ = std::make_unique<BpeModel>(*mit, path);

  if (auto it = j.find("normalizer"); it != j.end() && !it->is_null()) normalizer_ = make_normalizer(*it, c);
  if (auto it = j.find("pre_tokenizer"); it != j.end() && !it->is_null())
    pre_tokenizer_ = make_pre_tokenizer(*it, c);
  if (auto it = j.find("decoder"); it != j.end() && !it->is_null()) decoder_ = make_decoder(*it, c);
  if (auto it = j.find("post_processor"); it != j.end() && !it->is_null())
    parse_post_processor(*it, c, prefix_, suffix_);

  vocab_size_ = int64_t(model_->max_id()) + 1;
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) fail("{}: added_tokens must be an array", path);
    for (const auto& a : *it) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string())
        fail("{}: added token {} needs an integer \"id\" and a string \"content\"", path, a.dump());
      AddedToken t;
      int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id >= (int64_t(1) << 28)) fail("{}: added token id {} out of range", path, id);
      t.id = int32_t(id);
      t.content = a["content"].get<std::string>();
      const char* sec = "added_tokens";
      t.special = get_bool(a, "special", false, c, sec);
      t.single_word = get_bool(a, "single_word", false, c, sec);
      t.lstrip = get_bool(a, "lstrip", false, c, sec);
      t.rstrip = get_bool(a, "rstrip", false, c, sec);
      t.normalized = get_bool(a, "normalized", !t.special, c, sec);
      if (!utf8_is_valid(t.content)) fail("{}: added token {} is not valid UTF-8", path, id);
      size_t idx = added_.size();
      added_by_id_[t.id] = idx;
      added_by_content_.emplace(t.content, idx);
      vocab_size_ = std::max(vocab_size_, int64_t(t.id) + 1);
      added_.push_back(std::move(t));
    }
  }
  for (size_t k = 0; k < added_.size(); ++k) {
    const auto& t = added_[k];
    if (t.content.empty()) continue;
    if (t.normalized) {
      std::string n = t.content;
      if (normalizer_) normalizer_->apply(n);
      if (!n.empty()) norm_trie_.insert(n, int32_t(k));
    } else {
      raw_trie_.insert(t.content, int32_t(k));
    }
  }
  for (auto id : prefix_)
    if (!id_to_token(id)) fail("{}: post_processor uses id {} which is not in the vocabulary", path, id);
  for (auto id : suffix_)
    if (!id_to_token(id)) fail("{}: post_processor uses id {} which is not in the vocabulary", path, id);
}

// AddedVocabulary::find_matches: leftmost-longest matches, then single_word / lstrip / rstrip.
void HfBackend::split_added(std::string_view s, const Trie& trie, std::vector<Segment>& out) const {
  out.clear();
  size_t start_offset = 0;
  if (!trie.empty()) {
    for (size_t i = 0; i < s.size();) {
      if (!trie.can_start(uint8_t(s[i]))) {
        ++i;
        continue;
      }
      auto [k, len] = trie.longest(s, i);
      if (k < 0) {
        ++i;
        continue;
      }
      const AddedToken& t = added_[size_t(k)];
      size_t start = i, stop = i + len;
      if (t.single_word) {
        auto word_before = [&] {
          if (start == 0) return false;
          size_t p = start - 1;
          while (p > 0 && (uint8_t(s[p]) & 0xC0) == 0x80) --p;
          size_t l;
          return is_word_char(utf8_decode(s, p, &l));
        };
        auto word_after = [&] {
          if (stop >= s.size()) return false;
          size_t l;
          return is_word_char(utf8_decode(s, stop, &l));
        };
        if (word_before() || word_after()) {
          i = stop;  // the matcher has consumed this occurrence
          continue;
        }
      }
      if (t.lstrip) start = std::max(start - trailing_whitespace_bytes(s.substr(0, start)), start_offset);
      if (t.rstrip) stop += leading_whitespace_bytes(s.substr(stop));
      if (start > start_offset) out.push_back(Segment{s.substr(start_offset, start - start_offset), -1, start_offset});
      out.push_back(Segment{s.substr(start, stop - start), t.id, start});
      start_offset = stop;
      i = stop;
    }
  }
  if (start_offset < s.size()) out.push_back(Segment{s.substr(start_offset), -1, start_offset});
}

void HfBackend::tokenize_text(std::string text, bool at_start, std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  std::vector<Piece> pieces;
  pieces.push_back(Piece{std::move(text), at_start});
  if (pre_tokenizer_) pre_tokenizer_->apply(pieces);
  for (const auto& p : pieces) model_->tokenize(p.text, ids);
}

std::vector<int32_t> HfBackend::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Segment> raw, norm;
  split_added(text, raw_trie_, raw);
  for (const auto& seg : raw) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string t(seg.text);
    if (normalizer_) normalizer_->apply(t);
    split_added(t, norm_trie_, norm);
    for (const auto& n : norm) {
      if (n.id >= 0) {
        ids.push_back(n.id);
      } else {
        tokenize_text(std::string(n.text), seg.begin == 0 && n.begin == 0, ids);
      }
    }
  }
  return ids;
}

std::string HfBackend::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
      const auto& t = added_[it->second];
      if (skip_special && t.special) continue;
      toks.push_back(t.content);
    } else if (auto t = model_->id_to_token(id)) {
      toks.push_back(*t);
    }
  }
  if (!decoder_) {
    std::string out;
    for (size_t k = 0; k < toks.size(); ++k) {
      if (k) out += ' ';
      out += toks[k];
    }
    return out;
  }
  decoder_->apply(toks);
  std::string out;
  for (auto& t : toks) out += t;
  return out;
}

}  // namespace

std::shared_ptr<Backend> make_hf_backend(const std::string& tokenizer_json) {
  return std::make_shared<HfBackend>(tokenizer_json);
}

}  // namespace hxq::tok
