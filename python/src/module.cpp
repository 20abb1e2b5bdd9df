// hxq._hxq: the engine's C++ API for Python (pybind11). The package hxq (python/hxq) re-exports
// it; hxq.torch builds PyTorch modules on CompressedLinear. Nothing here computes anything the
// engine does not: every number comes from the same library as the CLI's.
//
// Threading: every engine call runs with the GIL released and holds its model's mutex (taken
// after the GIL is released, so a thread waiting for the model never blocks Python). Long calls
// (generate, perplexity, kl, compress) check for signals between steps, so Ctrl-C raises
// KeyboardInterrupt within one token / window / tensor.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "codec/compress.h"
#include "codec/hxq2_weight.h"
#include "codec/hxq_config.h"
#include "codec/hxq_weight.h"
#include "codec/inspect.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "eval/perplexity.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "kernels/hxq_gemm.h"
#include "models/generate.h"
#include "models/linear.h"
#include "models/model.h"
#include "models/sampling.h"
#include "server/api.h"
#include "tokenizer/tokenizer.h"

namespace py = pybind11;
using namespace hxq;

namespace {

PyObject* g_error = nullptr;        // hxq.Error (RuntimeError)
PyObject* g_usage_error = nullptr;  // hxq.UsageError (hxq.Error, ValueError)

// Between steps of a long call (GIL released): runs Python's signal handlers, so Ctrl-C raises
// KeyboardInterrupt out of the call.
void check_signals() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

// A bad argument value: hxq.UsageError, which is also a ValueError.
[[noreturn]] void value_error(const std::string& msg) {
  PyErr_SetString(g_usage_error, msg.c_str());
  throw py::error_already_set();
}
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

// ---- JSON <-> Python ----------------------------------------------------------------------------

py::object to_py(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return py::none();
    case json::value_t::boolean: return py::bool_(j.get<bool>());
    case json::value_t::number_integer: return py::int_(j.get<int64_t>());
    case json::value_t::number_unsigned: return py::int_(j.get<uint64_t>());
    case json::value_t::number_float: return py::float_(j.get<double>());
    case json::value_t::string: return py::str(j.get<std::string>());
    case json::value_t::array: {
      py::list l;
      for (auto& x : j) l.append(to_py(x));
      return l;
    }
    case json::value_t::object: {
      py::dict d;
      for (auto& [k, v] : j.items()) d[py::str(k)] = to_py(v);
      return d;
    }
    default: return py::none();
  }
}

// ---- argument conversion ------------------------------------------------------------------------

// Token ids from a sequence of ints or a 1-D integer array; `what` names the argument.
std::vector<int32_t> ids_from(py::handle h, const char* what) {
  if (py::isinstance<py::str>(h) || py::isinstance<py::bytes>(h))
    type_error(fmt::format("{}: expected token ids (a sequence of ints), got a string", what));
  std::vector<int32_t> ids;
  if (py::isinstance<py::array>(h)) {
    auto a = py::reinterpret_borrow<py::array>(h);
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u')
      type_error(fmt::format("{}: expected an integer array, got dtype {}", what, std::string(py::str(a.dtype()))));
    if (a.ndim() != 1) value_error(fmt::format("{}: expected a 1-D array of token ids, got {} dimensions", what, a.ndim()));
    auto a64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!a64) throw py::error_already_set();
    ids.reserve(size_t(a64.size()));
    for (py::ssize_t i = 0; i < a64.size(); ++i) {
      int64_t v = a64.data()[i];
      if (v < INT32_MIN || v > INT32_MAX) value_error(fmt::format("{}: token id {} at position {} is out of range", what, v, i));
      ids.push_back(int32_t(v));
    }
    return ids;
  }
  if (!py::isinstance<py::sequence>(h))
    type_error(fmt::format("{}: expected token ids (a sequence of ints), got {}", what,
                           std::string(py::str(py::type::handle_of(h).attr("__name__")))));
  auto seq = py::reinterpret_borrow<py::sequence>(h);
  ids.reserve(seq.size());
  size_t i = 0;
  for (auto item : seq) {
    if (!py::isinstance<py::int_>(item) || py::isinstance<py::bool_>(item)) {
      // numpy integer scalars are not int subclasses but convert exactly
      if (!py::hasattr(item, "__index__") || py::isinstance<py::bool_>(item))
        type_error(fmt::format("{}: element {} is {}, not an int", what, i,
                               std::string(py::str(py::type::handle_of(item).attr("__name__")))));
    }
    long long v = PyLong_AsLongLong(py::handle(item).ptr());
    if (v == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      value_error(fmt::format("{}: element {} does not fit in 64 bits", what, i));
    }
    if (v < INT32_MIN || v > INT32_MAX) value_error(fmt::format("{}: token id {} at position {} is out of range", what, v, i));
    ids.push_back(int32_t(v));
    ++i;
  }
  return ids;
}

void check_vocab(std::span<const int32_t> ids, int64_t V, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= V)
      value_error(fmt::format("{}: token id {} at position {} outside the vocabulary [0, {})", what, ids[i], i, V));
}

// ---- numpy <-> tensors --------------------------------------------------------------------------

std::optional<DType> dtype_of(const py::dtype& d) {
  if (d.is(py::dtype::of<float>())) return DType::F32;
  if (d.kind() == 'f' && d.itemsize() == 2) return DType::F16;
  if (d.is(py::dtype::of<int64_t>())) return DType::I64;
  if (d.is(py::dtype::of<int32_t>())) return DType::I32;
  if (d.is(py::dtype::of<uint8_t>())) return DType::U8;
  if (d.is(py::dtype::of<uint16_t>())) return DType::U16;
  return std::nullopt;
}

py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::F32: return py::dtype::of<float>();
    case DType::F16: return py::dtype("float16");
    case DType::BF16: return py::dtype::of<float>();  // numpy has no bfloat16: widened exactly
    case DType::I64: return py::dtype::of<int64_t>();
    case DType::I32: return py::dtype::of<int32_t>();
    case DType::U8: return py::dtype::of<uint8_t>();
    case DType::U16: return py::dtype::of<uint16_t>();
  }
  return py::dtype::of<float>();
}

// A copy of a stored tensor as a numpy array (BF16 widened to float32, exactly).
py::array tensor_to_numpy(const TensorInfo& t) {
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  py::array a(numpy_dtype(t.dtype), shape);
  if (t.dtype == DType::BF16)
    to_f32(DType::BF16, t.data, static_cast<float*>(a.mutable_data()), size_t(t.numel()));
  else if (t.nbytes)
    std::memcpy(a.mutable_data(), t.data, t.nbytes);
  return a;
}

// A C-contiguous numpy array's memory as a tensor view (the caller keeps the array alive).
TensorInfo tensor_view(const std::string& name, const py::array& a) {
  auto dt = dtype_of(a.dtype());
  if (!dt)
    type_error(fmt::format("tensor '{}': unsupported dtype {} (float32, float16, int64, int32, uint8, uint16)", name,
                           std::string(py::str(a.dtype()))));
  if (!(a.flags() & py::array::c_style)) value_error(fmt::format("tensor '{}': array is not C-contiguous", name));
  TensorInfo t;
  t.name = name;
  t.dtype = *dt;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) t.shape.push_back(int64_t(a.shape(i)));
  t.data = static_cast<const std::byte*>(a.data());
  t.nbytes = size_t(a.nbytes());
  return t;
}

// float32 C-contiguous 2-D array with `cols` columns (`what` names the argument).
py::array_t<float, py::array::c_style> f32_matrix(py::handle h, int64_t cols, const char* what, bool writable) {
  if (!py::isinstance<py::array_t<float>>(h))
    type_error(fmt::format("{}: expected a float32 numpy array", what));
  auto a = py::reinterpret_borrow<py::array_t<float>>(h);
  if (a.ndim() != 2) value_error(fmt::format("{}: expected 2 dimensions, got {}", what, a.ndim()));
  if (a.shape(1) != cols) value_error(fmt::format("{}: expected {} columns, got {}", what, cols, a.shape(1)));
  if (!(a.flags() & py::array::c_style)) value_error(fmt::format("{}: array is not C-contiguous", what));
  if (writable && !a.writeable()) value_error(fmt::format("{}: array is read-only", what));
  return py::reinterpret_borrow<py::array_t<float, py::array::c_style>>(a);
}

// ---- models -------------------------------------------------------------------------------------

struct PyModel {
  std::string path, lora;
  bool exact = false;
  std::unique_ptr<Model> model;
  std::optional<Tokenizer> tok;
  std::string tok_error;  // why tok is empty
  std::vector<int32_t> eos;
  std::mutex mu;  // one engine call at a time (always locked with the GIL released)

  const Tokenizer& tokenizer() const {
    if (!tok) throw Error(tok_error);
    return *tok;
  }
  int64_t vocab() const { return model->vocab_size(); }
  std::optional<HxqMath> math() const { return exact ? std::optional(HxqMath::Exact) : std::nullopt; }
};

// The engine-side part of one call: model lock + the model's HXQ math on this thread.
struct EngineCall {
  std::unique_lock<std::mutex> lock;
  std::optional<HxqMathScope> math;
  explicit EngineCall(PyModel& m) : lock(m.mu) {
    if (m.exact) math.emplace(HxqMath::Exact);
  }
};

std::shared_ptr<PyModel> load(const std::string& path, std::optional<int> threads, bool exact,
                              std::optional<std::string> lora) {
  if (threads) {
    if (*threads < 1 || *threads > 1024) value_error(fmt::format("threads: {} outside [1, 1024]", *threads));
    if (pool().size() != *threads) set_num_threads(*threads);
  }
  auto m = std::make_shared<PyModel>();
  m->path = path;
  m->exact = exact;
  m->lora = lora.value_or("");
  {
    py::gil_scoped_release nogil;
    LoadOptions opt;
    opt.lora = m->lora;
    m->model = load_model(path, opt);
    try {
      m->tok = Tokenizer::load(path);
    } catch (const Error& e) {
      m->tok_error = e.what();
    }
    m->eos = eos_token_ids(path, m->tok ? m->tok->eos_id() : std::nullopt);
  }
  return m;
}

struct PyState {
  std::shared_ptr<PyModel> model;
  std::unique_ptr<ModelState> st;
};

PyState& state_of(py::handle h, const PyModel& m) {
  PyState& s = h.cast<PyState&>();
  if (s.model.get() != &m) value_error("state: a state of another model (make it with this model's new_state())");
  return s;
}

py::array_t<float> logits_array(int64_t rows, int64_t V) {
  return py::array_t<float>(std::vector<py::ssize_t>{py::ssize_t(rows), py::ssize_t(V)});
}

// forward(state, ids, logits): "last" -> [V], "all" -> [T, V], "none" -> None.
py::object forward(PyModel& m, py::handle state, py::handle ids_h, const std::string& which) {
  PyState& s = state_of(state, m);
  auto ids = ids_from(ids_h, "ids");
  if (ids.empty()) value_error("ids: empty");
  if (which != "last" && which != "all" && which != "none")
    value_error(fmt::format("logits: \"{}\" is not one of \"last\", \"all\", \"none\"", which));
  const int64_t V = m.vocab(), T = int64_t(ids.size());
  check_vocab(ids, V, "ids");
  if (which == "none") {
    py::gil_scoped_release nogil;
    EngineCall call(m);
    m.model->forward(*s.st, ids, 0, nullptr);
    return py::none();
  }
  const int64_t from = which == "last" ? T - 1 : 0;
  auto out = logits_array(T - from, V);
  float* p = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    EngineCall call(m);
    m.model->forward(*s.st, ids, from, p);
  }
  if (which == "last") return out.attr("reshape")(V);
  return out;
}

// Logits of every position from a fresh state, `chunk` tokens per forward (as `hxq logits`).
py::array_t<float> logits(PyModel& m, py::handle ids_h, int64_t chunk) {
  auto ids = ids_from(ids_h, "ids");
  if (ids.empty()) value_error("ids: empty");
  if (chunk < 1) value_error(fmt::format("chunk: {} must be at least 1", chunk));
  const int64_t V = m.vocab(), T = int64_t(ids.size());
  check_vocab(ids, V, "ids");
  auto out = logits_array(T, V);
  float* p = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    auto st = m.model->new_state();
    for (int64_t b = 0; b < T; b += chunk) {
      const int64_t n = std::min(T - b, chunk);
      {
        EngineCall call(m);
        m.model->forward(*st, std::span(ids).subspan(size_t(b), size_t(n)), 0, p + b * V);
      }
      check_signals();
    }
  }
  return out;
}

// ---- generation ---------------------------------------------------------------------------------

struct GenOptions {
  int64_t max_tokens = 128;
  SamplingOptions s;
  std::vector<std::string> stop;
};

// The prompt as `hxq generate` builds it: text -> [BOS when the tokenizer adds it or the text is
// empty] + encode(text); token ids as given.
std::vector<int32_t> prompt_ids(const PyModel& m, py::handle prompt) {
  std::vector<int32_t> ids;
  if (py::isinstance<py::str>(prompt)) {
    const std::string text = prompt.cast<std::string>();
    const Tokenizer& tok = m.tokenizer();
    if (tok.add_bos_by_default() || text.empty())
      if (auto b = tok.bos_id()) ids.push_back(*b);
    auto body = tok.encode(text, false);
    ids.insert(ids.end(), body.begin(), body.end());
    if (ids.empty()) value_error("prompt: empty prompt and the tokenizer has no BOS token");
  } else {
    ids = ids_from(prompt, "prompt");
    if (ids.empty()) value_error("prompt: empty");
  }
  check_vocab(ids, m.vocab(), "prompt");
  return ids;
}

// One generation, advanced a token at a time: the loop of models/generate.cpp (prefill, sample,
// stop at EOS or max_tokens) plus streaming detokenisation and stop strings.
class Generation {
 public:
  Generation(std::shared_ptr<PyModel> m, std::vector<int32_t> prompt, const GenOptions& o)
      : m_(std::move(m)), prompt_(std::move(prompt)), max_(o.max_tokens), sampler_(o.s),
        dec_(m_->tokenizer()), stop_(o.stop) {
    st_ = m_->model->new_state();
  }

  // The text that became final with the next token ("" possible), or nullopt when finished.
  // Call with the GIL released.
  std::optional<std::string> step() {
    if (done_) return std::nullopt;
    using clock = std::chrono::steady_clock;
    EngineCall call(*m_);
    const int64_t V = m_->vocab();
    if (!started_) {
      logits_.resize(size_t(V));
      const auto t0 = clock::now();
      m_->model->forward(*st_, prompt_, int64_t(prompt_.size()) - 1, logits_.data());
      prefill_s_ = seconds(t0);
      started_ = true;
      if (max_ <= 0) return finish("length");
    }
    const auto t0 = clock::now();
    const int32_t next = sampler_.next(logits_.data(), V);
    ids_.push_back(next);
    if (std::find(m_->eos.begin(), m_->eos.end(), next) != m_->eos.end()) {
      decode_s_ += seconds(t0);
      return finish("stop");
    }
    std::string piece = stop_.push(dec_.push(next));
    if (stop_.stopped()) {
      decode_s_ += seconds(t0);
      done_ = true;
      reason_ = "stop";
      return piece;
    }
    if (int64_t(ids_.size()) == max_) {
      decode_s_ += seconds(t0);
      auto rest = finish("length");
      return piece + *rest;
    }
    m_->model->forward(*st_, std::span(&next, 1), 0, logits_.data());
    decode_steps_++;
    decode_s_ += seconds(t0);
    return piece;
  }

  // Runs to the end (GIL released inside), checking for Ctrl-C between tokens.
  std::string run() {
    std::string text;
    py::gil_scoped_release nogil;
    while (auto piece = step()) {
      text += *piece;
      check_signals();
    }
    return text;
  }

  // The next non-empty piece, or nullopt at the end (iterator protocol).
  std::optional<std::string> next_piece() {
    py::gil_scoped_release nogil;
    while (auto piece = step()) {
      if (!piece->empty()) return piece;
      check_signals();
    }
    return std::nullopt;
  }

  bool done() const { return done_; }
  const std::string& finish_reason() const { return reason_; }
  const std::vector<int32_t>& ids() const { return ids_; }
  const std::vector<int32_t>& prompt() const { return prompt_; }
  py::dict stats() const {
    py::dict d;
    d["prompt_tokens"] = prompt_.size();
    d["completion_tokens"] = ids_.size();
    d["prefill_seconds"] = prefill_s_;
    d["decode_seconds"] = decode_s_;
    d["prefill_tokens_per_s"] = prefill_s_ > 0 ? double(prompt_.size()) / prefill_s_ : 0.0;
    d["decode_tokens_per_s"] = decode_s_ > 0 ? double(decode_steps_) / decode_s_ : 0.0;
    return d;
  }

 private:
  static double seconds(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::optional<std::string> finish(const char* reason) {
    done_ = true;
    reason_ = reason;
    std::string out = stop_.push(dec_.flush());
    if (!stop_.stopped()) out += stop_.flush();
    else reason_ = "stop";
    return out;
  }

  std::shared_ptr<PyModel> m_;
  std::vector<int32_t> prompt_, ids_;
  int64_t max_;
  Sampler sampler_;
  StreamDecoder dec_;
  server::StopMatcher stop_;
  std::unique_ptr<ModelState> st_;
  std::vector<float> logits_;
  bool started_ = false, done_ = false;
  std::string reason_;
  double prefill_s_ = 0, decode_s_ = 0;
  int64_t decode_steps_ = 0;
};

GenOptions gen_options(int64_t max_tokens, float temperature, int top_k, float top_p, float min_p, uint64_t seed,
                       py::handle stop) {
  GenOptions o;
  if (max_tokens < 0) value_error(fmt::format("max_tokens: {} is negative", max_tokens));
  o.max_tokens = max_tokens;
  o.s.temperature = temperature;
  o.s.top_k = top_k;
  o.s.top_p = top_p;
  o.s.min_p = min_p;
  o.s.seed = seed;
  if (!stop.is_none()) {
    if (py::isinstance<py::str>(stop)) {
      o.stop.push_back(stop.cast<std::string>());
    } else if (py::isinstance<py::sequence>(stop)) {
      for (auto s : stop.cast<py::sequence>()) {
        if (!py::isinstance<py::str>(s)) type_error("stop: expected a string or a list of strings");
        o.stop.push_back(s.cast<std::string>());
      }
    } else {
      type_error("stop: expected a string or a list of strings");
    }
    for (auto& s : o.stop)
      if (s.empty()) value_error("stop: empty stop string");
  }
  Sampler check(o.s);  // validates the ranges as the CLI does (UsageError: hxq.UsageError)
  return o;
}

// ---- evaluation ---------------------------------------------------------------------------------

struct EvalArgs {
  std::vector<int32_t> ids;
  std::vector<EvalWindow> windows;
  std::optional<int32_t> bos;
};

// The tokens and windows of perplexity() / kl(): ctx None = the protocol's default.
EvalArgs eval_args(const PyModel& m, py::handle text, py::handle ids, std::optional<int64_t> ctx_opt, int64_t stride,
                   const std::string& protocol, int64_t max_tokens) {
  if (text.is_none() == ids.is_none()) value_error("give exactly one of text and ids");
  if (max_tokens < 0) value_error(fmt::format("max_tokens: {} is negative", max_tokens));
  if (ctx_opt && *ctx_opt < 2) value_error(fmt::format("ctx: {} must be at least 2", *ctx_opt));
  const int64_t ctx = ctx_opt.value_or(0);
  check_window_options(protocol, ctx, stride);  // before tokenizing
  EvalArgs a;
  std::string src = "ids";
  if (!text.is_none()) {
    if (!py::isinstance<py::str>(text)) type_error("text: expected a string (or pass ids=...)");
    const std::string s = text.cast<std::string>();
    const Tokenizer& tok = m.tokenizer();
    py::gil_scoped_release nogil;
    a.ids = tok.encode(s, false);
    src = "text";
  } else {
    a.ids = ids_from(ids, "ids");
  }
  if (max_tokens > 0 && int64_t(a.ids.size()) > max_tokens) a.ids.resize(size_t(max_tokens));
  check_vocab(a.ids, m.vocab(), src.c_str());
  if (protocol == "llamacpp" && m.tok && m.tok->add_bos_by_default()) a.bos = m.tok->bos_id();
  a.windows = plan_windows(int64_t(a.ids.size()), protocol, ctx, stride, a.bos, src);
  return a;
}

EvalProgress eval_progress(py::handle cb) {
  py::object f = py::reinterpret_borrow<py::object>(cb);
  return [f](size_t done, size_t total, int64_t scored, double ppl) {
    check_signals();
    if (!f.is_none()) {
      py::gil_scoped_acquire gil;
      f(done, total, scored, ppl);
    }
  };
}

py::dict py_perplexity(PyModel& m, py::handle text, py::handle ids, std::optional<int64_t> ctx, int64_t stride,
                    const std::string& protocol, int64_t max_tokens, bool stepwise, py::handle progress) {
  auto a = eval_args(m, text, ids, ctx, stride, protocol, max_tokens);
  EvalOptions eo;
  eo.stepwise = stepwise;
  eo.math = m.math();
  auto cb = eval_progress(progress);
  PerplexityResult r;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(m.mu);
    r = hxq::perplexity(*m.model, a.ids, a.windows, a.bos, cb, eo);
  }
  py::list windows;
  for (auto& w : r.windows) windows.append(py::make_tuple(w.w.begin, w.w.end, w.nll, w.w.count()));
  py::dict d;
  d["ppl"] = r.ppl;
  d["ppl_stderr"] = r.ppl_stderr;
  d["nll"] = r.nll;
  d["scored_tokens"] = r.count;
  d["tokens"] = a.ids.size();
  d["protocol"] = protocol;
  d["windows"] = windows;
  d["tokens_per_s"] = r.seconds > 0 ? double(r.count) / r.seconds : 0.0;
  d["seconds"] = r.seconds;
  return d;
}

py::dict py_kl(PyModel& m, PyModel& other, py::handle text, py::handle ids, std::optional<int64_t> ctx, int64_t stride,
            const std::string& protocol, int64_t max_tokens, bool stepwise, py::handle progress) {
  auto a = eval_args(m, text, ids, ctx, stride, protocol, max_tokens);
  if (other.vocab() != m.vocab())
    value_error(fmt::format("other: vocabulary of {} tokens, the base model has {}", other.vocab(), m.vocab()));
  EvalOptions eo;
  eo.stepwise = stepwise;
  eo.math = m.math();
  eo.other_math = other.math();
  auto cb = eval_progress(progress);
  KlResult k;
  {
    py::gil_scoped_release nogil;
    std::unique_lock<std::mutex> l1(m.mu, std::defer_lock), l2(other.mu, std::defer_lock);
    if (&m == &other) l1.lock();
    else std::lock(l1, l2);
    k = kl_divergence(*m.model, *other.model, a.ids, a.windows, a.bos, cb, eo);
  }
  py::dict d;
  d["kl_mean"] = k.kl_mean;
  d["kl_p99"] = k.kl_p99;
  d["kl_max"] = k.kl_max;
  d["top1_agreement"] = k.top1_agreement;
  d["ppl_base"] = k.base.ppl;
  d["ppl_other"] = k.other.ppl;
  d["delta_ppl_percent"] = 100.0 * (k.other.ppl / k.base.ppl - 1.0);
  d["scored_tokens"] = k.base.count;
  d["protocol"] = protocol;
  d["seconds"] = k.seconds;
  return d;
}

// ---- compression --------------------------------------------------------------------------------

py::dict compress(const std::string& src, const std::string& dst, const std::string& format, std::optional<int> bits,
                  std::optional<int> group, std::optional<double> bpw, std::optional<std::string> codebook,
                  std::optional<std::string> codebook_precision, std::optional<std::string> sidecar,
                  std::optional<double> sidecar_fraction, bool embeddings, std::vector<std::string> only,
                  std::vector<std::string> skip, double shard_gb, bool overwrite, bool fsync,
                  std::optional<std::string> merge_lora, std::optional<int> threads, py::handle progress) {
  // The same choices and checks as `hxq compress` (src/cli/cmd_compress.cpp).
  if (format != "v2" && format != "helix") value_error(fmt::format("format: \"{}\" is not \"v2\" or \"helix\"", format));
  const bool v2 = format == "v2";
  if (v2 && (codebook || codebook_precision || sidecar))
    value_error("codebook, codebook_precision and sidecar apply to format=\"helix\" only");
  if (!v2 && (bits || group || bpw)) value_error("bits, group and bpw apply to format=\"v2\" only");
  if (bits && bpw) value_error("give bits or bpw, not both");
  CompressOptions co;
  co.format = v2 ? CompressFormat::V2 : CompressFormat::Helix;
  co.bits = bits.value_or(8);
  if (co.bits != 4 && co.bits != 5 && co.bits != 6 && co.bits != 8) value_error(fmt::format("bits: {} is not 4, 5, 6 or 8", co.bits));
  co.group = group.value_or(32);
  if (co.group != 16 && co.group != 32) value_error(fmt::format("group: {} is not 16 or 32", co.group));
  co.bpw = bpw.value_or(0);
  if (bpw && (*bpw < 4.0 || *bpw > 9.0)) value_error(fmt::format("bpw: {} outside [4, 9]", *bpw));
  const double frac = sidecar_fraction.value_or(v2 ? 0.0 : kDefaultSidecarFraction);
  if (frac < 0 || frac > 0.05) value_error(fmt::format("sidecar_fraction: {} outside [0, 0.05]", frac));
  co.v2_sidecar_fraction = v2 ? frac : 0.0;
  co.encode.sidecar_fraction = v2 ? kDefaultSidecarFraction : frac;
  const std::string cb = codebook.value_or("optimal"), prec = codebook_precision.value_or("f32"),
                    sc = sidecar.value_or("error");
  if (cb != "optimal" && cb != "lloyd") value_error(fmt::format("codebook: \"{}\" is not \"optimal\" or \"lloyd\"", cb));
  if (prec != "f32" && prec != "bf16") value_error(fmt::format("codebook_precision: \"{}\" is not \"f32\" or \"bf16\"", prec));
  if (sc != "error" && sc != "magnitude" && sc != "none")
    value_error(fmt::format("sidecar: \"{}\" is not \"error\", \"magnitude\" or \"none\"", sc));
  co.encode.codebook = cb == "lloyd" ? CodebookMethod::Lloyd : CodebookMethod::Optimal;
  co.encode.codebook_precision = prec == "bf16" ? CodebookPrecision::Bf16 : CodebookPrecision::F32;
  co.encode.sidecar = sc == "magnitude" ? SidecarMethod::Magnitude : sc == "none" ? SidecarMethod::None : SidecarMethod::Error;
  co.embeddings = embeddings;
  co.only = std::move(only);
  co.skip = std::move(skip);
  if (!(shard_gb >= 0.001)) value_error(fmt::format("shard_gb: {} is below 0.001", shard_gb));
  co.max_shard_bytes = uint64_t(shard_gb * 1e9);
  co.overwrite = overwrite;
  co.fsync = fsync;
  co.merge_lora = merge_lora.value_or("");
  if (threads) {
    if (*threads < 1 || *threads > 1024) value_error(fmt::format("threads: {} outside [1, 1024]", *threads));
    if (pool().size() != *threads) set_num_threads(*threads);
  }
  py::object f = py::reinterpret_borrow<py::object>(progress);
  CompressReceipt r;
  {
    py::gil_scoped_release nogil;
    r = compress_checkpoint(src, dst, co, [&](uint64_t done, uint64_t total, const std::string& module) {
      check_signals();
      if (!f.is_none()) {
        py::gil_scoped_acquire gil;
        f(done, total, module);
      }
    });
  }
  return to_py(r.to_json());
}

// ---- compressed linear layers (hxq.torch) -------------------------------------------------------

// One linear layer over arrays owned by Python (the stored tensors of a module: codebook +
// indices (+ sidecar) for helix, qparams + packed_indices + scales + scale_params + codebook for
// v2, optional bias), viewed without copying where the engine keeps views (u8 indices).
class CompressedLinear {
 public:
  CompressedLinear(const py::dict& tensors, int64_t out, int64_t in, bool exact) : exact_(exact) {
    std::vector<TensorInfo> infos;
    for (auto [k, v] : tensors) {
      const std::string key = py::str(k);
      if (!py::isinstance<py::array>(v)) type_error(fmt::format("tensors['{}']: expected a numpy array", key));
      auto a = py::reinterpret_borrow<py::array>(v);
      infos.push_back(tensor_view("w." + key, a));
      keep_.push_back(a);
    }
    store_ = std::make_unique<TensorStore>(TensorStore::from_memory(std::move(infos), "<compressed linear>"));
    if (!is_hxq_module(*store_, "w"))
      value_error("tensors: not a compressed module (need codebook + indices, or v2's qparams + packed_indices + ...)");
    lin_ = Linear::hxq(*store_, "w", out, in);
  }

  int64_t in_features() const { return lin_.in_features(); }
  int64_t out_features() const { return lin_.out_features(); }
  std::string kind() const { return lin_.kind() == Linear::Kind::Hxq2 ? "v2" : "helix"; }
  int bits() const { return lin_.hxq2_weight() ? lin_.hxq2_weight()->bits() : 8; }
  size_t nbytes() const { return lin_.weight_bytes(); }
  bool has_bias() const { return lin_.has_bias(); }

  // out[T, out] = x[T, in] · Wᵀ (+ bias)
  void forward(py::handle x, py::handle out) const {
    auto X = f32_matrix(x, lin_.in_features(), "x", false);
    auto Y = f32_matrix(out, lin_.out_features(), "out", true);
    if (Y.shape(0) != X.shape(0)) value_error(fmt::format("out: {} rows for {} rows of x", Y.shape(0), X.shape(0)));
    const float* xp = X.data();
    float* yp = Y.mutable_data();
    const int64_t T = X.shape(0);
    py::gil_scoped_release nogil;
    std::optional<HxqMathScope> m;
    if (exact_) m.emplace(HxqMath::Exact);
    if (T > 0) lin_.forward(xp, T, yp);
  }
  // dx[T, in] = g[T, out] · W (the input gradient; the bias has none)
  void grad_input(py::handle g, py::handle dx) const {
    auto G = f32_matrix(g, lin_.out_features(), "grad_output", false);
    auto D = f32_matrix(dx, lin_.in_features(), "grad_input", true);
    if (D.shape(0) != G.shape(0)) value_error(fmt::format("grad_input: {} rows for {} rows of grad_output", D.shape(0), G.shape(0)));
    const float* gp = G.data();
    float* dp = D.mutable_data();
    const int64_t T = G.shape(0);
    py::gil_scoped_release nogil;
    if (T > 0) lin_.grad_input(gp, T, dp);
  }
  // The decoded weight [out, in] (tests and inspection; never used by forward).
  py::array_t<float> decode() const {
    py::array_t<float> w(std::vector<py::ssize_t>{py::ssize_t(lin_.out_features()), py::ssize_t(lin_.in_features())});
    float* p = w.mutable_data();
    for (int64_t r = 0; r < lin_.out_features(); ++r) lin_.row(r, p + r * lin_.in_features());
    return w;
  }

 private:
  bool exact_;
  std::vector<py::array> keep_;
  std::unique_ptr<TensorStore> store_;
  Linear lin_;
};

// ---- checkpoints --------------------------------------------------------------------------------

struct PyCheckpoint {
  std::string path;
  TensorStore store;
  std::optional<HxqQuantConfig> q;
  json config;  // null for a bare .safetensors file

  explicit PyCheckpoint(const std::string& p) : path(p), store(TensorStore::open(p)) {
    if (std::filesystem::is_directory(p)) {
      config = load_config(p);
      q = parse_hxq_config(config, p + "/config.json");
    }
  }
  const TensorInfo& get(const std::string& name) const {
    if (const TensorInfo* t = store.find(name)) return *t;
    throw py::key_error(name);
  }
  // The stored tensors of compressed module `m` under their suffixes (codebook, indices, ...;
  // a v2 module on the shared codebook gets a copy of it as "codebook"), plus "bias" if stored.
  py::dict module(const std::string& m) const {
    if (!is_hxq_module(store, m)) value_error(fmt::format("{}: '{}' is not a compressed module", path, m));
    py::dict d;
    for (const std::string& suf : hxq_tensor_suffixes())
      if (const TensorInfo* t = store.find(m + suf)) d[py::str(suf.substr(1))] = tensor_to_numpy(*t);
    if (const TensorInfo* t = store.find(m + ".bias")) d["bias"] = tensor_to_numpy(*t);
    if (is_hxq2_module(store, m) && !d.contains("codebook")) {
      auto w = Hxq2Weight::load(store, m);
      d["codebook"] = tensor_to_numpy(store.get(hxq2_shared_codebook_name(w->bits())));
    }
    return d;
  }
};

void save_safetensors(const std::string& path, const py::dict& tensors, const std::optional<std::map<std::string, std::string>>& metadata) {
  std::vector<std::pair<std::string, py::array>> arrays;
  for (auto [k, v] : tensors) {
    if (!py::isinstance<py::str>(k)) type_error("tensors: keys must be strings");
    if (!py::isinstance<py::array>(v)) type_error(fmt::format("tensors['{}']: expected a numpy array", std::string(py::str(k))));
    auto a = py::array::ensure(v, py::array::c_style);
    if (!a) throw py::error_already_set();
    arrays.emplace_back(py::str(k), a);
  }
  std::vector<TensorInfo> infos;
  for (auto& [name, a] : arrays) infos.push_back(tensor_view(name, a));
  size_t name_bytes = 0, meta_bytes = 0;
  for (auto& t : infos) name_bytes += t.name.size();
  if (metadata)
    for (auto& [k, v] : *metadata) meta_bytes += k.size() + v.size();
  SafetensorsWriter::Options opt;
  opt.header_reserve = SafetensorsWriter::header_estimate(infos.size(), name_bytes, meta_bytes);
  SafetensorsWriter w(path, opt);
  if (metadata)
    for (auto& [k, v] : *metadata) w.set_metadata(k, v);
  for (auto& t : infos) w.add(t.name, t.dtype, t.shape, t.data, t.nbytes);
  w.finish();
}

}  // namespace


constexpr const char* kGenerateDoc =
    "Generates a continuation of prompt (text: BOS added as `hxq generate` does; or token ids as given) "
    "and returns its text. Greedy at temperature 0; else seeded sampling with temperature, top_k, top_p, "
    "min_p. Stops at an EOS id, after max_tokens, or before the first stop string (not included). Same "
    "tokens and text as `hxq generate` with the same options.";
constexpr const char* kStreamDoc =
    "Like generate(), as an iterator of the text pieces that become final as tokens decode (their "
    "concatenation is generate()'s text); .ids, .finish_reason and .stats once it ends.";
constexpr const char* kCompleteDoc =
    "Like generate(), returning a dict: text, ids (generated, EOS included), prompt_ids, finish_reason "
    "(\"stop\" or \"length\"), prompt_tokens, completion_tokens, prefill/decode seconds and tokens/s.";
constexpr const char* kPerplexityDoc =
    "Perplexity on text (tokenized without BOS) or ids: protocol \"hf\" (windows of ctx tokens, default "
    "2048, every stride tokens) or \"llamacpp\" (halves of ctx-token chunks, default 512); max_tokens "
    "truncates; stepwise scores token by token as generation runs. progress(windows_done, windows_total, "
    "tokens_scored, running_ppl). Returns the keys of `hxq perplexity --json`.";
constexpr const char* kKlDoc =
    "KL(self || other) per scored token, top-1 agreement and both perplexities on the same windows as "
    "perplexity(); returns the keys of `hxq kl --json`.";

PYBIND11_MODULE(_hxq, mod) {
  mod.doc() = "hxq engine bindings (use the hxq package, not this module)";

  g_error = PyErr_NewExceptionWithDoc("hxq.Error",
                                      "An engine error: a one-line message naming the file or field and the problem "
                                      "(the CLI's `hxq: <message>`).",
                                      PyExc_RuntimeError, nullptr);
  py::tuple usage_bases = py::make_tuple(py::handle(g_error), py::handle(PyExc_ValueError));
  g_usage_error = PyErr_NewExceptionWithDoc("hxq.UsageError",
                                            "A bad argument (the CLI's usage errors, exit code 2).",
                                            usage_bases.ptr(), nullptr);
  if (!g_error || !g_usage_error) throw py::error_already_set();
  mod.attr("Error") = py::handle(g_error);
  mod.attr("UsageError") = py::handle(g_usage_error);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const UsageError& e) {
      PyErr_SetString(g_usage_error, e.what());
    } catch (const Error& e) {
      PyErr_SetString(g_error, e.what());
    }
  });

  mod.def("set_num_threads", [](int n) {
    if (n < 0 || n > 1024) value_error(fmt::format("threads: {} outside [0, 1024]", n));
    py::gil_scoped_release nogil;
    set_num_threads(n);
  }, py::arg("n"), "Sizes the engine's process-wide thread pool (0 = all cores).");
  mod.def("get_num_threads", [] { return pool().size(); }, "Threads of the engine's pool.");
  mod.def("supported_model_types", &supported_model_types);
  py::tuple suffixes(hxq_tensor_suffixes().size());
  for (size_t i = 0; i < hxq_tensor_suffixes().size(); ++i) suffixes[i] = hxq_tensor_suffixes()[i].substr(1);
  mod.attr("MODULE_TENSORS") = suffixes;  // the stored tensors of a compressed module, by suffix

  py::class_<Tokenizer>(mod, "Tokenizer", "Text <-> token ids, bit-exact with Hugging Face tokenizers / SentencePiece.")
      .def_static("load", [](const std::string& path) {
        py::gil_scoped_release nogil;
        return Tokenizer::load(path);
      }, py::arg("path"), "From a directory with tokenizer.json (or tokenizer.model), or one of those files.")
      .def("encode", [](const Tokenizer& t, const std::string& text, bool add_special) {
        py::gil_scoped_release nogil;
        return t.encode(text, add_special);
      }, py::arg("text"), py::arg("add_special") = false,
           "Token ids of text; add_special applies the post-processor (e.g. BOS).")
      .def("decode", [](const Tokenizer& t, py::handle ids, bool skip_special) {
        auto v = ids_from(ids, "ids");
        std::string s;
        {
          py::gil_scoped_release nogil;
          s = t.decode(v, skip_special);
        }
        return py::str(PyUnicode_DecodeUTF8(s.data(), py::ssize_t(s.size()), "replace"));
      }, py::arg("ids"), py::arg("skip_special") = false, "Text of token ids.")
      .def("token_to_id", &Tokenizer::token_to_id, py::arg("token"))
      .def("id_to_token", &Tokenizer::id_to_token, py::arg("id"))
      .def("is_special", &Tokenizer::is_special, py::arg("id"))
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("bos_id", &Tokenizer::bos_id)
      .def_property_readonly("eos_id", &Tokenizer::eos_id)
      .def_property_readonly("add_bos", &Tokenizer::add_bos_by_default)
      .def("__len__", &Tokenizer::vocab_size)
      .def("__repr__", [](const Tokenizer& t) { return fmt::format("<hxq.Tokenizer {} ({} tokens)>", t.source(), t.vocab_size()); });

  py::class_<PyState>(mod, "State", "A sequence's recurrent state or KV cache (Model.new_state()).")
      .def_property_readonly("position", [](const PyState& s) { return s.st->position(); }, "Tokens consumed so far.")
      .def_property_readonly("nbytes", [](const PyState& s) { return s.st->bytes(); }, "Memory held by the state.")
      .def("reset", [](PyState& s) { s.st->reset(); }, "Back to the empty state.")
      .def("clone", [](const PyState& s) { return PyState{s.model, s.st->clone()}; },
           "An independent deep copy that continues exactly as this state would.")
      .def("truncate", [](PyState& s, int64_t n) { return s.st->truncate(n); }, py::arg("n"),
           "Rewinds to the state after the first n tokens; False when the state cannot (recurrent "
           "states only at n == position).")
      .def("__repr__", [](const PyState& s) { return fmt::format("<hxq.State position={}>", s.st->position()); });

  py::class_<Generation, std::shared_ptr<Generation>>(mod, "Stream", "Text pieces of a generation as they decode.")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", [](Generation& g) {
        auto p = g.next_piece();
        if (!p) throw py::stop_iteration();
        return py::str(PyUnicode_DecodeUTF8(p->data(), py::ssize_t(p->size()), "replace"));
      })
      .def_property_readonly("ids", &Generation::ids, "Generated token ids so far (an EOS that stopped it included).")
      .def_property_readonly("prompt_ids", &Generation::prompt)
      .def_property_readonly("finish_reason", [](const Generation& g) -> py::object {
        if (!g.done()) return py::none();
        return py::str(g.finish_reason());
      }, "\"stop\" (EOS or a stop string), \"length\" (max_tokens), or None while running.")
      .def_property_readonly("stats", &Generation::stats, "Token counts and prefill / decode speed.");

  py::class_<PyModel, std::shared_ptr<PyModel>>(mod, "Model", "A model loaded by hxq.load (dense or compressed).")
      .def_readonly("path", &PyModel::path)
      .def_readonly("exact", &PyModel::exact)
      .def_property_readonly("lora", [](const PyModel& m) -> py::object {
        if (m.lora.empty()) return py::none();
        return py::str(m.lora);
      })
      .def_property_readonly("tokenizer", [](const PyModel& m) { return m.tokenizer(); },
                             "The checkpoint's tokenizer (hxq.Error when the directory has none).")
      .def_property_readonly("vocab_size", &PyModel::vocab)
      .def_property_readonly("eos_token_ids", [](const PyModel& m) { return m.eos; })
      .def_property_readonly("info", [](const PyModel& m) {
        auto s = m.model->summary();
        py::dict d;
        d["arch"] = s.arch;
        d["layers"] = s.layers;
        d["hidden"] = s.hidden;
        d["vocab"] = s.vocab;
        d["params"] = s.params;
        d["weight_bytes"] = s.weight_bytes;
        d["hxq_modules"] = s.hxq_modules;
        d["hxq_fast_modules"] = s.hxq_fast_modules;
        d["lora_modules"] = m.model->lora_layers();
        d["decode_weight_bytes"] = m.model->decode_weight_bytes();
        return d;
      }, "Architecture, sizes and storage of the model.")
      .def("new_state", [](std::shared_ptr<PyModel> m) { return PyState{m, m->model->new_state()}; },
           "A fresh state for incremental use with forward().")
      .def("forward", &forward, py::arg("state"), py::arg("ids"), py::arg("logits") = "last",
           "Feeds ids after what state has seen; returns the logits of the last position ([vocab]), of every "
           "position given ([len(ids), vocab], logits=\"all\") or None (logits=\"none\").")
      .def("logits", &logits, py::arg("ids"), py::arg("chunk") = 512,
           "float32 [len(ids), vocab] logits of every position from a fresh state, chunk tokens per forward "
           "(bit-identical to `hxq logits`).")
      .def("stream", [](std::shared_ptr<PyModel> m, py::handle prompt, int64_t max_tokens, float temperature, int top_k,
                        float top_p, float min_p, uint64_t seed, py::handle stop) {
        auto o = gen_options(max_tokens, temperature, top_k, top_p, min_p, seed, stop);
        auto p = prompt_ids(*m, prompt);
        return std::make_shared<Generation>(m, std::move(p), o);
      }, py::arg("prompt"), py::arg("max_tokens") = 128, py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("stop") = py::none(), kStreamDoc)
      .def("generate", [](std::shared_ptr<PyModel> m, py::handle prompt, int64_t max_tokens, float temperature, int top_k,
                          float top_p, float min_p, uint64_t seed, py::handle stop) {
        auto o = gen_options(max_tokens, temperature, top_k, top_p, min_p, seed, stop);
        auto p = prompt_ids(*m, prompt);
        Generation g(m, std::move(p), o);
        std::string text = g.run();
        return py::str(PyUnicode_DecodeUTF8(text.data(), py::ssize_t(text.size()), "replace"));
      }, py::arg("prompt"), py::arg("max_tokens") = 128, py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("stop") = py::none(), kGenerateDoc)
      .def("complete", [](std::shared_ptr<PyModel> m, py::handle prompt, int64_t max_tokens, float temperature, int top_k,
                          float top_p, float min_p, uint64_t seed, py::handle stop) {
        auto o = gen_options(max_tokens, temperature, top_k, top_p, min_p, seed, stop);
        auto p = prompt_ids(*m, prompt);
        Generation g(m, std::move(p), o);
        std::string text = g.run();
        py::dict d = g.stats();
        d["text"] = py::str(PyUnicode_DecodeUTF8(text.data(), py::ssize_t(text.size()), "replace"));
        d["ids"] = g.ids();
        d["prompt_ids"] = g.prompt();
        d["finish_reason"] = g.finish_reason();
        return d;
      }, py::arg("prompt"), py::arg("max_tokens") = 128, py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("stop") = py::none(), kCompleteDoc)
      .def("perplexity", &py_perplexity, py::arg("text") = py::none(), py::kw_only(), py::arg("ids") = py::none(),
           py::arg("ctx") = py::none(), py::arg("stride") = 512, py::arg("protocol") = "hf", py::arg("max_tokens") = 0,
           py::arg("stepwise") = false, py::arg("progress") = py::none(), kPerplexityDoc)
      .def("kl", &py_kl, py::arg("other"), py::arg("text") = py::none(), py::kw_only(), py::arg("ids") = py::none(),
           py::arg("ctx") = py::none(), py::arg("stride") = 512, py::arg("protocol") = "hf", py::arg("max_tokens") = 0,
           py::arg("stepwise") = false, py::arg("progress") = py::none(), kKlDoc)
      .def("__repr__", [](const PyModel& m) {
        auto s = m.model->summary();
        return fmt::format("<hxq.Model {} ({}, {} layers, {} HXQ modules{})>", m.path, s.arch, s.layers, s.hxq_modules,
                           m.lora.empty() ? "" : ", LoRA " + m.lora);
      });

  mod.def("load", &load, py::arg("path"), py::arg("threads") = py::none(), py::arg("exact") = false,
          py::arg("lora") = py::none());

  mod.def("compress", &compress, py::arg("src"), py::arg("dst"), py::kw_only(), py::arg("format") = "v2",
          py::arg("bits") = py::none(), py::arg("group") = py::none(), py::arg("bpw") = py::none(),
          py::arg("codebook") = py::none(), py::arg("codebook_precision") = py::none(), py::arg("sidecar") = py::none(),
          py::arg("sidecar_fraction") = py::none(), py::arg("embeddings") = false,
          py::arg("only") = std::vector<std::string>{}, py::arg("skip") = std::vector<std::string>{},
          py::arg("shard_gb") = 4.0, py::arg("overwrite") = false, py::arg("fsync") = true,
          py::arg("merge_lora") = py::none(), py::arg("threads") = py::none(), py::arg("progress") = py::none());

  mod.def("inspect", [](const std::string& path) {
    json j;
    {
      py::gil_scoped_release nogil;
      j = inspect_checkpoint(path);
    }
    return to_py(j);
  }, py::arg("path"));

  py::class_<CompressedLinear, std::shared_ptr<CompressedLinear>>(
      mod, "CompressedLinear",
      "One compressed linear layer over numpy arrays of its stored tensors (viewed, not copied, where the "
      "engine keeps views: keep them unchanged while it lives); hxq.torch.HxqLinear is built on it. "
      "exact: exact float32 codebook math in the decode kernels.")
      .def(py::init<const py::dict&, int64_t, int64_t, bool>(), py::arg("tensors"), py::arg("out_features"),
           py::arg("in_features"), py::arg("exact") = true)
      .def_property_readonly("in_features", &CompressedLinear::in_features)
      .def_property_readonly("out_features", &CompressedLinear::out_features)
      .def_property_readonly("kind", &CompressedLinear::kind)
      .def_property_readonly("bits", &CompressedLinear::bits)
      .def_property_readonly("nbytes", &CompressedLinear::nbytes)
      .def_property_readonly("has_bias", &CompressedLinear::has_bias)
      .def("forward", &CompressedLinear::forward, py::arg("x"), py::arg("out"),
           "out[T, out_features] = x[T, in_features] · Wᵀ (+ bias); float32 C-contiguous arrays.")
      .def("grad_input", &CompressedLinear::grad_input, py::arg("grad_output"), py::arg("grad_input"),
           "grad_input[T, in_features] = grad_output[T, out_features] · W, from the stored form.")
      .def("decode", &CompressedLinear::decode, "The decoded weight [out_features, in_features] (a dense copy).");

  py::class_<PyCheckpoint, std::shared_ptr<PyCheckpoint>>(
      mod, "Checkpoint",
      "The tensors of a checkpoint directory (sharded or not) or of one .safetensors file, memory-mapped and "
      "validated; tensor(name) copies one into numpy (BF16 widened to float32).")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_readonly("path", &PyCheckpoint::path)
      .def("names", [](const PyCheckpoint& c) { return c.store.names(); })
      .def("__contains__", [](const PyCheckpoint& c, const std::string& n) { return c.store.contains(n); })
      .def("__len__", [](const PyCheckpoint& c) { return c.store.names().size(); })
      .def("dtype", [](const PyCheckpoint& c, const std::string& n) { return std::string(dtype_name(c.get(n).dtype)); })
      .def("shape", [](const PyCheckpoint& c, const std::string& n) { return c.get(n).shape; })
      .def("tensor", [](const PyCheckpoint& c, const std::string& n) { return tensor_to_numpy(c.get(n)); }, py::arg("name"))
      .def("__getitem__", [](const PyCheckpoint& c, const std::string& n) { return tensor_to_numpy(c.get(n)); })
      .def_property_readonly("config", [](const PyCheckpoint& c) { return to_py(c.config); })
      .def_property_readonly("quant_method", [](const PyCheckpoint& c) -> py::object {
        if (!c.q) return py::none();
        return py::str(c.q->quant_method);
      })
      .def_property_readonly("compressed_modules", [](const PyCheckpoint& c) {
        return c.q ? c.q->compressed_modules : std::vector<std::string>{};
      })
      .def("module", &PyCheckpoint::module, py::arg("name"),
           "The stored tensors of a compressed module by suffix (codebook, indices, sidecar_*, qparams, "
           "packed_indices, scales, scale_params; a shared v2 codebook copied in as codebook; bias).");

  mod.def("save_safetensors", &save_safetensors, py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::none());
}
