#include "codec/inspect.h"

#include <map>
#include <set>

#include "codec/hxq2_weight.h"
#include "codec/hxq_config.h"
#include "codec/hxq_weight.h"
#include "io/safetensors.h"

namespace hxq {

json inspect_checkpoint(const std::string& dir) {
  json cfg = load_config(dir);
  auto q = parse_hxq_config(cfg, dir + "/config.json");
  auto store = TensorStore::open(dir);
  if (q) check_hxq_modules(*q, store, dir);
  std::map<std::string, std::pair<int64_t, uint64_t>> by_dtype;  // count, bytes
  int64_t params_dense = 0;
  for (auto& n : store.names()) {
    const auto& t = store.get(n);
    auto& e = by_dtype[std::string(dtype_name(t.dtype))];
    e.first++;
    e.second += t.nbytes;
  }
  int64_t hxq_weights = 0, sidecar = 0;
  std::map<int, int64_t> by_bits;  // v2 modules by bit width
  uint64_t hxq_bytes = 0;
  std::set<std::string> hxq_tensors;
  if (q)
    for (auto& m : q->compressed_modules) {
      if (is_hxq2_module(store, m)) {
        auto w = Hxq2Weight::load(store, m);
        hxq_weights += w->rows() * w->cols();
        sidecar += w->sidecar_count();
        by_bits[w->bits()]++;
      } else {
        auto w = HxqWeight::load(store, m);
        hxq_weights += w->rows() * w->cols();
        sidecar += w->sidecar_count();
      }
      for (auto& suf : hxq_tensor_suffixes())
        if (auto* t = store.find(m + suf)) {
          hxq_bytes += t->nbytes;
          hxq_tensors.insert(m + suf);
        }
    }
  for (int b : {4, 5, 6, 8})
    if (auto* t = store.find(hxq2_shared_codebook_name(b))) {
      hxq_bytes += t->nbytes;
      hxq_tensors.insert(t->name);
    }
  for (auto& n : store.names())
    if (!hxq_tensors.count(n)) {
      const auto& t = store.get(n);
      if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16) params_dense += t.numel();
    }
  std::string type = cfg.contains("model_type") && cfg["model_type"].is_string() ? cfg["model_type"].get<std::string>() : "?";
  json j{{"dir", dir},
         {"model_type", type},
         {"format", q ? (q->quant_method == kHxq2QuantMethod ? "hxq_v2" : "hxq") : "dense"},
         {"files", store.files().size()},
         {"total_keys", store.names().size()},
         {"file_bytes", store.total_bytes()},
         {"dense_params", params_dense},
         {"hxq_modules", q ? q->compressed_modules.size() : 0},
         {"hxq_weights", hxq_weights},
         {"hxq_bytes", hxq_bytes},
         {"hxq_bits_per_weight", hxq_weights ? 8.0 * double(hxq_bytes) / double(hxq_weights) : 0.0},
         {"sidecar_entries", sidecar}};
  if (q) j["quant_method"] = q->quant_method;
  if (!by_bits.empty()) {
    json bb = json::object();
    for (auto& [b, n] : by_bits) bb[std::to_string(b)] = n;
    j["modules_by_bits"] = bb;
  }
  json dt = json::object();
  for (auto& [k, v] : by_dtype) dt[k] = {{"tensors", v.first}, {"bytes", v.second}};
  j["dtypes"] = dt;
  return j;
}

}  // namespace hxq
