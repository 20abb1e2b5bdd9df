// `hxq compress` (HXQ-encode a checkpoint) and `hxq inspect` (summarise any checkpoint).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "codec/compress.h"
#include "codec/inspect.h"
#include "core/error.h"
#include "core/progress.h"
#include "io/safetensors.h"
#include "models/model.h"

namespace hxq::cli {

namespace {

std::string human_bytes(double b) {
  const char* u[] = {"B", "KB", "MB", "GB", "TB"};
  int i = 0;
  while (b >= 1000 && i < 4) {
    b /= 1000;
    ++i;
  }
  return i ? fmt::format("{:.2f} {}", b, u[i]) : fmt::format("{:.0f} {}", b, u[i]);
}

void print_receipt(const CompressReceipt& r) {
  auto j = r.to_json();
  std::printf("compressed %s -> %s\n", r.input.c_str(), r.output.c_str());
  if (r.format == "v2") {
    std::map<int, int> by_bits;
    for (auto& m : r.modules) by_bits[m.bits]++;
    std::string plan;
    for (auto& [b, n] : by_bits) plan += fmt::format("{}{} x {}-bit", plan.empty() ? "" : ", ", n, b);
    std::printf("  format           : HXQ v2, %s, scale per %d weights%s\n",
                r.bpw_target > 0 ? fmt::format("mixed plan for {:g} bits/weight", r.bpw_target).c_str()
                                 : fmt::format("{}-bit codebooks", r.bits).c_str(),
                r.group, r.shared_codebook_bytes ? ", small tensors share a codebook" : "");
    std::printf("  plan             : %s\n", plan.c_str());
  }
  std::printf("  codec            : codebook %s, sidecar %s%s\n", r.codebook.c_str(), r.sidecar.c_str(),
              r.sidecar == "error" ? fmt::format(" (fraction {:g})", r.sidecar_fraction).c_str() : "");
  std::printf("  modules          : %zu compressed, %lld exact tensors, %lld keys\n", r.modules.size(),
              (long long)r.exact_tensors, (long long)r.total_keys);
  if (!r.merged_lora.empty())
    std::printf("  LoRA merged      : %lld modules from %s%s\n", (long long)r.merged_lora_modules, r.merged_lora.c_str(),
                r.merged_lora_dense.empty()
                    ? ""
                    : fmt::format(" ({} not compressed, written as F32)", r.merged_lora_dense.size()).c_str());
  std::printf("  size             : %s -> %s (ratio %.3f)\n", human_bytes(double(r.input_bytes)).c_str(),
              human_bytes(double(r.output_bytes)).c_str(), r.ratio());
  std::printf("  sidecar          : %lld exact values (%.4f %% of compressed weights)\n", (long long)r.sidecar_entries(),
              r.compressed_weights ? 100.0 * double(r.sidecar_entries()) / double(r.compressed_weights) : 0.0);
  std::printf("  bits/weight      : %.4f (compressed tensors: %s)\n", r.bits_per_weight(),
              r.format == "v2" ? "indices + scales + codebooks + sidecar" : "codebook + indices + sidecar");
  auto db = [](const json& v) { return v.is_number() ? fmt::format("{:.2f}", v.get<double>()) : v.dump(); };
  std::printf("  SQNR             : min %s dB, median %s dB; max |error| %.3g\n", db(j["sqnr_db_min"]).c_str(),
              db(j["sqnr_db_median"]).c_str(), j["max_abs_err"].get<double>());
  std::printf("  time             : %.2f s (%.1f MB/s of input)\n", r.seconds, r.mb_per_s());
}

}  // namespace

void add_compress(CLI::App& app) {
  struct Opts {
    std::string in, out, codebook = "optimal", sidecar = "error", precision = "f32", format = "v2", merge_lora;
    double fraction = kDefaultSidecarFraction, shard_gb = 4.0, bpw = 0;
    int bits = 8, group = 32;
    bool embeddings = false, overwrite = false, json = false, no_fsync = false;
    std::vector<std::string> only, skip;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("compress", "Compress a checkpoint's linear layers to HXQ (calibration-free)");
  sub->add_option("input", o->in, "Input model directory (Hugging Face: config.json + safetensors)")->required();
  sub->add_option("output", o->out, "Output directory (written atomically)")->required();
  sub->add_option("--format", o->format,
                  "v2 (default: group-scaled codebooks, --bits 8|6|5|4, docs/FORMAT.md) or helix (helix-substrate's "
                  "format, exactly what hxq 0.1 wrote)")
      ->check(CLI::IsMember({"v2", "helix"}));
  auto* bits_opt = sub->add_option("--bits", o->bits, "v2: bits per weight index, 8 (default), 6, 5 or 4")
                       ->check(CLI::IsMember({4, 5, 6, 8}));
  auto* group_opt = sub->add_option("--group", o->group, "v2: weights per scale, 32 (default) or 16 (+0.19 bits/weight, lower error)")
                        ->check(CLI::IsMember({16, 32}));
  auto* bpw_opt = sub->add_option("--bpw", o->bpw,
                                  "v2: mixed precision: spend this many bits per weight in total, each tensor at 4/5/6/8 bits by a "
                                  "data-free error estimate (instead of --bits)")
                      ->check(CLI::Range(4.0, 9.0));
  bpw_opt->excludes(bits_opt);
  auto* cb_opt = sub->add_option("--codebook", o->codebook, "helix: optimal (exact 1-D k-means, default) or lloyd (helix-substrate's)")
      ->check(CLI::IsMember({"optimal", "lloyd"}));
  auto* prec_opt = sub->add_option("--codebook-precision", o->precision,
                  "f32 (default) or bf16: round the codebook to BF16 values and re-assign indices (faster decode kernels)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  auto* sc_opt = sub->add_option("--sidecar", o->sidecar, "helix: error (largest reconstruction errors, default), magnitude (helix-substrate's) or none")
      ->check(CLI::IsMember({"error", "magnitude", "none"}));
  auto* frac_opt = sub->add_option("--sidecar-fraction", o->fraction,
                  "Error sidecar budget as a fraction of each tensor's weights (helix: default 0.001, capped at 8.1 "
                  "bits/weight; v2: default none)")
      ->check(CLI::Range(0.0, 0.05));
  sub->add_flag("--embeddings", o->embeddings, "Also compress the token embedding (and an untied lm_head)");
  sub->add_option("--only", o->only, "Compress only modules matching these globs (e.g. '*.in_proj')");
  sub->add_option("--skip", o->skip, "Never compress modules matching these globs");
  sub->add_option("--merge-lora", o->merge_lora,
                  "PEFT LoRA adapter directory merged into the dense weights before compressing (merged modules "
                  "left uncompressed are written as F32)");
  sub->add_option("--shard-gb", o->shard_gb, "Shard the output above this size in GB (default 4)")->check(CLI::Range(0.001, 1e6));
  sub->add_flag("--overwrite", o->overwrite, "Replace an existing output checkpoint");
  sub->add_flag("--no-fsync", o->no_fsync, "Skip fsync of the output (faster; less safe on power loss)");
  sub->add_flag("--json", o->json, "Print the receipt as JSON");
  add_threads_option(sub, o->threads);
  sub->callback([o, bits_opt, group_opt, bpw_opt, cb_opt, prec_opt, sc_opt, frac_opt] {
    apply_threads(o->threads);
    CompressOptions co;
    const bool v2 = o->format == "v2";
    if (v2) {
      for (auto* opt : {cb_opt, prec_opt, sc_opt})
        if (opt->count()) usage_fail("{} applies to --format helix only", opt->get_name());
    } else {
      for (auto* opt : {bits_opt, group_opt, bpw_opt})
        if (opt->count()) usage_fail("{} applies to --format v2 only", opt->get_name());
    }
    co.format = v2 ? CompressFormat::V2 : CompressFormat::Helix;
    co.bits = o->bits;
    co.group = o->group;
    co.bpw = o->bpw;
    co.v2_sidecar_fraction = frac_opt->count() ? o->fraction : 0.0;
    co.encode.codebook = o->codebook == "lloyd" ? CodebookMethod::Lloyd : CodebookMethod::Optimal;
    co.encode.sidecar = o->sidecar == "magnitude" ? SidecarMethod::Magnitude
                        : o->sidecar == "none"    ? SidecarMethod::None
                                                  : SidecarMethod::Error;
    co.encode.sidecar_fraction = o->fraction;
    co.encode.codebook_precision = o->precision == "bf16" ? CodebookPrecision::Bf16 : CodebookPrecision::F32;
    co.embeddings = o->embeddings;
    co.only = o->only;
    co.skip = o->skip;
    co.merge_lora = o->merge_lora;
    co.max_shard_bytes = uint64_t(o->shard_gb * 1e9);
    co.overwrite = o->overwrite;
    co.fsync = !o->no_fsync;
    ProgressOptions po;
    po.mode = o->json ? ProgressMode::Silent : ProgressMode::Auto;
    po.unit = "B";
    Progress bar("compress", 0, po);
    auto r = compress_checkpoint(o->in, o->out, co, [&](uint64_t done, uint64_t total, const std::string& m) {
      bar.set_total(total);
      bar.set_done(done);
      bar.set_suffix(m);
    });
    bar.set_suffix("");
    bar.finish();
    if (o->json)
      std::printf("%s\n", r.to_json().dump().c_str());
    else
      print_receipt(r);
  });
}

void add_decompress(CLI::App& app) {
  struct Opts {
    std::string in, out;
    bool overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("decompress", "Write a dense F32 copy of an HXQ checkpoint (decoded weights)");
  sub->add_option("input", o->in, "HXQ model directory")->required();
  sub->add_option("output", o->out, "Output directory (written atomically)")->required();
  sub->add_flag("--overwrite", o->overwrite, "Replace an existing output checkpoint");
  sub->callback([o] {
    decompress_checkpoint(o->in, o->out, o->overwrite);
    std::printf("decompressed %s -> %s\n", o->in.c_str(), o->out.c_str());
  });
}

void add_inspect(CLI::App& app) {
  struct Opts {
    std::string dir;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("inspect", "Summarise a checkpoint (dense or HXQ)");
  sub->add_option("dir", o->dir, "Model directory")->required();
  sub->add_flag("--json", o->json, "Print JSON");
  sub->callback([o] {
    const json j = inspect_checkpoint(o->dir);
    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    const bool hxq = j["format"] != "dense";
    std::printf("%s: %s checkpoint, model_type %s\n", o->dir.c_str(),
                hxq ? ("HXQ (" + j["quant_method"].get<std::string>() + ")").c_str() : "dense",
                j["model_type"].get<std::string>().c_str());
    std::printf("  files            : %zu safetensors, %zu keys, %s\n", j["files"].get<size_t>(),
                j["total_keys"].get<size_t>(), human_bytes(j["file_bytes"].get<double>()).c_str());
    for (auto& [k, v] : j["dtypes"].items())
      std::printf("  %-17s: %lld tensors, %s\n", k.c_str(), (long long)v["tensors"].get<int64_t>(),
                  human_bytes(v["bytes"].get<double>()).c_str());
    std::printf("  dense parameters : %.3fM\n", j["dense_params"].get<double>() / 1e6);
    if (hxq)
      std::printf("  HXQ modules      : %zu, %.3fM weights in %s (%.4f bits/weight), %lld sidecar entries\n",
                  j["hxq_modules"].get<size_t>(), j["hxq_weights"].get<double>() / 1e6,
                  human_bytes(j["hxq_bytes"].get<double>()).c_str(), j["hxq_bits_per_weight"].get<double>(),
                  (long long)j["sidecar_entries"].get<int64_t>());
    if (j.contains("modules_by_bits")) {
      std::string s;
      for (auto& [b, n] : j["modules_by_bits"].items())
        s += fmt::format("{}{} x {}-bit", s.empty() ? "" : ", ", n.get<int64_t>(), b);
      std::printf("  v2 bit widths    : %s\n", s.c_str());
    }
  });
}

}  // namespace hxq::cli
