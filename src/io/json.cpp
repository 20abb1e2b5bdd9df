#include "io/json.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/mmap.h"

namespace hxq {

namespace {

// Rewrites bare Infinity / -Infinity / NaN tokens (outside strings) into tagged objects.
std::string rewrite_nonfinite(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  bool in_str = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_str) {
      out += c;
      if (c == '\\' && i + 1 < s.size()) {
        out += s[++i];
      } else if (c == '"') {
        in_str = false;
      }
      continue;
    }
    if (c == '"') {
      in_str = true;
      out += c;
      continue;
    }
    auto match = [&](std::string_view tok) { return s.compare(i, tok.size(), tok) == 0; };
    if (match("-Infinity")) {
      out += R"({"__float__":"-Infinity"})";
      i += 8;
    } else if (match("Infinity")) {
      out += R"({"__float__":"Infinity"})";
      i += 7;
    } else if (match("NaN")) {
      out += R"({"__float__":"NaN"})";
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

json parse_json_text(const std::string& text, const std::string& what) {
  try {
    bool plain = text.find("Infinity") == std::string::npos && text.find("NaN") == std::string::npos;
    return json::parse(plain ? text : rewrite_nonfinite(text));
  } catch (const json::exception& e) {
    std::string msg = e.what();
    if (auto p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
    fail("{}: invalid JSON: {}", what, msg);
  }
}

json parse_json_file(const std::string& path) { return parse_json_text(read_text_file(path), path); }

double json_float(const json& j, const std::string& what) {
  if (j.is_number()) return j.get<double>();
  if (j.is_object() && j.contains("__float__") && j["__float__"].is_string()) {
    auto s = j["__float__"].get<std::string>();
    if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
    if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
  }
  fail("{}: expected a number, got {}", what, j.dump());
}

}  // namespace hxq
