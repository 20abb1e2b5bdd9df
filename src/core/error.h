// Errors of the engine: one exception type carrying a one-line message that names the file and
// the problem. The CLI turns hxq::Error into "hxq: <message>" and exit code 1 (UsageError: 2).
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace hxq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad command line (unknown option, missing argument, contradictory flags): exit code 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void usage_fail(fmt::format_string<Args...> f, Args&&... args) {
  throw UsageError(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace hxq
