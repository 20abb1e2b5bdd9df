// Jinja2 engine for chat templates: lexer -> parser (AST) -> tree-walking interpreter over a
// Python-like Value. See jinja.h for what is matched. The layout of this file:
//   1. values (Value, List, Dict, Object, Func) and Python's str()/repr()/json.dumps
//   2. the lexer (whitespace control, trim_blocks/lstrip_blocks exactly as jinja2's lexer)
//   3. the AST and the parser (jinja2's grammar and operator precedence)
//   4. the interpreter (scoping, operators, attribute lookup, loops, macros, limits)
//   5. methods of str/dict/list, filters, tests and globals
#include "server/jinja.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hxq::jinja {

namespace {

// Nesting bounds: every recursive walk (parser, interpreter, printing, JSON) stays within these,
// so no input reaches the end of the stack, even in a sanitizer build.
constexpr int kMaxParseDepth = 96;   // nested blocks / parenthesized expressions (parser recursion)
constexpr int kMaxExprDepth = 200;   // depth of an expression tree (also chains: a + b + c, x|f|g)
constexpr int kMaxValueDepth = 512;  // nested lists / dicts in a value
constexpr int64_t kMaxRange = 100000;  // jinja2.sandbox.MAX_RANGE

// ------------------------------------------------------------------------------------------------
// 1. Values
// ------------------------------------------------------------------------------------------------

class Interp;
struct Value;

struct Heap {
  virtual ~Heap() = default;
};

struct List final : Heap {
  std::vector<Value> items;
  int depth = 1;  // 1 + the deepest nested container
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

struct Dict final : Heap {
  std::vector<std::pair<Value, Value>> items;  // insertion order, like a Python dict
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> str_index;  // position of each str key
  int depth = 1;
  const Value* find(const Value& key) const;
  const Value* find_str(std::string_view key) const;
  void set(Value key, Value value);
};

// An object with attributes only: namespace(), the loop variable, cycler, joiner.
struct Object final : Heap {
  std::string type_name;  // "Namespace", "LoopContext", ...
  std::shared_ptr<Dict> attrs = std::make_shared<Dict>();
  bool assignable = false;  // a namespace: {% set ns.x = ... %} is allowed
};

struct CallArgs;
struct Func final : Heap {
  std::string name;
  std::function<Value(Interp&, CallArgs&)> fn;
};

struct Value {
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, Str, List, Dict, Object, Func };
  Kind kind = Kind::Undefined;
  bool tuple = false;  // a List that is a Python tuple
  int64_t i = 0;       // Bool (0/1) and Int
  double f = 0;        // Float
  std::shared_ptr<const std::string> sp;  // Str; for Undefined, why it is undefined (the error
                                          // message when used). Shared: copies are cheap.
  std::shared_ptr<Heap> h;

  const std::string& s() const {
    static const std::string empty;
    return sp ? *sp : empty;
  }

  static Value undefined(std::string why) {
    Value v;
    v.sp = std::make_shared<const std::string>(std::move(why));
    return v;
  }
  static Value none() { return make(Kind::None); }
  static Value boolean(bool b) {
    Value v = make(Kind::Bool);
    v.i = b;
    return v;
  }
  static Value integer(int64_t n) {
    Value v = make(Kind::Int);
    v.i = n;
    return v;
  }
  static Value number(double x) {
    Value v = make(Kind::Float);
    v.f = x;
    return v;
  }
  static Value str(std::string text) {
    Value v = make(Kind::Str);
    v.sp = std::make_shared<const std::string>(std::move(text));
    return v;
  }
  static Value list(std::vector<Value> items, bool is_tuple = false);
  static Value dict(std::shared_ptr<Dict> d) {
    Value v = make(Kind::Dict);
    v.h = std::move(d);
    return v;
  }
  static Value object(std::shared_ptr<Object> o) {
    Value v = make(Kind::Object);
    v.h = std::move(o);
    return v;
  }
  static Value func(std::string name, std::function<Value(Interp&, CallArgs&)> fn) {
    auto f = std::make_shared<Func>();
    f->name = std::move(name);
    f->fn = std::move(fn);
    Value v = make(Kind::Func);
    v.h = std::move(f);
    return v;
  }

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_str() const { return kind == Kind::Str; }
  bool is_int() const { return kind == Kind::Int || kind == Kind::Bool; }  // bool is an int
  bool is_number() const { return is_int() || kind == Kind::Float; }
  bool is_list() const { return kind == Kind::List; }
  bool is_dict() const { return kind == Kind::Dict; }
  const List& as_list() const { return static_cast<const List&>(*h); }
  const Dict& as_dict() const { return static_cast<const Dict&>(*h); }
  Object& as_object() const { return static_cast<Object&>(*h); }
  const Func& as_func() const { return static_cast<const Func&>(*h); }
  double as_double() const { return kind == Kind::Float ? f : static_cast<double>(i); }
  int depth() const {
    if (kind == Kind::List) return as_list().depth;
    if (kind == Kind::Dict) return as_dict().depth;
    return 0;
  }

 private:
  static Value make(Kind k) {
    Value v;
    v.kind = k;
    return v;
  }
};

// Positional and keyword arguments of a call.
struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

// Thrown by the helpers below where no interpreter is at hand; the interpreter adds source and
// line and rethrows it as a RenderError.
struct ValueError {
  std::string what;
};

template <typename... Args>
[[noreturn]] void vfail(fmt::format_string<Args...> f, Args&&... args) {
  throw ValueError{fmt::format(f, std::forward<Args>(args)...)};
}

int child_depth(const Value& v) { return v.depth(); }

Value Value::list(std::vector<Value> items, bool is_tuple) {
  auto l = std::make_shared<List>();
  int d = 0;
  for (const Value& x : items) d = std::max(d, child_depth(x));
  if (d + 1 > kMaxValueDepth) vfail("value nested deeper than {} levels", kMaxValueDepth);
  l->depth = d + 1;
  l->items = std::move(items);
  Value v = make(Kind::List);
  v.tuple = is_tuple;
  v.h = std::move(l);
  return v;
}

// Python's type names, as error messages use them.
std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::None: return "NoneType";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::Str: return "str";
    case Value::Kind::List: return v.tuple ? "tuple" : "list";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Object: return v.as_object().type_name;
    case Value::Kind::Func: return "function";
  }
  return "object";
}

// jinja2.utils.object_type_repr: "dict object", "None", ...
std::string object_type_repr(const Value& v) {
  if (v.is_none()) return "None";
  return type_name(v) + " object";
}

bool hashable(const Value& v) {
  switch (v.kind) {
    case Value::Kind::List:
      if (!v.tuple) return false;
      for (const Value& x : v.as_list().items)
        if (!hashable(x)) return false;
      return true;
    case Value::Kind::Dict: return false;
    case Value::Kind::Object: return v.as_object().assignable == false;
    default: return true;
  }
}

bool py_equal(const Value& a, const Value& b);

const Value* Dict::find(const Value& key) const {
  if (key.is_str()) return find_str(key.s());
  for (const auto& [k, v] : items)
    if (!k.is_str() && py_equal(k, key)) return &v;
  return nullptr;
}

const Value* Dict::find_str(std::string_view key) const {
  auto it = str_index.find(key);
  return it == str_index.end() ? nullptr : &items[it->second].second;
}

void Dict::set(Value key, Value value) {
  if (!hashable(key)) vfail("unhashable type: '{}'", type_name(key));
  depth = std::max(depth, child_depth(value) + 1);
  if (depth > kMaxValueDepth) vfail("value nested deeper than {} levels", kMaxValueDepth);
  if (key.is_str()) {
    auto it = str_index.find(key.s());
    if (it != str_index.end()) {
      items[it->second].second = std::move(value);
      return;
    }
    str_index.emplace(key.s(), items.size());
  } else {
    for (auto& [k, v] : items)
      if (!k.is_str() && py_equal(k, key)) {
        v = std::move(value);
        return;
      }
  }
  items.emplace_back(std::move(key), std::move(value));
}

// ---- UTF-8 ---------------------------------------------------------------------------------------
// Strings are UTF-8. Decoding never fails: a byte that is not part of a valid sequence becomes
// the code point 0xDC00 + byte (Python's surrogateescape) and encodes back to that same byte.

char32_t decode_at(std::string_view s, size_t& i) {
  auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    ++i;
    return b;
  }
  int n = b >= 0xF0 && b <= 0xF4 ? 3 : b >= 0xE0 ? 2 : b >= 0xC2 && b < 0xE0 ? 1 : -1;
  if (n > 0 && i + n < s.size() + 1) {
    char32_t cp = b & (0x3F >> n);
    bool ok = true;
    for (int k = 1; k <= n; ++k) {
      auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (c & 0x3F);
    }
    if (ok && !(n == 2 && cp < 0x800) && !(n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) &&
        !(cp >= 0xD800 && cp <= 0xDFFF)) {
      i += n + 1;
      return cp;
    }
  }
  ++i;
  return 0xDC00 + b;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp >= 0xDC80 && cp <= 0xDCFF) {  // an escaped raw byte
    out += static_cast<char>(cp - 0xDC00);
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out += decode_at(s, i);
  return out;
}

std::string encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

size_t cp_length(std::string_view s) {
  if (is_ascii(s)) return s.size();
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++n) decode_at(s, i);
  return n;
}

// str.isspace() / the \s of Python's re.
bool py_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Line boundaries of str.splitlines().
bool py_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

// Length in bytes of the Python whitespace character at s[i], 0 if there is none.
size_t space_len(std::string_view s, size_t i) {
  size_t j = i;
  char32_t c = decode_at(s, j);
  return py_space(c) ? j - i : 0;
}

std::string_view rstrip_space(std::string_view s) {
  // Walk forward remembering the end of the last non-space character (UTF-8 is not reversible
  // cheaply in the presence of invalid bytes).
  if (is_ascii(s)) {
    size_t e = s.size();
    while (e > 0 && py_space(static_cast<unsigned char>(s[e - 1]))) --e;
    return s.substr(0, e);
  }
  size_t end = 0;
  for (size_t i = 0; i < s.size();) {
    char32_t c = decode_at(s, i);
    if (!py_space(c)) end = i;
  }
  return s.substr(0, end);
}

std::string case_map(std::string_view s, bool upper) {
  if (is_ascii(s)) {
    std::string out(s);
    for (char& c : out) c = upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
                                  : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  if (upper)
    u.toUpper(icu::Locale::getRoot());
  else
    u.toLower(icu::Locale::getRoot());
  std::string out;
  u.toUTF8String(out);
  return out;
}

// One code point in title / upper / lower case (full mappings, e.g. 'ß' -> 'Ss').
void append_cased(std::string& out, char32_t c, int mode /*0 lower, 1 upper, 2 title*/) {
  if (c < 0x80) {
    out += static_cast<char>(mode == 0 ? std::tolower(static_cast<int>(c)) : std::toupper(static_cast<int>(c)));
    return;
  }
  if (c >= 0xDC80 && c <= 0xDCFF) {
    append_utf8(out, c);
    return;
  }
  icu::UnicodeString u(static_cast<UChar32>(c));
  if (mode == 0)
    u.toLower(icu::Locale::getRoot());
  else if (mode == 1)
    u.toUpper(icu::Locale::getRoot());
  else
    u.toTitle(nullptr, icu::Locale::getRoot(), U_TITLECASE_NO_LOWERCASE | U_TITLECASE_NO_BREAK_ADJUSTMENT);
  std::string part;
  u.toUTF8String(part);
  out += part;
}

bool is_cased(char32_t c) { return c < 0xDC80 || c > 0xDCFF ? u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASED) : false; }

// str.title(): a cased character after an uncased one starts a word.
std::string py_title(std::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (size_t i = 0; i < s.size();) {
    char32_t c = decode_at(s, i);
    append_cased(out, c, prev_cased ? 0 : 2);
    prev_cased = is_cased(c);
  }
  return out;
}

// str.capitalize(): first character title case, the rest lower case.
std::string py_capitalize(std::string_view s) {
  std::string out;
  bool first = true;
  for (size_t i = 0; i < s.size();) {
    char32_t c = decode_at(s, i);
    append_cased(out, c, first ? 2 : 0);
    first = false;
  }
  return out;
}

bool py_printable(char32_t c) {
  if (c < 0x80) return c >= 0x20 && c < 0x7F;
  if (c >= 0xD800 && c <= 0xDFFF) return false;
  int8_t t = u_charType(static_cast<UChar32>(c));
  switch (t) {
    case U_CONTROL_CHAR: case U_FORMAT_CHAR: case U_SURROGATE: case U_PRIVATE_USE_CHAR: case U_UNASSIGNED:
    case U_LINE_SEPARATOR: case U_PARAGRAPH_SEPARATOR: case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

// ---- Python str() / repr() -------------------------------------------------------------------

std::string py_float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);  // shortest
  std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));
  std::string out;
  if (sci[0] == '-') {
    out += '-';
    sci.remove_prefix(1);
  }
  size_t epos = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, epos))
    if (c != '.') digits += c;
  int exp = std::atoi(std::string(sci.substr(epos + 1)).c_str());
  int decpt = exp + 1;  // digits before the decimal point
  int nd = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {  // Python's repr switches to exponent notation outside this
    if (decpt <= 0) {
      out += "0.";
      out.append(static_cast<size_t>(-decpt), '0');
      out += digits;
    } else if (decpt >= nd) {
      out += digits;
      out.append(static_cast<size_t>(decpt - nd), '0');
      out += ".0";
    } else {
      out += digits.substr(0, static_cast<size_t>(decpt));
      out += '.';
      out += digits.substr(static_cast<size_t>(decpt));
    }
  } else {
    out += digits[0];
    if (nd > 1) {
      out += '.';
      out += digits.substr(1);
    }
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return out;
}

std::string py_str_repr(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (size_t i = 0; i < s.size();) {
    char32_t c = decode_at(s, i);
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (py_printable(c)) {
      append_utf8(out, c);
    } else if (c < 0x100) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
    } else if (c < 0x10000) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += fmt::format("\\U{:08x}", static_cast<unsigned>(c));
    }
  }
  out += q;
  return out;
}

void append_repr(std::string& out, const Value& v);

// Python's str(v).
void append_str(std::string& out, const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return;
    case Value::Kind::Str: out += v.s(); return;
    default: append_repr(out, v);
  }
}

std::string to_str(const Value& v) {
  if (v.is_str()) return v.s();
  std::string out;
  append_str(out, v);
  return out;
}

void append_repr(std::string& out, const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: out += "Undefined"; return;
    case Value::Kind::None: out += "None"; return;
    case Value::Kind::Bool: out += v.i ? "True" : "False"; return;
    case Value::Kind::Int: out += std::to_string(v.i); return;
    case Value::Kind::Float: out += py_float_repr(v.f); return;
    case Value::Kind::Str: out += py_str_repr(v.s()); return;
    case Value::Kind::List: {
      const auto& items = v.as_list().items;
      out += v.tuple ? '(' : '[';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += ", ";
        append_repr(out, items[k]);
      }
      if (v.tuple && items.size() == 1) out += ',';
      out += v.tuple ? ')' : ']';
      return;
    }
    case Value::Kind::Dict: {
      out += '{';
      bool first = true;
      for (const auto& [k, x] : v.as_dict().items) {
        if (!first) out += ", ";
        first = false;
        append_repr(out, k);
        out += ": ";
        append_repr(out, x);
      }
      out += '}';
      return;
    }
    case Value::Kind::Object: {
      const Object& o = v.as_object();
      out += '<' + o.type_name + ' ';
      append_repr(out, Value::dict(o.attrs));
      out += '>';
      return;
    }
    case Value::Kind::Func: out += "<function " + v.as_func().name + '>'; return;
  }
}

// ---- json.dumps ------------------------------------------------------------------------------

struct JsonStyle {
  std::optional<std::string> indent;  // None: one line
  std::string item_sep = ", ", key_sep = ": ";
  bool ensure_ascii = false, sort_keys = false;
};

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    char32_t c = decode_at(s, i);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7F && !(c >= 0xDC80 && c <= 0xDCFF))) {
          if (c >= 0x10000) {
            char32_t v = c - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
          } else if (c >= 0x7F || c < 0x20) {
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
          }
        } else {
          append_utf8(out, c);
        }
    }
  }
  out += '"';
}

std::string json_key(const Value& k) {
  switch (k.kind) {
    case Value::Kind::Str: return k.s();
    case Value::Kind::Bool: return k.i ? "true" : "false";
    case Value::Kind::Int: return std::to_string(k.i);
    case Value::Kind::Float: return py_float_repr(k.f);
    case Value::Kind::None: return "null";
    default: vfail("keys must be str, int, float, bool or None, not {}", type_name(k));
  }
}

bool py_less(const Value& a, const Value& b);

void json_dump(std::string& out, const Value& v, const JsonStyle& st, int level) {
  auto newline = [&](int lvl) {
    out += '\n';
    for (int k = 0; k < lvl; ++k) out += *st.indent;
  };
  switch (v.kind) {
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.i ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.i); return;
    case Value::Kind::Float:
      if (std::isnan(v.f)) out += "NaN";
      else if (std::isinf(v.f)) out += v.f > 0 ? "Infinity" : "-Infinity";
      else out += py_float_repr(v.f);
      return;
    case Value::Kind::Str: json_string(out, v.s(), st.ensure_ascii); return;
    case Value::Kind::List: {
      const auto& items = v.as_list().items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += st.item_sep;
        if (st.indent) newline(level + 1);
        json_dump(out, items[k], st, level + 1);
      }
      if (st.indent) newline(level);
      out += ']';
      return;
    }
    case Value::Kind::Dict: {
      const auto& items = v.as_dict().items;
      if (items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> order;
      for (const auto& kv : items) order.push_back(&kv);
      if (st.sort_keys)
        std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return py_less(a->first, b->first); });
      out += '{';
      bool first = true;
      for (const auto* kv : order) {
        if (!first) out += st.item_sep;
        first = false;
        if (st.indent) newline(level + 1);
        json_string(out, json_key(kv->first), st.ensure_ascii);
        out += st.key_sep;
        json_dump(out, kv->second, st, level + 1);
      }
      if (st.indent) newline(level);
      out += '}';
      return;
    }
    default: vfail("Object of type {} is not JSON serializable", type_name(v));
  }
}

// ---- conversions from / to nlohmann::json ------------------------------------------------------

template <typename Json>
Value from_json(const Json& j, int depth = 0) {
  if (depth > kMaxValueDepth) vfail("JSON value nested deeper than {} levels", kMaxValueDepth);
  using T = nlohmann::json::value_t;
  switch (j.type()) {
    case T::null: return Value::none();
    case T::boolean: return Value::boolean(j.template get<bool>());
    case T::number_integer: return Value::integer(j.template get<int64_t>());
    case T::number_unsigned: {
      auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case T::number_float: return Value::number(j.template get<double>());
    case T::string: return Value::str(j.template get<std::string>());
    case T::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& x : j) items.push_back(from_json(x, depth + 1));
      return Value::list(std::move(items));
    }
    case T::object: {
      auto d = std::make_shared<Dict>();
      for (auto it = j.begin(); it != j.end(); ++it) d->set(Value::str(it.key()), from_json(it.value(), depth + 1));
      return Value::dict(std::move(d));
    }
    default: vfail("unsupported JSON value ({})", j.type_name());
  }
}

// ---- comparisons -----------------------------------------------------------------------------

bool py_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::Float || b.kind == Value::Kind::Float) return a.as_double() == b.as_double();
    return a.i == b.i;
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return true;
    case Value::Kind::Str: return a.s() == b.s();
    case Value::Kind::List: {
      if (a.tuple != b.tuple) return false;
      const auto &x = a.as_list().items, &y = b.as_list().items;
      if (x.size() != y.size()) return false;
      for (size_t k = 0; k < x.size(); ++k)
        if (!py_equal(x[k], y[k])) return false;
      return true;
    }
    case Value::Kind::Dict: {
      const Dict &x = a.as_dict(), &y = b.as_dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* o = y.find(k);
        if (!o || !py_equal(v, *o)) return false;
      }
      return true;
    }
    default: return a.h == b.h;
  }
}

// Python's a < b; raises for types that do not compare.
bool py_less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::Float || b.kind == Value::Kind::Float) return a.as_double() < b.as_double();
    return a.i < b.i;
  }
  if (a.is_str() && b.is_str()) return a.s() < b.s();  // UTF-8 byte order is code point order
  if (a.is_list() && b.is_list() && a.tuple == b.tuple) {
    const auto &x = a.as_list().items, &y = b.as_list().items;
    for (size_t k = 0; k < x.size() && k < y.size(); ++k) {
      if (!py_equal(x[k], y[k])) return py_less(x[k], y[k]);
    }
    return x.size() < y.size();
  }
  vfail("'<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b));
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return false;
    case Value::Kind::Bool:
    case Value::Kind::Int: return v.i != 0;
    case Value::Kind::Float: return v.f != 0;
    case Value::Kind::Str: return !v.s().empty();
    case Value::Kind::List: return !v.as_list().items.empty();
    case Value::Kind::Dict: return !v.as_dict().items.empty();
    default: return true;
  }
}

// ------------------------------------------------------------------------------------------------
// 2. Lexer
// ------------------------------------------------------------------------------------------------
// Follows jinja2.lexer with trim_blocks=True, lstrip_blocks=True: the source's newlines become
// "\n" and one trailing newline is dropped (keep_trailing_newline=False); "{%-"/"-%}" strip all
// whitespace on that side; a block or comment tag alone on its line (only spaces/tabs before it)
// takes that indentation with it unless opened with "{%+"; "%}" and "#}" eat one newline after
// them; "{{ }}" tags do neither.

enum class Tok : uint8_t { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Data: the text; Name/String: the value; Op: the operator
  int line;
  int64_t ival = 0;
  double fval = 0;
};

class Lexer {
 public:
  Lexer(std::string_view source, const std::string& name) : name_(name) {
    // Normalize \r\n and \r to \n, then drop one trailing newline.
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    bool line_starting = true;  // the previous match ended a line (jinja2's lstrip condition)
    while (pos_ < src_.size()) {
      size_t start = find_tag(pos_);
      if (start == std::string::npos) {
        emit_data(src_.substr(pos_));
        line_ += count_lines(pos_, src_.size());  // the end of the template is on the last line
        break;
      }
      char kind = src_[start + 1];  // '{', '%' or '#'
      size_t after = start + 2;
      char sign = after < src_.size() && (src_[after] == '-' || src_[after] == '+') ? src_[after] : 0;
      std::string text = src_.substr(pos_, start - pos_);
      size_t raw_end = kind == '%' ? match_raw_begin(after + (sign ? 1 : 0)) : std::string::npos;
      // Whitespace control of the text before the tag.
      if (sign == '-') {
        text = std::string(rstrip_space(text));
      } else if (sign != '+' && kind != '{') {
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if (l_pos > 0 || line_starting) {
          bool all_space = l_pos < text.size();
          for (size_t k = l_pos; k < text.size() && all_space;) {
            size_t n = space_len(text, k);
            if (n == 0) all_space = false;
            k += n;
          }
          if (all_space) text.resize(l_pos);
        }
      }
      line_ += count_lines(pos_, start);
      emit_data(std::move(text));
      pos_ = after + (sign ? 1 : 0);
      if (raw_end != std::string::npos) {
        line_starting = lex_raw(raw_end);
      } else if (kind == '#') {
        line_starting = lex_comment();
      } else {
        line_starting = lex_tag(kind == '{');
      }
    }
    tokens_.push_back({Tok::Eof, "", line_});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what) const { hxq::fail("chat template {}:{}: {}", name_, line, what); }

  int count_lines(size_t a, size_t b) const {
    return static_cast<int>(std::count(src_.begin() + static_cast<std::ptrdiff_t>(a), src_.begin() + static_cast<std::ptrdiff_t>(b), '\n'));
  }

  void emit_data(std::string text) {
    if (!text.empty()) tokens_.push_back({Tok::Data, std::move(text), line_});
  }

  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  size_t skip_space(size_t i) const {
    while (i < src_.size()) {
      size_t n = space_len(src_, i);
      if (n == 0) break;
      i += n;
    }
    return i;
  }

  // "{%[-+]? raw [-]?%}": returns the position after the tag (and after the whitespace a "-%}"
  // strips), or npos when this is not a raw block.
  size_t match_raw_begin(size_t i) const {
    i = skip_space(i);
    if (src_.compare(i, 3, "raw") != 0) return std::string::npos;
    i = skip_space(i + 3);
    if (src_.compare(i, 3, "-%}") == 0) return skip_space(i + 3);
    if (src_.compare(i, 2, "%}") == 0) return i + 2;  // no trim_blocks after a raw begin
    return std::string::npos;
  }

  // The body of a raw block up to "{% endraw %}", emitted as data.
  bool lex_raw(size_t body) {
    line_ += count_lines(pos_, body);
    for (size_t i = find_tag(body); i != std::string::npos; i = find_tag(i + 1)) {
      if (src_[i + 1] != '%') continue;
      size_t j = i + 2;
      char sign = j < src_.size() && (src_[j] == '-' || src_[j] == '+') ? src_[j] : 0;
      if (sign) ++j;
      j = skip_space(j);
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j = skip_space(j + 6);
      size_t end;
      bool ends_line = false;
      if (src_.compare(j, 3, "+%}") == 0) {
        end = j + 3;
      } else if (src_.compare(j, 3, "-%}") == 0) {
        end = skip_space(j + 3);
        ends_line = end > j + 3 && src_[end - 1] == '\n';
      } else if (src_.compare(j, 2, "%}") == 0) {
        end = j + 2;
        if (end < src_.size() && src_[end] == '\n') {
          ++end;
          ends_line = true;
        }
      } else {
        continue;
      }
      std::string text = src_.substr(body, i - body);
      if (sign == '-') {
        text = std::string(rstrip_space(text));
      } else if (sign != '+') {
        size_t l_pos = text.rfind('\n');
        if (l_pos != std::string::npos) {
          bool all_space = l_pos + 1 < text.size();
          for (size_t k = l_pos + 1; k < text.size() && all_space;) {
            size_t n = space_len(text, k);
            if (n == 0) all_space = false;
            k += n;
          }
          if (all_space) text.resize(l_pos + 1);
        }
      }
      emit_data(std::move(text));
      line_ += count_lines(body, end);
      pos_ = end;
      return ends_line;
    }
    fail(line_, "missing end of raw directive");
  }

  bool lex_comment() {
    size_t q = src_.find("#}", pos_);
    if (q == std::string::npos) fail(line_, "missing end of comment tag");
    size_t end = q + 2;
    bool ends_line = false;
    if (q > pos_ && src_[q - 1] == '-') {
      end = skip_space(end);
      ends_line = end > q + 2 && src_[end - 1] == '\n';
    } else if (!(q > pos_ && src_[q - 1] == '+') && end < src_.size() && src_[end] == '\n') {
      ++end;
      ends_line = true;
    }
    line_ += count_lines(pos_, end);
    pos_ = end;
    return ends_line;
  }

  // The tokens of a "{{ ... }}" or "{% ... %}" tag, up to and including its end.
  bool lex_tag(bool variable) {
    tokens_.push_back({variable ? Tok::VarBegin : Tok::BlockBegin, "", line_});
    std::vector<char> balance;  // open brackets: an end tag only counts when all are closed
    while (true) {
      // Whitespace.
      while (pos_ < src_.size()) {
        size_t n = space_len(src_, pos_);
        if (n == 0) break;
        if (src_[pos_] == '\n') ++line_;
        pos_ += n;
      }
      if (pos_ >= src_.size()) fail(line_, variable ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'");
      // The end of the tag.
      if (balance.empty()) {
        if (variable) {
          if (src_.compare(pos_, 3, "-}}") == 0) {
            size_t end = skip_space(pos_ + 3);
            bool ends_line = end > pos_ + 3 && src_[end - 1] == '\n';
            tokens_.push_back({Tok::VarEnd, "", line_});
            line_ += count_lines(pos_, end);
            pos_ = end;
            return ends_line;
          }
          if (src_.compare(pos_, 2, "}}") == 0) {
            tokens_.push_back({Tok::VarEnd, "", line_});
            pos_ += 2;
            return false;
          }
        } else {
          if (src_.compare(pos_, 3, "+%}") == 0) {
            tokens_.push_back({Tok::BlockEnd, "", line_});
            pos_ += 3;
            return false;
          }
          if (src_.compare(pos_, 3, "-%}") == 0) {
            size_t end = skip_space(pos_ + 3);
            bool ends_line = end > pos_ + 3 && src_[end - 1] == '\n';
            tokens_.push_back({Tok::BlockEnd, "", line_});
            line_ += count_lines(pos_, end);
            pos_ = end;
            return ends_line;
          }
          if (src_.compare(pos_, 2, "%}") == 0) {
            tokens_.push_back({Tok::BlockEnd, "", line_});
            pos_ += 2;
            if (pos_ < src_.size() && src_[pos_] == '\n') {  // trim_blocks
              ++pos_;
              ++line_;
              return true;
            }
            return false;
          }
        }
      }
      lex_token(balance);
    }
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }
  static bool name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
  static bool name_char(char c) { return name_start(c) || digit(c); }

  // Digits with single underscores between them ("1_000"); returns the end.
  size_t scan_digits(size_t i) const {
    if (i >= src_.size() || !digit(src_[i])) return i;
    while (i < src_.size() && digit(src_[i])) {
      ++i;
      if (i + 1 < src_.size() && src_[i] == '_' && digit(src_[i + 1])) ++i;
    }
    return i;
  }

  void lex_token(std::vector<char>& balance) {
    char c = src_[pos_];
    // Numbers: a float needs digits on both sides of the point or an exponent.
    if (digit(c)) {
      size_t int_end = scan_digits(pos_);
      size_t end = int_end;
      bool is_float = false;
      bool after_dot = pos_ > 0 && src_[pos_ - 1] == '.';  // "x.0.1" is x[0][1]
      if (!after_dot) {
        if (end + 1 < src_.size() && src_[end] == '.' && digit(src_[end + 1])) {
          end = scan_digits(end + 1);
          is_float = true;
        }
        if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
          size_t k = end + 1;
          if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
          if (k < src_.size() && digit(src_[k])) {
            end = scan_digits(k);
            is_float = true;
          }
        }
      }
      std::string text;
      for (size_t k = pos_; k < end; ++k)
        if (src_[k] != '_') text += src_[k];
      Token t{is_float ? Tok::Float : Tok::Int, text, line_};
      if (is_float) {
        t.fval = std::strtod(text.c_str(), nullptr);
      } else {
        auto res = std::from_chars(text.data(), text.data() + text.size(), t.ival);
        if (res.ec != std::errc()) fail(line_, fmt::format("integer literal {} is too large", text));
      }
      tokens_.push_back(std::move(t));
      pos_ = end;
      return;
    }
    if (name_start(c)) {
      size_t end = pos_;
      while (end < src_.size() && name_char(src_[end])) ++end;
      tokens_.push_back({Tok::Name, src_.substr(pos_, end - pos_), line_});
      pos_ = end;
      return;
    }
    if (c == '\'' || c == '"') {
      lex_string(c);
      return;
    }
    static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(",
                                       ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
    for (const char* op : kOps) {
      size_t n = std::strlen(op);
      if (src_.compare(pos_, n, op) != 0) continue;
      if (n == 1 && (c == '(' || c == '[' || c == '{')) {
        balance.push_back(c);
      } else if (n == 1 && (c == ')' || c == ']' || c == '}')) {
        char open = c == ')' ? '(' : c == ']' ? '[' : '{';
        if (balance.empty()) fail(line_, fmt::format("unexpected '{}'", c));
        if (balance.back() != open) {
          char want = balance.back() == '(' ? ')' : balance.back() == '[' ? ']' : '}';
          fail(line_, fmt::format("unexpected '{}', expected '{}'", c, want));
        }
        balance.pop_back();
      }
      tokens_.push_back({Tok::Op, op, line_});
      pos_ += n;
      return;
    }
    size_t j = pos_;
    char32_t cp = decode_at(src_, j);
    std::string ch;
    append_utf8(ch, cp);
    fail(line_, fmt::format("unexpected char {}", py_str_repr(ch)));
  }

  // A string literal, unescaped as Python's "unicode-escape" codec does.
  void lex_string(char quote) {
    int start_line = line_;
    size_t i = pos_ + 1;
    std::string value;
    while (true) {
      if (i >= src_.size()) fail(start_line, "unexpected end of string literal");
      char c = src_[i];
      if (c == quote) break;
      if (c == '\n') ++line_;
      if (c != '\\') {
        value += c;
        ++i;
        continue;
      }
      if (i + 1 >= src_.size()) fail(start_line, "unexpected end of string literal");
      char e = src_[i + 1];
      i += 2;
      auto hex = [&](int n) {
        if (i + static_cast<size_t>(n) > src_.size()) fail(line_, "truncated \\x, \\u or \\U escape in string literal");
        uint32_t cp = 0;
        for (int k = 0; k < n; ++k) {
          char h = src_[i + static_cast<size_t>(k)];
          int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
          if (d < 0) fail(line_, "truncated \\x, \\u or \\U escape in string literal");
          cp = cp * 16 + static_cast<uint32_t>(d);
        }
        i += static_cast<size_t>(n);
        if (cp > 0x10FFFF) fail(line_, "illegal Unicode character in string literal");
        append_utf8(value, cp >= 0xD800 && cp <= 0xDFFF ? 0xFFFD : cp);
      };
      switch (e) {
        case '\n': ++line_; break;  // line continuation
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'n': value += '\n'; break;
        case 'r': value += '\r'; break;
        case 't': value += '\t'; break;
        case 'v': value += '\v'; break;
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          if (e >= '0' && e <= '7') {  // up to three octal digits
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && i < src_.size() && src_[i] >= '0' && src_[i] <= '7'; ++k, ++i)
              cp = cp * 8 + static_cast<uint32_t>(src_[i] - '0');
            append_utf8(value, cp);
          } else {  // an unknown escape keeps its backslash
            value += '\\';
            value += e;
          }
      }
    }
    tokens_.push_back({Tok::String, std::move(value), start_line});
    pos_ = i + 1;
  }

  const std::string& name_;
  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

// ------------------------------------------------------------------------------------------------
// 3. AST and parser
// ------------------------------------------------------------------------------------------------

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Arg {
  std::string name;  // empty: positional
  ExprP value;
};

struct Expr {
  enum class K : uint8_t {
    Const,     // cval
    Name,      // name
    List,      // items
    Tuple,     // items
    Dict,      // items: key, value, key, value, ...
    Getattr,   // items[0].name
    Getitem,   // items[0][items[1]]
    Slice,     // items: start, stop, step (null when absent); only inside a Getitem
    Call,      // items[0](args)
    Filter,    // items[0] | name(args); items[0] null for a {% filter %} / {% set x | f %} chain
    Test,      // items[0] is name(args)
    Neg,       // -items[0]
    Pos,       // +items[0]
    Not,       // not items[0]
    And,       // items[0] and items[1]
    Or,        // items[0] or items[1]
    Binary,    // items[0] name items[1]: + - * / // % **
    Concat,    // items[0] ~ items[1] ~ ...
    Compare,   // items[0] ops[0] items[1] ops[1] items[2] ...
    CondExpr,  // items[0] if items[1] else items[2] (items[2] may be null)
  };
  K kind;
  int line;
  Value cval;
  std::string name;
  std::vector<ExprP> items;
  std::vector<std::string> ops;
  std::vector<Arg> args;
  const void* impl = nullptr;  // Filter/Test: the resolved function (set by the parser)
  int depth = 1;               // of the tree below this node (bounded: the interpreter recurses)
};

struct Stmt;
using StmtP = std::unique_ptr<Stmt>;
using Body = std::vector<StmtP>;

// An assignment target: a name, a tuple of names, or namespace.attr.
struct Target {
  std::vector<std::string> names;
  bool tuple = false;
  std::string ns_attr;  // set: names[0] is the namespace, ns_attr the attribute
};

struct MacroDef {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprP> defaults;  // for the last defaults.size() params
  Body body;
  bool uses_varargs = false, uses_kwargs = false, uses_caller = false;
  int line = 0;
};

struct Stmt {
  enum class K : uint8_t { Output, Print, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, With, Scope, Break, Continue };
  K kind;
  int line;
  std::string text;                                 // Output
  ExprP expr;                                       // Print, Set value, For iterable, CallBlock call, filter chain
  std::vector<std::pair<ExprP, Body>> branches;     // If: (condition, body)...
  Body body, else_body;                             // For, SetBlock, CallBlock, FilterBlock, With, Scope; If/For else
  Target target;                                    // For, Set, SetBlock
  ExprP cond;                                       // For: the inline "if"
  std::shared_ptr<MacroDef> macro;                  // Macro; CallBlock: the caller's signature and body
  std::vector<std::pair<std::string, ExprP>> with;  // With: assignments
};

using FilterFn = Value (*)(Interp&, const Value&, CallArgs&);
using TestFn = bool (*)(Interp&, const Value&, CallArgs&);
const FilterFn* find_filter(const std::string& name);
const TestFn* find_test(const std::string& name);

}  // namespace

struct Program {
  std::string name;
  Body body;
};

namespace {

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name) : t_(std::move(tokens)), name_(name) {}

  Body parse_template() {
    Body body = subparse({});
    if (cur().type != Tok::Eof) fail(cur().line, fmt::format("unexpected '{}'", describe(cur())));
    return body;
  }

 private:
  // ---- token helpers ----
  const Token& cur() const { return t_[p_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  void next() {
    if (p_ + 1 < t_.size()) ++p_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Data: return "template data";
      case Tok::VarBegin: return "begin of print statement";
      case Tok::VarEnd: return "end of print statement";
      case Tok::BlockBegin: return "begin of statement block";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::Name: return t.text;
      case Tok::String: return "string";
      case Tok::Int: return "integer";
      case Tok::Float: return "float";
      case Tok::Op: return t.text;
      case Tok::Eof: return "end of template";
    }
    return "token";
  }

  [[noreturn]] void fail(int line, const std::string& what) const { hxq::fail("chat template {}:{}: {}", name_, line, what); }
  [[noreturn]] void unexpected(const std::string& expected) const {
    fail(cur().line, fmt::format("expected {}, got '{}'", expected, describe(cur())));
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) unexpected(fmt::format("'{}'", op));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) unexpected("a name");
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) unexpected("end of statement block");
    next();
  }

  // Bounds the recursion of the parser (and so of the interpreter over the AST it builds).
  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxParseDepth) p.fail(p.cur().line, fmt::format("template nested deeper than {} levels", kMaxParseDepth));
    }
    ~DepthGuard() { --p.depth_; }
  };

  ExprP node(Expr::K k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // ---- statements ----

  // Parses until a block tag whose name is in `ends` (left current, after "{%"), or the end of
  // the template when `ends` is empty.
  Body subparse(std::vector<std::string> ends) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (!ends.empty()) {
          fail(t.line, fmt::format("unexpected end of template, expected {} to close the '{}' block opened on line {}",
                                   quote_list(ends), block_stack_.back().first, block_stack_.back().second));
        }
        return body;
      }
      if (t.type == Tok::Data) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::K::Output;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == Tok::VarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::K::Print;
        s->line = t.line;
        s->expr = parse_tuple(false, true, {}, false);
        if (cur().type != Tok::VarEnd) unexpected("end of print statement");
        next();
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        next();
        if (cur().type != Tok::Name) unexpected("a statement name");
        const std::string& tag = cur().text;
        if (std::find(ends.begin(), ends.end(), tag) != ends.end()) return body;
        body.push_back(parse_statement());
      } else {
        fail(t.line, fmt::format("unexpected '{}'", describe(t)));
      }
    }
  }

  static std::string quote_list(const std::vector<std::string>& v) {
    std::string s;
    for (size_t k = 0; k < v.size(); ++k) s += (k ? k + 1 == v.size() ? " or '" : ", '" : "'") + v[k] + "'";
    return s;
  }

  Body parse_block(const std::string& tag, int line, std::vector<std::string> ends) {
    DepthGuard g(*this);
    block_stack_.emplace_back(tag, line);
    Body b = subparse(std::move(ends));
    block_stack_.pop_back();
    return b;
  }

  StmtP make_stmt(Stmt::K k, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->line = line;
    return s;
  }

  StmtP parse_statement() {
    const Token& t = cur();
    int line = t.line;
    std::string tag = t.text;
    next();
    if (tag == "if") return parse_if(line);
    if (tag == "for") return parse_for(line);
    if (tag == "set") return parse_set(line);
    if (tag == "macro") return parse_macro(line);
    if (tag == "call") return parse_call_block(line);
    if (tag == "filter") return parse_filter_block(line);
    if (tag == "with") return parse_with(line);
    if (tag == "generation") {  // transformers' {% generation %} marks assistant text; renders as is
      expect_block_end();
      auto s = make_stmt(Stmt::K::Scope, line);
      s->body = parse_block("generation", line, {"endgeneration"});
      next();
      expect_block_end();
      return s;
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail(line, fmt::format("'{}' outside of a loop", tag));
      expect_block_end();
      return make_stmt(tag == "break" ? Stmt::K::Break : Stmt::K::Continue, line);
    }
    static const char* const kUnsupported[] = {"include", "import", "from", "extends", "block", "autoescape"};
    for (const char* u : kUnsupported)
      if (tag == u) fail(line, fmt::format("the '{}' tag is not supported in chat templates", tag));
    if (!block_stack_.empty() && (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif"))
      fail(line, fmt::format("unexpected '{}' inside the '{}' block opened on line {}", tag, block_stack_.back().first,
                             block_stack_.back().second));
    if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif")
      fail(line, fmt::format("unexpected '{}' (no block is open)", tag));
    fail(line, fmt::format("unknown tag '{}'", tag));
  }

  StmtP parse_if(int line) {
    auto s = make_stmt(Stmt::K::If, line);
    ExprP cond = parse_tuple(false, false, {}, false);
    expect_block_end();
    while (true) {
      Body body = parse_block("if", line, {"elif", "else", "endif"});
      s->branches.emplace_back(std::move(cond), std::move(body));
      std::string tag = cur().text;
      next();
      if (tag == "elif") {
        cond = parse_tuple(false, false, {}, false);
        expect_block_end();
        continue;
      }
      if (tag == "else") {
        expect_block_end();
        s->else_body = parse_block("if", line, {"endif"});
        next();
      }
      expect_block_end();
      return s;
    }
  }

  Target parse_assign_target(bool with_namespace, const std::vector<std::string>& extra_end) {
    Target tg;
    if (with_namespace && cur().type == Tok::Name && peek().type == Tok::Op && peek().text == ".") {
      tg.names.push_back(cur().text);
      next();
      next();
      tg.ns_attr = expect_name();
      return tg;
    }
    while (true) {
      if (cur().type != Tok::Name) unexpected("a name to assign to");
      tg.names.push_back(cur().text);
      next();
      if (!is_op(",")) break;
      tg.tuple = true;
      next();
      if (cur().type == Tok::Name && std::find(extra_end.begin(), extra_end.end(), cur().text) != extra_end.end()) break;
    }
    for (const std::string& n : tg.names)
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None")
        fail(cur().line, fmt::format("can't assign to '{}'", n));
    return tg;
  }

  StmtP parse_for(int line) {
    auto s = make_stmt(Stmt::K::For, line);
    s->target = parse_assign_target(false, {"in"});
    if (!skip_name("in")) unexpected("'in'");
    s->expr = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) s->cond = parse_expression(true);
    if (is_name("recursive")) fail(cur().line, "recursive for loops are not supported");
    expect_block_end();
    ++loop_depth_;
    s->body = parse_block("for", line, {"endfor", "else"});
    --loop_depth_;
    if (cur().text == "else") {
      next();
      expect_block_end();
      s->else_body = parse_block("for", line, {"endfor"});
    }
    next();
    expect_block_end();
    return s;
  }

  StmtP parse_set(int line) {
    Target tg = parse_assign_target(true, {});
    if (skip_op("=")) {
      auto s = make_stmt(Stmt::K::Set, line);
      s->target = std::move(tg);
      s->expr = parse_tuple(false, true, {}, false);
      expect_block_end();
      return s;
    }
    if (!tg.ns_attr.empty() || tg.tuple) unexpected("'='");
    auto s = make_stmt(Stmt::K::SetBlock, line);
    s->target = std::move(tg);
    if (is_op("|")) s->expr = parse_filter(nullptr, false);
    expect_block_end();
    s->body = parse_block("set", line, {"endset"});
    next();
    expect_block_end();
    return s;
  }

  // "(a, b=1, ...)" of a macro or call block.
  void parse_signature(MacroDef& m) {
    expect_op("(");
    while (!is_op(")")) {
      if (!m.params.empty()) expect_op(",");
      if (is_op(")")) break;
      std::string p = expect_name();
      if (skip_op("=")) {
        m.defaults.push_back(parse_expression(true));
      } else if (!m.defaults.empty()) {
        fail(cur().line, "non-default argument follows default argument");
      }
      m.params.push_back(std::move(p));
    }
    next();
  }

  // Whether a macro body refers to varargs / kwargs / caller (jinja2 only accepts extra arguments
  // then).
  static void scan_names(const Expr* e, MacroDef& m) {
    if (!e) return;
    if (e->kind == Expr::K::Name) {
      if (e->name == "varargs") m.uses_varargs = true;
      if (e->name == "kwargs") m.uses_kwargs = true;
      if (e->name == "caller") m.uses_caller = true;
    }
    for (const auto& c : e->items) scan_names(c.get(), m);
    for (const auto& a : e->args) scan_names(a.value.get(), m);
  }
  static void scan_names(const Body& b, MacroDef& m) {
    for (const auto& s : b) {
      scan_names(s->expr.get(), m);
      scan_names(s->cond.get(), m);
      for (const auto& [c, body] : s->branches) {
        scan_names(c.get(), m);
        scan_names(body, m);
      }
      for (const auto& [n, e] : s->with) scan_names(e.get(), m);
      scan_names(s->body, m);
      scan_names(s->else_body, m);
      if (s->macro && s->kind == Stmt::K::CallBlock) scan_names(s->macro->body, m);
    }
  }

  StmtP parse_macro(int line) {
    auto s = make_stmt(Stmt::K::Macro, line);
    s->macro = std::make_shared<MacroDef>();
    s->macro->line = line;
    s->macro->name = expect_name();
    parse_signature(*s->macro);
    expect_block_end();
    int saved = loop_depth_;
    loop_depth_ = 0;  // a macro body is not inside the enclosing loop
    s->macro->body = parse_block("macro", line, {"endmacro"});
    loop_depth_ = saved;
    next();
    if (cur().type == Tok::Name) next();  // {% endmacro name %}
    expect_block_end();
    scan_names(s->macro->body, *s->macro);
    return s;
  }

  StmtP parse_call_block(int line) {
    auto s = make_stmt(Stmt::K::CallBlock, line);
    s->macro = std::make_shared<MacroDef>();
    s->macro->name = "caller";
    s->macro->line = line;
    if (is_op("(")) parse_signature(*s->macro);
    s->expr = parse_expression(true);
    if (s->expr->kind != Expr::K::Call) fail(line, "expected a call after 'call'");
    expect_block_end();
    s->macro->body = parse_block("call", line, {"endcall"});
    next();
    expect_block_end();
    scan_names(s->macro->body, *s->macro);
    return s;
  }

  StmtP parse_filter_block(int line) {
    auto s = make_stmt(Stmt::K::FilterBlock, line);
    s->expr = parse_filter(nullptr, true);
    expect_block_end();
    s->body = parse_block("filter", line, {"endfilter"});
    next();
    expect_block_end();
    return s;
  }

  StmtP parse_with(int line) {
    auto s = make_stmt(Stmt::K::With, line);
    while (cur().type != Tok::BlockEnd) {
      if (!s->with.empty()) expect_op(",");
      std::string n = expect_name();
      expect_op("=");
      s->with.emplace_back(std::move(n), parse_expression(true));
    }
    next();
    s->body = parse_block("with", line, {"endwith"});
    next();
    expect_block_end();
    return s;
  }

  // ---- expressions (jinja2.parser's grammar) ----

  bool is_tuple_end(const std::vector<std::string>& extra_end) const {
    if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || cur().type == Tok::Eof) return true;
    if (is_op(")")) return true;
    return cur().type == Tok::Name && std::find(extra_end.begin(), extra_end.end(), cur().text) != extra_end.end();
  }

  ExprP parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra_end, bool explicit_parens) {
    int line = cur().line;
    std::vector<ExprP> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) unexpected("an expression");
    }
    auto e = node(Expr::K::Tuple, line);
    for (auto& x : items) adopt(*e, std::move(x));
    return e;
  }

  ExprP parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprP parse_condexpr() {
    DepthGuard g(*this);
    int line = cur().line;
    ExprP e = parse_or();
    while (skip_name("if")) {
      auto c = node(Expr::K::CondExpr, line);
      ExprP cond = parse_or();
      ExprP other = skip_name("else") ? parse_condexpr() : nullptr;
      adopt(*c, std::move(e));
      adopt(*c, std::move(cond));
      adopt(*c, std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprP binary(Expr::K k, int line, ExprP a, ExprP b, std::string op = {}) {
    auto e = node(k, line);
    e->name = std::move(op);
    adopt(*e, std::move(a));
    adopt(*e, std::move(b));
    return e;
  }

  ExprP parse_or() {
    int line = cur().line;
    ExprP e = parse_and();
    while (skip_name("or")) e = binary(Expr::K::Or, line, std::move(e), parse_and());
    return e;
  }

  ExprP parse_and() {
    int line = cur().line;
    ExprP e = parse_not();
    while (skip_name("and")) e = binary(Expr::K::And, line, std::move(e), parse_not());
    return e;
  }

  ExprP parse_not() {
    if (is_name("not")) {
      DepthGuard g(*this);
      int line = cur().line;
      next();
      auto e = node(Expr::K::Not, line);
      adopt(*e, parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprP parse_compare() {
    int line = cur().line;
    ExprP first = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprP> operands;
    while (true) {
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
                                    cur().text == ">" || cur().text == ">=")) {
        ops.push_back(cur().text);
        next();
      } else if (is_name("in")) {
        ops.push_back("in");
        next();
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        ops.push_back("not in");
        next();
        next();
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return first;
    auto e = node(Expr::K::Compare, line);
    adopt(*e, std::move(first));
    for (auto& o : operands) adopt(*e, std::move(o));
    e->ops = std::move(ops);
    return e;
  }

  ExprP parse_math1() {
    int line = cur().line;
    ExprP e = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      next();
      e = binary(Expr::K::Binary, line, std::move(e), parse_concat(), op);
    }
    return e;
  }

  ExprP parse_concat() {
    int line = cur().line;
    ExprP e = parse_math2();
    if (!is_op("~")) return e;
    auto c = node(Expr::K::Concat, line);
    adopt(*c, std::move(e));
    while (skip_op("~")) adopt(*c, parse_math2());
    return c;
  }

  ExprP parse_math2() {
    int line = cur().line;
    ExprP e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      next();
      e = binary(Expr::K::Binary, line, std::move(e), parse_pow(), op);
    }
    return e;
  }

  ExprP parse_pow() {
    int line = cur().line;
    ExprP e = parse_unary(true);
    while (skip_op("**")) e = binary(Expr::K::Binary, line, std::move(e), parse_unary(true), "**");
    return e;
  }

  ExprP parse_unary(bool with_filter) {
    DepthGuard g(*this);
    int line = cur().line;
    ExprP e;
    if (is_op("-") || is_op("+")) {
      bool neg = cur().text == "-";
      next();
      e = node(neg ? Expr::K::Neg : Expr::K::Pos, line);
      adopt(*e, parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprP parse_primary() {
    DepthGuard g(*this);
    const Token& t = cur();
    int line = t.line;
    if (t.type == Tok::Name) {
      auto e = node(Expr::K::Const, line);
      if (t.text == "true" || t.text == "True") {
        e->cval = Value::boolean(true);
      } else if (t.text == "false" || t.text == "False") {
        e->cval = Value::boolean(false);
      } else if (t.text == "none" || t.text == "None") {
        e->cval = Value::none();
      } else {
        e->kind = Expr::K::Name;
        e->name = t.text;
      }
      next();
      return e;
    }
    if (t.type == Tok::String) {  // adjacent literals concatenate
      std::string s;
      while (cur().type == Tok::String) {
        s += cur().text;
        next();
      }
      auto e = node(Expr::K::Const, line);
      e->cval = Value::str(std::move(s));
      return e;
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      auto e = node(Expr::K::Const, line);
      e->cval = t.type == Tok::Int ? Value::integer(t.ival) : Value::number(t.fval);
      next();
      return e;
    }
    if (is_op("(")) {
      next();
      ExprP e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      next();
      auto e = node(Expr::K::List, line);
      while (!is_op("]")) {
        if (!e->items.empty()) expect_op(",");
        if (is_op("]")) break;
        adopt(*e, parse_expression(true));
      }
      next();
      return e;
    }
    if (is_op("{")) {
      next();
      auto e = node(Expr::K::Dict, line);
      while (!is_op("}")) {
        if (!e->items.empty()) expect_op(",");
        if (is_op("}")) break;
        adopt(*e, parse_expression(true));
        expect_op(":");
        adopt(*e, parse_expression(true));
      }
      next();
      return e;
    }
    fail(line, fmt::format("unexpected '{}'", describe(t)));
  }

  ExprP parse_postfix(ExprP e) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprP parse_filter_expr(ExprP e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter(std::move(e), false);
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprP parse_subscript(ExprP obj) {
    DepthGuard g(*this);
    int line = cur().line;
    if (skip_op(".")) {
      if (cur().type == Tok::Name) {
        auto e = node(Expr::K::Getattr, line);
        e->name = cur().text;
        next();
        adopt(*e, std::move(obj));
        return e;
      }
      if (cur().type != Tok::Int) unexpected("a name or number");
      auto idx = node(Expr::K::Const, line);
      idx->cval = Value::integer(cur().ival);
      next();
      return binary(Expr::K::Getitem, line, std::move(obj), std::move(idx));
    }
    expect_op("[");
    std::vector<ExprP> args;
    while (!is_op("]")) {
      if (!args.empty()) expect_op(",");
      args.push_back(parse_subscribed());
    }
    next();
    if (args.empty()) fail(line, "expected a subscript");
    ExprP arg;
    if (args.size() == 1) {
      arg = std::move(args[0]);
    } else {
      arg = node(Expr::K::Tuple, line);
      for (auto& x : args) adopt(*arg, std::move(x));
    }
    return binary(Expr::K::Getitem, line, std::move(obj), std::move(arg));
  }

  ExprP parse_subscribed() {
    int line = cur().line;
    std::vector<ExprP> parts;
    if (is_op(":")) {
      next();
      parts.push_back(nullptr);
    } else {
      ExprP e = parse_expression(true);
      if (!is_op(":")) return e;
      next();
      parts.push_back(std::move(e));
    }
    if (is_op(":")) {
      parts.push_back(nullptr);
    } else if (!is_op("]") && !is_op(",")) {
      parts.push_back(parse_expression(true));
    } else {
      parts.push_back(nullptr);
    }
    if (skip_op(":")) {
      parts.push_back(!is_op("]") && !is_op(",") ? parse_expression(true) : nullptr);
    } else {
      parts.push_back(nullptr);
    }
    auto s = node(Expr::K::Slice, line);
    for (auto& x : parts) adopt(*s, std::move(x));
    return s;
  }

  // Adds a child (null allowed) to `parent`, keeping parent->depth bounded.
  void adopt(Expr& parent, ExprP child) {
    if (child) {
      parent.depth = std::max(parent.depth, child->depth + 1);
      if (parent.depth > kMaxExprDepth) fail(parent.line, fmt::format("expression nested deeper than {} levels", kMaxExprDepth));
    }
    parent.items.push_back(std::move(child));
  }
  void adopt_args(Expr& e) {
    for (const Arg& a : e.args) {
      e.depth = std::max(e.depth, a.value->depth + 1);
      if (e.depth > kMaxExprDepth) fail(e.line, fmt::format("expression nested deeper than {} levels", kMaxExprDepth));
    }
  }

  void parse_call_args(std::vector<Arg>& args) {
    expect_op("(");
    bool require_comma = false, seen_kw = false;
    while (!is_op(")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail(cur().line, "*args and **kwargs in calls are not supported");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = cur().text;
        next();
        next();
        args.push_back({std::move(key), parse_expression(true)});
        seen_kw = true;
      } else {
        if (seen_kw) fail(cur().line, "positional argument follows keyword argument");
        args.push_back({"", parse_expression(true)});
      }
      require_comma = true;
    }
    next();
  }

  ExprP parse_call(ExprP callee) {
    DepthGuard g(*this);
    auto e = node(Expr::K::Call, cur().line);
    adopt(*e, std::move(callee));
    parse_call_args(e->args);
    adopt_args(*e);
    return e;
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (is_op(".")) {
      next();
      name += '.';  // (not "." + name: GCC 12 warns falsely about that)
      name += expect_name();
    }
    return name;
  }

  // "| name(args) | ..." applied to `input` (null for a filter block chain).
  ExprP parse_filter(ExprP input, bool start_inline) {
    while (is_op("|") || start_inline) {
      DepthGuard g(*this);
      if (!start_inline) next();
      start_inline = false;
      int line = cur().line;
      auto e = node(Expr::K::Filter, line);
      e->name = dotted_name();
      const FilterFn* fn = find_filter(e->name);
      if (!fn) fail(line, fmt::format("no filter named '{}'", e->name));
      e->impl = reinterpret_cast<const void*>(fn);
      if (is_op("(")) parse_call_args(e->args);
      adopt_args(*e);
      adopt(*e, std::move(input));
      input = std::move(e);
    }
    return input;
  }

  ExprP parse_test(ExprP input) {
    DepthGuard g(*this);
    int line = cur().line;
    next();  // "is"
    bool negated = skip_name("not");
    auto e = node(Expr::K::Test, line);
    e->name = dotted_name();
    const TestFn* fn = find_test(e->name);
    if (!fn) fail(line, fmt::format("no test named '{}'", e->name));
    e->impl = reinterpret_cast<const void*>(fn);
    if (is_op("(")) {
      parse_call_args(e->args);
    } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int || cur().type == Tok::Float ||
                is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(cur().line, "you cannot chain multiple tests with is");
      ExprP arg = parse_postfix(parse_primary());
      e->args.push_back({"", std::move(arg)});
    }
    adopt_args(*e);
    adopt(*e, std::move(input));
    if (!negated) return e;
    auto n = node(Expr::K::Not, line);
    adopt(*n, std::move(e));
    return n;
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  const std::string& name_;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<std::pair<std::string, int>> block_stack_;  // open blocks: tag, line
};

// ------------------------------------------------------------------------------------------------
// 4. Interpreter
// ------------------------------------------------------------------------------------------------
// Scoping as jinja2's: the template's top level is one frame; each for-loop iteration, macro
// call, {% with %} and caller() body gets a fresh frame whose assignments vanish when it ends
// (a namespace() object is how templates carry state out of a loop). Macros see the template's
// top-level frame as it is when they are called.

struct Frame {
  std::unordered_map<std::string, Value> vars;
  const Frame* parent = nullptr;

  const Value* find(const std::string& name) const {
    for (const Frame* f = this; f; f = f->parent) {
      auto it = f->vars.find(name);
      if (it != f->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

enum class Flow : uint8_t { Normal, Break, Continue };

Value call_method(Interp& in, const Value& obj, const std::string& name, CallArgs& args, bool& found);
bool has_method(const Value& obj, const std::string& name);
bool is_unsafe_method(const Value& obj, const std::string& name);
void install_globals(Frame& g);

class Interp {
 public:
  Interp(const Program& prog, const RenderOptions& opts) : prog_(prog), opts(opts) {}

  template <typename Json>
  std::string run(const Json& vars) {
    try {
      if (!vars.is_object()) vfail("the template variables must be a JSON object, not {}", vars.type_name());
      install_globals(globals_);
      for (auto it = vars.begin(); it != vars.end(); ++it) globals_.vars[it.key()] = from_json(it.value());
      root_.parent = &globals_;
      std::string out;
      exec(prog_.body, root_, out);
      return out;
    } catch (const ValueError& e) {
      fail_at(line, e.what);
    } catch (const std::bad_alloc&) {
      fail_at(line, "out of memory");
    } catch (const std::length_error&) {
      fail_at(line, "value too large");
    }
  }

  [[noreturn]] void fail_at(int at, const std::string& what) const {
    throw RenderError(fmt::format("chat template {}:{}: {}", prog_.name, at, what));
  }
  template <typename... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) const {
    fail_at(line, fmt::format(f, std::forward<Args>(args)...));
  }
  [[noreturn]] void raise(const std::string& message) const {
    throw RaisedError(fmt::format("chat template {}:{}: {}", prog_.name, line, message), message);
  }
  // Using an undefined value for anything but printing, testing or iterating is an error.
  [[noreturn]] void undefined_error(const Value& u) const { fail("{}", u.s()); }

  void step(int64_t n = 1) {
    steps_ += n;
    if (steps_ > opts.max_steps) fail("template exceeded the step limit ({} steps)", opts.max_steps);
  }
  // A string or list of `bytes` is being built: bounded, and paid for in steps.
  void charge(size_t bytes) {
    if (bytes > opts.max_output_bytes) fail("value exceeds the output limit ({} bytes)", opts.max_output_bytes);
    step(static_cast<int64_t>(bytes / 64));
  }
  void check_output(const std::string& out) {
    if (out.size() > opts.max_output_bytes) fail("output exceeds the limit ({} bytes)", opts.max_output_bytes);
  }

  Value call(const Value& callee, CallArgs& args) {
    if (callee.kind == Value::Kind::Func) return callee.as_func().fn(*this, args);
    if (callee.is_undefined()) undefined_error(callee);
    fail("'{}' object is not callable", type_name(callee));
  }

  // obj.name (jinja2's sandboxed getattr: attributes/methods first, then items).
  Value getattr(const Value& obj, const std::string& name) {
    switch (obj.kind) {
      case Value::Kind::Undefined: undefined_error(obj);
      case Value::Kind::Dict:
        if (has_method(obj, name)) return bound_method(obj, name);
        if (const Value* v = obj.as_dict().find_str(name)) return *v;
        break;
      case Value::Kind::Object:
        if (const Value* v = obj.as_object().attrs->find_str(name)) return *v;
        break;
      case Value::Kind::Str:
      case Value::Kind::List:
        if (has_method(obj, name)) return bound_method(obj, name);
        break;
      default: break;
    }
    return no_attribute(obj, name);
  }

  Value no_attribute(const Value& obj, const std::string& name) const {
    if (obj.is_none()) return Value::undefined(fmt::format("'None' has no attribute '{}'", name));
    return Value::undefined(fmt::format("'{}' has no attribute '{}'", object_type_repr(obj), name));
  }

  // obj[key] (jinja2's sandboxed getitem: items first, then attributes for str keys).
  Value getitem(const Value& obj, const Value& key) {
    if (obj.is_undefined()) undefined_error(obj);
    if (key.is_undefined()) undefined_error(key);
    switch (obj.kind) {
      case Value::Kind::Dict:
        if (hashable(key))
          if (const Value* v = obj.as_dict().find(key)) return *v;
        break;
      case Value::Kind::List:
      case Value::Kind::Str:
        if (key.is_int()) {
          int64_t n = obj.is_str() ? static_cast<int64_t>(cp_length(obj.s())) : static_cast<int64_t>(obj.as_list().items.size());
          int64_t k = key.i < 0 ? key.i + n : key.i;
          if (k >= 0 && k < n) {
            if (obj.is_list()) return obj.as_list().items[static_cast<size_t>(k)];
            return Value::str(char_at(obj.s(), static_cast<size_t>(k)));
          }
          return Value::undefined(fmt::format("{} has no element {}", object_type_repr(obj), key.i));
        }
        break;
      case Value::Kind::Object:
        if (key.is_str())
          if (const Value* v = obj.as_object().attrs->find_str(key.s())) return *v;
        break;
      default: break;
    }
    if (key.is_str()) return getattr(obj, key.s());
    std::string k;
    append_repr(k, key);
    if (obj.is_none()) return Value::undefined(fmt::format("None has no element {}", k));
    return Value::undefined(fmt::format("{} has no element {}", object_type_repr(obj), k));
  }

  static std::string char_at(const std::string& s, size_t k) {
    if (is_ascii(s)) return std::string(1, s[k]);
    size_t i = 0;
    for (size_t n = 0; n < k; ++n) decode_at(s, i);
    size_t start = i;
    decode_at(s, i);
    return s.substr(start, i - start);
  }

  Value bound_method(const Value& obj, const std::string& name) {
    if (is_unsafe_method(obj, name))
      return Value::undefined(fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, type_name(obj)));
    return Value::func(name, [obj, name](Interp& in, CallArgs& args) {
      bool found = false;
      return call_method(in, obj, name, args, found);
    });
  }

  // The items a for loop / filter iterates: list items, dict keys, string characters.
  std::vector<Value> iterate(const Value& v) {
    std::vector<Value> out;
    switch (v.kind) {
      case Value::Kind::Undefined: return out;  // jinja2's Undefined iterates as empty
      case Value::Kind::List: return v.as_list().items;
      case Value::Kind::Dict:
        out.reserve(v.as_dict().items.size());
        for (const auto& kv : v.as_dict().items) out.push_back(kv.first);
        return out;
      case Value::Kind::Str: {
        const std::string& s = v.s();
        for (size_t i = 0; i < s.size();) {
          size_t start = i;
          decode_at(s, i);
          out.push_back(Value::str(s.substr(start, i - start)));
        }
        step(static_cast<int64_t>(out.size() / 16));
        return out;
      }
      default: fail("'{}' object is not iterable", type_name(v));
    }
  }

  Value call_macro(const MacroDef& m, CallArgs& args, const Frame* parent, const Value* caller) {
    if (call_depth_ >= opts.max_call_depth) fail("macro calls nested deeper than {} levels", opts.max_call_depth);
    Frame f;
    f.parent = parent;
    size_t np = m.params.size();
    std::vector<bool> given(np, false);
    std::vector<Value> varargs;
    for (size_t k = 0; k < args.pos.size(); ++k) {
      if (k < np) {
        f.vars[m.params[k]] = std::move(args.pos[k]);
        given[k] = true;
      } else if (m.uses_varargs) {
        varargs.push_back(std::move(args.pos[k]));
      } else {
        fail("macro '{}' takes not more than {} argument(s)", m.name, np);
      }
    }
    auto kwargs = std::make_shared<Dict>();
    for (auto& [key, val] : args.kw) {
      auto it = std::find(m.params.begin(), m.params.end(), key);
      if (it != m.params.end()) {
        size_t k = static_cast<size_t>(it - m.params.begin());
        if (given[k]) fail("macro '{}' got multiple values for argument '{}'", m.name, key);
        f.vars[key] = std::move(val);
        given[k] = true;
      } else if (key == "caller" && m.uses_caller) {
        f.vars["caller"] = std::move(val);
      } else if (m.uses_kwargs) {
        kwargs->set(Value::str(key), std::move(val));
      } else {
        fail("macro '{}' takes no keyword argument '{}'", m.name, key);
      }
    }
    size_t first_default = np - m.defaults.size();
    for (size_t k = 0; k < np; ++k) {
      if (given[k]) continue;
      if (k >= first_default) {
        f.vars[m.params[k]] = eval(*m.defaults[k - first_default], f);
      } else {
        f.vars[m.params[k]] = Value::undefined(fmt::format("parameter '{}' was not provided", m.params[k]));
      }
    }
    f.vars["varargs"] = Value::list(std::move(varargs), true);
    f.vars["kwargs"] = Value::dict(kwargs);
    if (caller) f.vars["caller"] = *caller;
    ++call_depth_;
    std::string out;
    int saved_line = line;
    exec(m.body, f, out);
    line = saved_line;
    --call_depth_;
    return Value::str(std::move(out));
  }

  int line = 0;

 private:
  // ---- statements ----

  Flow exec(const Body& body, Frame& frame, std::string& out) {
    for (const StmtP& sp : body) {
      const Stmt& s = *sp;
      line = s.line;
      step();
      switch (s.kind) {
        case Stmt::K::Output:
          out += s.text;
          check_output(out);
          break;
        case Stmt::K::Print: {
          Value v = eval(*s.expr, frame);
          append_str(out, v);
          check_output(out);
          break;
        }
        case Stmt::K::If: {
          bool done = false;
          for (const auto& [cond, b] : s.branches) {
            if (truthy(eval(*cond, frame))) {
              Flow fl = exec(b, frame, out);
              if (fl != Flow::Normal) return fl;
              done = true;
              break;
            }
          }
          if (!done) {
            Flow fl = exec(s.else_body, frame, out);
            if (fl != Flow::Normal) return fl;
          }
          break;
        }
        case Stmt::K::For: exec_for(s, frame, out); break;
        case Stmt::K::Set: assign(s.target, eval(*s.expr, frame), frame); break;
        case Stmt::K::SetBlock: {
          Frame inner;
          inner.parent = &frame;
          std::string text;
          exec(s.body, inner, text);
          line = s.line;
          Value v = Value::str(std::move(text));
          if (s.expr) v = apply_chain(*s.expr, std::move(v), frame);
          assign(s.target, std::move(v), frame);
          break;
        }
        case Stmt::K::Macro: {
          std::shared_ptr<MacroDef> m = s.macro;
          const Frame* root = &root_;
          frame.vars[m->name] = Value::func(m->name, [m, root](Interp& in, CallArgs& args) {
            return in.call_macro(*m, args, root, nullptr);
          });
          break;
        }
        case Stmt::K::CallBlock: exec_call_block(s, frame, out); break;
        case Stmt::K::FilterBlock: {
          std::string text;
          Flow fl = exec(s.body, frame, text);
          line = s.line;
          append_str(out, apply_chain(*s.expr, Value::str(std::move(text)), frame));
          check_output(out);
          if (fl != Flow::Normal) return fl;
          break;
        }
        case Stmt::K::With: {
          Frame inner;
          inner.parent = &frame;
          for (const auto& [n, e] : s.with) inner.vars[n] = eval(*e, frame);
          Flow fl = exec(s.body, inner, out);
          if (fl != Flow::Normal) return fl;
          break;
        }
        case Stmt::K::Scope: {
          Flow fl = exec(s.body, frame, out);
          if (fl != Flow::Normal) return fl;
          break;
        }
        case Stmt::K::Break: return Flow::Break;
        case Stmt::K::Continue: return Flow::Continue;
      }
    }
    return Flow::Normal;
  }

  void assign(const Target& t, Value v, Frame& frame) {
    if (!t.ns_attr.empty()) {
      const Value* ns = frame.find(t.names[0]);
      if (!ns || ns->kind != Value::Kind::Object || !ns->as_object().assignable)
        fail("cannot assign attribute '{}' on '{}': it is not a namespace", t.ns_attr, t.names[0]);
      ns->as_object().attrs->set(Value::str(t.ns_attr), std::move(v));
      return;
    }
    if (!t.tuple) {
      frame.vars[t.names[0]] = std::move(v);
      return;
    }
    std::vector<Value> items = iterate(v);
    if (items.size() < t.names.size()) fail("not enough values to unpack (expected {}, got {})", t.names.size(), items.size());
    if (items.size() > t.names.size()) fail("too many values to unpack (expected {})", t.names.size());
    for (size_t k = 0; k < items.size(); ++k) frame.vars[t.names[k]] = std::move(items[k]);
  }

  void exec_for(const Stmt& s, Frame& frame, std::string& out) {
    std::vector<Value> items = iterate(eval(*s.expr, frame));
    if (s.cond) {  // "for x in xs if cond": the loop only sees the items that pass
      std::vector<Value> kept;
      for (Value& it : items) {
        step();
        Frame probe;
        probe.parent = &frame;
        assign(s.target, it, probe);
        if (truthy(eval(*s.cond, probe))) kept.push_back(std::move(it));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(s.else_body, frame, out);  // break/continue there belong to an outer loop: none
      return;
    }
    auto loop = std::make_shared<Object>();
    loop->type_name = "LoopContext";
    std::weak_ptr<Object> weak = loop;
    Dict& a = *loop->attrs;
    int64_t n = static_cast<int64_t>(items.size());
    a.set(Value::str("length"), Value::integer(n));
    a.set(Value::str("depth"), Value::integer(1));
    a.set(Value::str("depth0"), Value::integer(0));
    a.set(Value::str("cycle"), Value::func("cycle", [weak](Interp& in, CallArgs& args) {
      auto l = weak.lock();
      if (args.pos.empty()) in.fail("no items for cycling given");
      int64_t k = l ? l->attrs->find_str("index0")->i : 0;
      return args.pos[static_cast<size_t>(k % static_cast<int64_t>(args.pos.size()))];
    }));
    auto last_changed = std::make_shared<std::optional<Value>>();
    a.set(Value::str("changed"), Value::func("changed", [last_changed](Interp&, CallArgs& args) {
      Value cur = Value::list(args.pos);
      if (*last_changed && py_equal(**last_changed, cur)) return Value::boolean(false);
      *last_changed = std::move(cur);
      return Value::boolean(true);
    }));
    // The per-iteration attributes get fixed slots, updated in place (the loop object is the
    // same across iterations, as jinja2's LoopContext).
    static const char* const kSlots[] = {"index0", "index", "revindex0", "revindex", "first", "last", "previtem", "nextitem"};
    size_t slot0 = a.items.size();
    for (const char* name : kSlots) a.set(Value::str(name), Value::none());
    const Value no_prev = Value::undefined("there is no previous item"), no_next = Value::undefined("there is no next item");
    Value loop_value = Value::object(loop);
    Frame iter;  // fresh (cleared) for each iteration: assignments in the body do not carry over
    iter.parent = &frame;
    for (int64_t k = 0; k < n; ++k) {
      line = s.line;
      step();
      auto slot = [&](size_t i) -> Value& { return a.items[slot0 + i].second; };
      slot(0) = Value::integer(k);
      slot(1) = Value::integer(k + 1);
      slot(2) = Value::integer(n - k - 1);
      slot(3) = Value::integer(n - k);
      slot(4) = Value::boolean(k == 0);
      slot(5) = Value::boolean(k == n - 1);
      slot(6) = k > 0 ? items[static_cast<size_t>(k - 1)] : no_prev;
      slot(7) = k + 1 < n ? items[static_cast<size_t>(k + 1)] : no_next;
      iter.vars.clear();
      assign(s.target, items[static_cast<size_t>(k)], iter);
      iter.vars["loop"] = loop_value;
      if (exec(s.body, iter, out) == Flow::Break) break;
    }
  }

  void exec_call_block(const Stmt& s, Frame& frame, std::string& out) {
    // caller() renders the block body in a frame below this one; it may only run while this
    // statement does (the frame lives on this stack).
    auto alive = std::make_shared<bool>(true);
    std::shared_ptr<MacroDef> body = s.macro;
    Frame* where = &frame;
    Value caller = Value::func("caller", [alive, body, where](Interp& in, CallArgs& args) {
      if (!*alive) in.fail("caller() used after its call block ended");
      return in.call_macro(*body, args, where, nullptr);
    });
    const Expr& call = *s.expr;
    Value callee = eval(*call.items[0], frame);
    CallArgs args = eval_args(call.args, frame);
    args.kw.emplace_back("caller", caller);
    Value v;
    try {
      v = this->call(callee, args);
    } catch (...) {
      *alive = false;
      throw;
    }
    *alive = false;
    line = s.line;
    append_str(out, v);
    check_output(out);
  }

  // ---- expressions ----

  CallArgs eval_args(const std::vector<Arg>& args, Frame& frame) {
    CallArgs ca;
    for (const Arg& a : args) {
      if (a.name.empty()) {
        ca.pos.push_back(eval(*a.value, frame));
      } else {
        ca.kw.emplace_back(a.name, eval(*a.value, frame));
      }
    }
    return ca;
  }

  // Applies a filter chain whose innermost input is `input` ({% filter %}, {% set x | f %}).
  Value apply_chain(const Expr& chain, Value input, Frame& frame) {
    const Value* saved = chain_input_;
    chain_input_ = &input;
    Value v = eval(chain, frame);
    chain_input_ = saved;
    return v;
  }

  Value eval(const Expr& e, Frame& frame) {
    line = e.line;
    step();
    switch (e.kind) {
      case Expr::K::Const: return e.cval;
      case Expr::K::Name: {
        if (const Value* v = frame.find(e.name)) return *v;
        return Value::undefined(fmt::format("'{}' is undefined", e.name));
      }
      case Expr::K::List:
      case Expr::K::Tuple: {
        std::vector<Value> items;
        items.reserve(e.items.size());
        for (const auto& x : e.items) items.push_back(eval(*x, frame));
        return Value::list(std::move(items), e.kind == Expr::K::Tuple);
      }
      case Expr::K::Dict: {
        auto d = std::make_shared<Dict>();
        for (size_t k = 0; k + 1 < e.items.size(); k += 2) {
          Value key = eval(*e.items[k], frame);
          Value val = eval(*e.items[k + 1], frame);
          line = e.line;
          d->set(std::move(key), std::move(val));
        }
        return Value::dict(std::move(d));
      }
      case Expr::K::Getattr: {
        Value obj = eval(*e.items[0], frame);
        line = e.line;
        return getattr(obj, e.name);
      }
      case Expr::K::Getitem: {
        Value obj = eval(*e.items[0], frame);
        const Expr& key = *e.items[1];
        if (key.kind == Expr::K::Slice) return slice(obj, key, frame);
        Value k = eval(key, frame);
        line = e.line;
        return getitem(obj, k);
      }
      case Expr::K::Slice: fail("slice outside of a subscript");
      case Expr::K::Call: return eval_call(e, frame);
      case Expr::K::Filter: {
        Value input = e.items[0] ? eval(*e.items[0], frame) : *chain_input_;
        CallArgs args = eval_args(e.args, frame);
        line = e.line;
        return (*static_cast<const FilterFn*>(e.impl))(*this, input, args);
      }
      case Expr::K::Test: {
        Value input = eval(*e.items[0], frame);
        CallArgs args = eval_args(e.args, frame);
        line = e.line;
        return Value::boolean((*static_cast<const TestFn*>(e.impl))(*this, input, args));
      }
      case Expr::K::Neg:
      case Expr::K::Pos: {
        Value v = eval(*e.items[0], frame);
        line = e.line;
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number()) fail("bad operand type for unary {}: '{}'", e.kind == Expr::K::Neg ? '-' : '+', type_name(v));
        if (e.kind == Expr::K::Pos) return v.kind == Value::Kind::Bool ? Value::integer(v.i) : v;
        if (v.kind == Value::Kind::Float) return Value::number(-v.f);
        if (v.i == std::numeric_limits<int64_t>::min()) fail("integer overflow");
        return Value::integer(-v.i);
      }
      case Expr::K::Not: return Value::boolean(!truthy(eval(*e.items[0], frame)));
      case Expr::K::And: {
        Value a = eval(*e.items[0], frame);
        return truthy(a) ? eval(*e.items[1], frame) : a;
      }
      case Expr::K::Or: {
        Value a = eval(*e.items[0], frame);
        return truthy(a) ? a : eval(*e.items[1], frame);
      }
      case Expr::K::Binary: {
        Value a = eval(*e.items[0], frame);
        Value b = eval(*e.items[1], frame);
        line = e.line;
        return binary_op(e.name, a, b);
      }
      case Expr::K::Concat: {
        std::string s;
        for (const auto& x : e.items) {
          append_str(s, eval(*x, frame));
          charge(s.size());
        }
        return Value::str(std::move(s));
      }
      case Expr::K::Compare: {
        Value left = eval(*e.items[0], frame);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.items[k + 1], frame);
          line = e.line;
          if (!compare(e.ops[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::K::CondExpr: {
        if (truthy(eval(*e.items[1], frame))) return eval(*e.items[0], frame);
        if (e.items[2]) return eval(*e.items[2], frame);
        return Value::undefined(fmt::format(
            "the inline if-expression on line {} evaluated to false and no else section was defined.", e.line));
      }
    }
    return Value();
  }

  Value eval_call(const Expr& e, Frame& frame) {
    const Expr& callee = *e.items[0];
    if (callee.kind == Expr::K::Getattr) {  // obj.method(...) without building a bound method
      Value obj = eval(*callee.items[0], frame);
      if ((obj.is_str() || obj.is_dict() || obj.is_list()) && has_method(obj, callee.name)) {
        CallArgs args = eval_args(e.args, frame);
        line = e.line;
        if (is_unsafe_method(obj, callee.name))
          fail("access to attribute '{}' of '{}' object is unsafe.", callee.name, type_name(obj));
        bool found = false;
        return call_method(*this, obj, callee.name, args, found);
      }
      line = e.line;
      Value f = getattr(obj, callee.name);
      CallArgs args = eval_args(e.args, frame);
      line = e.line;
      return call(f, args);
    }
    Value f = eval(callee, frame);
    CallArgs args = eval_args(e.args, frame);
    line = e.line;
    return call(f, args);
  }

  // Python's slice of a str, list or tuple.
  Value slice(const Value& obj, const Expr& sl, Frame& frame) {
    auto part = [&](size_t k) -> std::optional<int64_t> {
      if (!sl.items[k]) return std::nullopt;
      Value v = eval(*sl.items[k], frame);
      if (v.is_none()) return std::nullopt;
      if (v.is_undefined()) undefined_error(v);
      if (!v.is_int()) fail("slice indices must be integers or None");
      return v.i;
    };
    std::optional<int64_t> start = part(0), stop = part(1), stp = part(2);
    line = sl.line;
    if (obj.is_undefined()) undefined_error(obj);
    if (!obj.is_str() && !obj.is_list()) return Value::undefined(fmt::format("{} cannot be sliced", object_type_repr(obj)));
    int64_t step_v = stp.value_or(1);
    if (step_v == 0) fail("slice step cannot be zero");
    std::u32string cps;
    bool ascii = obj.is_str() && is_ascii(obj.s());
    if (obj.is_str() && !ascii) cps = decode(obj.s());
    int64_t len = obj.is_list() ? static_cast<int64_t>(obj.as_list().items.size())
                                : ascii ? static_cast<int64_t>(obj.s().size()) : static_cast<int64_t>(cps.size());
    auto adjust = [&](std::optional<int64_t> v, bool is_start) {
      int64_t lower = step_v > 0 ? 0 : -1, upper = step_v > 0 ? len : len - 1;
      if (!v) return (step_v > 0) == is_start ? lower : upper;
      int64_t x = *v;
      if (x < 0) {
        x += len;
        if (x < lower) x = lower;
      } else if (x > upper) {
        x = upper;
      }
      return x;
    };
    int64_t a = adjust(start, true), b = adjust(stop, false);
    std::vector<size_t> idx;
    for (int64_t k = a; step_v > 0 ? k < b : k > b; k += step_v) idx.push_back(static_cast<size_t>(k));
    step(static_cast<int64_t>(idx.size() / 16));
    if (obj.is_list()) {
      std::vector<Value> items;
      items.reserve(idx.size());
      for (size_t k : idx) items.push_back(obj.as_list().items[k]);
      return Value::list(std::move(items), obj.tuple);
    }
    std::string out;
    if (ascii) {
      for (size_t k : idx) out += obj.s()[k];
    } else {
      for (size_t k : idx) append_utf8(out, cps[k]);
    }
    return Value::str(std::move(out));
  }

  bool contains(const Value& container, const Value& item) {
    switch (container.kind) {
      case Value::Kind::Undefined: return false;
      case Value::Kind::Str:
        if (item.is_undefined()) undefined_error(item);
        if (!item.is_str()) fail("'in <string>' requires string as left operand, not {}", type_name(item));
        return container.s().find(item.s()) != std::string::npos;
      case Value::Kind::List:
        for (const Value& x : container.as_list().items) {
          step();
          if (py_equal(x, item)) return true;
        }
        return false;
      case Value::Kind::Dict:
        if (!hashable(item)) fail("unhashable type: '{}'", type_name(item));
        return container.as_dict().find(item) != nullptr;
      default: fail("argument of type '{}' is not iterable", type_name(container));
    }
  }

  bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return py_equal(a, b);
    if (op == "!=") return !py_equal(a, b);
    if (op == "in") return contains(b, a);
    if (op == "not in") return !contains(b, a);
    if (a.is_undefined()) undefined_error(a);
    if (b.is_undefined()) undefined_error(b);
    try {
      if (op == "<") return py_less(a, b);
      if (op == ">") return py_less(b, a);
      if (op == "<=") return py_less(a, b) || py_equal(a, b);
      if (op == ">=") return py_less(b, a) || py_equal(a, b);
    } catch (const ValueError&) {
      fail("'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b));
    }
    fail("unknown comparison '{}'", op);
  }

 public:
  Value binary_op(const std::string& op, const Value& a, const Value& b) {
    if (a.is_undefined()) undefined_error(a);
    if (b.is_undefined()) undefined_error(b);
    char c0 = op[0];
    bool two = op.size() == 2;
    if (a.is_number() && b.is_number()) {
      bool ints = a.is_int() && b.is_int();
      int64_t r = 0;
      switch (two ? (c0 == '/' ? 'f' : 'p') : c0) {
        case '+':
          if (!ints) return Value::number(a.as_double() + b.as_double());
          if (__builtin_add_overflow(a.i, b.i, &r)) fail("integer overflow");
          return Value::integer(r);
        case '-':
          if (!ints) return Value::number(a.as_double() - b.as_double());
          if (__builtin_sub_overflow(a.i, b.i, &r)) fail("integer overflow");
          return Value::integer(r);
        case '*':
          if (!ints) return Value::number(a.as_double() * b.as_double());
          if (__builtin_mul_overflow(a.i, b.i, &r)) fail("integer overflow");
          return Value::integer(r);
        case '/':
          if (b.as_double() == 0) fail("division by zero");
          return Value::number(a.as_double() / b.as_double());
        case 'f':  // floor division
        case '%': {
          bool floor_div = c0 == '/';
          if (ints) {
            if (b.i == 0) fail("{}", floor_div ? "integer division or modulo by zero" : "integer modulo by zero");
            if (a.i == std::numeric_limits<int64_t>::min() && b.i == -1) {
              if (floor_div) fail("integer overflow");
              return Value::integer(0);
            }
            int64_t q = a.i / b.i, m = a.i % b.i;
            if (m != 0 && ((m < 0) != (b.i < 0))) {
              m += b.i;
              --q;
            }
            return Value::integer(floor_div ? q : m);
          }
          double x = a.as_double(), y = b.as_double();
          if (y == 0) fail("{}", floor_div ? "float floor division by zero" : "float modulo");
          double mod = std::fmod(x, y), div = (x - mod) / y;  // CPython's float_divmod
          if (mod != 0) {
            if ((y < 0) != (mod < 0)) {
              mod += y;
              div -= 1.0;
            }
          } else {
            mod = std::copysign(0.0, y);
          }
          double fl;
          if (div != 0) {
            fl = std::floor(div);
            if (div - fl > 0.5) fl += 1.0;
          } else {
            fl = std::copysign(0.0, x / y);
          }
          return Value::number(floor_div ? fl : mod);
        }
        case 'p': {  // **
          if (ints && b.i >= 0) {
            int64_t base = a.i, e = b.i, acc = 1;
            while (e > 0) {
              if ((e & 1) && __builtin_mul_overflow(acc, base, &acc)) fail("integer overflow");
              e >>= 1;
              if (e > 0 && __builtin_mul_overflow(base, base, &base)) fail("integer overflow");
            }
            return Value::integer(acc);
          }
          double x = a.as_double(), y = b.as_double();
          if (x == 0 && y < 0) fail("0.0 cannot be raised to a negative power");
          if (x < 0 && y != std::floor(y)) fail("a negative number raised to a fractional power is complex");
          return Value::number(std::pow(x, y));
        }
      }
    }
    if (op == "+") {
      if (a.is_str() && b.is_str()) {
        charge(a.s().size() + b.s().size());
        return Value::str(a.s() + b.s());
      }
      if (a.is_list() && b.is_list() && a.tuple == b.tuple) {
        std::vector<Value> items = a.as_list().items;
        const auto& more = b.as_list().items;
        charge(shallow_bytes(a) + shallow_bytes(b));
        items.insert(items.end(), more.begin(), more.end());
        return Value::list(std::move(items), a.tuple);
      }
    }
    if (op == "*" && (a.is_int() || b.is_int()) && (a.is_str() || b.is_str() || a.is_list() || b.is_list())) {
      const Value& seq = a.is_int() ? b : a;
      int64_t n = std::max<int64_t>(0, (a.is_int() ? a : b).i);
      size_t unit = seq.is_str() ? seq.s().size() : shallow_bytes(seq);
      if (n > 0 && unit > 0 && static_cast<uint64_t>(n) > opts.max_output_bytes / unit)
        fail("value exceeds the output limit ({} bytes)", opts.max_output_bytes);
      charge(unit * static_cast<size_t>(n));
      if (seq.is_str()) {
        std::string s;
        s.reserve(unit * static_cast<size_t>(n));
        for (int64_t k = 0; k < n; ++k) s += seq.s();
        return Value::str(std::move(s));
      }
      const auto& src = seq.as_list().items;
      if (static_cast<uint64_t>(n) * src.size() > opts.max_output_bytes) fail("list too large");
      std::vector<Value> items;
      for (int64_t k = 0; k < n; ++k) items.insert(items.end(), src.begin(), src.end());
      return Value::list(std::move(items), seq.tuple);
    }
    if (op == "%" && a.is_str()) return percent_format(a.s(), b);
    fail("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b));
  }

  // Bytes a shallow copy of a list's items copies (strings are shared, so count them small).
  static size_t shallow_bytes(const Value& v) { return v.as_list().items.size() * sizeof(Value); }

  // Python's "format" % args for %s %r %d %i %f %x %X %o %e %g %c and %%.
  Value percent_format(const std::string& fmt_s, const Value& args) {
    std::vector<Value> pos;
    const Dict* named = nullptr;
    if (args.is_list() && args.tuple) {
      pos = args.as_list().items;
    } else if (args.is_dict()) {
      named = &args.as_dict();
      pos.push_back(args);
    } else {
      pos.push_back(args);
    }
    size_t next_arg = 0;
    std::string out;
    for (size_t i = 0; i < fmt_s.size(); ++i) {
      char c = fmt_s[i];
      if (c != '%') {
        out += c;
        continue;
      }
      if (++i >= fmt_s.size()) fail("incomplete format");
      const Value* arg = nullptr;
      if (fmt_s[i] == '(') {
        size_t close = fmt_s.find(')', i);
        if (close == std::string::npos || !named) fail("format requires a mapping");
        arg = named->find(Value::str(fmt_s.substr(i + 1, close - i - 1)));
        if (!arg) fail("KeyError: {}", py_str_repr(fmt_s.substr(i + 1, close - i - 1)));
        i = close + 1;
      }
      std::string spec;
      while (i < fmt_s.size() && std::strchr("-+ #0123456789.", fmt_s[i])) spec += fmt_s[i++];
      if (i >= fmt_s.size()) fail("incomplete format");
      char conv = fmt_s[i];
      if (conv == '%') {
        out += '%';
        continue;
      }
      if (!arg) {
        if (next_arg >= pos.size()) fail("not enough arguments for format string");
        arg = &pos[next_arg++];
      }
      out += format_one(spec, conv, *arg);
    }
    if (!named && next_arg < pos.size()) fail("not all arguments converted during string formatting");
    charge(out.size());
    return Value::str(std::move(out));
  }

  std::string format_one(const std::string& spec, char conv, const Value& v) {
    char buf[512];
    std::string cspec = "%" + spec;
    if (spec.size() > 20) fail("format specification too long");
    switch (conv) {
      case 's':
      case 'r': {
        std::string s = conv == 's' ? to_str(v) : [&] { std::string r; append_repr(r, v); return r; }();
        if (spec.empty()) return s;
        // width / precision apply to code points in Python; approximate with bytes for ASCII.
        std::snprintf(buf, sizeof buf, (cspec + "s").c_str(), s.c_str());
        return buf;
      }
      case 'd': case 'i': case 'x': case 'X': case 'o': case 'c': {
        if (!v.is_number()) fail("%{} format: a real number is required, not {}", conv, type_name(v));
        long long n = v.kind == Value::Kind::Float ? static_cast<long long>(v.f) : v.i;
        if (conv == 'c') {
          std::string s;
          append_utf8(s, static_cast<char32_t>(n));
          return s;
        }
        std::snprintf(buf, sizeof buf, (cspec + "ll" + (conv == 'i' ? 'd' : conv)).c_str(), n);
        return buf;
      }
      case 'f': case 'F': case 'e': case 'E': case 'g': case 'G':
        if (!v.is_number()) fail("must be real number, not {}", type_name(v));
        std::snprintf(buf, sizeof buf, (cspec + conv).c_str(), v.as_double());
        return buf;
      default: fail("unsupported format character '{}'", conv);
    }
  }

 private:
  const Program& prog_;

 public:
  const RenderOptions& opts;

 private:
  Frame globals_, root_;
  int64_t steps_ = 0;
  int call_depth_ = 0;
  const Value* chain_input_ = nullptr;
};

// ------------------------------------------------------------------------------------------------
// 5. Methods, filters, tests, globals
// ------------------------------------------------------------------------------------------------

// Argument `idx` of a call, given positionally or as keyword `name`; null when absent.
const Value* arg(const CallArgs& a, size_t idx, std::string_view name) {
  if (idx < a.pos.size()) return &a.pos[idx];
  for (const auto& [k, v] : a.kw)
    if (k == name) return &v;
  return nullptr;
}

// Rejects extra positional arguments and unknown keywords.
void check_args(Interp& in, const CallArgs& a, const char* fname, std::initializer_list<std::string_view> names) {
  if (a.pos.size() > names.size()) in.fail("{}() takes at most {} argument(s) ({} given)", fname, names.size(), a.pos.size());
  for (const auto& [k, v] : a.kw) {
    auto it = std::find(names.begin(), names.end(), std::string_view(k));
    if (it == names.end()) in.fail("{}() got an unexpected keyword argument '{}'", fname, k);
    if (static_cast<size_t>(it - names.begin()) < a.pos.size()) in.fail("{}() got multiple values for argument '{}'", fname, k);
  }
}

bool opt_bool(const CallArgs& a, size_t idx, std::string_view name, bool dflt) {
  const Value* v = arg(a, idx, name);
  return v ? truthy(*v) : dflt;
}

int64_t opt_int(Interp& in, const CallArgs& a, size_t idx, std::string_view name, int64_t dflt) {
  const Value* v = arg(a, idx, name);
  if (!v || v->is_none()) return dflt;
  if (!v->is_int()) in.fail("'{}' must be an integer, not {}", name, type_name(*v));
  return v->i;
}

const std::string& need_str(Interp& in, const Value& v, const char* what) {
  if (v.is_undefined()) in.undefined_error(v);
  if (!v.is_str()) in.fail("{} must be str, not {}", what, type_name(v));
  return v.s();
}

// ---- str methods ----

std::u32string strip_set(Interp& in, const CallArgs& a) {
  const Value* c = arg(a, 0, "chars");
  if (!c || c->is_none()) return {};
  return decode(need_str(in, *c, "strip arg"));
}

std::string py_strip(std::string_view s, const std::u32string& chars, bool left, bool right) {
  auto strip_it = [&](char32_t c) { return chars.empty() ? py_space(c) : chars.find(c) != std::u32string::npos; };
  std::u32string u = decode(s);
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return encode(std::u32string_view(u).substr(b, e - b));
}

std::vector<Value> py_split(Interp& in, const std::string& s, const Value* sep, int64_t maxsplit, bool from_right) {
  std::vector<Value> parts;
  if (!sep || sep->is_none()) {  // runs of whitespace, no empty strings
    std::u32string u = decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < u.size()) {
      while (i < u.size() && py_space(u[i])) ++i;
      if (i >= u.size()) break;
      size_t j = i;
      while (j < u.size() && !py_space(u[j])) ++j;
      words.emplace_back(i, j);
      i = j;
    }
    if (maxsplit >= 0 && static_cast<int64_t>(words.size()) > maxsplit) {
      if (!from_right) {
        size_t k = static_cast<size_t>(maxsplit);
        size_t start = words[k].first, end = u.size();  // the rest keeps its trailing whitespace
        words.resize(k);
        words.emplace_back(start, end);
      } else {
        size_t k = words.size() - static_cast<size_t>(maxsplit);
        size_t start = 0, end = words[k - 1].second;  // the rest keeps its leading whitespace
        words.erase(words.begin(), words.begin() + static_cast<std::ptrdiff_t>(k));
        words.insert(words.begin(), {start, end});
      }
    }
    for (auto [a, b] : words) parts.push_back(Value::str(encode(std::u32string_view(u).substr(a, b - a))));
    return parts;
  }
  const std::string& d = need_str(in, *sep, "separator");
  if (d.empty()) in.fail("empty separator");
  std::vector<std::string> out;
  if (!from_right) {
    size_t pos = 0;
    while (true) {
      size_t k = (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) ? s.find(d, pos) : std::string::npos;
      if (k == std::string::npos) {
        out.push_back(s.substr(pos));
        break;
      }
      out.push_back(s.substr(pos, k - pos));
      pos = k + d.size();
    }
  } else {
    size_t end = s.size();
    while (true) {
      size_t k = (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) && end >= d.size() ? s.rfind(d, end - d.size())
                                                                                                      : std::string::npos;
      if (k == std::string::npos) {
        out.push_back(s.substr(0, end));
        break;
      }
      out.push_back(s.substr(k + d.size(), end - k - d.size()));
      end = k;
    }
    std::reverse(out.begin(), out.end());
  }
  in.step(static_cast<int64_t>(out.size()));
  for (auto& p : out) parts.push_back(Value::str(std::move(p)));
  return parts;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
  std::vector<std::string> lines;
  std::u32string u = decode(s);
  size_t start = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    if (!py_line_break(u[i])) continue;
    size_t eol = i;
    if (u[i] == '\r' && i + 1 < u.size() && u[i + 1] == '\n') ++i;
    lines.push_back(encode(std::u32string_view(u).substr(start, (keepends ? i + 1 : eol) - start)));
    start = i + 1;
  }
  if (start < u.size()) lines.push_back(encode(std::u32string_view(u).substr(start)));
  return lines;
}

// Python's str.replace (count < 0: all).
std::string py_replace(Interp& in, const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {  // inserts `repl` between characters and at both ends
    std::u32string u = decode(s);
    int64_t done = 0;
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (k < u.size()) append_utf8(out, u[k]);
      in.charge(out.size());
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t k = s.find(old, pos);
    if (k == std::string::npos) break;
    out.append(s, pos, k - pos);
    out += repl;
    pos = k + old.size();
    ++done;
    in.charge(out.size());
  }
  out.append(s, pos);
  in.charge(out.size());
  return out;
}

bool prefix_match(Interp& in, const std::string& s, const Value& p, bool suffix) {
  auto one = [&](const Value& x) {
    const std::string& t = need_str(in, x, suffix ? "endswith arg" : "startswith arg");
    if (t.size() > s.size()) return false;
    return suffix ? s.compare(s.size() - t.size(), t.size(), t) == 0 : s.compare(0, t.size(), t) == 0;
  };
  if (p.is_list() && p.tuple) {
    for (const Value& x : p.as_list().items)
      if (one(x)) return true;
    return false;
  }
  return one(p);
}

bool all_chars(const std::string& s, bool (*pred)(char32_t)) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size();)
    if (!pred(decode_at(s, i))) return false;
  return true;
}

bool is_alpha_cp(char32_t c) {
  if (c >= 0xDC80 && c <= 0xDCFF) return false;
  int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_UPPERCASE_LETTER || t == U_LOWERCASE_LETTER || t == U_TITLECASE_LETTER || t == U_MODIFIER_LETTER ||
         t == U_OTHER_LETTER;
}
bool is_digit_cp(char32_t c) { return (c >= 0xDC80 && c <= 0xDCFF) ? false : u_isdigit(static_cast<UChar32>(c)) != 0; }
bool is_alnum_cp(char32_t c) { return is_alpha_cp(c) || is_digit_cp(c); }
bool is_space_cp(char32_t c) { return py_space(c); }

// "{} {0} {name}" formatting of str.format (conversions !s/!r; no format specs).
std::string py_format(Interp& in, const std::string& f, const CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    char c = f[i];
    if (c == '}') {
      if (i + 1 < f.size() && f[i + 1] == '}') ++i;
      else in.fail("single '}}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < f.size() && f[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    size_t close = f.find('}', i);
    if (close == std::string::npos) in.fail("single '{{' encountered in format string");
    std::string field = f.substr(i + 1, close - i - 1);
    i = close;
    char conv = 's';
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conv = bang + 1 < field.size() ? field[bang + 1] : 's';
      field.resize(bang);
    }
    if (field.find(':') != std::string::npos) in.fail("format specifications in str.format are not supported");
    const Value* v = nullptr;
    if (field.empty()) {
      if (auto_idx >= a.pos.size()) in.fail("Replacement index {} out of range for positional args tuple", auto_idx);
      v = &a.pos[auto_idx++];
    } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      size_t k = std::stoul(field.substr(0, 9));
      if (k >= a.pos.size()) in.fail("Replacement index {} out of range for positional args tuple", k);
      v = &a.pos[k];
    } else {
      for (const auto& [k, x] : a.kw)
        if (k == field) v = &x;
      if (!v) in.fail("KeyError: '{}'", field);
    }
    if (conv == 'r') append_repr(out, *v);
    else append_str(out, *v);
    in.charge(out.size());
  }
  return out;
}

size_t cp_index(const std::string& s, size_t byte_pos) { return cp_length(std::string_view(s).substr(0, byte_pos)); }

std::string pad_center(const std::string& s, int64_t width, int mode /*0 center, 1 ljust, 2 rjust*/, char32_t fill = ' ') {
  int64_t len = static_cast<int64_t>(cp_length(s));
  if (width <= len) return s;
  int64_t marg = width - len, left = mode == 0 ? marg / 2 + (marg & width & 1) : mode == 1 ? 0 : marg;
  std::string f;
  append_utf8(f, fill);
  std::string out;
  for (int64_t k = 0; k < left; ++k) out += f;
  out += s;
  for (int64_t k = 0; k < marg - left; ++k) out += f;
  return out;
}

bool has_method(const Value& obj, const std::string& name) {
  static const std::unordered_map<std::string, int> kStr = {
      {"strip", 0}, {"lstrip", 0}, {"rstrip", 0}, {"split", 0}, {"rsplit", 0}, {"splitlines", 0}, {"startswith", 0},
      {"endswith", 0}, {"upper", 0}, {"lower", 0}, {"title", 0}, {"capitalize", 0}, {"casefold", 0}, {"swapcase", 0},
      {"replace", 0}, {"find", 0}, {"rfind", 0}, {"index", 0}, {"rindex", 0}, {"count", 0}, {"join", 0}, {"format", 0},
      {"isdigit", 0}, {"isdecimal", 0}, {"isnumeric", 0}, {"isalpha", 0}, {"isalnum", 0}, {"isspace", 0},
      {"islower", 0}, {"isupper", 0}, {"removeprefix", 0}, {"removesuffix", 0}, {"center", 0}, {"ljust", 0},
      {"rjust", 0}, {"zfill", 0}, {"partition", 0}, {"rpartition", 0}};
  static const std::unordered_map<std::string, int> kDict = {{"items", 0}, {"keys", 0}, {"values", 0}, {"get", 0}, {"copy", 0},
                                                             {"clear", 1}, {"pop", 1}, {"popitem", 1}, {"setdefault", 1},
                                                             {"update", 1}};
  static const std::unordered_map<std::string, int> kList = {{"index", 0}, {"count", 0}, {"copy", 0}, {"append", 1},
                                                             {"extend", 1}, {"insert", 1}, {"pop", 1}, {"remove", 1},
                                                             {"reverse", 1}, {"sort", 1}, {"clear", 1}};
  if (obj.is_str()) return kStr.count(name) != 0;
  if (obj.is_dict()) return kDict.count(name) != 0;
  if (obj.is_list()) return obj.tuple ? (name == "index" || name == "count") : kList.count(name) != 0;
  return false;
}

// Methods that modify a list or dict: jinja2's ImmutableSandboxedEnvironment refuses them.
bool is_unsafe_method(const Value& obj, const std::string& name) {
  if (obj.is_dict()) return name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" || name == "update";
  if (obj.is_list() && !obj.tuple)
    return name == "append" || name == "extend" || name == "insert" || name == "pop" || name == "remove" ||
           name == "reverse" || name == "sort" || name == "clear";
  return false;
}

Value str_method(Interp& in, const std::string& s, const std::string& m, CallArgs& a) {
  auto no_args = [&] { check_args(in, a, m.c_str(), {}); };
  if (m == "strip" || m == "lstrip" || m == "rstrip") {
    check_args(in, a, m.c_str(), {"chars"});
    return Value::str(py_strip(s, strip_set(in, a), m != "rstrip", m != "lstrip"));
  }
  if (m == "split" || m == "rsplit") {
    check_args(in, a, m.c_str(), {"sep", "maxsplit"});
    return Value::list(py_split(in, s, arg(a, 0, "sep"), opt_int(in, a, 1, "maxsplit", -1), m == "rsplit"));
  }
  if (m == "splitlines") {
    check_args(in, a, m.c_str(), {"keepends"});
    std::vector<Value> out;
    for (auto& l : py_splitlines(s, opt_bool(a, 0, "keepends", false))) out.push_back(Value::str(std::move(l)));
    return Value::list(std::move(out));
  }
  if (m == "startswith" || m == "endswith") {
    check_args(in, a, m.c_str(), {"prefix"});
    const Value* p = arg(a, 0, "prefix");
    if (!p) in.fail("{}() takes at least 1 argument (0 given)", m);
    return Value::boolean(prefix_match(in, s, *p, m == "endswith"));
  }
  if (m == "upper" || m == "lower" || m == "casefold") {
    no_args();
    return Value::str(case_map(s, m == "upper"));
  }
  if (m == "title") {
    no_args();
    return Value::str(py_title(s));
  }
  if (m == "capitalize") {
    no_args();
    return Value::str(py_capitalize(s));
  }
  if (m == "swapcase") {
    no_args();
    std::string out;
    for (size_t i = 0; i < s.size();) {
      char32_t c = decode_at(s, i);
      bool up = c < 0xDC80 || c > 0xDCFF ? u_isupper(static_cast<UChar32>(c)) : false;
      append_cased(out, c, up ? 0 : 1);
    }
    return Value::str(std::move(out));
  }
  if (m == "replace") {
    check_args(in, a, m.c_str(), {"old", "new", "count"});
    const Value *o = arg(a, 0, "old"), *n = arg(a, 1, "new");
    if (!o || !n) in.fail("replace() takes at least 2 arguments");
    return Value::str(py_replace(in, s, need_str(in, *o, "replace arg"), need_str(in, *n, "replace arg"), opt_int(in, a, 2, "count", -1)));
  }
  if (m == "find" || m == "rfind" || m == "index" || m == "rindex" || m == "count") {
    check_args(in, a, m.c_str(), {"sub"});
    const Value* sub = arg(a, 0, "sub");
    if (!sub) in.fail("{}() takes at least 1 argument (0 given)", m);
    const std::string& t = need_str(in, *sub, "substring");
    if (m == "count") {
      if (t.empty()) return Value::integer(static_cast<int64_t>(cp_length(s)) + 1);
      int64_t n = 0;
      for (size_t k = s.find(t); k != std::string::npos; k = s.find(t, k + t.size())) ++n;
      return Value::integer(n);
    }
    size_t k = m[0] == 'r' ? s.rfind(t) : s.find(t);
    if (k == std::string::npos) {
      if (m == "index" || m == "rindex") in.fail("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(static_cast<int64_t>(cp_index(s, k)));
  }
  if (m == "join") {
    check_args(in, a, m.c_str(), {"iterable"});
    const Value* it = arg(a, 0, "iterable");
    if (!it) in.fail("join() takes exactly one argument (0 given)");
    std::vector<Value> items = in.iterate(*it);
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) {
      if (!items[k].is_str()) in.fail("sequence item {}: expected str instance, {} found", k, type_name(items[k]));
      if (k) out += s;
      out += items[k].s();
      in.charge(out.size());
    }
    return Value::str(std::move(out));
  }
  if (m == "format") return Value::str(py_format(in, s, a));
  if (m == "isdigit" || m == "isdecimal" || m == "isnumeric") return Value::boolean(all_chars(s, is_digit_cp));
  if (m == "isalpha") return Value::boolean(all_chars(s, is_alpha_cp));
  if (m == "isalnum") return Value::boolean(all_chars(s, is_alnum_cp));
  if (m == "isspace") return Value::boolean(all_chars(s, is_space_cp));
  if (m == "islower" || m == "isupper") {
    bool any = false;
    for (size_t i = 0; i < s.size();) {
      char32_t c = decode_at(s, i);
      if (c >= 0xDC80 && c <= 0xDCFF) continue;
      if (m == "islower" ? (u_isupper(static_cast<UChar32>(c)) || u_istitle(static_cast<UChar32>(c)))
                         : (u_islower(static_cast<UChar32>(c)) || u_istitle(static_cast<UChar32>(c))))
        return Value::boolean(false);
      if (is_cased(c)) any = true;
    }
    return Value::boolean(any);
  }
  if (m == "removeprefix" || m == "removesuffix") {
    check_args(in, a, m.c_str(), {"affix"});
    const Value* p = arg(a, 0, "affix");
    if (!p) in.fail("{}() takes exactly one argument (0 given)", m);
    const std::string& t = need_str(in, *p, m.c_str());
    if (m == "removeprefix") return Value::str(s.compare(0, t.size(), t) == 0 ? s.substr(t.size()) : s);
    return Value::str(t.size() <= s.size() && s.compare(s.size() - t.size(), t.size(), t) == 0 ? s.substr(0, s.size() - t.size()) : s);
  }
  if (m == "center" || m == "ljust" || m == "rjust" || m == "zfill") {
    check_args(in, a, m.c_str(), {"width", "fillchar"});
    int64_t w = opt_int(in, a, 0, "width", 0);
    in.charge(static_cast<size_t>(std::max<int64_t>(0, std::min<int64_t>(w, static_cast<int64_t>(in.opts.max_output_bytes) + 1))));
    if (m == "zfill") {
      std::string body = s, sign;
      if (!body.empty() && (body[0] == '-' || body[0] == '+')) {
        sign = body.substr(0, 1);
        body = body.substr(1);
      }
      return Value::str(sign + pad_center(body, w - static_cast<int64_t>(sign.size()), 2, '0'));
    }
    char32_t fill = ' ';
    if (const Value* f = arg(a, 1, "fillchar")) {
      std::u32string u = decode(need_str(in, *f, "fillchar"));
      if (u.size() != 1) in.fail("The fill character must be exactly one character long");
      fill = u[0];
    }
    return Value::str(pad_center(s, w, m == "center" ? 0 : m == "ljust" ? 1 : 2, fill));
  }
  if (m == "partition" || m == "rpartition") {
    check_args(in, a, m.c_str(), {"sep"});
    const Value* p = arg(a, 0, "sep");
    if (!p) in.fail("{}() takes exactly one argument (0 given)", m);
    const std::string& t = need_str(in, *p, "separator");
    if (t.empty()) in.fail("empty separator");
    size_t k = m == "partition" ? s.find(t) : s.rfind(t);
    if (k == std::string::npos)
      return m == "partition" ? Value::list({Value::str(s), Value::str(""), Value::str("")}, true)
                              : Value::list({Value::str(""), Value::str(""), Value::str(s)}, true);
    return Value::list({Value::str(s.substr(0, k)), Value::str(t), Value::str(s.substr(k + t.size()))}, true);
  }
  in.fail("'str' object has no attribute '{}'", m);
}

Value call_method(Interp& in, const Value& obj, const std::string& name, CallArgs& a, bool& found) {
  found = true;
  if (obj.is_str()) return str_method(in, obj.s(), name, a);
  if (obj.is_dict()) {
    const Dict& d = obj.as_dict();
    if (name == "items" || name == "keys" || name == "values") {
      check_args(in, a, name.c_str(), {});
      std::vector<Value> out;
      out.reserve(d.items.size());
      for (const auto& [k, v] : d.items) {
        if (name == "items") out.push_back(Value::list({k, v}, true));
        else out.push_back(name == "keys" ? k : v);
      }
      in.step(static_cast<int64_t>(out.size() / 16));
      return Value::list(std::move(out));
    }
    if (name == "get") {
      check_args(in, a, "get", {"key", "default"});
      const Value* k = arg(a, 0, "key");
      if (!k) in.fail("get expected at least 1 argument, got 0");
      if (!hashable(*k)) in.fail("unhashable type: '{}'", type_name(*k));
      if (const Value* v = d.find(*k)) return *v;
      const Value* dflt = arg(a, 1, "default");
      return dflt ? *dflt : Value::none();
    }
    if (name == "copy") return obj;  // values are immutable here: sharing is a copy
  }
  if (obj.is_list()) {
    const auto& items = obj.as_list().items;
    if (name == "copy") return obj;
    if (name == "index" || name == "count") {
      check_args(in, a, name.c_str(), {"value"});
      const Value* x = arg(a, 0, "value");
      if (!x) in.fail("{}() takes exactly one argument (0 given)", name);
      int64_t n = 0;
      for (size_t k = 0; k < items.size(); ++k) {
        if (!py_equal(items[k], *x)) continue;
        if (name == "index") return Value::integer(static_cast<int64_t>(k));
        ++n;
      }
      if (name == "index") in.fail("{} is not in list", [&] { std::string r; append_repr(r, *x); return r; }());
      return Value::integer(n);
    }
  }
  found = false;
  in.fail("'{}' object has no attribute '{}'", type_name(obj), name);
}

// ---- helpers of the filters ----

// jinja2's make_attrgetter: "a.b.0" looked up with getitem, part by part.
Value get_attribute_path(Interp& in, const Value& item, const std::string& path) {
  Value cur = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    Value key = numeric && part.size() < 18 ? Value::integer(std::stoll(part)) : Value::str(part);
    cur = in.getitem(cur, key);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// The key an attribute= / case_sensitive= filter sorts, groups or compares by.
struct KeyFn {
  std::vector<std::string> paths;  // "a,b" gives a tuple key
  bool lower = false;
  bool multi = false;  // sort: keys are tuples (so undefined parts compare equal)
  const Value* dflt = nullptr;

  Value operator()(Interp& in, const Value& item) const {
    auto one = [&](const std::string& p) {
      Value v = p.empty() ? item : get_attribute_path(in, item, p);
      if (v.is_undefined() && dflt) v = *dflt;
      if (lower && v.is_str()) v = Value::str(case_map(v.s(), false));
      return v;
    };
    if (!multi) return one(paths.empty() ? std::string() : paths[0]);
    std::vector<Value> parts;
    if (paths.empty()) parts.push_back(one(std::string()));
    for (const auto& p : paths) parts.push_back(one(p));
    return Value::list(std::move(parts), true);
  }
};

KeyFn make_key(Interp& in, const Value* attribute, bool case_sensitive, bool allow_multi) {
  KeyFn k;
  k.lower = !case_sensitive;
  if (attribute && !attribute->is_none()) {
    if (attribute->is_int()) {
      k.paths.push_back(std::to_string(attribute->i));
    } else {
      const std::string& a = need_str(in, *attribute, "attribute");
      if (allow_multi) {
        size_t start = 0;
        while (true) {
          size_t c = a.find(',', start);
          k.paths.push_back(a.substr(start, c == std::string::npos ? std::string::npos : c - start));
          if (c == std::string::npos) break;
          start = c + 1;
        }
      } else {
        k.paths.push_back(a);
      }
    }
  }
  return k;
}

void sort_values(Interp& in, std::vector<Value>& items, const KeyFn& key, bool reverse) {
  std::vector<std::pair<Value, size_t>> keyed;
  keyed.reserve(items.size());
  for (size_t k = 0; k < items.size(); ++k) keyed.emplace_back(key(in, items[k]), k);
  in.step(static_cast<int64_t>(items.size()));
  try {
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
      return reverse ? py_less(b.first, a.first) : py_less(a.first, b.first);
    });
  } catch (const ValueError& e) {
    in.fail("{}", e.what);
  }
  std::vector<Value> out;
  out.reserve(items.size());
  for (const auto& [k, idx] : keyed) out.push_back(items[idx]);
  items = std::move(out);
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

size_t length_of(Interp& in, const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::Str: return cp_length(v.s());
    case Value::Kind::List: return v.as_list().items.size();
    case Value::Kind::Dict: return v.as_dict().items.size();
    case Value::Kind::Object:
      if (v.as_object().assignable) break;
      return v.as_object().attrs->items.size();
    default: break;
  }
  in.fail("object of type '{}' has no len()", type_name(v));
}

const TestFn* find_test(const std::string& name);

// select / reject / selectattr / rejectattr.
Value select_impl(Interp& in, const Value& seq, CallArgs& a, bool by_attr, bool keep) {
  size_t skip = by_attr ? 1 : 0;
  std::string attr_name;
  if (by_attr) {
    if (a.pos.empty()) in.fail("missing parameter for attribute name");
    attr_name = need_str(in, a.pos[0], "attribute");
  }
  const TestFn* test = nullptr;
  CallArgs test_args;
  if (a.pos.size() > skip) {
    const std::string& tname = need_str(in, a.pos[skip], "test name");
    test = find_test(tname);
    if (!test) in.fail("no test named '{}'", tname);
    test_args.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(skip + 1), a.pos.end());
    test_args.kw = a.kw;
  }
  std::vector<Value> out;
  for (const Value& item : in.iterate(seq)) {
    in.step();
    Value v = by_attr ? get_attribute_path(in, item, attr_name) : item;
    CallArgs ta = test_args;
    bool r = test ? (*test)(in, v, ta) : truthy(v);
    if (r == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

// ---- filters ----

Value f_abs(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "abs", {});
  if (v.is_undefined()) in.undefined_error(v);
  if (v.kind == Value::Kind::Float) return Value::number(std::fabs(v.f));
  if (!v.is_int()) in.fail("bad operand type for abs(): '{}'", type_name(v));
  if (v.i == std::numeric_limits<int64_t>::min()) in.fail("integer overflow");
  return Value::integer(v.i < 0 ? -v.i : v.i);
}

Value f_attr(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "attr", {"name"});
  const Value* n = arg(a, 0, "name");
  if (!n) in.fail("attr() missing the attribute name");
  // Python's getattr(): attributes and methods only, never dict items.
  const std::string& name = need_str(in, *n, "attribute name");
  if (v.kind == Value::Kind::Object || v.is_undefined()) return in.getattr(v, name);
  if (has_method(v, name)) return in.bound_method(v, name);
  return in.no_attribute(v, name);
}

Value f_batch(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "batch", {"linecount", "fill_with"});
  int64_t n = opt_int(in, a, 0, "linecount", 0);
  if (n <= 0) in.fail("batch() needs a positive line count");
  const Value* fill = arg(a, 1, "fill_with");
  std::vector<Value> out, cur;
  for (Value& x : in.iterate(v)) {
    cur.push_back(std::move(x));
    if (static_cast<int64_t>(cur.size()) == n) {
      out.push_back(Value::list(std::move(cur)));
      cur.clear();
    }
  }
  if (!cur.empty()) {
    if (fill && !fill->is_none())
      while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*fill);
    out.push_back(Value::list(std::move(cur)));
  }
  return Value::list(std::move(out));
}

Value f_capitalize(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "capitalize", {});
  return Value::str(py_capitalize(to_str(v)));
}

Value f_center(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "center", {"width"});
  int64_t w = opt_int(in, a, 0, "width", 80);
  in.charge(static_cast<size_t>(std::max<int64_t>(0, std::min<int64_t>(w, static_cast<int64_t>(in.opts.max_output_bytes) + 1))));
  return Value::str(pad_center(to_str(v), w, 0));
}

Value f_default(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "default", {"default_value", "boolean"});
  const Value* d = arg(a, 0, "default_value");
  bool boolean = opt_bool(a, 1, "boolean", false);
  if (v.is_undefined() || (boolean && !truthy(v))) return d ? *d : Value::str("");
  return v;
}

Value f_dictsort(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "dictsort", {"case_sensitive", "by", "reverse"});
  if (!v.is_dict()) in.fail("dictsort: expected a mapping, got {}", type_name(v));
  bool cs = opt_bool(a, 0, "case_sensitive", false), rev = opt_bool(a, 2, "reverse", false);
  const Value* by = arg(a, 1, "by");
  std::string by_s = by ? need_str(in, *by, "by") : "key";
  if (by_s != "key" && by_s != "value") in.fail("You can only sort by either \"key\" or \"value\"");
  std::vector<Value> items;
  for (const auto& [k, x] : v.as_dict().items) items.push_back(Value::list({k, x}, true));
  KeyFn key;
  key.lower = !cs;
  key.paths.push_back(by_s == "key" ? "0" : "1");
  sort_values(in, items, key, rev);
  return Value::list(std::move(items));
}

Value f_escape(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "escape", {});
  return Value::str(html_escape(to_str(v)));
}

Value f_first(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "first", {});
  if (v.is_list()) {
    const auto& items = v.as_list().items;
    return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
  }
  std::vector<Value> items = in.iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}

Value f_last(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "last", {});
  if (v.is_list()) {
    const auto& items = v.as_list().items;
    return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
  }
  std::vector<Value> items = in.iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

std::optional<double> parse_float(std::string s) {
  s = py_strip(s, {}, true, true);
  s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
  if (s.empty() || s.find_first_of("xXpP") != std::string::npos) return std::nullopt;
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return d;
}

Value f_float(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "float", {"default"});
  const Value* d = arg(a, 0, "default");
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_str())
    if (auto x = parse_float(v.s())) return Value::number(*x);
  return d ? *d : Value::number(0.0);
}

Value f_int(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "int", {"default", "base"});
  const Value* d = arg(a, 0, "default");
  Value dflt = d ? *d : Value::integer(0);
  int64_t base = opt_int(in, a, 1, "base", 10);
  if (v.is_int()) return Value::integer(v.i);
  if (v.kind == Value::Kind::Float) {
    if (!std::isfinite(v.f) || std::fabs(v.f) >= 9.2e18) return dflt;
    return Value::integer(static_cast<int64_t>(v.f));
  }
  if (!v.is_str()) return dflt;
  std::string s = py_strip(v.s(), {}, true, true);
  s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
  if (base < 2 || base > 36) base = 10;
  int64_t n = 0;
  const char* b = s.c_str();
  bool neg = false;
  if (*b == '+' || *b == '-') neg = *b++ == '-';
  if (base == 16 && b[0] == '0' && (b[1] == 'x' || b[1] == 'X')) b += 2;
  auto res = std::from_chars(b, s.c_str() + s.size(), n, static_cast<int>(base));
  if (res.ec == std::errc() && res.ptr == s.c_str() + s.size() && res.ptr != b) return Value::integer(neg ? -n : n);
  if (auto x = parse_float(v.s()); x && std::isfinite(*x) && std::fabs(*x) < 9.2e18) return Value::integer(static_cast<int64_t>(*x));
  return dflt;
}

Value f_format(Interp& in, const Value& v, CallArgs& a) {
  if (!a.pos.empty() && !a.kw.empty()) in.fail("can't handle positional and keyword arguments at the same time");
  if (!a.kw.empty()) {
    auto d = std::make_shared<Dict>();
    for (auto& [k, x] : a.kw) d->set(Value::str(k), x);
    return in.percent_format(to_str(v), Value::dict(d));
  }
  return in.percent_format(to_str(v), Value::list(a.pos, true));
}

Value f_indent(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "indent", {"width", "first", "blank"});
  std::string ind;
  const Value* w = arg(a, 0, "width");
  if (w && w->is_str()) {
    ind = w->s();
  } else {
    int64_t n = opt_int(in, a, 0, "width", 4);
    ind.assign(static_cast<size_t>(std::clamp<int64_t>(n, 0, 4096)), ' ');
  }
  bool first = opt_bool(a, 1, "first", false), blank = opt_bool(a, 2, "blank", false);
  std::string s = to_str(v) + "\n";  // jinja2's quirk so that splitlines keeps a last empty line
  std::vector<std::string> lines = py_splitlines(s, false);
  std::string out;
  for (size_t k = 0; k < lines.size(); ++k) {
    if (k) {
      out += '\n';
      if (blank || !lines[k].empty()) out += ind;
    }
    out += lines[k];
    in.charge(out.size());
  }
  if (first) out = ind + out;
  return Value::str(std::move(out));
}

Value f_items(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "items", {});
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) in.fail("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (const auto& [k, x] : v.as_dict().items) out.push_back(Value::list({k, x}, true));
  return Value::list(std::move(out));
}

Value f_join(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "join", {"d", "attribute"});
  const Value* d = arg(a, 0, "d");
  std::string sep = d ? to_str(*d) : "";
  const Value* attr = arg(a, 1, "attribute");
  KeyFn key = make_key(in, attr, true, false);
  std::string out;
  bool first = true;
  for (const Value& x : in.iterate(v)) {
    if (!first) out += sep;
    first = false;
    append_str(out, attr ? key(in, x) : x);
    in.charge(out.size());
  }
  return Value::str(std::move(out));
}

Value f_length(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "length", {});
  return Value::integer(static_cast<int64_t>(length_of(in, v)));
}

Value f_list(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "list", {});
  return Value::list(in.iterate(v));
}

Value f_lower(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "lower", {});
  return Value::str(case_map(to_str(v), false));
}

Value f_upper(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "upper", {});
  return Value::str(case_map(to_str(v), true));
}

Value f_map(Interp& in, const Value& v, CallArgs& a) {
  std::vector<Value> items = in.iterate(v);
  std::vector<Value> out;
  out.reserve(items.size());
  if (a.pos.empty()) {  // map(attribute=..., default=...)
    const Value* attr = arg(a, 99, "attribute");
    if (!attr) in.fail("map() needs a filter name or attribute=");
    for (const auto& [k, x] : a.kw)
      if (k != "attribute" && k != "default") in.fail("map() got an unexpected keyword argument '{}'", k);
    KeyFn key = make_key(in, attr, true, false);
    key.dflt = arg(a, 99, "default");
    for (const Value& x : items) {
      in.step();
      out.push_back(key(in, x));
    }
    return Value::list(std::move(out));
  }
  const std::string& fname = need_str(in, a.pos[0], "filter name");
  const FilterFn* f = find_filter(fname);
  if (!f) in.fail("no filter named '{}'", fname);
  CallArgs rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (const Value& x : items) {
    in.step();
    CallArgs ra = rest;
    out.push_back((*f)(in, x, ra));
  }
  return Value::list(std::move(out));
}

Value min_max(Interp& in, const Value& v, CallArgs& a, bool want_max) {
  check_args(in, a, want_max ? "max" : "min", {"case_sensitive", "attribute"});
  KeyFn key = make_key(in, arg(a, 1, "attribute"), opt_bool(a, 0, "case_sensitive", false), false);
  std::vector<Value> items = in.iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key = key(in, items[0]);
  try {
    for (size_t k = 1; k < items.size(); ++k) {
      in.step();
      Value kk = key(in, items[k]);
      if (want_max ? py_less(best_key, kk) : py_less(kk, best_key)) {
        best = k;
        best_key = std::move(kk);
      }
    }
  } catch (const ValueError& e) {
    in.fail("{}", e.what);
  }
  return items[best];
}

Value f_max(Interp& in, const Value& v, CallArgs& a) { return min_max(in, v, a, true); }
Value f_min(Interp& in, const Value& v, CallArgs& a) { return min_max(in, v, a, false); }

Value f_reject(Interp& in, const Value& v, CallArgs& a) { return select_impl(in, v, a, false, false); }
Value f_rejectattr(Interp& in, const Value& v, CallArgs& a) { return select_impl(in, v, a, true, false); }
Value f_select(Interp& in, const Value& v, CallArgs& a) { return select_impl(in, v, a, false, true); }
Value f_selectattr(Interp& in, const Value& v, CallArgs& a) { return select_impl(in, v, a, true, true); }

Value f_replace(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "replace", {"old", "new", "count"});
  const Value *o = arg(a, 0, "old"), *n = arg(a, 1, "new");
  if (!o || !n) in.fail("replace() needs the old and the new string");
  return Value::str(py_replace(in, to_str(v), to_str(*o), to_str(*n), opt_int(in, a, 2, "count", -1)));
}

Value f_reverse(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "reverse", {});
  if (v.is_str()) {
    std::u32string u = decode(v.s());
    std::reverse(u.begin(), u.end());
    return Value::str(encode(u));
  }
  std::vector<Value> items = in.iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value f_round(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "round", {"precision", "method"});
  int64_t p = opt_int(in, a, 0, "precision", 0);
  const Value* m = arg(a, 1, "method");
  std::string method = m ? need_str(in, *m, "method") : "common";
  if (method != "common" && method != "ceil" && method != "floor") in.fail("method must be common, ceil or floor");
  if (v.is_undefined()) in.undefined_error(v);
  if (!v.is_number()) in.fail("type {} doesn't define __round__ method", type_name(v));
  if (method == "common") {
    if (v.is_int()) return Value::integer(v.i);  // round(int, n >= 0) keeps the int
    if (!std::isfinite(v.f)) return v;
    if (p >= 0 && p <= 300) {  // correctly rounded, half to even, as CPython's round()
      char buf[400];
      std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(p), v.f);
      return Value::number(std::strtod(buf, nullptr));
    }
    double scale = std::pow(10.0, static_cast<double>(-std::clamp<int64_t>(p, -308, 308)));
    return Value::number(std::nearbyint(v.f / scale) * scale);
  }
  double scale = std::pow(10.0, static_cast<double>(std::clamp<int64_t>(p, -308, 308)));
  double x = v.as_double() * scale;
  return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Value f_safe(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "safe", {});
  return v;
}

Value f_sort(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "sort", {"reverse", "case_sensitive", "attribute"});
  std::vector<Value> items = in.iterate(v);
  KeyFn key = make_key(in, arg(a, 2, "attribute"), opt_bool(a, 1, "case_sensitive", false), true);
  key.multi = true;
  sort_values(in, items, key, opt_bool(a, 0, "reverse", false));
  return Value::list(std::move(items));
}

Value f_string(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "string", {});
  return Value::str(to_str(v));
}

Value f_sum(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "sum", {"attribute", "start"});
  const Value* attr = arg(a, 0, "attribute");
  KeyFn key = make_key(in, attr, true, false);
  const Value* start = arg(a, 1, "start");
  Value acc = start ? *start : Value::integer(0);
  for (const Value& x : in.iterate(v)) {
    in.step();
    acc = in.binary_op("+", acc, attr ? key(in, x) : x);
  }
  return acc;
}

// jinja2's title filter: each word (split at whitespace, '-', and opening brackets) gets its
// first character upper-cased and the rest lower-cased.
Value f_title(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "title", {});
  std::string s = to_str(v), out;
  auto sep = [](char32_t c) { return py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
  bool word_start = true;
  for (size_t i = 0; i < s.size();) {
    char32_t c = decode_at(s, i);
    if (sep(c)) {
      append_utf8(out, c);
      word_start = true;
    } else {
      append_cased(out, c, word_start ? 1 : 0);
      word_start = false;
    }
  }
  return Value::str(std::move(out));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
// sort_keys=sort_keys); not HTML-escaped.
Value f_tojson(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonStyle st;
  st.ensure_ascii = opt_bool(a, 0, "ensure_ascii", false);
  st.sort_keys = opt_bool(a, 3, "sort_keys", false);
  const Value* ind = arg(a, 1, "indent");
  if (ind && !ind->is_none()) {
    if (ind->is_str()) st.indent = ind->s();
    else if (ind->is_int()) st.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(ind->i, 0, 4096)), ' ');
    else in.fail("tojson: indent must be an int or a str");
    st.item_sep = ",";
  }
  const Value* seps = arg(a, 2, "separators");
  if (seps && !seps->is_none()) {
    if (!seps->is_list() || seps->as_list().items.size() != 2) in.fail("tojson: separators must be a pair of strings");
    st.item_sep = need_str(in, seps->as_list().items[0], "separator");
    st.key_sep = need_str(in, seps->as_list().items[1], "separator");
  }
  if (v.is_undefined()) in.fail("Object of type Undefined is not JSON serializable");
  std::string out;
  json_dump(out, v, st, 0);
  in.charge(out.size());
  return Value::str(std::move(out));
}

Value f_trim(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "trim", {"chars"});
  return Value::str(py_strip(to_str(v), strip_set(in, a), true, true));
}

Value f_truncate(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "truncate", {"length", "killwords", "end", "leeway"});
  std::string s = to_str(v);
  int64_t length = opt_int(in, a, 0, "length", 255), leeway = opt_int(in, a, 3, "leeway", 5);
  bool killwords = opt_bool(a, 1, "killwords", false);
  const Value* e = arg(a, 2, "end");
  std::string end = e ? to_str(*e) : "...";
  std::u32string u = decode(s), ue = decode(end);
  if (length < static_cast<int64_t>(ue.size())) in.fail("expected length >= {}, got {}", ue.size(), length);
  if (static_cast<int64_t>(u.size()) <= length + leeway) return Value::str(s);
  size_t keep = static_cast<size_t>(length) - ue.size();
  std::u32string head = u.substr(0, keep);
  if (!killwords) {
    size_t sp = head.rfind(U' ');
    if (sp != std::u32string::npos) head.resize(sp);
  }
  return Value::str(encode(head) + end);
}

Value f_unique(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "unique", {"case_sensitive", "attribute"});
  KeyFn key = make_key(in, arg(a, 1, "attribute"), opt_bool(a, 0, "case_sensitive", false), false);
  std::vector<Value> out, seen;
  for (const Value& x : in.iterate(v)) {
    Value k = key(in, x);
    bool dup = false;
    for (const Value& s : seen) {
      in.step();
      if (py_equal(s, k)) {
        dup = true;
        break;
      }
    }
    if (dup) continue;
    seen.push_back(std::move(k));
    out.push_back(x);
  }
  return Value::list(std::move(out));
}

Value f_wordcount(Interp& in, const Value& v, CallArgs& a) {
  check_args(in, a, "wordcount", {});
  std::string s = to_str(v);
  int64_t n = 0;
  bool in_word = false;
  for (size_t i = 0; i < s.size();) {
    char32_t c = decode_at(s, i);
    bool w = c == '_' || is_alnum_cp(c);
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::integer(n);
}

const FilterFn* find_filter(const std::string& name) {
  static const std::unordered_map<std::string, FilterFn> kFilters = {
      {"abs", f_abs}, {"attr", f_attr}, {"batch", f_batch}, {"capitalize", f_capitalize}, {"center", f_center},
      {"count", f_length}, {"d", f_default}, {"default", f_default}, {"dictsort", f_dictsort}, {"e", f_escape},
      {"escape", f_escape}, {"first", f_first}, {"float", f_float}, {"forceescape", f_escape}, {"format", f_format},
      {"indent", f_indent}, {"int", f_int}, {"items", f_items}, {"join", f_join}, {"last", f_last},
      {"length", f_length}, {"list", f_list}, {"lower", f_lower}, {"map", f_map}, {"max", f_max}, {"min", f_min},
      {"reject", f_reject}, {"rejectattr", f_rejectattr}, {"replace", f_replace}, {"reverse", f_reverse},
      {"round", f_round}, {"safe", f_safe}, {"select", f_select}, {"selectattr", f_selectattr}, {"sort", f_sort},
      {"string", f_string}, {"sum", f_sum}, {"title", f_title}, {"tojson", f_tojson}, {"trim", f_trim},
      {"truncate", f_truncate}, {"unique", f_unique}, {"upper", f_upper}, {"wordcount", f_wordcount}};
  auto it = kFilters.find(name);
  return it == kFilters.end() ? nullptr : &it->second;
}

// ---- tests ----

const Value& test_arg(Interp& in, CallArgs& a, const char* test) {
  if (a.pos.empty()) in.fail("the '{}' test needs an argument", test);
  return a.pos[0];
}

bool t_defined(Interp&, const Value& v, CallArgs&) { return !v.is_undefined(); }
bool t_undefined(Interp&, const Value& v, CallArgs&) { return v.is_undefined(); }
bool t_none(Interp&, const Value& v, CallArgs&) { return v.is_none(); }
bool t_boolean(Interp&, const Value& v, CallArgs&) { return v.kind == Value::Kind::Bool; }
bool t_true(Interp&, const Value& v, CallArgs&) { return v.kind == Value::Kind::Bool && v.i; }
bool t_false(Interp&, const Value& v, CallArgs&) { return v.kind == Value::Kind::Bool && !v.i; }
bool t_integer(Interp&, const Value& v, CallArgs&) { return v.kind == Value::Kind::Int; }
bool t_float(Interp&, const Value& v, CallArgs&) { return v.kind == Value::Kind::Float; }
bool t_number(Interp&, const Value& v, CallArgs&) { return v.is_number(); }
bool t_string(Interp&, const Value& v, CallArgs&) { return v.is_str(); }
bool t_mapping(Interp&, const Value& v, CallArgs&) { return v.is_dict(); }
bool t_iterable(Interp&, const Value& v, CallArgs&) { return v.is_undefined() || v.is_str() || v.is_list() || v.is_dict(); }
bool t_sequence(Interp&, const Value& v, CallArgs&) { return v.is_undefined() || v.is_str() || v.is_list() || v.is_dict(); }
bool t_callable(Interp&, const Value& v, CallArgs&) { return v.kind == Value::Kind::Func; }
bool t_escaped(Interp&, const Value&, CallArgs&) { return false; }
bool t_sameas(Interp& in, const Value& v, CallArgs& a) {
  const Value& o = test_arg(in, a, "sameas");
  if (v.kind != o.kind) return false;
  if (v.h || o.h) return v.h == o.h;
  return py_equal(v, o) && (!v.is_str() || v.sp == o.sp);
}
bool t_even(Interp& in, const Value& v, CallArgs&) { return !truthy(in.binary_op("%", v, Value::integer(2))); }
bool t_odd(Interp& in, const Value& v, CallArgs&) { return truthy(in.binary_op("%", v, Value::integer(2))); }
bool t_divisibleby(Interp& in, const Value& v, CallArgs& a) {
  return !truthy(in.binary_op("%", v, test_arg(in, a, "divisibleby")));
}
bool t_eq(Interp& in, const Value& v, CallArgs& a) { return py_equal(v, test_arg(in, a, "eq")); }
bool t_ne(Interp& in, const Value& v, CallArgs& a) { return !py_equal(v, test_arg(in, a, "ne")); }
bool cmp_test(Interp& in, const Value& x, const Value& y, bool strict) {
  if (x.is_undefined()) in.undefined_error(x);
  if (y.is_undefined()) in.undefined_error(y);
  try {
    return py_less(x, y) || (!strict && py_equal(x, y));
  } catch (const ValueError& e) {
    in.fail("{}", e.what);
  }
}
bool t_lt(Interp& in, const Value& v, CallArgs& a) { return cmp_test(in, v, test_arg(in, a, "lt"), true); }
bool t_le(Interp& in, const Value& v, CallArgs& a) { return cmp_test(in, v, test_arg(in, a, "le"), false); }
bool t_gt(Interp& in, const Value& v, CallArgs& a) { return cmp_test(in, test_arg(in, a, "gt"), v, true); }
bool t_ge(Interp& in, const Value& v, CallArgs& a) { return cmp_test(in, test_arg(in, a, "ge"), v, false); }
bool t_in(Interp& in, const Value& v, CallArgs& a) {
  const Value& seq = test_arg(in, a, "in");
  if (seq.is_str()) return v.is_str() && seq.s().find(v.s()) != std::string::npos;
  if (seq.is_dict()) return hashable(v) && seq.as_dict().find(v);
  for (const Value& x : in.iterate(seq))
    if (py_equal(x, v)) return true;
  return false;
}
bool t_lower(Interp&, const Value& v, CallArgs&) { return v.is_str() && case_map(v.s(), false) == v.s(); }
bool t_upper(Interp&, const Value& v, CallArgs&) { return v.is_str() && case_map(v.s(), true) == v.s(); }
bool t_filter(Interp&, const Value& v, CallArgs&) { return v.is_str() && find_filter(v.s()); }
bool t_test(Interp&, const Value& v, CallArgs&) { return v.is_str() && find_test(v.s()); }

const TestFn* find_test(const std::string& name) {
  static const std::unordered_map<std::string, TestFn> kTests = {
      {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none}, {"boolean", t_boolean}, {"true", t_true},
      {"false", t_false}, {"integer", t_integer}, {"float", t_float}, {"number", t_number}, {"string", t_string},
      {"mapping", t_mapping}, {"iterable", t_iterable}, {"sequence", t_sequence}, {"callable", t_callable},
      {"escaped", t_escaped}, {"sameas", t_sameas}, {"even", t_even}, {"odd", t_odd}, {"divisibleby", t_divisibleby},
      {"eq", t_eq}, {"equalto", t_eq}, {"==", t_eq}, {"ne", t_ne}, {"!=", t_ne}, {"lt", t_lt}, {"lessthan", t_lt},
      {"<", t_lt}, {"le", t_le}, {"<=", t_le}, {"gt", t_gt}, {"greaterthan", t_gt}, {">", t_gt}, {"ge", t_ge},
      {">=", t_ge}, {"in", t_in}, {"lower", t_lower}, {"upper", t_upper}, {"filter", t_filter}, {"test", t_test}};
  auto it = kTests.find(name);
  return it == kTests.end() ? nullptr : &it->second;
}

// ---- globals ----

std::shared_ptr<Object> new_namespace() {
  auto o = std::make_shared<Object>();
  o->type_name = "Namespace";
  o->assignable = true;
  return o;
}

void install_globals(Frame& g) {
  g.vars["raise_exception"] = Value::func("raise_exception", [](Interp& in, CallArgs& a) -> Value {
    in.raise(a.pos.empty() ? std::string() : to_str(a.pos[0]));
  });
  g.vars["strftime_now"] = Value::func("strftime_now", [](Interp& in, CallArgs& a) {
    check_args(in, a, "strftime_now", {"format"});
    const Value* f = arg(a, 0, "format");
    if (!f) in.fail("strftime_now() missing the format");
    const std::string& fmt_s = need_str(in, *f, "strftime_now format");
    if (fmt_s.size() > 256) in.fail("strftime_now format too long");
    std::time_t t = in.opts.now ? *in.opts.now : std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    std::string buf(4096, '\0');
    size_t n = std::strftime(buf.data(), buf.size(), fmt_s.c_str(), &tm);
    buf.resize(n);
    return Value::str(std::move(buf));
  });
  g.vars["namespace"] = Value::func("namespace", [](Interp& in, CallArgs& a) {
    auto ns = new_namespace();
    for (const Value& p : a.pos) {
      if (!p.is_dict()) in.fail("namespace() positional arguments must be mappings");
      for (const auto& [k, v] : p.as_dict().items) ns->attrs->set(k, v);
    }
    for (auto& [k, v] : a.kw) ns->attrs->set(Value::str(k), v);
    return Value::object(ns);
  });
  g.vars["dict"] = Value::func("dict", [](Interp& in, CallArgs& a) {
    auto d = std::make_shared<Dict>();
    for (const Value& p : a.pos) {
      if (!p.is_dict()) in.fail("dict() positional arguments must be mappings");
      for (const auto& [k, v] : p.as_dict().items) d->set(k, v);
    }
    for (auto& [k, v] : a.kw) d->set(Value::str(k), v);
    return Value::dict(d);
  });
  g.vars["range"] = Value::func("range", [](Interp& in, CallArgs& a) {
    if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) in.fail("range expected 1 to 3 integer arguments");
    for (const Value& p : a.pos)
      if (!p.is_int()) in.fail("'{}' object cannot be interpreted as an integer", type_name(p));
    int64_t start = 0, stop, stp = 1;
    if (a.pos.size() == 1) {
      stop = a.pos[0].i;
    } else {
      start = a.pos[0].i;
      stop = a.pos[1].i;
      if (a.pos.size() == 3) stp = a.pos[2].i;
    }
    if (stp == 0) in.fail("range() arg 3 must not be zero");
    double count = stp > 0 ? std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(stp))
                           : std::ceil((static_cast<double>(start) - static_cast<double>(stop)) / static_cast<double>(-stp));
    if (count > static_cast<double>(kMaxRange))
      in.fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE ({}).", kMaxRange);
    std::vector<Value> out;
    for (int64_t k = 0; k < static_cast<int64_t>(std::max(0.0, count)); ++k) out.push_back(Value::integer(start + k * stp));
    in.step(static_cast<int64_t>(out.size()));
    return Value::list(std::move(out));
  });
  g.vars["cycler"] = Value::func("cycler", [](Interp& in, CallArgs& a) {
    if (a.pos.empty()) in.fail("cycler() needs at least one item");
    auto o = std::make_shared<Object>();
    o->type_name = "Cycler";
    auto items = std::make_shared<std::vector<Value>>(a.pos);
    auto pos = std::make_shared<size_t>(0);
    std::weak_ptr<Object> weak = o;
    auto update = [weak, items, pos] {
      if (auto self = weak.lock()) self->attrs->set(Value::str("current"), (*items)[*pos]);
    };
    o->attrs->set(Value::str("current"), (*items)[0]);
    o->attrs->set(Value::str("next"), Value::func("next", [items, pos, update](Interp&, CallArgs&) {
      Value v = (*items)[*pos];
      *pos = (*pos + 1) % items->size();
      update();
      return v;
    }));
    o->attrs->set(Value::str("reset"), Value::func("reset", [pos, update](Interp&, CallArgs&) {
      *pos = 0;
      update();
      return Value::none();
    }));
    return Value::object(o);
  });
  g.vars["joiner"] = Value::func("joiner", [](Interp& in, CallArgs& a) {
    check_args(in, a, "joiner", {"sep"});
    const Value* s = arg(a, 0, "sep");
    std::string sep = s ? to_str(*s) : ", ";
    auto used = std::make_shared<bool>(false);
    return Value::func("joiner", [sep, used](Interp&, CallArgs&) {
      if (!*used) {
        *used = true;
        return Value::str("");
      }
      return Value::str(sep);
    });
  });
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Template
// ------------------------------------------------------------------------------------------------

Template::Template(const std::string& source, std::string name) : name_(std::move(name)) {
  auto prog = std::make_shared<Program>();
  prog->name = name_;
  std::vector<Token> tokens = Lexer(source, name_).run();
  prog->body = Parser(std::move(tokens), name_).parse_template();
  program_ = std::move(prog);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;
Template::Template(const Template&) = default;
Template& Template::operator=(const Template&) = default;

std::string Template::render(const nlohmann::ordered_json& vars, const RenderOptions& options) const {
  Interp in(*program_, options);
  return in.run(vars);
}

std::string Template::render(const nlohmann::json& vars, const RenderOptions& options) const {
  Interp in(*program_, options);
  return in.run(vars);
}

}  // namespace hxq::jinja
