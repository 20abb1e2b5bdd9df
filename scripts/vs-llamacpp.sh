#!/usr/bin/env bash
# hxq next to llama.cpp on this machine, side by side (a benchmark, not a test): synthetic
# checkpoints from `hxq synth`, converted with llama.cpp's own converter and quantised with its
# llama-quantize, then both engines alternated model by model in each round; prints the table of
# docs/PERFORMANCE.md ("hxq vs llama.cpp") with medians and same-round ratios.
#
# usage: scripts/vs-llamacpp.sh LLAMA_CPP_DIR [WORK_DIR]
#   LLAMA_CPP_DIR: a llama.cpp source tree built with llama-bench and llama-quantize in build/bin
#   (how it was obtained and built here: ../shared/research/llamacpp_baseline.md).
# env: MODELS ("mamba2:370m llama:tinyllama-1.1b"), ROUNDS (5), GEN (64), PROMPT (512),
#      SHARED (../shared). The converter runs under Debian's /usr/bin/python3 (python3-torch,
#      -numpy, -yaml, -tqdm, -regex, -sentencepiece, -protobuf) with the transformers stand-in of
#      $SHARED/research/llamacpp_baseline_scripts (copied into WORK_DIR/pystub).
# Per round and model: 2 threads, prefill PROMPT + decode GEN (hxq: decode after the prefill;
# llama-bench: tg from an empty context, pp separately); 1 thread, decode GEN only. Engines and
# formats: BF16 vs BF16, hxq v2 8-bit (default) vs Q8_0, hxq v2 4-bit vs Q4_K_M.
set -euo pipefail
cd "$(dirname "$0")/.."
LC=$(cd "${1:?usage: scripts/vs-llamacpp.sh LLAMA_CPP_DIR [WORK_DIR]}" && pwd)
WORK=${2:-/tmp/hxq-vs-llamacpp}
MODELS=${MODELS:-"mamba2:370m llama:tinyllama-1.1b"}
ROUNDS=${ROUNDS:-5}
GEN=${GEN:-64}
PROMPT=${PROMPT:-512}
SHARED=$(cd "${SHARED:-../shared}" && pwd)
HXQ=$(pwd)/build/hxq
LB=$LC/build/bin
PY=/usr/bin/python3
for f in "$HXQ" "$LB/llama-bench" "$LB/llama-quantize" "$LC/convert_hf_to_gguf.py"; do
  [ -e "$f" ] || { echo "vs-llamacpp: $f not found" >&2; exit 1; }
done
mkdir -p "$WORK/pystub/transformers"
cp "$SHARED/research/llamacpp_baseline_scripts/transformers_stub.py" "$WORK/pystub/transformers/__init__.py"
OUT=$WORK/raw.jsonl
: > "$OUT"

for spec in $MODELS; do
  arch=${spec%%:*} preset=${spec#*:}
  m=$WORK/$arch-$preset
  if [ ! -f "$m-bf16/config.json" ]; then
    $HXQ synth --arch "$arch" --preset "$preset" --dtype bf16 -o "$m-bf16" --overwrite >/dev/null
    # hxq synth writes no tokenizer; the converter needs one (the vocabularies of these shapes).
    case $arch in
      mamba2 | mamba) cp "$SHARED"/models/mamba2-neox-17m/{tokenizer.json,tokenizer_config.json} "$m-bf16/" ;;
      llama) cp "$SHARED/data/tokenizers/llama2-spm/tokenizer.model" "$m-bf16/" ;;
      *) echo "vs-llamacpp: no tokenizer for $arch" >&2; exit 1 ;;
    esac
  fi
  [ -f "$m-v2-8/config.json" ] || $HXQ compress "$m-bf16" "$m-v2-8" --overwrite --no-fsync >/dev/null
  [ -f "$m-v2-4/config.json" ] || $HXQ compress "$m-bf16" "$m-v2-4" --bits 4 --overwrite --no-fsync >/dev/null
  if [ ! -f "$m-BF16.gguf" ]; then
    PYTHONPATH=$WORK/pystub LLAMA_CPP=$LC $PY "$SHARED/research/llamacpp_baseline_scripts/run_convert.py" \
      "$m-bf16" --outtype bf16 --outfile "$m-BF16.gguf" > "$m.convert.log" 2>&1
  fi
  for q in Q8_0 Q4_K_M; do
    [ -f "$m-$q.gguf" ] || "$LB/llama-quantize" "$m-BF16.gguf" "$m-$q.gguf" "$q" 2 > "$m.quantize-$q.log" 2>&1
  done
done

hx() {  # round model format dir threads prompt
  local j
  j=$($HXQ bench -m "$4" --prompt "$6" --gen "$GEN" --repeats 1 --membw-mb 0 --threads "$5" --json)
  echo "{\"round\":$1,\"model\":\"$2\",\"engine\":\"hxq\",\"format\":\"$3\",\"threads\":$5,\"res\":$j}" >> "$OUT"
}
lc() {  # round model format gguf threads prompt
  local j
  j=$("$LB/llama-bench" -m "$4" -p "$6" -n "$GEN" -t "$5" -r 1 -o jsonl 2>/dev/null | paste -sd, -)
  echo "{\"round\":$1,\"model\":\"$2\",\"engine\":\"llama.cpp\",\"format\":\"$3\",\"threads\":$5,\"res\":[$j]}" >> "$OUT"
}
for r in $(seq "$ROUNDS"); do
  for spec in $MODELS; do
    m=$WORK/${spec%%:*}-${spec#*:}
    hx "$r" "$spec" BF16 "$m-bf16" 2 "$PROMPT"; lc "$r" "$spec" BF16 "$m-BF16.gguf" 2 "$PROMPT"
    hx "$r" "$spec" 8 "$m-v2-8" 2 "$PROMPT"; lc "$r" "$spec" 8 "$m-Q8_0.gguf" 2 "$PROMPT"
    hx "$r" "$spec" 4 "$m-v2-4" 2 "$PROMPT"; lc "$r" "$spec" 4 "$m-Q4_K_M.gguf" 2 "$PROMPT"
    lc "$r" "$spec" 4 "$m-Q4_K_M.gguf" 1 0; hx "$r" "$spec" 4 "$m-v2-4" 1 0
    lc "$r" "$spec" 8 "$m-Q8_0.gguf" 1 0; hx "$r" "$spec" 8 "$m-v2-8" 1 0
    lc "$r" "$spec" BF16 "$m-BF16.gguf" 1 0; hx "$r" "$spec" BF16 "$m-bf16" 1 0
  done
done

$PY - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def speeds(r):  # {"decode": tok/s, "prefill": tok/s} of one sample
    if r["engine"] == "hxq":
        d = {"decode": r["res"]["decode_tokens_per_s"]}
        if r["res"]["prompt_tokens"] > 0: d["prefill"] = r["res"]["prefill_tokens_per_s"]
        return d
    d = {}
    for x in r["res"]:
        d["decode" if x["n_gen"] > 0 else "prefill"] = x["avg_ts"]
    return d
cells = {}  # (model, threads, phase, format) -> {round: {engine: tok/s}}
for r in rows:
    for ph, v in speeds(r).items():
        cells.setdefault((r["model"], r["threads"], ph, r["format"]), {}).setdefault(r["round"], {})[r["engine"]] = v
names = {"BF16": ("BF16", "BF16"), "8": ("HXQ v2 8-bit", "Q8_0"), "4": ("HXQ v2 4-bit", "Q4_K_M")}
print(f"\nhxq vs llama.cpp, medians of {sys.argv[2]} rounds (ratio: median of same-round ratios)\n")
print("| model | threads | phase | " + " | ".join(f"hxq {a} / llama.cpp {b}" for a, b in names.values()) + " |")
print("|---|---|---|" + "---|" * len(names))
for (model, th, ph) in sorted({k[:3] for k in cells}, key=lambda k: (k[0], -k[1], k[2])):
    out = []
    for f in names:
        c = cells.get((model, th, ph, f))
        if not c:
            out.append("–"); continue
        both = [v for v in c.values() if "hxq" in v and "llama.cpp" in v]
        h = statistics.median(v["hxq"] for v in both)
        l = statistics.median(v["llama.cpp"] for v in both)
        ratio = statistics.median(v["hxq"] / v["llama.cpp"] for v in both)
        out.append(f"{h:.1f} / {l:.1f} = {ratio:.2f}×")
    print(f"| {model} | {th} | {ph} | " + " | ".join(out) + " |")
EOF
