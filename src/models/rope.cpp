#include "models/rope.h"

#include <cmath>

#include "core/error.h"

namespace hxq {

namespace {

double num(const json& obj, const char* key, const std::string& what) {
  if (!obj.contains(key) || obj[key].is_null()) fail("{}: missing \"{}\"", what, key);
  return json_float(obj[key], what + "." + key);
}

}  // namespace

RopeConfig RopeConfig::from_json(const json& cfg, int64_t head_dim, int64_t max_position, const std::string& path) {
  RopeConfig r;
  r.dim = head_dim;
  r.max_position = max_position;
  if (head_dim <= 0 || head_dim % 2) fail("{}: head_dim {} must be even for rotary embeddings", path, head_dim);

  // transformers 5 writes "rope_parameters" (with rope_theta inside); 4.x "rope_scaling" (or null)
  // next to a top-level "rope_theta".
  const json* sc = nullptr;
  std::string where;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (cfg.contains(key) && !cfg[key].is_null()) {
      if (!cfg[key].is_object()) fail("{}: \"{}\" must be an object, got {}", path, key, cfg[key].dump());
      sc = &cfg[key];
      where = path + ": " + key;
      break;
    }
  }
  if (sc && sc->contains("rope_theta") && !(*sc)["rope_theta"].is_null())
    r.theta = num(*sc, "rope_theta", where);
  else if (cfg.contains("rope_theta") && !cfg["rope_theta"].is_null())
    r.theta = json_float(cfg["rope_theta"], path + ": rope_theta");
  if (!(r.theta > 1.0) || !std::isfinite(r.theta)) fail("{}: rope_theta {} is out of range", path, r.theta);

  for (const json* j : {&cfg, sc}) {
    if (j && j->contains("partial_rotary_factor") && !(*j)["partial_rotary_factor"].is_null()) {
      double p = json_float((*j)["partial_rotary_factor"], path + ": partial_rotary_factor");
      if (p != 1.0) fail("{}: partial_rotary_factor {} is not supported (only 1.0)", path, p);
    }
  }

  std::string type = "default";
  if (sc) {
    const char* tk = sc->contains("rope_type") ? "rope_type" : sc->contains("type") ? "type" : nullptr;
    if (tk) {
      if (!(*sc)[tk].is_string()) fail("{}.{} must be a string, got {}", where, tk, (*sc)[tk].dump());
      type = (*sc)[tk].get<std::string>();
    }
  }
  auto factor = [&] {
    double f = num(*sc, "factor", where);
    if (!(f > 0) || !std::isfinite(f)) fail("{}.factor = {} is out of range", where, f);
    return f;
  };
  if (type == "default") {
    r.type = Type::Default;
  } else if (type == "linear") {
    r.type = Type::Linear;
    r.factor = factor();
  } else if (type == "dynamic") {
    r.type = Type::Dynamic;
    r.factor = factor();
    if (r.factor < 1.0) fail("{}.factor = {} must be >= 1 for dynamic NTK scaling", where, r.factor);
  } else if (type == "llama3") {
    r.type = Type::Llama3;
    r.factor = factor();
    r.low_freq_factor = num(*sc, "low_freq_factor", where);
    r.high_freq_factor = num(*sc, "high_freq_factor", where);
    double omp = num(*sc, "original_max_position_embeddings", where);
    if (!(omp >= 1 && omp <= double(int64_t(1) << 40)))
      fail("{}.original_max_position_embeddings = {} is out of range", where, omp);
    r.original_max_position = int64_t(omp);
    if (!(r.high_freq_factor > r.low_freq_factor) || !(r.low_freq_factor > 0))
      fail("{}: llama3 rope needs 0 < low_freq_factor < high_freq_factor, got {} and {}", where, r.low_freq_factor,
           r.high_freq_factor);
  } else {
    fail("{}: unsupported rope scaling type \"{}\" (supported: default, linear, dynamic, llama3)", path, type);
  }
  return r;
}

std::string RopeConfig::type_name() const {
  switch (type) {
    case Type::Default: return "default";
    case Type::Linear: return "linear";
    case Type::Dynamic: return "dynamic";
    case Type::Llama3: return "llama3";
  }
  return "?";
}

// Every step below is a float32 operation, as in transformers' modeling_rope_utils (torch tensors
// of dtype float32 combined with Python scalars), so that the frequencies agree to the last bit
// or nearly: positions up to ~1e5 multiply any difference.
std::vector<float> RopeConfig::inv_freq(int64_t seq_len) const {
  const int64_t half = dim / 2;
  float base = float(theta);
  if (type == Type::Dynamic && seq_len > max_position) {
    // base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    float s = float(factor) * float(seq_len);
    s = s / float(max_position);
    s = s - float(factor - 1.0);
    s = std::pow(s, float(double(dim) / double(dim - 2)));
    base = base * s;
  }
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float e = float(2 * i) / float(dim);
    inv[size_t(i)] = 1.0f / std::pow(base, e);
  }
  if (type == Type::Linear) {
    for (auto& v : inv) v = v / float(factor);
  } else if (type == Type::Llama3) {
    const float f = float(factor), lo = float(low_freq_factor);
    const float old_ctx = float(original_max_position);
    const float low_wl = float(double(original_max_position) / low_freq_factor);
    const float high_wl = float(double(original_max_position) / high_freq_factor);
    const float two_pi = float(2.0 * M_PI);
    for (auto& v : inv) {
      const float wavelen = two_pi / v;
      float scaled = wavelen > low_wl ? v / f : v;
      const float smooth = (old_ctx / wavelen - lo) / float(high_freq_factor - low_freq_factor);
      const float smoothed = (1.0f - smooth) * scaled / f + smooth * scaled;
      const bool medium = !(wavelen < high_wl) && !(wavelen > low_wl);
      v = medium ? smoothed : scaled;
    }
  }
  return inv;
}

void rope_table_row(const std::vector<float>& inv_freq, int64_t pos, float* cos, float* sin) {
  const float p = float(pos);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float a = inv_freq[i] * p;  // float32 product, as torch's inv_freq @ position_ids
    cos[i] = float(std::cos(double(a)));
    sin[i] = float(std::sin(double(a)));
  }
}

void rope_tables(const std::vector<float>& inv_freq, int64_t pos0, int64_t n, std::vector<float>& cos,
                 std::vector<float>& sin) {
  const int64_t half = int64_t(inv_freq.size());
  cos.resize(size_t(n * half));
  sin.resize(size_t(n * half));
  for (int64_t t = 0; t < n; ++t) rope_table_row(inv_freq, pos0 + t, cos.data() + t * half, sin.data() + t * half);
}

void rope_apply(float* x, int64_t heads, int64_t half, const float* c, const float* s) {
  for (int64_t h = 0; h < heads; ++h) {
    float* a = x + h * 2 * half;
    float* b = a + half;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = a[i], x2 = b[i];
      a[i] = x1 * c[i] - x2 * s[i];  // q * cos + (-x2) * sin
      b[i] = x2 * c[i] + x1 * s[i];  // q * cos + x1 * sin
    }
  }
}

}  // namespace hxq
