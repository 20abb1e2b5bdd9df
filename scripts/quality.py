#!/usr/bin/env python3
"""Regenerates docs/QUALITY.md: every codec variant of `hxq compress` on every model in the test
data, measured with `hxq kl` (KL divergence, top-1 agreement, perplexity of both models in one
pass) and, for mamba2-neox-17m, whole-file perplexities next to transformers' own numbers.

Usage: scripts/quality.py [--data DIR] [--quick] [--out docs/QUALITY.md]
Needs build/hxq (scripts/run.sh or the README build command). Python standard library only.
"""
import argparse, datetime, json, os, platform, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HXQ = os.path.join(ROOT, "build", "hxq")

VARIANTS = [  # (label, compress flags)
    ("hxq: optimal codebook + error sidecar (default)", []),
    ("hxq: optimal + error sidecar, + embeddings", ["--embeddings"]),
    ("hxq: optimal + error sidecar 0.05 %", ["--sidecar-fraction", "0.0005"]),
    ("hxq: optimal, no sidecar", ["--sidecar", "none"]),
    ("optimal codebook + magnitude sidecar", ["--sidecar", "magnitude"]),
    ("lloyd codebook + error sidecar", ["--codebook", "lloyd"]),
    ("helix-substrate algorithm (lloyd + magnitude)", ["--codebook", "lloyd", "--sidecar", "magnitude"]),
    ("helix-substrate algorithm, + embeddings", ["--codebook", "lloyd", "--sidecar", "magnitude", "--embeddings"]),
]


def run(args):
    t = time.time()
    p = subprocess.run([HXQ] + args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"hxq {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout), time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("HXQ_TEST_DATA", os.path.join(os.path.dirname(ROOT), "shared")))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "QUALITY.md"))
    ap.add_argument("--quick", action="store_true", help="skip the whole-file perplexities")
    a = ap.parse_args()
    if not os.path.exists(HXQ):
        sys.exit("build/hxq not found: build first (cmake -S . -B build && cmake --build build)")
    models = [
        ("mamba2-neox-17m", os.path.join(a.data, "models", "mamba2-neox-17m"),
         os.path.join(a.data, "data", "wikitext-2-raw", "wiki.test.raw"), ["--ctx", "2048", "--stride", "512", "--max-tokens", "32768"],
         "WikiText-2 test, first 32,768 tokens, HF sliding windows (ctx 2048, stride 512)"),
        ("stories260K (Llama)", os.path.join(a.data, "models", "stories260K-hf"),
         os.path.join(a.data, "data", "corpora", "gutenberg", "pg11.txt"), ["--ctx", "512", "--stride", "256"],
         "Alice's Adventures in Wonderland (Project Gutenberg pg11.txt, a children's story like its training data), "
         "whole file, HF sliding windows (ctx 512, stride 256)"),
    ]
    tmp = tempfile.mkdtemp(prefix="hxq-quality-")
    sections, full_rows = [], []
    try:
        for name, mdir, text, evargs, evdesc in models:
            if not os.path.isdir(mdir):
                print(f"skipping {name}: {mdir} absent", file=sys.stderr)
                continue
            rows = []
            for label, flags in VARIANTS:
                out = os.path.join(tmp, "m")
                rc, _ = run(["compress", mdir, out, "--overwrite", "--json"] + flags)
                kl, secs = run(["kl", "-m", mdir, "--other", out, "-f", text, "--json"] + evargs)
                rows.append((label, flags, rc, kl))
                print(f"{name}: {label}: dPPL {kl['delta_ppl_percent']:+.3f}% KL {kl['kl_mean']:.6f} "
                      f"({rc['seconds']:.2f} s compress, {secs:.0f} s eval)", file=sys.stderr)
                if name.startswith("mamba2") and not a.quick and flags in ([], ["--embeddings"],
                        ["--codebook", "lloyd", "--sidecar", "magnitude"],
                        ["--codebook", "lloyd", "--sidecar", "magnitude", "--embeddings"]):
                    p, psecs = run(["perplexity", "-m", out, "-f", text, "--json"])
                    full_rows.append((label, p["ppl"], psecs))
            rows.sort(key=lambda r: r[3]["kl_mean"])
            src_bytes = rows[0][2]["input_bytes"]  # the checkpoint's weight files, as compress read them
            base_ppl = rows[0][3]["ppl_base"]
            lines = [f"## {name}", "",
                     f"Source checkpoint: {src_bytes / 1e6:.2f} MB of safetensors. Evaluation: {evdesc}; "
                     f"{rows[0][3]['scored_tokens']:,} scored tokens; dense PPL {base_ppl:.4f}.", "",
                     "| variant | `hxq compress` flags | output MB | ratio | bits/weight | ΔPPL % | mean KL | p99 KL | top-1 agree | median SQNR dB | compress s |",
                     "|---|---|---|---|---|---|---|---|---|---|---|"]
            for label, flags, rc, kl in rows:
                sq = rc["sqnr_db_median"]
                lines.append(f"| {label} | `{' '.join(flags) or '(none)'}` | {rc['output_bytes'] / 1e6:.2f} | {rc['ratio']:.3f} | "
                             f"{rc['bits_per_weight']:.4f} | {kl['delta_ppl_percent']:+.3f} | {kl['kl_mean']:.6f} | "
                             f"{kl['kl_p99']:.6f} | {100 * kl['top1_agreement']:.2f} % | "
                             f"{sq if isinstance(sq, str) else f'{sq:.2f}'} | {rc['seconds']:.2f} |")
            sections.append("\n".join(lines))
        if full_rows or not a.quick:
            mdir = os.path.join(a.data, "models", "mamba2-neox-17m")
            ref = json.load(open(os.path.join(mdir, "reference.json")))
            text = os.path.join(a.data, "data", "wikitext-2-raw", "wiki.test.raw")
            dense, dsecs = run(["perplexity", "-m", mdir, "-f", text, "--json"])
            refs = {"helix-substrate algorithm (lloyd + magnitude)": ref["ppl_anchor_hxq_linears"],
                    "helix-substrate algorithm, + embeddings": ref["ppl_anchor_hxq_linears_and_embedding"]}
            lines = ["## mamba2-neox-17m, whole WikiText-2 test file (287,159 tokens)", "",
                     "The cross-check of kernels and codec against transformers: the same algorithm evaluated by "
                     "transformers (reference.json) and by hxq running the compressed checkpoint.", "",
                     "| model | hxq PPL | transformers PPL | ΔPPL % vs dense | eval s |", "|---|---|---|---|---|",
                     f"| dense BF16 | {dense['ppl']:.4f} | {ref['ppl_dense']:.4f} | — | {dsecs:.0f} |"]
            for label, p, secs in full_rows:
                r = refs.get(label)
                lines.append(f"| {label} | {p:.4f} | {f'{r:.4f}' if r else '—'} | {100 * (p / dense['ppl'] - 1):+.3f} | {secs:.0f} |")
            sections.insert(1, "\n".join(lines))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = ["# Quality of HXQ compression", "",
            f"Generated by `scripts/quality.py` on {datetime.date.today().isoformat()} on {platform.machine()} "
            f"({os.cpu_count()} cores). Each row: `hxq compress MODEL OUT [flags]`, then "
            "`hxq kl -m MODEL --other OUT -f TEXT` (both models on the same windows in one pass). Variants "
            "are sorted by mean KL, best first. ΔPPL is the compressed model's perplexity relative to the "
            "dense one on the same tokens; KL is KL(dense ‖ compressed) per scored token in nats; top-1 "
            "agreement is the fraction of positions where both models' most likely next token is the same.", "",
            "Protocol: Hugging Face's sliding-window recipe (`hxq perplexity` default; see README): the text is "
            "tokenized without BOS, windows of ctx tokens start every stride tokens, every token after the "
            "first is scored once with the most context available.", "",
            "bits/weight counts, for the compressed tensors only, the uint8 indices, the 256-entry float32 "
            "codebook and the sidecar (int64 position + float32 value per entry); the sidecar is capped so "
            "that no tensor exceeds 8.1 bits/weight. The helix-substrate rows use our bit-exact "
            "reimplementation of its encoder.", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(head + ["\n\n".join(sections), ""]))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
