// Tests of HXQ layers at runtime: Linear::hxq on helix-substrate's anchor checkpoints (decoded
// values against expected.json and the raw tensors, forward against the decoded dense weight),
// every stored variant (short/pair/wide codebooks, U16 and 12-bit packed indices, bias), the
// quantization_config parser, and malformed modules.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "codec/hxq_codec.h"
#include "codec/hxq_config.h"
#include "codec/hxq_weight.h"
#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"
#include "kernels/hxq_gemm.h"
#include "models/linear.h"
#include "test_util.h"

namespace hxq {
namespace {

namespace fs = std::filesystem;

// ---- small helpers ---------------------------------------------------------------------------

// SHA-256 (FIPS 180-4), to check expected.json's indices_sha256 / codebook_sha256.
std::string sha256_hex(const void* data, size_t len) {
  static const uint32_t K[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
      0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
      0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
      0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
      0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
      0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
      0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::vector<uint8_t> m(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + len);
  const uint64_t bits = uint64_t(len) * 8;
  m.push_back(0x80);
  while (m.size() % 64 != 56) m.push_back(0);
  for (int i = 7; i >= 0; --i) m.push_back(uint8_t(bits >> (8 * i)));
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  for (size_t off = 0; off < m.size(); off += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(m[off + 4 * i]) << 24 | uint32_t(m[off + 4 * i + 1]) << 16 | uint32_t(m[off + 4 * i + 2]) << 8 |
             uint32_t(m[off + 4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  std::string out;
  char buf[9];
  for (uint32_t x : h) {
    std::snprintf(buf, sizeof buf, "%08x", x);
    out += buf;
  }
  return out;
}

std::vector<float> tensor_f32(const TensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

// Minimal safetensors writer for synthetic checkpoints.
struct StWriter {
  struct T {
    std::string name, dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<T> ts;
  template <typename V>
  void add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, const std::vector<V>& v) {
    ts.push_back({name, dtype, std::move(shape), std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(V))});
  }
  std::string write(const std::string& dir) const {
    json h = json::object();
    size_t off = 0;
    std::string data;
    for (const auto& t : ts) {
      h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
      off += t.bytes.size();
      data += t.bytes;
    }
    std::string hs = h.dump();
    while (hs.size() % 8) hs += ' ';
    const uint64_t n = hs.size();
    std::string file(reinterpret_cast<const char*>(&n), 8);
    file += hs + data;
    const std::string path = dir + "/model.safetensors";
    test::write_file(path, file);
    return path;
  }
};

// max |a − b| / max(1, max |b|)
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double mx = 0, scale = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, std::fabs(double(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return mx / scale;
}

// Forward of an HXQ Linear against gemm_dense on its decoded rows.
// Exact HXQ math: these tests check the storage variants, not the fast kernel's rounding
// (kernels_test.cpp bounds that).
double forward_vs_dense(const Linear& l, int64_t T, uint32_t seed) {
  HxqMathScope exact(HxqMath::Exact);
  const int64_t N = l.out_features(), K = l.in_features();
  std::vector<float> W(static_cast<size_t>(N * K));
  for (int64_t r = 0; r < N; ++r) l.row(r, W.data() + r * K);
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  std::vector<float> X(static_cast<size_t>(T * K)), Y(static_cast<size_t>(T * N)), R(static_cast<size_t>(T * N));
  for (auto& x : X) x = nd(g);
  l.forward(X.data(), T, Y.data());
  gemm_dense(X.data(), T, K, W.data(), DType::F32, N, R.data());  // (used on layers without bias)
  return rel_diff(Y, R);
}

// ---- anchor checkpoints ------------------------------------------------------------------------

void check_anchor_runtime(const std::string& model) {
  const std::string dir = test::data_path("fixtures/anchor-hxq/" + model);
  const auto cfg = read_hxq_config(dir);
  ASSERT_TRUE(cfg.has_value());
  EXPECT_EQ(cfg->quant_method, "hxq");
  EXPECT_EQ(cfg->codebook_size, 256);
  const auto store = TensorStore::open(dir);
  check_hxq_modules(*cfg, store, dir + "/config.json");
  const auto expected = parse_json_file(dir + "/expected.json");
  const auto source = TensorStore::open((fs::path(dir) / expected["source_model"].get<std::string>()).string());
  for (const auto& m : cfg->compressed_modules) {
    SCOPED_TRACE(model + " " + m);
    ASSERT_TRUE(is_hxq_module(store, m));
    const Linear l = Linear::hxq(store, m);
    const TensorInfo& src = source.get(m + ".weight");
    ASSERT_EQ(l.kind(), Linear::Kind::Hxq);
    ASSERT_EQ(l.out_features(), src.shape[0]);
    ASSERT_EQ(l.in_features(), src.shape[1]);
    const int64_t N = l.out_features(), K = l.in_features();
    // indices stay a view into the mapping (RAM ≈ file size)
    const TensorInfo& ix = store.get(m + ".indices");
    ASSERT_TRUE(l.hxq_weight()->canonical());
    EXPECT_EQ(static_cast<const void*>(l.hxq_weight()->view().indices), static_cast<const void*>(ix.data));
    // decoded rows == codebook[indices] with sidecar replacement, computed from the raw tensors
    const auto cb = tensor_f32(store.get(m + ".codebook"));
    const auto sv = tensor_f32(store.get(m + ".sidecar_values"));
    const TensorInfo& spt = store.get(m + ".sidecar_positions");
    std::vector<int64_t> sp(static_cast<size_t>(spt.numel()));
    std::memcpy(sp.data(), spt.data, sp.size() * 8);
    std::vector<float> ref(static_cast<size_t>(N * K)), dec(static_cast<size_t>(N * K));
    const auto* idx = reinterpret_cast<const uint8_t*>(ix.data);
    for (int64_t i = 0; i < N * K; ++i) ref[size_t(i)] = cb[idx[i]];
    for (size_t e = 0; e < sp.size(); ++e) ref[size_t(sp[e])] = sv[e];
    for (int64_t r = 0; r < N; ++r) l.row(r, dec.data() + r * K);
    ASSERT_EQ(0, std::memcmp(ref.data(), dec.data(), ref.size() * 4));
    // weight bytes: codebook + indices + CSR sidecar
    EXPECT_EQ(l.weight_bytes(), size_t(256 * 4 + N * K + (sp.empty() ? 0 : (N + 1) * 8 + sp.size() * 8)));
    // against the source weights: expected.json's max differences (exact float32 values)
    const auto orig = tensor_f32(src);
    double md = 0, md_vq = 0;
    for (int64_t i = 0; i < N * K; ++i) {
      md = std::max(md, std::fabs(double(dec[size_t(i)]) - orig[size_t(i)]));
      md_vq = std::max(md_vq, std::fabs(double(cb[idx[i]]) - orig[size_t(i)]));
    }
    EXPECT_EQ(float(md), expected["max_abs_diff_decoded_vs_original_all_modules"][m].get<float>());
    for (const auto& em : expected["modules"]) {
      if (em["module"] != m) continue;
      EXPECT_EQ(sha256_hex(ix.data, size_t(N * K)), em["indices_sha256"].get<std::string>());
      std::vector<float> ecb;
      for (const auto& x : em["codebook"]) ecb.push_back(x.get<float>());
      EXPECT_EQ(ecb, cb);
      EXPECT_EQ(sha256_hex(cb.data(), 1024), em["codebook_sha256"].get<std::string>());
      for (int c = 0; c < 16; ++c) EXPECT_EQ(int(idx[c]), em["indices_row0_first16"][size_t(c)].get<int>());
      EXPECT_EQ(int64_t(sp.size()), em["sidecar_count"].get<int64_t>());
      for (size_t e = 0; e < 5 && e < sp.size(); ++e) {
        EXPECT_EQ(sp[e], em["sidecar_positions_first5"][e].get<int64_t>());
        EXPECT_EQ(dec[size_t(sp[e])], em["sidecar_values_first5"][e].get<float>());
      }
      EXPECT_EQ(float(md), em["max_abs_diff_decoded_vs_original"].get<float>());
      EXPECT_EQ(float(md_vq), em["max_abs_diff_vq_only_vs_original"].get<float>());
    }
    // forward == forward of the decoded dense weight. Both accumulate K <= 1024 float32 products
    // in different orders, and the kernel applies the sidecar as codebook + (value − codebook),
    // which can round: ~K·2⁻²⁴ ≈ 6e-5 of the output scale at worst; 1e-4 leaves margin.
    EXPECT_LE(forward_vs_dense(l, 7, 17), 1e-4);
    EXPECT_LE(forward_vs_dense(l, 1, 18), 1e-4);
  }
}

TEST(HxqRuntime, AnchorMamba2Tiny) {
  HXQ_REQUIRE_DATA("fixtures/anchor-hxq/mamba2-tiny");
  check_anchor_runtime("mamba2-tiny");
}
TEST(HxqRuntime, AnchorStories260K) {
  HXQ_REQUIRE_DATA("fixtures/anchor-hxq/stories260K-hf");
  check_anchor_runtime("stories260K-hf");
}
TEST(HxqRuntime, AnchorMamba2Neox17m) {
  HXQ_REQUIRE_DATA("fixtures/anchor-hxq/mamba2-neox-17m");
  check_anchor_runtime("mamba2-neox-17m");
}

// ---- stored variants ---------------------------------------------------------------------------

std::vector<float> decode_all(const Linear& l) {
  std::vector<float> d(static_cast<size_t>(l.out_features() * l.in_features()));
  for (int64_t r = 0; r < l.out_features(); ++r) l.row(r, d.data() + r * l.in_features());
  return d;
}

TEST(HxqRuntime, ShortCodebookU16AndPackedIndicesAndBias) {
  const int64_t N = 12, K = 10, k = 20;
  std::mt19937 g(4);
  std::vector<float> cb(static_cast<size_t>(k));
  for (int j = 0; j < k; ++j) cb[size_t(j)] = float(j) * 0.25f - 2.f;
  std::vector<uint8_t> i8(static_cast<size_t>(N * K));
  for (auto& x : i8) x = uint8_t(g() % k);
  std::vector<uint16_t> i16(i8.begin(), i8.end());
  std::vector<uint8_t> packed;
  for (size_t p = 0; p < i16.size(); p += 2) {
    const uint32_t a = i16[p], b = i16[p + 1];
    packed.push_back(uint8_t(a & 0xff));
    packed.push_back(uint8_t((a >> 8) | ((b & 0xf) << 4)));
    packed.push_back(uint8_t(b >> 4));
  }
  std::vector<int64_t> pos = {3, 50, 119};
  std::vector<float> val = {9.f, -7.5f, 0.125f};
  std::vector<float> bias(static_cast<size_t>(N));
  for (int64_t o = 0; o < N; ++o) bias[size_t(o)] = float(o);
  std::vector<float> ref(static_cast<size_t>(N * K));
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = cb[i8[i]];
  for (size_t e = 0; e < pos.size(); ++e) ref[size_t(pos[e])] = val[e];

  StWriter w;
  w.add("a.codebook", "F32", {k}, cb);
  w.add("a.indices", "U8", {N, K}, i8);
  w.add("a.sidecar_positions", "I64", {3}, pos);
  w.add("a.sidecar_values", "F32", {3}, val);
  w.add("a.bias", "F32", {N}, bias);
  w.add("b.codebook", "F32", {k}, cb);
  w.add("b.indices", "U16", {N, K}, i16);
  w.add("c.codebook", "F32", {k}, cb);
  w.add("c.indices", "U8", {N * K / 2 * 3}, packed);
  w.add("c.sidecar_positions", "I64", {3}, pos);
  w.add("c.sidecar_values", "F32", {3}, val);
  const auto dir = test::temp_dir("hxq-variants");
  const auto store = TensorStore::open(w.write(dir));

  const Linear a = Linear::hxq(store, "a");
  EXPECT_EQ(decode_all(a), ref);
  EXPECT_TRUE(a.has_bias());
  EXPECT_TRUE(a.hxq_weight()->canonical());
  {
    std::vector<float> X(static_cast<size_t>(K), 1.f), Y(static_cast<size_t>(N));
    HxqMathScope exact(HxqMath::Exact);
    a.forward(X.data(), 1, Y.data());
    for (int64_t o = 0; o < N; ++o) {
      double s = o;
      for (int64_t c = 0; c < K; ++c) s += ref[size_t(o * K + c)];
      EXPECT_NEAR(Y[size_t(o)], s, 1e-4);  // 10 float32 products + bias, exact-ish small values
    }
  }
  const Linear b = Linear::hxq(store, "b", N, K);
  std::vector<float> ref_b(static_cast<size_t>(N * K));
  for (size_t i = 0; i < ref_b.size(); ++i) ref_b[i] = cb[i8[i]];
  EXPECT_EQ(decode_all(b), ref_b);
  EXPECT_THROW(Linear::hxq(store, "c"), Error);  // packed indices need the layer shape
  const Linear c = Linear::hxq(store, "c", N, K);
  EXPECT_EQ(decode_all(c), ref);
  EXPECT_LE(forward_vs_dense(c, 3, 5), 1e-5);  // see the tolerance note in the anchor test
  EXPECT_THROW(Linear::hxq(store, "a", N + 1, K), Error);  // shape mismatch
}

TEST(HxqRuntime, PairAndWideCodebooks) {
  const int64_t N = 9, K = 14;
  std::mt19937 g(8);
  std::normal_distribution<float> nd;
  // [k, 2] pair codebook, U8 indices [N, K/2]
  const int64_t kp = 40;
  std::vector<float> cbp(static_cast<size_t>(kp * 2));
  for (auto& x : cbp) x = nd(g);
  std::vector<uint8_t> ip(static_cast<size_t>(N * K / 2));
  for (auto& x : ip) x = uint8_t(g() % kp);
  std::vector<int64_t> pos = {0, 17, 125};
  std::vector<float> val = {5.f, 6.f, 7.f};
  std::vector<float> refp(static_cast<size_t>(N * K));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < K; ++c) refp[size_t(r * K + c)] = cbp[size_t(ip[size_t(r * K / 2 + c / 2)] * 2 + c % 2)];
  for (size_t e = 0; e < pos.size(); ++e) refp[size_t(pos[e])] = val[e];
  // k = 300 scalar codebook, U16 indices
  const int64_t kw = 300;
  std::vector<float> cbw(static_cast<size_t>(kw));
  for (auto& x : cbw) x = nd(g);
  std::vector<uint16_t> iw(static_cast<size_t>(N * K));
  for (auto& x : iw) x = uint16_t(g() % kw);
  std::vector<float> refw(static_cast<size_t>(N * K));
  for (size_t i = 0; i < refw.size(); ++i) refw[i] = cbw[iw[i]];
  for (size_t e = 0; e < pos.size(); ++e) refw[size_t(pos[e])] = val[e];
  // k = 4096 pairs with 12-bit packed indices
  const int64_t kq = 4096;
  std::vector<float> cbq(static_cast<size_t>(kq * 2));
  for (auto& x : cbq) x = nd(g);
  StWriter w;
  w.add("p.codebook", "F32", {kp, 2}, cbp);
  w.add("p.indices", "U8", {N, K / 2}, ip);
  w.add("p.sidecar_positions", "I64", {3}, pos);
  w.add("p.sidecar_values", "F32", {3}, val);
  w.add("w.codebook", "F32", {kw}, cbw);
  w.add("w.indices", "U16", {N, K}, iw);
  w.add("w.sidecar_positions", "I64", {3}, pos);
  w.add("w.sidecar_values", "F32", {3}, val);
  // 12-bit packed with a [k, 2] codebook: layer [6, 8] -> 24 pair indices -> 36 bytes
  std::vector<uint16_t> iqv(24);
  for (auto& x : iqv) x = uint16_t(g() % kq);
  std::vector<uint8_t> packed;
  for (size_t p = 0; p < iqv.size(); p += 2) {
    packed.push_back(uint8_t(iqv[p] & 0xff));
    packed.push_back(uint8_t((iqv[p] >> 8) | ((iqv[p + 1] & 0xf) << 4)));
    packed.push_back(uint8_t(iqv[p + 1] >> 4));
  }
  w.add("q.codebook", "F32", {kq, 2}, cbq);
  w.add("q.indices", "U8", {36}, packed);
  const auto dir = test::temp_dir("hxq-wide");
  const auto store = TensorStore::open(w.write(dir));

  const Linear p = Linear::hxq(store, "p");
  EXPECT_FALSE(p.hxq_weight()->canonical());
  EXPECT_EQ(p.in_features(), K);
  EXPECT_EQ(decode_all(p), refp);
  EXPECT_LE(forward_vs_dense(p, 4, 1), 1e-5);  // same kernel order up to the dot product: tiny
  const Linear wl = Linear::hxq(store, "w");
  EXPECT_EQ(decode_all(wl), refw);
  EXPECT_LE(forward_vs_dense(wl, 4, 2), 1e-5);
  EXPECT_EQ(wl.weight_bytes(), size_t(kw * 4 + N * K * 2 + (N + 1) * 8 + 3 * 8));
  const Linear q = Linear::hxq(store, "q", 6, 8);
  const auto dq = decode_all(q);
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t c = 0; c < 8; ++c)
      ASSERT_EQ(dq[size_t(r * 8 + c)], cbq[size_t(iqv[size_t(r * 4 + c / 2)] * 2 + c % 2)]);
}

// An embedding compressed by our own codec: row() is the lookup.
TEST(HxqRuntime, CompressedEmbeddingRowLookup) {
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny-bf16/model.safetensors");
  const auto src = TensorStore::open(test::data_path("fixtures/hf/mamba2-tiny-bf16/model.safetensors"));
  const TensorInfo& e = src.get("backbone.embeddings.weight");
  const auto t = encode(e.data, e.dtype, e.shape[0], e.shape[1], EncodeOptions{});
  StWriter w;
  w.add("backbone.embeddings.codebook", "F32", {256}, t.codebook);
  w.add("backbone.embeddings.indices", "U8", {t.rows, t.cols}, t.indices);
  w.add("backbone.embeddings.sidecar_positions", "I64", {int64_t(t.sidecar_pos.size())}, t.sidecar_pos);
  w.add("backbone.embeddings.sidecar_values", "F32", {int64_t(t.sidecar_val.size())}, t.sidecar_val);
  const auto dir = test::temp_dir("hxq-emb");
  const auto store = TensorStore::open(w.write(dir));
  const Linear l = Linear::hxq(store, "backbone.embeddings");
  std::vector<float> dec(static_cast<size_t>(t.rows * t.cols));
  decode(t, dec.data());
  std::vector<float> row(static_cast<size_t>(t.cols));
  for (int64_t r : {int64_t(0), int64_t(5), t.rows - 1}) {
    l.row(r, row.data());
    EXPECT_EQ(0, std::memcmp(row.data(), dec.data() + r * t.cols, row.size() * 4));
  }
  EXPECT_THROW(l.row(t.rows, row.data()), Error);
  // and the in-memory route gives the same layer
  const Linear m = Linear::hxq(HxqWeight::from_tensor(t));
  m.row(5, row.data());
  EXPECT_EQ(0, std::memcmp(row.data(), dec.data() + 5 * t.cols, row.size() * 4));
  EXPECT_LE(forward_vs_dense(m, 3, 9), 1e-4);
}

// ---- malformed modules -------------------------------------------------------------------------

TEST(HxqRuntime, MalformedModulesThrow) {
  const int64_t N = 4, K = 6;
  std::vector<float> cb16(16, 0.5f), cb256(256, 1.f), cb3(48, 0.f);
  std::vector<uint8_t> good(static_cast<size_t>(N * K), 1), bad = good;
  bad[7] = 20;  // >= 16 entries
  std::vector<uint16_t> bad16(static_cast<size_t>(N * K), 3);
  bad16[2] = 300;
  std::vector<int64_t> pos_ok = {1, 5}, pos_range = {1, 24}, pos_order = {5, 1}, pos_dup = {5, 5}, pos_neg = {-1, 2};
  std::vector<float> val2 = {1.f, 2.f}, val3 = {1.f, 2.f, 3.f};
  std::vector<float> pos_f = {1.f, 5.f};
  StWriter w;
  auto mod = [&](const std::string& m, const std::vector<float>& cb, std::vector<int64_t> cbs) {
    w.add(m + ".codebook", "F32", std::move(cbs), cb);
  };
  mod("range8", cb16, {16});
  w.add("range8.indices", "U8", {N, K}, bad);
  mod("range16", cb256, {256});
  w.add("range16.indices", "U16", {N, K}, bad16);
  for (auto [name, pos] : {std::pair{"sc_range", pos_range}, {"sc_order", pos_order}, {"sc_dup", pos_dup},
                           {"sc_neg", pos_neg}}) {
    mod(name, cb256, {256});
    w.add(std::string(name) + ".indices", "U8", {N, K}, good);
    w.add(std::string(name) + ".sidecar_positions", "I64", {2}, pos);
    w.add(std::string(name) + ".sidecar_values", "F32", {2}, val2);
  }
  mod("sc_len", cb256, {256});
  w.add("sc_len.indices", "U8", {N, K}, good);
  w.add("sc_len.sidecar_positions", "I64", {2}, pos_ok);
  w.add("sc_len.sidecar_values", "F32", {3}, val3);
  mod("sc_dtype", cb256, {256});
  w.add("sc_dtype.indices", "U8", {N, K}, good);
  w.add("sc_dtype.sidecar_positions", "F32", {2}, pos_f);
  w.add("sc_dtype.sidecar_values", "F32", {2}, val2);
  mod("sc_half", cb256, {256});
  w.add("sc_half.indices", "U8", {N, K}, good);
  w.add("sc_half.sidecar_positions", "I64", {2}, pos_ok);
  mod("cb_shape", cb3, {16, 3});
  w.add("cb_shape.indices", "U8", {N, K}, good);
  mod("cb_2d_bad", cb256, {16, 16});
  w.add("cb_2d_bad.indices", "U8", {N, K}, good);
  mod("ix_3d", cb256, {256});
  w.add("ix_3d.indices", "U8", {2, 2, K}, good);
  mod("ix_dtype", cb256, {256});
  w.add("ix_dtype.indices", "F32", {N, K}, std::vector<float>(size_t(N * K), 0.f));
  mod("ix_1d", cb256, {256});
  w.add("ix_1d.indices", "U8", {7}, std::vector<uint8_t>(7, 0));
  mod("dense_too", cb256, {256});
  w.add("dense_too.indices", "U8", {N, K}, good);
  w.add("dense_too.weight", "F32", {N, K}, std::vector<float>(size_t(N * K), 0.f));
  mod("svd", cb256, {256});
  w.add("svd.indices", "U8", {N, K}, good);
  w.add("svd.svd_U", "F32", {N, 1}, std::vector<float>(size_t(N), 0.f));
  mod("bias_bad", cb256, {256});
  w.add("bias_bad.indices", "U8", {N, K}, good);
  w.add("bias_bad.bias", "F32", {N + 1}, std::vector<float>(size_t(N + 1), 0.f));
  std::vector<float> cbnan(256, 0.f);
  cbnan[3] = NAN;
  mod("cb_nan", cbnan, {256});
  w.add("cb_nan.indices", "U8", {N, K}, good);
  mod("ok", cb256, {256});
  w.add("ok.indices", "U8", {N, K}, good);
  w.add("ok.sidecar_positions", "I64", {2}, pos_ok);
  w.add("ok.sidecar_values", "F32", {2}, val2);
  const auto dir = test::temp_dir("hxq-bad");
  const auto path = w.write(dir);
  const auto store = TensorStore::open(path);
  EXPECT_NO_THROW(Linear::hxq(store, "ok"));
  for (const char* m : {"range8", "range16", "sc_range", "sc_order", "sc_dup", "sc_neg", "sc_len", "sc_dtype", "sc_half",
                        "cb_shape", "cb_2d_bad", "ix_3d", "ix_dtype", "ix_1d", "dense_too", "svd", "bias_bad", "cb_nan",
                        "missing"}) {
    SCOPED_TRACE(m);
    try {
      Linear::hxq(store, m, m == std::string("ix_1d") ? N : -1, m == std::string("ix_1d") ? K : -1);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.find('\n'), std::string::npos);
      // the message names the file (or the checkpoint) and the module
      EXPECT_NE(msg.find(dir), std::string::npos) << msg;
      EXPECT_NE(msg.find(m), std::string::npos) << msg;
    }
  }
  EXPECT_FALSE(is_hxq_module(store, "missing"));
  EXPECT_TRUE(is_hxq_module(store, "ok"));
}

// ---- quantization_config -----------------------------------------------------------------------

TEST(HxqRuntime, QuantizationConfig) {
  auto parse = [](const std::string& s) { return parse_hxq_config(parse_json_text(s, "cfg"), "config.json"); };
  EXPECT_FALSE(parse(R"({"model_type": "llama"})").has_value());
  auto c = parse(R"({"quantization_config": {"quant_method": "cdna_v3", "n_clusters": 4096,
                      "compressed_modules": ["a.b", "c"], "module_k_map": {"c": 256}}})");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->codebook_size, 4096);
  EXPECT_TRUE(c->is_compressed("a.b"));
  EXPECT_FALSE(c->is_compressed("a"));
  EXPECT_EQ(c->module_k_map.at("c"), 256);
  EXPECT_TRUE(parse(R"({"quantization_config": {"quant_method": "helix", "compressed_modules": []}})").has_value());
  for (const char* bad : {R"({"quantization_config": 3})", R"({"quantization_config": {"quant_method": "gptq", "compressed_modules": []}})",
                          R"({"quantization_config": {"quant_method": "hxq"}})",
                          R"({"quantization_config": {"quant_method": "hxq", "compressed_modules": "a"}})",
                          R"({"quantization_config": {"quant_method": "hxq", "compressed_modules": ["a", "a"]}})",
                          R"({"quantization_config": {"quant_method": "hxq", "compressed_modules": [1]}})",
                          R"({"quantization_config": {"quant_method": "hxq", "codebook_size": 0, "compressed_modules": []}})",
                          R"({"quantization_config": {"quant_method": "hxq", "sidecar_enabled": 1, "compressed_modules": []}})"}) {
    SCOPED_TRACE(bad);
    try {
      parse(bad);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos);
    }
  }
  // a module listed as compressed but stored densely
  HXQ_REQUIRE_DATA("fixtures/hf/mamba2-tiny");
  const auto store = TensorStore::open(test::data_path("fixtures/hf/mamba2-tiny"));
  auto c2 = parse(R"({"quantization_config": {"quant_method": "hxq", "compressed_modules": ["backbone.layers.0.mixer.in_proj"]}})");
  EXPECT_THROW(check_hxq_modules(*c2, store, "config.json"), Error);
}

}  // namespace
}  // namespace hxq
