// A Jinja2 template engine for the subset Hugging Face chat templates use, rendering the way
// transformers does: jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True, extensions=[loopcontrols]), keep_trailing_newline=False, autoescape off,
// with transformers' own `tojson` filter (json.dumps(ensure_ascii=False, ...), not HTML-escaped)
// and its globals raise_exception(msg) and strftime_now(fmt).
//
// Values follow Python: none/undefined, bool, int64, float, str (UTF-8; indexed, sliced and
// counted by code point), list/tuple, insertion-ordered dict, namespace, macro/callable. Printing
// is Python's str() (True, None, 1.0, 1e-05, ['a', 1], {'k': 'v'}); undefined prints as "".
//
// Errors are hxq::Error with one line: "chat template <source>:<line>: <what>". Parse errors are
// plain Error; everything that goes wrong while rendering is a RenderError, and a template's own
// raise_exception(msg) a RaisedError (a RenderError) whose message() is msg. Rendering is bounded
// (steps, output size, macro depth, value nesting): a template or its data can make it fail, never
// crash, overflow the stack or hang.
#pragma once
#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace hxq::jinja {

// Something failed while rendering (undefined value used, type error, a limit reached, ...).
class RenderError : public Error {
 public:
  using Error::Error;
};

// The template called raise_exception(msg): the conversation is one the template refuses.
class RaisedError : public RenderError {
 public:
  RaisedError(const std::string& what, std::string message) : RenderError(what), message_(std::move(message)) {}
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

struct RenderOptions {
  int64_t max_steps = 10'000'000;         // evaluation steps (nodes, loop iterations, copied data);
                                          // a message costs ~60, the limit ~0.5 s
  size_t max_output_bytes = 32u << 20;    // the rendered text, and any one string or list built
  int max_call_depth = 64;                // nested macro / caller() calls
  std::optional<std::time_t> now;         // the clock of strftime_now (default: the real time)
};

struct Program;  // the parsed template (jinja.cpp)

class Template {
 public:
  // Parses `source`; a syntax error throws Error "chat template <name>:<line>: ...".
  Template(const std::string& source, std::string name);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  Template(const Template&);
  Template& operator=(const Template&);

  // Renders with the members of `vars` (a JSON object) as the template's variables. Python dicts
  // keep insertion order and templates print them (tojson of tool schemas and arguments), so pass
  // ordered_json parsed from the request; nlohmann::json has already sorted its keys.
  std::string render(const nlohmann::ordered_json& vars, const RenderOptions& options = {}) const;
  std::string render(const nlohmann::json& vars, const RenderOptions& options = {}) const;

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::shared_ptr<const Program> program_;  // immutable, so copies share it
};

}  // namespace hxq::jinja
