#include "models/weights.h"

#include "core/error.h"
#include "models/model.h"

namespace hxq {

Linear load_linear(const TensorStore& store, const std::string& m, bool bias) {
  if (is_hxq_module(store, m)) {
    if (store.contains(m + ".weight"))
      fail("{}: module '{}' has both a dense weight and HXQ tensors", store.location(), m);
    Linear l = Linear::hxq(store, m);
    if (!bias && l.has_bias()) fail("{}: module '{}' has a bias this architecture does not use", store.location(), m);
    l.set_name(m);
    return l;
  }
  const TensorInfo* b = bias ? store.find(m + ".bias") : nullptr;
  Linear l = Linear::dense(store.get(m + ".weight"), b);
  l.set_name(m);
  return l;
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

bool has_linear(const TensorStore& store, const std::string& m) {
  return store.contains(m + ".weight") || is_hxq_module(store, m);
}

Linear load_linear_checked(const TensorStore& store, const std::string& m, int64_t out, int64_t in, bool bias) {
  if (!has_linear(store, m)) fail("{}: missing tensor '{}.weight'", store.location(), m);
  Linear l = load_linear(store, m, bias);
  if (bias && !l.has_bias()) fail("{}: missing tensor '{}.bias' (config.json asks for biases)", store.location(), m);
  if (l.out_features() != out || l.in_features() != in)
    fail("{}: '{}' has shape [{}, {}], expected [{}, {}] from config.json", store.location(), m, l.out_features(),
         l.in_features(), out, in);
  return l;
}

std::vector<float> load_conv_weight(const TensorStore& store, const std::string& name, int64_t C, int64_t K) {
  const auto& cw = store.get(name);
  if (cw.numel() != C * K || cw.shape.empty() || cw.shape[0] != C)
    fail("{}: tensor '{}' has shape {}, expected [{}, 1, {}] from config.json", cw.file, cw.name, cw.shape_str(), C, K);
  return load_vector(store, name, C * K);
}

EmbeddingHead EmbeddingHead::load(const TensorStore& store, const std::vector<std::string>& names, int64_t vocab,
                                  int64_t hidden, bool tie, HeadRule rule) {
  EmbeddingHead e;
  const std::string loc = store.location();
  std::string emb;
  for (auto& n : names)
    if (emb.empty() && has_linear(store, n)) emb = n;
  if (emb.empty()) {
    std::string alt;
    for (size_t i = 1; i < names.size(); ++i) alt += " (or '" + names[i] + ".weight')";
    fail("{}: missing tensor '{}.weight'{}", loc, names.at(0), alt);
  }
  e.embedding = load_linear(store, emb);
  if (e.embedding.out_features() < vocab || e.embedding.in_features() != hidden)
    fail("{}: embedding '{}' shape [{}, {}] does not match vocab_size {} / hidden_size {}", loc, emb,
         e.embedding.out_features(), e.embedding.in_features(), vocab, hidden);
  const bool stored = has_linear(store, "lm_head");
  if (stored && (rule == kStoredHeadWins || !tie)) {
    e.lm_head = load_linear(store, "lm_head");
    e.separate = true;
    if (e.lm_head.in_features() != hidden || e.lm_head.out_features() < vocab)
      fail("{}: lm_head shape [{}, {}] does not match vocab_size {} / hidden_size {}", loc, e.lm_head.out_features(),
           e.lm_head.in_features(), vocab, hidden);
  } else if (!stored && !tie) {
    fail("{}: config says tie_word_embeddings=false but there is no lm_head.weight", loc);
  }
  return e;
}

void EmbeddingHead::embed(std::span<const int32_t> ids, int64_t vocab, float* h) const {
  const int64_t d = embedding.in_features();
  for (size_t t = 0; t < ids.size(); ++t) {
    const int32_t id = ids[t];
    if (id < 0 || id >= vocab) fail("token id {} outside the vocabulary [0, {})", id, vocab);
    embedding.row(id, h + int64_t(t) * d);
  }
}

void EmbeddingHead::count(ModelSummary& s) const {
  for (const Linear* l : {&embedding, &lm_head}) {
    if (l == &lm_head && !separate) continue;
    s.params += l->in_features() * l->out_features();
    if (l->compressed()) s.hxq_modules++;
    if (l->fast_decode_kernel()) s.hxq_fast_modules++;
  }
}

}  // namespace hxq
