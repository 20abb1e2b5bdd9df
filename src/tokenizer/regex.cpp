#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace hxq::tok {

namespace {
constexpr std::string_view kSpaceSet = "\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}";
}

std::string onig_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[i + 1];
      ++i;
      if (e == 's') {
        if (class_depth > 0) {
          out += kSpaceSet;
        } else {
          out += '[';
          out += kSpaceSet;
          out += ']';
        }
      } else if (e == 'S' && class_depth == 0) {
        out += "[^";
        out += kSpaceSet;
        out += ']';
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out += '^';
        ++i;
      }
      if (i + 1 < p.size() && p[i + 1] == ']') {
        out += "\\]";
        ++i;
      }
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

std::string regex_escape(std::string_view lit) {
  std::string out;
  for (char ch : lit) {
    auto c = uint8_t(ch);
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alnum || c >= 0x80) {
      out += ch;
    } else if (c >= 0x20 && c < 0x7F) {
      out += '\\';  // any ASCII punctuation may be escaped in PCRE2
      out += ch;
    } else {
      out += fmt::format("\\x{{{:02X}}}", c);
    }
  }
  return out;
}

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  std::string what;
};

namespace {
// Per-thread JIT stack (the default 32 KiB machine stack is too small for long runs of
// backtracking repeats) and match context.
struct JitState {
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* ctx = nullptr;
  JitState() {
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    if (stack && ctx) pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~JitState() {
    if (ctx) pcre2_match_context_free(ctx);
    if (stack) pcre2_jit_stack_free(stack);
  }
};
JitState& jit_state() {
  thread_local JitState s;
  return s;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof buf);
  return n < 0 ? "error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf), size_t(n));
}
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& what) : impl_(std::make_unique<Impl>()) {
  impl_->what = what;
  int err = 0;
  PCRE2_SIZE off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!impl_->code)
    fail("{}: cannot compile regex '{}' at offset {}: {}", what, pattern, size_t(off), pcre2_message(err));
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  if (!md) fail("{}: out of memory for regex match", impl_->what);
  auto& js = jit_state();
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t n = s.size(), start = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (start <= n) {
    int rc;
    if (impl_->jit) {
      rc = pcre2_jit_match(impl_->code, subject, n, start, 0, md, js.ctx);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(impl_->code, subject, n, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    } else {
      rc = pcre2_match(impl_->code, subject, n, start, PCRE2_NO_UTF_CHECK, md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      fail("{}: regex match failed: {}", impl_->what, pcre2_message(rc));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (e == b && have_last && last_end == e) {
      // Oniguruma's find_iter: skip an empty match adjacent to the previous one, step one char.
      if (start >= n) break;
      size_t len = utf8_valid_len(s, start);
      start += len ? len : 1;
      continue;
    }
    out.emplace_back(b, e);
    have_last = true;
    last_end = e;
    if (e == b) {
      if (e >= n) break;
      size_t len = utf8_valid_len(s, e);
      start = e + (len ? len : 1);
    } else {
      start = e;
    }
  }
  pcre2_match_data_free(md);
}

}  // namespace hxq::tok
