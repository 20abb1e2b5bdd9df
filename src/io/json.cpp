#include "io/json.h"

#include <cmath>
#include <filesystem>
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

std::string clean_json_error(const char* what) {
  std::string msg = what;
  if (auto p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
  std::string out;
  for (unsigned char c : msg) {
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
    if (out.size() > 300) {
      out += "...";
      break;
    }
  }
  return out;
}

json parse_json_text(const std::string& text, const std::string& what) {
  // nlohmann's parser treats a NUL byte as the end of the input and would ignore what follows
  if (auto z = text.find('\0'); z != std::string::npos) fail("{}: invalid JSON: NUL byte at offset {}", what, z);
  try {
    bool plain = text.find("Infinity") == std::string::npos && text.find("NaN") == std::string::npos;
    return json::parse(plain ? text : rewrite_nonfinite(text));
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", what, clean_json_error(e.what()));
  }
}

json parse_json_file(const std::string& path) { return parse_json_text(read_text_file(path), path); }

int64_t json_int(const json& j, const char* key, const std::string& what) {
  if (!j.contains(key) || j[key].is_null()) fail("{}: missing \"{}\"", what, key);
  const auto& v = j[key];
  if (!v.is_number_integer()) fail("{}: \"{}\" must be an integer, got {}", what, key, v.dump());
  return v.get<int64_t>();
}

int64_t json_int_or(const json& j, const char* key, int64_t dflt, const std::string& what) {
  return j.contains(key) && !j[key].is_null() ? json_int(j, key, what) : dflt;
}

bool json_bool_or(const json& j, const char* key, bool dflt, const std::string& what) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) fail("{}: \"{}\" must be true or false, got {}", what, key, j[key].dump());
  return j[key].get<bool>();
}

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

json load_config(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("{}: not a model directory", dir);
  auto path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(path, ec)) fail("{}: missing config.json", dir);
  json cfg = parse_json_file(path);
  if (!cfg.is_object()) fail("{}: expected a JSON object", path);
  return cfg;
}

}  // namespace hxq
