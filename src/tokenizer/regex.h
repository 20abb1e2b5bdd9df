// Regular expressions of tokenizer.json (written for Oniguruma, as Hugging Face tokenizers runs
// them) compiled with PCRE2 (UTF + UCP + JIT) after translating the classes that differ.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hxq::tok {

// Rewrites an Oniguruma pattern for PCRE2: \s and \S become Oniguruma's Unicode whitespace set
// (U+0009-000D, U+0085, general categories Zs/Zl/Zp), which PCRE2's \s does not match exactly.
std::string onig_to_pcre2(std::string_view pattern);

// Escapes a literal string for use in a PCRE2 pattern.
std::string regex_escape(std::string_view literal);

class Regex {
 public:
  // `pattern` is PCRE2 syntax; `what` names the origin for error messages.
  Regex(const std::string& pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All matches of `s` (valid UTF-8) as byte ranges [begin, end), left to right, with the
  // iteration rules of Oniguruma's find_iter (an empty match right after a match is skipped).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hxq::tok
