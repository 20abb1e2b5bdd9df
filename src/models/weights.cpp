#include "models/weights.h"

#include "core/error.h"

namespace hxq {

std::string strip_weight(const std::string& n) {
  const std::string suf = ".weight";
  if (n.size() > suf.size() && n.compare(n.size() - suf.size(), suf.size(), suf) == 0)
    return n.substr(0, n.size() - suf.size());
  return n;
}

bool is_hxq_module(const TensorStore& store, const std::string& m) {
  return store.contains(m + ".codebook") && store.contains(m + ".indices");
}

Linear load_linear(const TensorStore& store, const std::string& m, bool bias) {
  const TensorInfo* b = bias ? store.find(m + ".bias") : nullptr;
  if (is_hxq_module(store, m)) fail("{}: '{}' is HXQ-compressed; HXQ layers are not supported yet", store.location(), m);
  return Linear::dense(store.get(m + ".weight"), b);
}

std::vector<float> load_vector(const TensorStore& store, const std::string& name, int64_t numel) {
  const auto& t = store.get(name);
  if (t.numel() != numel)
    fail("{}: tensor '{}' has shape {} ({} elements), expected {} elements", t.file, t.name, t.shape_str(), t.numel(),
         numel);
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    fail("{}: tensor '{}' has dtype {}, expected a float type", t.file, t.name, dtype_name(t.dtype));
  std::vector<float> v(static_cast<size_t>(numel));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

}  // namespace hxq
