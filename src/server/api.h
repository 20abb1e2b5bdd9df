// The OpenAI HTTP API's request and response shapes, independent of HTTP and of the scheduler:
// parsing and validating a /v1/completions or /v1/chat/completions body into a GenerationParams,
// and the JSON of responses, stream chunks, logprobs and errors.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "models/sampling.h"

namespace hxq::server {

using nlohmann::json;
// Request bodies keep their key order: templates print dicts (tool arguments with tojson) in
// insertion order, as Python does.
using ojson = nlohmann::ordered_json;

// An error a client caused (or a refusal: queue full, shutting down), answered as
// {"error": {"message", "type", "param", "code"}} with `status`.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field ("" = null)
  std::string code;   // "" = null
  int retry_after = 0;  // seconds, for 429 / 503 (0 = no Retry-After header)

  json body() const;
};
// Thrown by the request parsers and the scheduler's admission; the HTTP layer answers it.
class ApiException : public std::exception {
 public:
  explicit ApiException(ApiError e) : err(std::move(e)) {}
  const char* what() const noexcept override { return err.message.c_str(); }
  ApiError err;
};
[[noreturn]] void throw_api(int status, std::string message, std::string param = "", std::string code = "",
                            int retry_after = 0);

// What one generation request asks for, once parsed and checked.
struct GenerationParams {
  bool chat = false;
  std::string model;                // as requested ("" = not given)
  ojson messages;                   // chat: the messages, text parts joined into one string
  ojson template_kwargs;            // chat: chat_template_kwargs (object), + "tools" when sent
  std::optional<std::string> prompt_text;  // completions: the prompt as text, or
  std::vector<int32_t> prompt_ids;         // ... as token ids (then prompt_text is empty)
  int64_t max_tokens = -1;          // -1: not given (the server's default applies)
  SamplingOptions sampling;
  std::vector<std::string> stop;
  bool stream = false, include_usage = false;
  int logprobs = -1;                // -1: off; else the number of top alternatives (0..20)
  bool cache_prompt = true;         // hxq extension: reuse / keep prefix states
  bool ignore_eos = false;          // hxq extension (load tests): do not stop at EOS
};

// Parses a request body (already JSON) for the given endpoint. Unknown fields are ignored;
// wrong types, ranges and unsupported values (n != 1, several prompts) throw ApiError 400
// naming the field.
GenerationParams parse_generation(const ojson& body, bool chat);

// Incremental stop-string handling for a stream of decoded text: push() text pieces, and get
// back the text that can be sent (never a prefix of a stop string that might still complete).
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Appends `piece`; returns the newly releasable text. After a stop string matched, stopped()
  // is true and the returned text ends right before it (the stop string is not included).
  std::string push(const std::string& piece);
  std::string flush();  // end of generation: whatever was held back
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// One generated token's log-probability, with its top alternatives (OpenAI's logprobs content).
struct TokenLogprob {
  std::string token;  // the text this token added to the output
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;  // alternatives, most likely first
};
json chat_logprobs_json(const std::vector<TokenLogprob>& lp);
// Legacy completions shape: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}.
json completion_logprobs_json(const std::vector<TokenLogprob>& lp, size_t text_offset0);

// The bytes array OpenAI puts next to each token.
json utf8_bytes(const std::string& s);

}  // namespace hxq::server
