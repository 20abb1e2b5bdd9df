#include "models/weights.h"

#include "core/error.h"

namespace hxq {

Linear load_linear(const TensorStore& store, const std::string& m, bool bias) {
  if (is_hxq_module(store, m)) {
    if (store.contains(m + ".weight"))
      fail("{}: module '{}' has both a dense weight and HXQ tensors", store.location(), m);
    Linear l = Linear::hxq(store, m);
    if (!bias && l.has_bias()) fail("{}: module '{}' has a bias this architecture does not use", store.location(), m);
    return l;
  }
  const TensorInfo* b = bias ? store.find(m + ".bias") : nullptr;
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
