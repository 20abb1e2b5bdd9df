#include "codec/compress.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "codec/hxq2_codec.h"
#include "codec/hxq2_weight.h"
#include "codec/hxq_config.h"
#include "codec/hxq_weight.h"
#include "codec/lora.h"
#include "core/error.h"
#include "core/output.h"
#include "io/checkpoint_writer.h"
#include "io/safetensors.h"

namespace hxq {

namespace fs = std::filesystem;

bool glob_match(std::string_view p, std::string_view s) {
  size_t pi = 0, si = 0, star = std::string_view::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi;
      ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

namespace {

bool ends_with(std::string_view s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

bool is_embedding(const std::string& n) {
  return n.find("embed") != std::string::npos || n.find("wte") != std::string::npos ||
         n.find("lm_head") != std::string::npos;
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

void copy_side_files(const std::string& in_dir, const std::string& out_tmp);

std::vector<float> as_f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

// --merge-lora: the adapter module to add to each weight tensor, by tensor name.
using MergeMap = std::map<std::string, const LoraModule*>;

// A weight as float32, with its LoRA delta merged when it has one.
std::vector<float> weight_f32(const TensorInfo& t, const MergeMap& merge) {
  auto v = as_f32(t);
  if (auto it = merge.find(t.name); it != merge.end()) lora_merge(*it->second, v.data());
  return v;
}

// Every adapter module must be a dense float weight of the checkpoint with the adapter's shape.
MergeMap plan_merge(const LoraAdapter& a, const TensorStore& store, const std::string& in_dir) {
  MergeMap merge;
  for (const auto& m : a.modules) {
    if (is_hxq_module(store, m->name))
      fail("{}: adapter module '{}' is stored compressed (HXQ) in {}: cannot merge a LoRA adapter into a compressed "
           "weight (merge into the dense checkpoint, then compress)", a.dir, m->name, in_dir);
    const TensorInfo* t = store.find(m->name + ".weight");
    if (!t) fail("{}: adapter module '{}' has no weight '{}.weight' in {}", a.dir, m->name, m->name, in_dir);
    if (t->shape != std::vector<int64_t>{m->out, m->in})
      fail("{}: adapter module '{}' has shape [{}, {}] (out, in), '{}' in {} is {} (an adapter for another base "
           "model?)", a.dir, m->name, m->out, m->in, t->name, in_dir, t->shape_str());
    if (!is_float(t->dtype))
      fail("{}: tensor '{}' has dtype {}; a LoRA adapter merges into float weights only", t->file, t->name,
           dtype_name(t->dtype));
    merge[t->name] = m.get();
  }
  return merge;
}

// V2: a tensor gets its own codebook when that costs at most 1/32 bit per weight (F32 entries);
// smaller tensors share one codebook per bit width, fitted on all of them together.
bool v2_own_codebook(int64_t numel, int bits) { return numel >= (int64_t(1024) << bits); }


// Mixed precision without data (--bpw): every tensor is encoded at 4, 5, 6 and 8 bits; its cost at
// b bits is its squared weight error SSE_b = Σ (w − ŵ)² — the energy of the error it adds to its
// layer's output for inputs of unit variance with no preferred direction (every linear layer here
// reads a normalised or activated input of comparable scale) — its size the bytes it stores. From
// 4 bits everywhere, the upgrade (to any higher width) with the largest cost reduction per added
// byte is taken while the total stays within bpw · weights / 8 bytes (see the starts below).
// Deterministic: ties go to the first tensor in name order. (Measured on mamba2-neox-17m, --bpw 4.5
// --group 16, first 8,192 WikiText-2 tokens: mean KL 4.03e-3 with this cost, 5.03e-3 with the relative error SSE / Σw².)
std::map<std::string, int> plan_bits(const TensorStore& store, const std::set<std::string>& chosen,
                                     const CompressOptions& opt, const CompressProgress& progress, uint64_t total_bytes,
                                     const MergeMap& merge) {
  static constexpr int kWidths[4] = {4, 5, 6, 8};
  struct Opt {
    double err[4];
    double bytes[4];
  };
  std::vector<std::string> names(chosen.begin(), chosen.end());
  std::vector<Opt> opts(names.size());
  double weights = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    check_interrupted();
    if (progress) progress(0, total_bytes, "planning " + names[i]);
    const auto& t = store.get(names[i]);
    weights += double(t.numel());
    const auto wf = weight_f32(t, merge);
    for (int j = 0; j < 4; ++j) {
      Encode2Options e;
      e.bits = kWidths[j];
      e.group = opt.group;
      const Hxq2Tensor h = encode2(wf.data(), t.shape[0], t.shape[1], e);
      const auto st = encode_stats(wf.data(), DType::F32, h);
      opts[i].err[j] = st.mse * double(t.numel());
      // Own codebook counted as stored, a shared one below (once per width).
      opts[i].bytes[j] = double(h.stored_bytes()) - (v2_own_codebook(t.numel(), e.bits) ? 0.0 : 4.0 * double(1 << e.bits));
    }
  }
  // Tensors below the own-codebook size share one codebook per width: its 4·2^b bytes are counted
  // once, when the first such tensor takes the width (and kept once taken: conservative).
  std::vector<int64_t> numel(names.size());
  for (size_t i = 0; i < names.size(); ++i) numel[i] = store.get(names[i]).numel();
  auto shares = [&](size_t i, int j) { return !v2_own_codebook(numel[i], kWidths[j]); };
  const double budget = opt.bpw * weights / 8.0;
  // Greedy upgrades from the widest uniform plan that fits, so a plan is never below the uniform
  // width its budget affords. (Measured on mamba2-neox-17m, group 16, first 16,384 tokens: from 4
  // bits everywhere, --bpw 5.5 gave mean KL 2.14e-3 — worse than uniform 5 bits at 5.38 bpw,
  // 1.32e-3 — although its total squared error was the lower one.)
  std::vector<int> level;
  double smallest = std::numeric_limits<double>::infinity();
  for (int start = 3; start >= 0 && level.empty(); --start) {
    std::vector<int> lv(names.size(), start);
    std::set<int> shared;
    double total = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      total += opts[i].bytes[start];
      if (shares(i, start)) shared.insert(start);
    }
    for (int j : shared) total += 4.0 * double(1 << kWidths[j]);
    smallest = std::min(smallest, total);
    if (total > budget) continue;
    for (;;) {
      int bi = -1, bj = -1;
      double best = 0, bdb = 0;
      for (size_t i = 0; i < names.size(); ++i)
        for (int j = lv[i] + 1; j < 4; ++j) {
          double db = opts[i].bytes[j] - opts[i].bytes[lv[i]];
          if (shares(i, j) && !shared.count(j)) db += 4.0 * double(1 << kWidths[j]);
          const double de = opts[i].err[lv[i]] - opts[i].err[j];
          if (db <= 0 || total + db > budget || de <= 0) continue;
          if (de / db > best) {
            best = de / db;
            bi = int(i);
            bj = j;
            bdb = db;
          }
        }
      if (bi < 0) break;
      total += bdb;
      lv[size_t(bi)] = bj;
      if (shares(size_t(bi), bj)) shared.insert(bj);
    }
    level = lv;
  }
  if (level.empty())
    fail("compress: --bpw {} is below the smallest plan (4 bits everywhere: {:.4f} bits/weight)", opt.bpw,
         8.0 * smallest / weights);
  std::map<std::string, int> plan;
  for (size_t i = 0; i < names.size(); ++i) plan[names[i]] = kWidths[level[i]];
  return plan;
}

}  // namespace

bool is_default_linear(const std::string& name, const std::vector<int64_t>& shape, bool embeddings) {
  if (shape.size() != 2 || !ends_with(name, ".weight")) return false;
  if (name.find("norm") != std::string::npos) return false;
  // Low-rank adapters (Zamba2's per-invocation LoRA, PEFT lora_A/lora_B) are small and stay exact.
  if (name.find("adapter") != std::string::npos || name.find("lora") != std::string::npos) return false;
  if (is_embedding(name)) return embeddings;
  return true;
}

json CompressReceipt::to_json() const {
  std::vector<double> sq;
  double max_err = 0;
  for (auto& m : modules) {
    sq.push_back(m.sqnr_db);
    max_err = std::max(max_err, m.max_abs_err);
  }
  std::sort(sq.begin(), sq.end());
  json mods = json::array();
  for (auto& m : modules)
    mods.push_back({{"module", m.module}, {"shape", {m.rows, m.cols}}, {"bits", m.bits}, {"source_dtype", m.source_dtype},
                    {"sidecar", m.sidecar}, {"bits_per_weight", m.bits_per_weight},
                    {"sqnr_db", std::isfinite(m.sqnr_db) ? json(m.sqnr_db) : json("inf")},
                    {"max_abs_err", m.max_abs_err}, {"seconds", m.seconds}});
  auto finite_or = [](double v) { return std::isfinite(v) ? json(v) : json("inf"); };
  json j = {{"input", input},
          {"output", output},
          {"format", format},
          {"codebook", codebook},
          {"sidecar", sidecar},
          {"sidecar_fraction", sidecar_fraction},
          {"modules_compressed", modules.size()},
          {"sidecar_entries", sidecar_entries()},
          {"exact_tensors", exact_tensors},
          {"total_keys", total_keys},
          {"input_bytes", input_bytes},
          {"output_bytes", output_bytes},
          {"ratio", ratio()},
          {"bits_per_weight", bits_per_weight()},
          {"sqnr_db_min", sq.empty() ? json(nullptr) : finite_or(sq.front())},
          {"sqnr_db_median", sq.empty() ? json(nullptr) : finite_or(sq[sq.size() / 2])},
          {"max_abs_err", max_err},
          {"seconds", seconds},
          {"mb_per_s", mb_per_s()},
          {"modules", mods}};
  if (!merged_lora.empty())
    j["merged_lora"] = {{"adapter", merged_lora}, {"modules", merged_lora_modules}, {"dense_f32", merged_lora_dense}};
  if (format == "v2") {
    j["bits"] = bits ? json(bits) : json(nullptr);
    j["group"] = group;
    j["bpw_target"] = bpw_target > 0 ? json(bpw_target) : json(nullptr);
    j["shared_codebook_bytes"] = shared_codebook_bytes;
    std::map<int, int64_t> hist;
    for (auto& m : modules) hist[m.bits]++;
    json plan = json::object();
    for (auto& [b, n] : hist) plan[std::to_string(b)] = n;
    j["modules_by_bits"] = plan;
  }
  return j;
}

CompressReceipt compress_checkpoint(const std::string& in_dir, const std::string& out_dir, const CompressOptions& opt,
                                    const CompressProgress& progress) {
  auto t0 = std::chrono::steady_clock::now();
  json cfg = load_config(in_dir);
  const std::string cfg_path = (fs::path(in_dir) / "config.json").string();
  std::optional<LoraAdapter> lora;
  if (!opt.merge_lora.empty()) lora = LoraAdapter::load(opt.merge_lora);
  auto store = TensorStore::open(in_dir);
  // With an adapter, a compressed source is refused naming the adapter module it cannot merge.
  const MergeMap merge = lora ? plan_merge(*lora, store, in_dir) : MergeMap{};
  if (cfg.contains("quantization_config"))
    fail("{}: already has a quantization_config (the checkpoint is compressed already)", cfg_path);
  AtomicOutputDir out(out_dir, opt.overwrite, {in_dir});

  CompressReceipt rc;
  rc.input = in_dir;
  rc.output = out_dir;
  rc.codebook = opt.encode.codebook == CodebookMethod::Optimal ? "optimal" : "lloyd";
  rc.sidecar = opt.encode.sidecar == SidecarMethod::Error ? "error"
               : opt.encode.sidecar == SidecarMethod::Magnitude ? "magnitude" : "none";
  rc.sidecar_fraction = opt.encode.sidecar == SidecarMethod::Error ? opt.encode.sidecar_fraction : 0.0;
  rc.input_bytes = store.total_bytes();
  if (lora) {
    rc.merged_lora = lora->dir;
    rc.merged_lora_modules = int64_t(lora->modules.size());
  }

  // Plan: which tensors become HXQ modules.
  auto names = store.names();
  std::set<std::string> chosen;
  uint64_t work_total = 0;
  for (auto& n : names) {
    const auto& t = store.get(n);
    work_total += t.nbytes;
    const std::string m = ends_with(n, ".weight") ? n.substr(0, n.size() - 7) : n;
    bool pick = is_default_linear(n, t.shape, opt.embeddings);
    if (!opt.only.empty()) {
      pick = t.shape.size() == 2 && ends_with(n, ".weight") &&
             std::any_of(opt.only.begin(), opt.only.end(), [&](auto& g) { return glob_match(g, m); });
    }
    if (std::any_of(opt.skip.begin(), opt.skip.end(), [&](auto& g) { return glob_match(g, m); })) pick = false;
    if (pick && !is_float(t.dtype)) fail("{}: tensor '{}' has dtype {}; only float weights can be compressed",
                                         t.file, n, dtype_name(t.dtype));
    if (pick) chosen.insert(n);
  }
  if (chosen.empty()) fail("{}: no tensor selected for compression (check --only / --skip)", in_dir);

  const bool v2 = opt.format == CompressFormat::V2;
  std::map<std::string, int> bits_of;  // tensor name -> v2 bit width
  std::map<int, std::vector<float>> shared;  // v2 shared codebooks by bit width
  if (v2) {
    if (!hxq2_bits_supported(opt.bits)) fail("compress: unsupported bit width {} (supported: 4, 5, 6, 8)", opt.bits);
    if (!hxq2_group_supported(opt.group)) fail("compress: unsupported group size {} (supported: 16, 32)", opt.group);
    if (opt.v2_sidecar_fraction < 0 || opt.v2_sidecar_fraction > 0.05)
      fail("compress: sidecar fraction {} outside [0, 0.05]", opt.v2_sidecar_fraction);
    rc.format = "v2";
    rc.bits = opt.bpw > 0 ? 0 : opt.bits;
    rc.group = opt.group;
    rc.bpw_target = opt.bpw;
    rc.codebook = "optimal, group-scaled";
    rc.sidecar = opt.v2_sidecar_fraction > 0 ? "error" : "none";
    rc.sidecar_fraction = opt.v2_sidecar_fraction;
    if (opt.bpw > 0) bits_of = plan_bits(store, chosen, opt, progress, work_total, merge);
    else
      for (auto& n : chosen) bits_of[n] = opt.bits;
    // Shared codebooks in two rounds, as encode2 fits its own: on the initial scales, then on the
    // scales chosen for the first fit.
    for (int round = 0; round < 2; ++round) {
      std::map<int, Hxq2Histogram> hist;
      for (auto& n : chosen) {
        check_interrupted();
        const auto& t = store.get(n);
        const int b = bits_of[n];
        if (v2_own_codebook(t.numel(), b)) continue;
        const auto wf = weight_f32(t, merge);
        if (round == 0) {
          const auto s = hxq2_initial_scales(wf.data(), t.shape[0], t.shape[1], opt.group);
          hist[b].add(hxq2_histogram(wf.data(), t.shape[0], t.shape[1], opt.group, s));
        } else {
          hist[b].add(hxq2_searched_histogram(wf.data(), t.shape[0], t.shape[1], opt.group, shared.at(b)));
        }
      }
      for (auto& [b, h] : hist) shared[b] = hxq2_fit_codebook(h, b);
    }
  }

  size_t name_bytes = 0;
  for (auto& n : names) name_bytes += n.size() + 24;
  CheckpointWriterOptions wo;
  wo.fsync = opt.fsync;
  // (The helix estimate is unchanged since hxq 0.1, so --format helix output stays byte-identical.)
  wo.header_reserve = v2 ? SafetensorsWriter::header_estimate(names.size() + 6 * chosen.size() + 8, name_bytes * 2)
                         : SafetensorsWriter::header_estimate(names.size() + 3 * chosen.size(), name_bytes);
  CheckpointWriter w(out.path(), opt.max_shard_bytes, wo);
  for (auto& [b, cb] : shared) {
    w.add(hxq2_shared_codebook_name(b), DType::F32, {int64_t(cb.size())}, cb.data(), cb.size() * 4);
    rc.total_keys++;
    rc.shared_codebook_bytes += cb.size() * 4;
    rc.compressed_bytes += cb.size() * 4;
  }
  uint64_t work_done = 0;
  std::vector<std::string> modules;
  for (auto& n : names) {
    check_interrupted();
    const auto& t = store.get(n);
    if (progress) progress(work_done, work_total, n);
    const bool merged = merge.count(n) != 0;
    if (!chosen.count(n)) {
      if (merged) {  // a merged weight that stays dense: F32
        const auto v = weight_f32(t, merge);
        w.add(n, DType::F32, t.shape, v.data(), v.size() * sizeof(float));
        rc.merged_lora_dense.push_back(merge.at(n)->name);
      } else {
        w.add(t);
      }
      rc.exact_tensors++;
      rc.total_keys++;
      work_done += t.nbytes;
      continue;
    }
    const std::string m = n.substr(0, n.size() - 7);
    auto te = std::chrono::steady_clock::now();
    EncodeOptions eo = opt.encode;
    eo.module = m;
    const int64_t rows = t.shape[0], cols = t.shape[1], numel = rows * cols;
    // The values to encode: the stored weight, or the merged one in float32.
    const std::vector<float> merged_w = merged ? weight_f32(t, merge) : std::vector<float>{};
    const void* wdata = merged ? static_cast<const void*>(merged_w.data()) : static_cast<const void*>(t.data);
    const DType wdt = merged ? DType::F32 : t.dtype;
    // The receipt line of this module (bytes = everything it stores).
    auto record = [&](int bits, int64_t sidecar, uint64_t bytes, const EncodeStats& st) {
      TensorReceipt tr;
      tr.module = m;
      tr.bits = bits;
      tr.rows = rows;
      tr.cols = cols;
      tr.source_dtype = std::string(dtype_name(t.dtype));
      tr.sidecar = sidecar;
      tr.bits_per_weight = 8.0 * double(bytes) / double(numel);
      tr.sqnr_db = st.sqnr_db;
      tr.max_abs_err = st.max_abs_err;
      tr.mse = st.mse;
      tr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
      rc.modules.push_back(tr);
      rc.compressed_weights += uint64_t(numel);
      rc.compressed_bytes += bytes;
      modules.push_back(m);
      work_done += t.nbytes;
    };
    if (v2) {
      Encode2Options e2;
      e2.bits = bits_of[n];
      e2.group = opt.group;
      e2.sidecar_fraction = opt.v2_sidecar_fraction;
      if (!v2_own_codebook(numel, e2.bits)) e2.codebook = &shared.at(e2.bits);
      const Hxq2Tensor h = encode2(wdata, wdt, rows, cols, e2);
      const auto st = encode_stats(wdata, wdt, h);
      const int32_t qp[2] = {h.bits | h.group << 8 | 2 << 16, int32_t(cols)};
      const float sp[2] = {h.scale_max, h.scale_step};
      w.add(m + ".qparams", DType::I32, {2}, qp, sizeof qp);
      w.add(m + ".packed_indices", DType::U8, {rows, hxq2_row_bytes(cols, h.bits)}, h.indices.data(), h.indices.size());
      w.add(m + ".scales", DType::U8, {int64_t(h.scales.size())}, h.scales.data(), h.scales.size());
      w.add(m + ".scale_params", DType::F32, {2}, sp, sizeof sp);
      rc.total_keys += 4;
      if (!h.shared_codebook) {
        w.add(m + ".codebook", DType::F32, {int64_t(h.codebook.size())}, h.codebook.data(), h.codebook.size() * 4);
        rc.total_keys++;
      }
      if (!h.sidecar_pos.empty()) {
        w.add(m + ".sidecar_positions", DType::I64, {int64_t(h.sidecar_pos.size())}, h.sidecar_pos.data(),
              h.sidecar_pos.size() * 8);
        w.add(m + ".sidecar_values", DType::F32, {int64_t(h.sidecar_val.size())}, h.sidecar_val.data(),
              h.sidecar_val.size() * 4);
        rc.total_keys += 2;
      }
      record(h.bits, int64_t(h.sidecar_pos.size()), h.stored_bytes(), st);
      continue;
    }
    if (eo.sidecar == SidecarMethod::Error) {
      // Cap the sidecar so that the tensor stays within kMaxBitsPerWeight: 8 bits per index,
      // 256 × 32 bits of codebook, 64 + 32 bits per sidecar entry (position + value).
      const double spare = (kMaxBitsPerWeight - 8.0) * double(numel) - 256.0 * 32.0;
      const double cap = std::max(0.0, std::floor(spare / 96.0));
      eo.sidecar_fraction = std::min(eo.sidecar_fraction, cap / double(numel));
    }
    HxqTensor h = encode(wdata, wdt, rows, cols, eo);
    auto st = encode_stats(wdata, wdt, h);
    w.add(m + ".codebook", DType::F32, {int64_t(h.codebook.size())}, h.codebook.data(), h.codebook.size() * 4);
    w.add(m + ".indices", DType::U8, {rows, cols}, h.indices.data(), h.indices.size());
    w.add(m + ".sidecar_positions", DType::I64, {int64_t(h.sidecar_pos.size())}, h.sidecar_pos.data(),
          h.sidecar_pos.size() * 8);
    w.add(m + ".sidecar_values", DType::F32, {int64_t(h.sidecar_val.size())}, h.sidecar_val.data(),
          h.sidecar_val.size() * 4);
    rc.total_keys += 4;
    record(8, int64_t(h.sidecar_pos.size()), h.codebook.size() * 4 + h.indices.size() + h.sidecar_pos.size() * 12, st);
  }
  w.finish();
  if (progress) progress(work_total, work_total, "");

  // config.json with the quantization_config helix-substrate reads, plus our own fields.
  json q;
  if (v2) {
    json bits_map = json::object();
    for (auto& [n, b] : bits_of) bits_map[n.substr(0, n.size() - 7)] = b;
    q = {{"quant_method", kHxq2QuantMethod},
         {"hxq_version", 2},
         {"codebook_size", 1 << (opt.bpw > 0 ? 8 : opt.bits)},
         {"sidecar_enabled", opt.v2_sidecar_fraction > 0},
         {"compressed_modules", modules},
         {"exact_patterns", {"embed_tokens", "embeddings", "embedding", "lm_head", "norm", "conv1d", "A_log", "D",
                             "dt_bias", "bias"}},
         {"hxq_encoder", "hxq 0.2.0"},
         {"hxq_bits", opt.bpw > 0 ? json(nullptr) : json(opt.bits)},
         {"hxq_bpw_target", opt.bpw > 0 ? json(opt.bpw) : json(nullptr)},
         {"hxq_group_size", opt.group},
         {"hxq_module_bits", bits_map},
         {"hxq_sidecar_fraction", opt.v2_sidecar_fraction}};
  } else q = {{"quant_method", "hxq"},
            {"codebook_size", 256},
            {"sidecar_enabled", opt.encode.sidecar != SidecarMethod::None},
            {"compressed_modules", modules},
            {"exact_patterns", {"embed_tokens", "embeddings", "embedding", "lm_head", "norm", "conv1d", "A_log", "D",
                                "dt_bias", "bias"}},
            {"hxq_version", 1},
            {"hxq_encoder", "hxq 0.1.0"},
            {"hxq_codebook", rc.codebook},
            {"hxq_sidecar", rc.sidecar},
            {"hxq_sidecar_fraction", rc.sidecar_fraction}};
  // Only written for BF16 codebooks: default-precision outputs stay as they were.
  if (!v2 && opt.encode.codebook_precision == CodebookPrecision::Bf16) q["hxq_codebook_precision"] = "bf16";
  cfg["quantization_config"] = q;
  write_file_checked(out.file("config.json"), cfg.dump(2) + "\n");
  copy_side_files(in_dir, out.path());
  out.commit();
  rc.output_bytes = TensorStore::open(out_dir).total_bytes();
  rc.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rc;
}

namespace {

// Copies the non-weight files of a model directory (tokenizer, generation config, ...).
void copy_side_files(const std::string& in_dir, const std::string& out_tmp) {
  for (auto& e : fs::directory_iterator(in_dir)) {
    if (!e.is_regular_file()) continue;
    const std::string fn = e.path().filename().string();
    if (fn == "config.json" || ends_with(fn, ".safetensors") || fn == "model.safetensors.index.json" ||
        ends_with(fn, ".bin") || ends_with(fn, ".pt") || ends_with(fn, ".pth") || ends_with(fn, ".gguf") ||
        ends_with(fn, ".ckpt") || ends_with(fn, ".h5") || ends_with(fn, ".msgpack"))
      continue;
    std::error_code ec;
    fs::copy_file(e.path(), fs::path(out_tmp) / fn, ec);
    if (ec) fail("{}: cannot copy into the output: {}", e.path().string(), ec.message());
  }
}

}  // namespace

void decompress_checkpoint(const std::string& in_dir, const std::string& out_dir, bool overwrite) {
  json cfg = load_config(in_dir);
  auto q = parse_hxq_config(cfg, (fs::path(in_dir) / "config.json").string());
  if (!q) fail("{}/config.json: not an HXQ checkpoint (no quantization_config)", in_dir);
  auto store = TensorStore::open(in_dir);
  check_hxq_modules(*q, store, in_dir);
  AtomicOutputDir out(out_dir, overwrite, {in_dir});
  std::set<std::string> module_tensors;
  for (auto& m : q->compressed_modules)
    for (auto& suf : hxq_tensor_suffixes()) module_tensors.insert(m + suf);
  for (int b : {4, 5, 6, 8}) module_tensors.insert(hxq2_shared_codebook_name(b));
  CheckpointWriter w(out.path(), 0);
  for (auto& n : store.names()) {
    check_interrupted();
    if (!module_tensors.count(n)) w.add(store.get(n));
  }
  for (auto& m : q->compressed_modules) {
    // Row by row from either format (helix or v2): the decoded float32 weight.
    auto write_rows = [&](const auto& weight) {
      w.begin_tensor(m + ".weight", DType::F32, {weight.rows(), weight.cols()});
      std::vector<float> row(static_cast<size_t>(weight.cols()));
      for (int64_t r = 0; r < weight.rows(); ++r) {
        weight.row(r, row.data());
        w.write(row.data(), row.size() * 4);
      }
      w.end_tensor();
    };
    if (is_hxq2_module(store, m)) write_rows(*Hxq2Weight::load(store, m, -1, -1));
    else write_rows(*HxqWeight::load(store, m, -1, -1));
  }
  w.finish();
  cfg.erase("quantization_config");
  write_file_checked(out.file("config.json"), cfg.dump(2) + "\n");
  copy_side_files(in_dir, out.path());
  out.commit();
}

}  // namespace hxq
