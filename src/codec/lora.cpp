#include "codec/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/dtype.h"
#include "core/error.h"
#include "core/mmap.h"
#include "core/threadpool.h"
#include "io/json.h"
#include "io/safetensors.h"

namespace hxq {

namespace fs = std::filesystem;

namespace {

// adapter_config.json keeps its key order: rank_pattern / alpha_pattern take the first match.
using ojson = nlohmann::ordered_json;

bool ends_with(std::string_view s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// The value of `key`, or nullptr when absent or null.
const ojson* field(const ojson& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

bool bool_field(const ojson& j, const char* key, const std::string& path) {
  const ojson* v = field(j, key);
  if (!v) return false;
  if (!v->is_boolean()) fail("{}: \"{}\" must be true or false, got {}", path, key, v->dump());
  return v->get<bool>();
}

int64_t rank_value(const ojson& v, const std::string& path, const std::string& what) {
  if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > (int64_t(1) << 20))
    fail("{}: {} must be a positive integer, got {}", path, what, v.dump());
  return v.get<int64_t>();
}

double alpha_value(const ojson& v, const std::string& path, const std::string& what) {
  if (!v.is_number() || !std::isfinite(v.get<double>()))
    fail("{}: {} must be a number, got {}", path, what, v.dump());
  return v.get<double>();
}

std::regex compile(const std::string& pattern, const std::string& path, const std::string& what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    fail("{}: {}: invalid regular expression \"{}\" ({})", path, what, printable_name(pattern), e.what());
  }
}

// target_modules / exclude_modules as PEFT matches them: a string is a regex that must match the
// whole module name; a list matches a name equal to an entry or ending in "." + entry.
struct ModuleSelector {
  bool present = false, all = false, is_regex = false;
  std::regex re;
  std::vector<std::string> names;

  static ModuleSelector parse(const ojson& j, const char* key, const std::string& path) {
    ModuleSelector s;
    const ojson* v = field(j, key);
    if (!v) return s;
    s.present = true;
    if (v->is_string()) {
      const std::string p = v->get<std::string>();
      if (p == "all-linear") s.all = true;  // PEFT expands it before saving; accept it anyway
      else {
        s.is_regex = true;
        s.re = compile(p, path, key);
      }
    } else if (v->is_array()) {
      for (auto& e : *v) {
        if (!e.is_string()) fail("{}: \"{}\" entries must be strings, got {}", path, key, e.dump());
        s.names.push_back(e.get<std::string>());
      }
    } else {
      fail("{}: \"{}\" must be a list of module names or a regular expression, got {}", path, key, v->dump());
    }
    return s;
  }

  bool matches(const std::string& name) const {
    if (all) return true;
    if (is_regex) return std::regex_match(name, re);
    for (auto& n : names)
      if (name == n || ends_with(name, "." + n)) return true;
    return false;
  }
};

// rank_pattern / alpha_pattern: (key regex, value) in file order.
template <class V>
std::vector<std::pair<std::regex, V>> parse_pattern(const ojson& j, const char* key, const std::string& path,
                                                    V (*value)(const ojson&, const std::string&, const std::string&)) {
  std::vector<std::pair<std::regex, V>> out;
  const ojson* v = field(j, key);
  if (!v) return out;
  if (!v->is_object()) fail("{}: \"{}\" must be an object (module pattern -> value), got {}", path, key, v->dump());
  for (auto it = v->begin(); it != v->end(); ++it) {
    const std::string what = std::string(key) + " \"" + printable_name(it.key()) + "\"";
    // PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", module_name)
    out.emplace_back(compile("(.*\\.)?(" + it.key() + ")", path, what), value(it.value(), path, what));
  }
  return out;
}

template <class V>
const V* pattern_value(const std::vector<std::pair<std::regex, V>>& pat, const std::string& name) {
  for (auto& [re, v] : pat)
    if (std::regex_match(name, re)) return &v;
  return nullptr;
}

std::string dims(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

LoraAdapter LoraAdapter::load(const std::string& dir) {
  LoraAdapter a;
  a.dir = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("{}: not a directory (expected a PEFT LoRA adapter directory)", dir);
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  if (!fs::exists(cfg_path, ec))
    fail("{}: missing (a PEFT LoRA adapter directory holds adapter_config.json and adapter_model.safetensors)",
         cfg_path);
  ojson cfg;
  try {
    cfg = ojson::parse(read_text_file(cfg_path));
  } catch (const ojson::exception& e) {
    fail("{}: invalid JSON: {}", cfg_path, clean_json_error(e.what()));
  }
  if (!cfg.is_object()) fail("{}: expected a JSON object", cfg_path);

  if (const ojson* t = field(cfg, "peft_type"))
    if (!t->is_string() || t->get<std::string>() != "LORA")
      fail("{}: peft_type {} is not supported (only \"LORA\")", cfg_path, t->dump());
  if (const ojson* v = field(cfg, "r")) a.r = rank_value(*v, cfg_path, "\"r\"");
  if (const ojson* v = field(cfg, "lora_alpha")) a.lora_alpha = alpha_value(*v, cfg_path, "\"lora_alpha\"");
  a.use_rslora = bool_field(cfg, "use_rslora", cfg_path);

  // What this engine cannot reproduce, refused by name.
  if (bool_field(cfg, "fan_in_fan_out", cfg_path))
    fail("{}: fan_in_fan_out=true (weights stored transposed, GPT-2 Conv1D style) is not supported", cfg_path);
  if (bool_field(cfg, "use_dora", cfg_path)) fail("{}: use_dora=true (DoRA) is not supported", cfg_path);
  if (const ojson* m = field(cfg, "modules_to_save"); m && !(m->is_array() && m->empty()))
    fail("{}: modules_to_save {} is not supported (the adapter would replace whole modules)", cfg_path, m->dump());
  if (const ojson* b = field(cfg, "bias"); b && !(b->is_string() && b->get<std::string>() == "none"))
    fail("{}: bias {} is not supported (trained biases; only \"none\")", cfg_path, b->dump());
  if (bool_field(cfg, "lora_bias", cfg_path)) fail("{}: lora_bias=true (a bias on lora_B) is not supported", cfg_path);
  if (bool_field(cfg, "use_qalora", cfg_path)) fail("{}: use_qalora=true (QA-LoRA) is not supported", cfg_path);
  for (const char* k : {"target_parameters", "trainable_token_indices", "layer_replication", "alora_invocation_tokens"})
    if (const ojson* v = field(cfg, k); v && !((v->is_array() || v->is_object()) && v->empty()))
      fail("{}: \"{}\" {} is not supported", cfg_path, k, printable_name(v->dump()));

  const ModuleSelector target = ModuleSelector::parse(cfg, "target_modules", cfg_path);
  const ModuleSelector exclude = ModuleSelector::parse(cfg, "exclude_modules", cfg_path);
  const auto rank_pat = parse_pattern<int64_t>(cfg, "rank_pattern", cfg_path, rank_value);
  const auto alpha_pat = parse_pattern<double>(cfg, "alpha_pattern", cfg_path, alpha_value);

  const std::string st_path = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!fs::exists(st_path, ec)) {
    const std::string bin = (fs::path(dir) / "adapter_model.bin").string();
    if (fs::exists(bin, ec))
      fail("{}: PyTorch pickle adapters are not supported; hxq needs adapter_model.safetensors (PEFT's default, "
           "save_pretrained(..., safe_serialization=True))", bin);
    fail("{}: missing (the adapter's weights)", st_path);
  }
  SafetensorsFile file(st_path);
  struct Pair {
    const TensorInfo* A = nullptr;
    const TensorInfo* B = nullptr;
  };
  std::map<std::string, Pair> pairs;
  static constexpr std::string_view kPrefix = "base_model.model.";
  for (const TensorInfo& t : file.tensors()) {
    const std::string shown = printable_name(t.name);
    // PeftModel writes "base_model.model.<module>..."; transformers' own adapter saving leaves the prefix out.
    std::string_view n = t.name;
    if (n.substr(0, kPrefix.size()) == kPrefix) n.remove_prefix(kPrefix.size());
    if (n.find("lora_embedding_A") != std::string_view::npos || n.find("lora_embedding_B") != std::string_view::npos)
      fail("{}: tensor '{}': embedding adapters (lora_embedding_A/B) are not supported", st_path, shown);
    const bool is_a = ends_with(n, ".lora_A.weight"), is_b = ends_with(n, ".lora_B.weight");
    const std::string module(n.substr(0, is_a || is_b ? n.size() - 14 : 0));
    if (module.empty())
      fail("{}: tensor '{}': unexpected in a LoRA adapter (expected '<module>.lora_A.weight' and "
           "'<module>.lora_B.weight')", st_path, shown);
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail("{}: tensor '{}': dtype {} is not supported (F32, F16 or BF16)", st_path, shown, dtype_name(t.dtype));
    if (t.shape.size() != 2) fail("{}: tensor '{}': expected a 2-D matrix, got shape {}", st_path, shown, t.shape_str());
    const TensorInfo*& slot = is_a ? pairs[module].A : pairs[module].B;
    if (slot) fail("{}: tensor '{}': a second lora_{} for module '{}'", st_path, shown, is_a ? 'A' : 'B', module);
    slot = &t;
  }
  if (pairs.empty()) fail("{}: no LoRA tensors", st_path);

  for (auto& [name, p] : pairs) {
    const std::string shown = printable_name(name);
    if (!p.A || !p.B) {
      const std::string& have = (p.A ? p.A : p.B)->name;
      const std::string missing = have.substr(0, have.size() - 14) + (p.A ? ".lora_B.weight" : ".lora_A.weight");
      fail("{}: module '{}' has tensor '{}' but no '{}'", st_path, shown, printable_name(have), printable_name(missing));
    }
    if (target.present && !target.matches(name))
      fail("{}: module '{}' is not selected by target_modules in {}", st_path, shown, cfg_path);
    if (exclude.present && exclude.matches(name))
      fail("{}: module '{}' is excluded by exclude_modules in {}", st_path, shown, cfg_path);
    const int64_t* rp = pattern_value(rank_pat, name);
    const double* ap = pattern_value(alpha_pat, name);
    const int64_t r = rp ? *rp : a.r;
    const double alpha = ap ? *ap : a.lora_alpha;
    const std::string r_src = rp ? "its rank_pattern entry" : "\"r\"";
    if (p.A->shape[0] != r)
      fail("{}: tensor '{}' has shape {}, expected [{}, in] (rank {} from {} in adapter_config.json)", st_path,
           printable_name(p.A->name), p.A->shape_str(), r, r, r_src);
    if (p.B->shape[1] != r)
      fail("{}: tensor '{}' has shape {}, expected [out, {}] (rank {} from {} in adapter_config.json)", st_path,
           printable_name(p.B->name), p.B->shape_str(), r, r, r_src);
    auto m = std::make_shared<LoraModule>();
    m->name = name;
    m->rank = r;
    m->in = p.A->shape[1];
    m->out = p.B->shape[0];
    if (m->in <= 0 || m->out <= 0)
      fail("{}: module '{}': empty lora_A {} / lora_B {}", st_path, shown, dims(p.A->shape), dims(p.B->shape));
    m->scale = float(a.use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r));
    m->A.resize(size_t(r * m->in));
    m->B.resize(size_t(m->out * r));
    to_f32(p.A->dtype, p.A->data, m->A.data(), m->A.size());
    to_f32(p.B->dtype, p.B->data, m->B.data(), m->B.size());
    a.modules.push_back(std::move(m));
  }
  return a;
}

const LoraModule* LoraAdapter::find(std::string_view name) const {
  auto it = std::lower_bound(modules.begin(), modules.end(), name,
                             [](const std::shared_ptr<const LoraModule>& m, std::string_view n) { return m->name < n; });
  return it != modules.end() && (*it)->name == name ? it->get() : nullptr;
}

void lora_merge(const LoraModule& m, float* W) {
  const int64_t R = m.rank, in = m.in;
  const double s = double(m.scale);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, R * in));
  pool().parallel_for(m.out, [&](int64_t b, int64_t e, int) {
    std::vector<double> acc(static_cast<size_t>(in));
    for (int64_t o = b; o < e; ++o) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t r = 0; r < R; ++r) {
        const double br = double(m.B[size_t(o * R + r)]);
        const float* ar = m.A.data() + r * in;
        for (int64_t i = 0; i < in; ++i) acc[size_t(i)] += br * double(ar[i]);
      }
      float* w = W + o * in;
      for (int64_t i = 0; i < in; ++i) w[i] = float(double(w[i]) + s * acc[size_t(i)]);
    }
  }, grain);
}

}  // namespace hxq
