#!/usr/bin/env bash
# Decode / prefill speed of every HXQ v2 bit width next to BF16 and the helix format, on synthetic
# checkpoints with real shapes (a benchmark, not a test). For each model: `hxq synth`, then
# `hxq compress` at each setting (timed), then `hxq bench` on all of them alternately for ROUNDS
# rounds; prints a table of medians and the ratios measured in the same rounds.
#
# usage: scripts/bench-bits.sh [WORK_DIR] — env: MODELS ("mamba2:1.3b llama:tinyllama-1.1b"),
#        THREADS (2), ROUNDS (3), GEN (16), PROMPT (128), SKIP_COMPRESS=1 (reuse earlier outputs),
#        KEEP ("helix v2-8 v2-6 v2-5 v2-4": the settings to run, a subset of these names)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/hxq-bench-bits}
MODELS=${MODELS:-"mamba2:1.3b llama:tinyllama-1.1b"}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
GEN=${GEN:-16}
PROMPT=${PROMPT:-128}
HXQ=./build/hxq
[ -x "$HXQ" ] || { echo "build/hxq not found: build first" >&2; exit 1; }
mkdir -p "$WORK"
ALL=("helix:--format helix" "v2-8:--bits 8" "v2-6:--bits 6" "v2-5:--bits 5" "v2-4:--bits 4")
SETTINGS=()
for s in "${ALL[@]}"; do
  [[ " ${KEEP:-helix v2-8 v2-6 v2-5 v2-4} " == *" ${s%%:*} "* ]] && SETTINGS+=("$s")
done

for spec in $MODELS; do
  arch=${spec%%:*} preset=${spec#*:}
  base="$WORK/$arch-$preset"
  [ -f "$base/config.json" ] || $HXQ synth --arch "$arch" --preset "$preset" -o "$base" --overwrite >/dev/null
  for s in "${SETTINGS[@]}"; do
    name=${s%%:*} flags=${s#*:}
    [ "${SKIP_COMPRESS:-0}" = 1 ] && [ -f "$base-$name.compress.json" ] && continue
    # shellcheck disable=SC2086
    $HXQ compress "$base" "$base-$name" --overwrite --no-fsync --json --threads "$THREADS" $flags \
      > "$base-$name.compress.json"
  done
  : > "$base.bench.jsonl"
  for r in $(seq "$ROUNDS"); do
    for name in bf16 "${SETTINGS[@]%%:*}"; do
      dir="$base"; [ "$name" = bf16 ] || dir="$base-$name"
      $HXQ bench -m "$dir" --prompt "$PROMPT" --gen "$GEN" --repeats 1 --threads "$THREADS" --membw-mb 256 --json |
        /usr/bin/env python3 -c "import json,sys; d=json.load(sys.stdin); d['setting']='$name'; d['round']=$r; print(json.dumps(d))" \
        >> "$base.bench.jsonl"
    done
  done
  /usr/bin/env python3 - "$base" <<'EOF'
import json, statistics, sys
base = sys.argv[1]
rows = [json.loads(l) for l in open(base + ".bench.jsonl")]
names = []
for r in rows:
    if r["setting"] not in names:
        names.append(r["setting"])
def med(name, key):
    return statistics.median(r[key] for r in rows if r["setting"] == name)
def ratio(name, key, ref):
    by_round = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["setting"]] = r[key]
    return statistics.median(v[name] / v[ref] for v in by_round.values() if name in v and ref in v)
print(f"\n{base}: {rows[0]['summary']['arch']}, {rows[0]['threads']} threads, {rows[0]['isa']} kernels, "
      f"medians of {len(set(r['round'] for r in rows))} rounds")
print(f"{'setting':8} {'bits/w':>7} {'compress s':>10} {'MB/token':>9} {'decode t/s':>10} {'× v2-8':>7} {'of ceil.':>8} "
      f"{'prefill t/s':>11} {'× bf16':>7}")
for n in names:
    bpw, cs = "-", "-"
    if n != "bf16":
        c = json.load(open(f"{base}-{n}.compress.json"))
        bpw, cs = f"{c['bits_per_weight']:.3f}", f"{c['seconds']:.1f}"
    print(f"{n:8} {bpw:>7} {cs:>10} {med(n, 'bytes_per_token') / 1e6:9.1f} {med(n, 'decode_tokens_per_s'):10.2f} "
          f"{ratio(n, 'decode_tokens_per_s', 'v2-8') if 'v2-8' in names else float('nan'):7.2f} {100 * med(n, 'ceiling_fraction'):7.0f}% "
          f"{med(n, 'prefill_tokens_per_s'):11.1f} {ratio(n, 'prefill_tokens_per_s', 'bf16'):7.2f}")
EOF
done
