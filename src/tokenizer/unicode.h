// Unicode helpers of the tokenizer: UTF-8 decoding and lossy repair (Rust/Python "replace"
// semantics), ICU normalization forms, character classes, and GPT-2's byte-level alphabet.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace hxq::tok {

// Length of the UTF-8 sequence starting at s[i] if it is well-formed, else 0.
size_t utf8_valid_len(std::string_view s, size_t i);

// Decodes the code point at s[i] (which must start a well-formed sequence, see utf8_valid_len);
// stores its byte length in *len.
char32_t utf8_decode(std::string_view s, size_t i, size_t* len);

void utf8_append(std::string& out, char32_t cp);

bool utf8_is_valid(std::string_view s);

// Replaces every maximal ill-formed subsequence by U+FFFD, exactly like Rust's
// String::from_utf8_lossy and Python's bytes.decode("utf-8", "replace").
std::string utf8_lossy(std::string_view s);

// Number of code points at the end of s that are whitespace (Rust char::is_whitespace), as a
// byte count; and the same at the start.
size_t trailing_whitespace_bytes(std::string_view s);
size_t leading_whitespace_bytes(std::string_view s);

bool is_whitespace(char32_t cp);        // Unicode White_Space (Rust char::is_whitespace)
bool is_numeric(char32_t cp);           // general category N* (Rust char::is_numeric)
bool is_word_char(char32_t cp);         // alphanumeric or '_' (word boundary test of added tokens)
bool is_nonspacing_mark(char32_t cp);   // general category Mn

enum class NormForm { NFC, NFD, NFKC, NFKD };
// Normalizes valid UTF-8 in place with ICU.
void normalize_form(std::string& s, NormForm form);
// Per code point full lowercase mapping (Rust char::to_lowercase, no context rules).
void lowercase(std::string& s);

// GPT-2 byte-level alphabet: byte -> its printable stand-in (UTF-8), and back (-1: not a stand-in).
const std::string& byte_to_unicode(uint8_t b);
int unicode_to_byte(char32_t cp);

}  // namespace hxq::tok
