#!/usr/bin/env bash
# Builds hxq (Release) and runs the main job on a model directory (default: the 17M Mamba2 in
# $HXQ_TEST_DATA/models/mamba2-neox-17m): compress it to HXQ, generate from the original and the
# compressed model, and compare their perplexity on the first 8,192 tokens of WikiText-2.
set -euo pipefail
cd "$(dirname "$0")/.."
export HXQ_TEST_DATA=${HXQ_TEST_DATA:-$(cd .. && pwd)/shared}
MODEL=${1:-$HXQ_TEST_DATA/models/mamba2-neox-17m}
TEXT=${HXQ_EVAL_TEXT:-$HXQ_TEST_DATA/data/wikitext-2-raw/wiki.test.raw}
[ -d "$MODEL" ] || { echo "usage: scripts/run.sh MODEL_DIR (no default model at $MODEL)" >&2; exit 2; }
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target hxq
OUT=build/run/hxq-model
mkdir -p build/run
echo "== compress $MODEL -> $OUT"
./build/hxq compress "$MODEL" "$OUT" --overwrite
for m in "$MODEL" "$OUT"; do
  echo "== generate ($m)"
  ./build/hxq generate -m "$m" -p "The future of artificial intelligence" -n 48
  echo
done
if [ -f "$TEXT" ]; then
  echo "== KL divergence and perplexity, original vs HXQ, first 8192 tokens of $(basename "$TEXT")"
  ./build/hxq kl -m "$MODEL" --other "$OUT" -f "$TEXT" --max-tokens 8192
fi
