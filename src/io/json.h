// JSON files of checkpoints (config.json, tokenizer.json, ...): parsing with one-line errors
// naming the file, and the non-standard float spellings real checkpoints contain.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace hxq {

using json = nlohmann::json;

// Parses a JSON file. Accepts the bare tokens Infinity, -Infinity and NaN outside strings
// (older transformers write them), turning them into {"__float__": "..."} objects as
// transformers 5 writes them. Throws Error "<path>: invalid JSON: ..." on malformed input.
json parse_json_file(const std::string& path);
json parse_json_text(const std::string& text, const std::string& what);

// The message of a nlohmann::json exception without its "[json.exception...] " prefix, as one
// line of printable ASCII (bytes quoted from malformed input become \xNN), at most ~300 chars.
std::string clean_json_error(const char* what);

// Config values with one-line errors naming `what` (usually the file): a required integer (absent
// or null is an error), an optional integer or boolean (absent or null gives the default).
int64_t json_int(const json& j, const char* key, const std::string& what);
int64_t json_int_or(const json& j, const char* key, int64_t dflt, const std::string& what);
bool json_bool_or(const json& j, const char* key, bool dflt, const std::string& what);

// A number, or transformers 5's {"__float__": "Infinity" | "-Infinity" | "NaN"}.
double json_float(const json& j, const std::string& what);

// Reads <dir>/config.json of a model directory (one-line errors naming it).
json load_config(const std::string& dir);

}  // namespace hxq
