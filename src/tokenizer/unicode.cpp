#include "tokenizer/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include <array>
#include <vector>

#include "core/error.h"

namespace hxq::tok {

size_t utf8_valid_len(std::string_view s, size_t i) {
  size_t n = s.size();
  auto b = [&](size_t k) { return uint8_t(s[k]); };
  uint8_t c = b(i);
  if (c < 0x80) return 1;
  auto cont = [&](size_t k, uint8_t lo, uint8_t hi) { return k < n && b(k) >= lo && b(k) <= hi; };
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1, 0x80, 0xBF) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    uint8_t lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    return cont(i + 1, lo, hi) && cont(i + 2, 0x80, 0xBF) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    uint8_t lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return cont(i + 1, lo, hi) && cont(i + 2, 0x80, 0xBF) && cont(i + 3, 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

char32_t utf8_decode(std::string_view s, size_t i, size_t* len) {
  size_t l = utf8_valid_len(s, i);
  if (l == 0) {  // callers validate first; be safe anyway
    *len = 1;
    return 0xFFFD;
  }
  *len = l;
  auto b = [&](size_t k) { return char32_t(uint8_t(s[i + k])); };
  switch (l) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

bool utf8_is_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (uint8_t(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t l = utf8_valid_len(s, i);
    if (l == 0) return false;
    i += l;
  }
  return true;
}

// Length of the longest prefix of s[i..] that could start a well-formed sequence (at least 1):
// the "maximal subpart" replaced by one U+FFFD.
static size_t maximal_subpart(std::string_view s, size_t i) {
  size_t n = s.size();
  uint8_t c = uint8_t(s[i]);
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  size_t k = 1;
  if (i + k < n && uint8_t(s[i + k]) >= lo && uint8_t(s[i + k]) <= hi) {
    ++k;
    while (k < need && i + k < n && (uint8_t(s[i + k]) & 0xC0) == 0x80) ++k;
  }
  return k;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0, n = s.size();
  while (i < n) {
    size_t j = i;
    while (j < n) {  // run of valid text
      if (uint8_t(s[j]) < 0x80) {
        ++j;
        continue;
      }
      size_t l = utf8_valid_len(s, j);
      if (l == 0) break;
      j += l;
    }
    out.append(s.substr(i, j - i));
    if (j >= n) break;
    out += "\xEF\xBF\xBD";
    i = j + maximal_subpart(s, j);
  }
  return out;
}

bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  auto t = u_charType(UChar32(c));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_word_char(char32_t c) {
  if (c == '_') return true;
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return u_hasBinaryProperty(UChar32(c), UCHAR_ALPHABETIC) || is_numeric(c);
}

bool is_nonspacing_mark(char32_t c) { return c >= 0x300 && u_charType(UChar32(c)) == U_NON_SPACING_MARK; }

size_t trailing_whitespace_bytes(std::string_view s) {
  // Walk forward (UTF-8 is not safely walkable backwards without care), remember the last
  // non-whitespace end.
  size_t i = 0, last_non_ws_end = 0;
  while (i < s.size()) {
    size_t len;
    char32_t c = utf8_decode(s, i, &len);
    i += len;
    if (!is_whitespace(c)) last_non_ws_end = i;
  }
  return s.size() - last_non_ws_end;
}

size_t leading_whitespace_bytes(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    char32_t c = utf8_decode(s, i, &len);
    if (!is_whitespace(c)) break;
    i += len;
  }
  return i;
}

void normalize_form(std::string& s, NormForm form) {
  bool ascii = true;
  for (char c : s)
    if (uint8_t(c) >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return;  // ASCII is invariant under all four forms
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case NormForm::NFC: n = icu::Normalizer2::getNFCInstance(st); break;
    case NormForm::NFD: n = icu::Normalizer2::getNFDInstance(st); break;
    case NormForm::NFKC: n = icu::Normalizer2::getNFKCInstance(st); break;
    case NormForm::NFKD: n = icu::Normalizer2::getNFKDInstance(st); break;
  }
  if (U_FAILURE(st) || !n) fail("ICU: cannot load normalizer data ({})", u_errorName(st));
  icu::StringPiece sp(s.data(), int32_t(s.size()));
  if (n->isNormalizedUTF8(sp, st) && U_SUCCESS(st)) return;
  st = U_ZERO_ERROR;
  std::string out;
  out.reserve(s.size() + s.size() / 8);
  icu::StringByteSink<std::string> sink(&out);
  n->normalizeUTF8(0, sp, sink, nullptr, st);
  if (U_FAILURE(st)) fail("ICU: normalization failed ({})", u_errorName(st));
  s = std::move(out);
}

void lowercase(std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len;
    char32_t c = utf8_decode(s, i, &len);
    i += len;
    if (c < 0x80) {
      out += (c >= 'A' && c <= 'Z') ? char(c + 32) : char(c);
      continue;
    }
    // One code point at a time: ICU's contextual rules (final sigma) never fire on a lone
    // character, which gives Rust's context-free char::to_lowercase.
    UChar src[2];
    int32_t sl = 0;
    U16_APPEND_UNSAFE(src, sl, UChar32(c));
    UChar dst[8];
    UErrorCode st = U_ZERO_ERROR;
    int32_t dl = u_strToLower(dst, 8, src, sl, "", &st);
    if (U_FAILURE(st)) {
      utf8_append(out, c);
      continue;
    }
    for (int32_t k = 0; k < dl;) {
      UChar32 d;
      U16_NEXT(dst, k, dl, d);
      utf8_append(out, char32_t(d));
    }
  }
  s = std::move(out);
}

namespace {
struct ByteTables {
  std::array<std::string, 256> to_uni;
  std::array<int, 324> to_byte;
  ByteTables() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? char32_t(b) : char32_t(256 + n++);
      utf8_append(to_uni[b], cp);
      to_byte[cp] = b;
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_tables().to_uni[b]; }

int unicode_to_byte(char32_t cp) { return cp < 324 ? byte_tables().to_byte[cp] : -1; }

}  // namespace hxq::tok
