#!/usr/bin/env bash
# Builds hxq (Release) and runs the main job on a model directory (default: the 17M Mamba2 in
# $HXQ_TEST_DATA/models/mamba2-neox-17m): greedy generation from a fixed prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
export HXQ_TEST_DATA=${HXQ_TEST_DATA:-$(cd .. && pwd)/shared}
MODEL=${1:-$HXQ_TEST_DATA/models/mamba2-neox-17m}
[ -d "$MODEL" ] || { echo "usage: scripts/run.sh MODEL_DIR (no default model at $MODEL)" >&2; exit 2; }
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target hxq
./build/hxq generate -m "$MODEL" -p "The future of artificial intelligence" -n 48
