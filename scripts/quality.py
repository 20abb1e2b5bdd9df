#!/usr/bin/python3
"""Regenerates docs/QUALITY.md and docs/quality.png: every hxq compression setting (HXQ v2 at
8/6/5/4 bits, mixed-precision plans, the helix format) next to llama.cpp's weight formats (Q8_0,
Q6_K, Q5_K, Q4_K, IQ4_NL, Q4_0, applied by the instruments ../shared/tools/llamacpp_formats.py and
scripts/llamacpp_kquants.py) on every model in the test data, measured with `hxq kl` on the same
tokens (KL divergence, top-1 agreement, perplexity of both models in one pass).

Usage: scripts/quality.py [--data DIR] [--out docs/QUALITY.md] [--only NAME] [--rows LABEL]
Needs build/hxq and Debian's python3-numpy + python3-matplotlib (run with /usr/bin/python3). The
measurements are kept in docs/quality.json: `--only NAME` re-measures one model, `--rows LABEL`
only the hxq settings whose label contains LABEL, and the page and the plot are regenerated from
all of them.
"""
import argparse, datetime, json, os, platform, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HXQ = os.path.join(ROOT, "build", "hxq")

# (label, family, compress flags). Families: v2 (plotted as a line per group size), plan, helix.
HXQ_VARIANTS = [
    ("hxq v2 8-bit (default)", "v2 g32", []),
    ("hxq v2 8-bit, group 16", "v2 g16", ["--group", "16"]),
    ("hxq v2 6-bit", "v2 g32", ["--bits", "6"]),
    ("hxq v2 6-bit, group 16", "v2 g16", ["--bits", "6", "--group", "16"]),
    ("hxq v2 5-bit", "v2 g32", ["--bits", "5"]),
    ("hxq v2 5-bit, group 16", "v2 g16", ["--bits", "5", "--group", "16"]),
    ("hxq v2 4-bit", "v2 g32", ["--bits", "4"]),
    ("hxq v2 4-bit, group 16", "v2 g16", ["--bits", "4", "--group", "16"]),
    ("hxq v2 plan 4.5 bpw, group 16", "plan", ["--bpw", "4.5", "--group", "16"]),
    ("hxq v2 plan 5.5 bpw, group 16", "plan", ["--bpw", "5.5", "--group", "16"]),
    ("hxq helix format (hxq 0.1 default)", "helix", ["--format", "helix"]),
    ("helix-substrate's algorithm", "helix", ["--format", "helix", "--codebook", "lloyd", "--sidecar", "magnitude"]),
]
# (label, format, instrument, nominal bits/weight as llama.cpp stores it)
LLAMACPP = [
    ("llama.cpp Q8_0", "q8_0", "shared", 8.5),
    ("llama.cpp Q6_K", "q6_k", "kquants", 6.5625),
    ("llama.cpp Q5_K", "q5_k", "kquants", 5.5),
    ("llama.cpp Q4_K", "q4_k", "kquants", 4.5),
    ("llama.cpp IQ4_NL", "iq4_nl", "kquants", 4.5),
    ("llama.cpp Q4_0", "q4_0", "shared", 4.5),
]


def run(args, py=False):
    p = subprocess.run(([sys.executable] if py else [HXQ]) + args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def jrun(args):
    t = time.time()
    p = run(args)
    d = json.loads(p.stdout.strip().splitlines()[-1])
    # scalar fields only (the per-window lists stay out of docs/quality.json)
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or k == "modules_by_bits"}, time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("HXQ_TEST_DATA", os.path.join(os.path.dirname(ROOT), "shared")))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "QUALITY.md"))
    ap.add_argument("--only", help="evaluate only the model whose name contains this")
    ap.add_argument("--rows", help="re-measure only the hxq settings whose label contains this (the other rows "
                                   "come from docs/quality.json)")
    a = ap.parse_args()
    if not os.path.exists(HXQ):
        sys.exit("build/hxq not found: build first (cmake -S . -B build && cmake --build build)")
    models = [
        ("mamba2-neox-17m", os.path.join(a.data, "models", "mamba2-neox-17m"),
         os.path.join(a.data, "data", "wikitext-2-raw", "wiki.test.raw"), ["--max-tokens", "16384"],
         "WikiText-2 test, first 16,384 tokens, HF sliding windows (ctx 2048, stride 512)"),
        ("stories260K (Llama)", os.path.join(a.data, "models", "stories260K-hf"),
         os.path.join(a.data, "data", "corpora", "gutenberg", "pg11.txt"), ["--ctx", "512", "--stride", "256"],
         "Alice's Adventures in Wonderland (pg11.txt), whole file, HF sliding windows (ctx 512, stride 256)"),
    ]
    if a.only:
        models = [m for m in models if a.only in m[0]]
    tmp = tempfile.mkdtemp(prefix="hxq-quality-")
    cache = os.path.join(os.path.dirname(a.out), "quality.json")
    results = json.load(open(cache)) if os.path.exists(cache) else {}  # model -> {"desc", "rows"}
    try:
        for name, mdir, text, evargs, evdesc in models:
            if not os.path.isdir(mdir):
                print(f"skipping {name}: {mdir} absent", file=sys.stderr)
                continue
            rows = []
            cached = {r["label"]: r for r in results.get(name, {}).get("rows", [])}
            out = os.path.join(tmp, "m")
            for label, family, flags in HXQ_VARIANTS:
                if a.rows and a.rows not in label and label in cached:
                    rows.append(cached[label])
                    continue
                rc, csecs = jrun(["compress", mdir, out, "--overwrite", "--no-fsync", "--json"] + flags)
                kl, secs = jrun(["kl", "-m", mdir, "--other", out, "-f", text, "--json"] + evargs)
                plan = ", ".join(f"{n}×{b}" for b, n in sorted(rc.get("modules_by_bits", {}).items(), key=lambda x: int(x[0])))
                rows.append(dict(label=label, family=family, flags=" ".join(flags) or "(none)", bpw=rc["bits_per_weight"],
                                 kl=kl, note=("bits " + plan) if family == "plan" else "", csecs=rc["seconds"]))
                print(f"{name}: {label}: {rc['bits_per_weight']:.4f} bpw, KL {kl['kl_mean']:.4g} "
                      f"({csecs:.1f} s compress, {secs:.0f} s eval)", file=sys.stderr)
            for label, fmt, inst, bpw in LLAMACPP:
                if a.rows and label in cached:
                    rows.append(cached[label])
                    continue
                tool = (os.path.join(a.data, "tools", "llamacpp_formats.py") if inst == "shared"
                        else os.path.join(ROOT, "scripts", "llamacpp_kquants.py"))
                p = subprocess.run([sys.executable, tool, mdir, out + "-ll", fmt], capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"{tool} {fmt} failed: {p.stderr.strip()}")
                skipped = []
                if inst == "kquants":
                    info = json.loads(p.stdout.strip().splitlines()[-1])
                    skipped = info["skipped"]
                    if info["tensors"] == 0:
                        print(f"{name}: {label}: no tensor fits its blocks (rows of {fmt}); left out", file=sys.stderr)
                        shutil.rmtree(out + "-ll", ignore_errors=True)
                        continue
                kl, secs = jrun(["kl", "-m", mdir, "--other", out + "-ll", "-f", text, "--json"] + evargs)
                note = f"{len(skipped)} tensors kept dense (row length)" if skipped else ""
                rows.append(dict(label=label, family="llama.cpp", flags=f"`{fmt}` weights", bpw=bpw, kl=kl, note=note,
                                 csecs=None))
                print(f"{name}: {label}: KL {kl['kl_mean']:.4g} ({secs:.0f} s eval)", file=sys.stderr)
                shutil.rmtree(out + "-ll", ignore_errors=True)
            results[name] = {"desc": evdesc, "rows": rows}
            with open(cache, "w") as f:
                json.dump(results, f, indent=1)
        sections = []
        for name, res in results.items():
            rows, evdesc = res["rows"], res["desc"]
            base_ppl = rows[0]["kl"]["ppl_base"]
            lines = [f"## {name}", "",
                     f"Evaluation: {evdesc}; {rows[0]['kl']['scored_tokens']:,} scored tokens; dense PPL {base_ppl:.4f}.", "",
                     "| setting | flags | bits/weight | mean KL | ΔPPL % | p99 KL | top-1 agree | note |",
                     "|---|---|---|---|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: -r["bpw"]):
                k = r["kl"]
                flags = r["flags"] if r["family"] == "llama.cpp" else f"`{r['flags']}`"
                lines.append(f"| {r['label']} | {flags} | {r['bpw']:.4f} | {k['kl_mean']:.3e} | {k['delta_ppl_percent']:+.3f} | "
                             f"{k['kl_p99']:.3e} | {100 * k['top1_agreement']:.2f} % | {r['note']} |")
            sections.append("\n".join(lines))
        plot(results, os.path.join(os.path.dirname(a.out), "quality.png"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = ["# Quality of hxq compression", "",
            f"Generated by `scripts/quality.py` on {datetime.date.today().isoformat()} on {platform.machine()} "
            f"({os.cpu_count()} cores). Each hxq row: `hxq compress MODEL OUT [flags]`, then "
            "`hxq kl -m MODEL --other OUT -f TEXT` (both models on the same windows in one pass). Each "
            "llama.cpp row: llama.cpp's reference rounding of the same linear layers (weights only; "
            "`../shared/tools/llamacpp_formats.py` for Q8_0 / Q4_0, `scripts/llamacpp_kquants.py` for Q6_K, "
            "Q5_K, Q4_K and IQ4_NL, bit-exact with llama.cpp's C code), written as a dense F32 checkpoint and "
            "measured the same way. llama.cpp also rounds activations to 8 bits, so its rows are slightly "
            "optimistic. Rows are sorted by bits/weight; KL is KL(dense ‖ compressed) per scored token in "
            "nats; top-1 agreement is the fraction of positions where both models' most likely next token "
            "is the same.", "",
            "bits/weight counts everything the compressed tensors store: for hxq v2 the packed indices, the "
            "6-bit scale codes, the codebooks (a tensor's own, or its share of the checkpoint's shared one), "
            "the per-module parameters and any sidecar (docs/FORMAT.md); for the helix format the 256-entry "
            "float32 codebook, the indices and the sidecar; for llama.cpp the format's own bits per weight "
            "(block scales included).", "",
            "![mean KL vs bits/weight](quality.png)", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(head + ["\n\n".join(sections), ""]))
    print(f"wrote {a.out}", file=sys.stderr)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not results:
        return
    results = {k: v["rows"] for k, v in results.items()}
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    style = {"v2 g32": ("C0", "o-"), "v2 g16": ("C2", "s-"), "plan": ("C4", "D"), "helix": ("C7", "^"),
             "llama.cpp": ("C3", "x")}
    for ax, (name, rows) in zip(axes[0], results.items()):
        for fam, (color, marker) in style.items():
            pts = sorted((r["bpw"], r["kl"]["kl_mean"], r["label"]) for r in rows if r["family"] == fam)
            if not pts:
                continue
            ls = "-" if marker.endswith("-") else "none"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker[0], linestyle=ls, color=color,
                    label={"v2 g32": "hxq v2, group 32", "v2 g16": "hxq v2, group 16", "plan": "hxq v2 mixed plan",
                           "helix": "helix format", "llama.cpp": "llama.cpp (weights)"}[fam])
            if fam in ("llama.cpp", "plan"):
                for x, y, lab in pts:
                    ax.annotate(lab.replace("llama.cpp ", "").replace("hxq v2 plan ", "").replace(", group 16", ""),
                                (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight (everything stored)")
        ax.set_ylabel("mean KL to the dense model (nats/token)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
