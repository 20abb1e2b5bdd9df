#include "server/api.h"

#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace hxq::server {

json ApiError::body() const {
  return json{{"error",
               {{"message", message},
                {"type", type},
                {"param", param.empty() ? json(nullptr) : json(param)},
                {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

void throw_api(int status, std::string message, std::string param, std::string code, int retry_after) {
  ApiError e;
  e.status = status;
  e.retry_after = retry_after;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  if (status == 401) e.type = "authentication_error";
  if (status == 404) e.type = "not_found_error";
  if (status == 429 || status == 503) e.type = "server_overloaded";
  if (status >= 500 && status != 503) e.type = "server_error";
  throw ApiException(std::move(e));
}

namespace {

// Field accessors: absent or null → nullopt; a wrong type → 400 naming the field.
const ojson* field(const ojson& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> number(const ojson& body, const char* name, double lo, double hi) {
  const ojson* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw_api(400, fmt::format("'{}' must be a number", name), name);
  double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw_api(400, fmt::format("'{}' = {} is out of range [{}, {}]", name, v->dump(), lo, hi), name);
  return x;
}

std::optional<int64_t> integer(const ojson& body, const char* name, int64_t lo, int64_t hi) {
  const ojson* v = field(body, name);
  if (!v) return std::nullopt;
  // 3.0 is accepted as 3 (clients serialise integers from floats); 3.5 is not.
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15)
      throw_api(400, fmt::format("'{}' must be an integer", name), name);
    if (d < double(lo) || d > double(hi))
      throw_api(400, fmt::format("'{}' = {} is out of range [{}, {}]", name, v->dump(), lo, hi), name);
    return int64_t(d);
  }
  if (!v->is_number_integer()) throw_api(400, fmt::format("'{}' must be an integer", name), name);
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    throw_api(400, fmt::format("'{}' = {} is out of range [{}, {}]", name, v->dump(), lo, hi), name);
  int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) throw_api(400, fmt::format("'{}' = {} is out of range [{}, {}]", name, x, lo, hi), name);
  return x;
}

std::optional<bool> boolean(const ojson& body, const char* name) {
  const ojson* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw_api(400, fmt::format("'{}' must be a boolean", name), name);
  return v->get<bool>();
}

std::vector<int32_t> token_ids(const ojson& a, const char* name) {
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (auto& x : a) {
    if (!x.is_number_integer()) throw_api(400, fmt::format("'{}' must be a string or a list of token ids", name), name);
    if (x.is_number_unsigned() ? x.get<uint64_t>() > uint64_t(std::numeric_limits<int32_t>::max())
                               : (x.get<int64_t>() < 0 || x.get<int64_t>() > std::numeric_limits<int32_t>::max()))
      throw_api(400, fmt::format("'{}' holds token id {} out of range", name, x.dump()), name);
    ids.push_back(x.get<int32_t>());
  }
  return ids;
}

void check_messages(const ojson& m) {
  if (!m.is_array()) throw_api(400, "'messages' must be an array", "messages");
  if (m.empty()) throw_api(400, "'messages' must not be empty", "messages");
  for (size_t i = 0; i < m.size(); ++i) {
    const ojson& msg = m[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!msg.is_object()) throw_api(400, fmt::format("'{}' must be an object", at), at);
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string() || role->get<std::string>().empty())
      throw_api(400, fmt::format("'{}.role' must be a non-empty string", at), at + ".role");
    auto content = msg.find("content");
    if (content == msg.end() || content->is_null() || content->is_string()) continue;
    if (!content->is_array())
      throw_api(400, fmt::format("'{}.content' must be a string or a list of parts", at), at + ".content");
    for (size_t j = 0; j < content->size(); ++j) {
      const ojson& part = (*content)[j];
      const std::string pat = fmt::format("{}.content[{}]", at, j);
      if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
        throw_api(400, fmt::format("'{}' must be an object with a 'type'", pat), pat);
      if (part["type"] != "text")
        throw_api(400, fmt::format("'{}.type' {} is not supported (text only)", pat, part["type"].dump()), pat + ".type");
      if (!part.contains("text") || !part["text"].is_string())
        throw_api(400, fmt::format("'{}.text' must be a string", pat), pat + ".text");
    }
  }
}

}  // namespace

GenerationParams parse_generation(const ojson& body, bool chat) {
  if (!body.is_object()) throw_api(400, "the request body must be a JSON object");
  GenerationParams p;
  p.chat = chat;
  if (const ojson* m = field(body, "model")) {
    if (!m->is_string()) throw_api(400, "'model' must be a string", "model");
    p.model = m->get<std::string>();
  }
  if (chat) {
    const ojson* m = field(body, "messages");
    if (!m) throw_api(400, "'messages' is required", "messages");
    check_messages(*m);
    p.messages = *m;
    // Content given as text parts becomes one string (joined by newlines, as vLLM does): most
    // templates expect a string.
    for (auto& msg : p.messages)
      if (msg.contains("content") && msg["content"].is_array()) {
        std::string joined;
        for (size_t i = 0; i < msg["content"].size(); ++i)
          joined += (i ? "\n" : "") + msg["content"][i]["text"].get<std::string>();
        msg["content"] = joined;
      }
    p.template_kwargs = ojson::object();
    if (const ojson* k = field(body, "chat_template_kwargs")) {
      if (!k->is_object()) throw_api(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs");
      p.template_kwargs = *k;
    }
    // Templates render tool definitions themselves (transformers passes them as `tools`).
    if (const ojson* t = field(body, "tools")) {
      if (!t->is_array()) throw_api(400, "'tools' must be an array", "tools");
      p.template_kwargs["tools"] = *t;
    }
  } else {
    const ojson* pr = field(body, "prompt");
    if (!pr) throw_api(400, "'prompt' is required", "prompt");
    const ojson* one = pr;
    if (pr->is_array() && !pr->empty() && (pr->front().is_string() || pr->front().is_array())) {
      if (pr->size() != 1) throw_api(400, "several prompts in one request are not supported (send one each)", "prompt");
      one = &pr->front();
    }
    if (one->is_string()) p.prompt_text = one->get<std::string>();
    else if (one->is_array()) p.prompt_ids = token_ids(*one, "prompt");
    else throw_api(400, "'prompt' must be a string or a list of token ids", "prompt");
    if (!p.prompt_text && p.prompt_ids.empty()) throw_api(400, "'prompt' must not be an empty list", "prompt");
    if (auto e = boolean(body, "echo"); e && *e) throw_api(400, "'echo' is not supported", "echo");
    if (auto b = integer(body, "best_of", 1, 1 << 20); b && *b != 1)
      throw_api(400, "'best_of' must be 1", "best_of");
    if (const ojson* s = field(body, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
      throw_api(400, "'suffix' is not supported", "suffix");
  }
  constexpr int64_t kMaxTokens = int64_t(1) << 30;
  if (auto v = integer(body, "max_completion_tokens", 1, kMaxTokens)) p.max_tokens = *v;
  else if (auto w = integer(body, "max_tokens", 1, kMaxTokens)) p.max_tokens = *w;
  if (auto n = integer(body, "n", 1, 1 << 20); n && *n != 1)
    throw_api(400, "'n' must be 1 (one choice per request)", "n");
  if (auto t = number(body, "temperature", 0.0, 100.0)) p.sampling.temperature = float(*t);
  if (auto t = number(body, "top_p", 0.0, 1.0)) {
    if (*t == 0.0) throw_api(400, "'top_p' must be in (0, 1]", "top_p");
    p.sampling.top_p = float(*t);
  }
  if (auto k = integer(body, "top_k", -1, 1 << 30)) p.sampling.top_k = int(std::max<int64_t>(0, *k));  // -1 = off
  if (auto m = number(body, "min_p", 0.0, 1.0)) p.sampling.min_p = float(*m);
  if (auto s = integer(body, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()))
    p.sampling.seed = uint64_t(*s);
  if (const ojson* s = field(body, "stop")) {
    if (s->is_string()) p.stop.push_back(s->get<std::string>());
    else if (s->is_array()) {
      if (s->size() > 16) throw_api(400, "'stop' holds more than 16 strings", "stop");
      for (auto& x : *s) {
        if (!x.is_string()) throw_api(400, "'stop' must be a string or a list of strings", "stop");
        p.stop.push_back(x.get<std::string>());
      }
    } else {
      throw_api(400, "'stop' must be a string or a list of strings", "stop");
    }
    for (auto& x : p.stop)
      if (x.empty()) throw_api(400, "'stop' strings must not be empty", "stop");
      else if (x.size() > 1024) throw_api(400, "'stop' strings must be at most 1024 bytes", "stop");
  }
  if (auto s = boolean(body, "stream")) p.stream = *s;
  if (const ojson* so = field(body, "stream_options")) {
    if (!so->is_object()) throw_api(400, "'stream_options' must be an object", "stream_options");
    if (auto u = boolean(*so, "include_usage")) p.include_usage = *u;
  }
  if (chat) {
    const bool lp = boolean(body, "logprobs").value_or(false);
    auto top = integer(body, "top_logprobs", 0, 20);
    if (top && !lp) throw_api(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs");
    if (lp) p.logprobs = int(top.value_or(0));
  } else {
    // Legacy completions: logprobs is the number of alternatives (0..5 in OpenAI's API).
    const ojson* lp = field(body, "logprobs");
    if (lp && lp->is_boolean()) p.logprobs = lp->get<bool>() ? 0 : -1;
    else if (auto n = integer(body, "logprobs", 0, 20)) p.logprobs = int(*n);
  }
  if (auto c = boolean(body, "cache_prompt")) p.cache_prompt = *c;
  if (auto c = boolean(body, "ignore_eos")) p.ignore_eos = *c;
  return p;
}

// ---- stop strings -------------------------------------------------------------------------

std::string StopMatcher::push(const std::string& piece) {
  if (stopped_) return "";
  held_ += piece;
  // The earliest complete match wins.
  size_t best = std::string::npos;
  for (auto& s : stops_) {
    size_t at = held_.find(s);
    if (at < best) best = at;
  }
  if (best != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, best);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (auto& s : stops_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > hold; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(held_);
  return stopped_ ? std::string() : out;
}

// ---- logprobs ----------------------------------------------------------------------------------

json utf8_bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

json chat_logprobs_json(const std::vector<TokenLogprob>& lp) {
  json content = json::array();
  for (auto& t : lp) {
    json top = json::array();
    for (auto& [tok, l] : t.top) top.push_back({{"token", tok}, {"logprob", l}, {"bytes", utf8_bytes(tok)}});
    content.push_back({{"token", t.token}, {"logprob", t.logprob}, {"bytes", utf8_bytes(t.token)}, {"top_logprobs", top}});
  }
  return json{{"content", content}, {"refusal", nullptr}};
}

json completion_logprobs_json(const std::vector<TokenLogprob>& lp, size_t text_offset0) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  size_t off = text_offset0;
  for (auto& t : lp) {
    tokens.push_back(t.token);
    lps.push_back(t.logprob);
    json top = json::object();
    for (auto& [tok, l] : t.top)
      if (!top.contains(tok)) top[tok] = l;
    tops.push_back(top);
    offs.push_back(off);
    off += t.token.size();
  }
  return json{{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

}  // namespace hxq::server
