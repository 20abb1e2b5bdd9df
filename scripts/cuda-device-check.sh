#!/usr/bin/env bash
# Runs on the GPU machine, in the repository root, with $OUT set: the CUDA tests (Cuda*) and the
# CUDA benchmarks, from the binaries and libraries prepared here by scripts/cuda-carry.sh and
# carried as .cuda-carry/carry.tar.gz (unpacked to a temporary folder). Prints everything; env.log, tests.log/json, bench.log/json, torch.log and
# summary.txt go to $OUT. Total well under 4 minutes (timeouts: tests 80 s, bench 120 s,
# torch 25 s); a failing or crashing test run does not stop the benchmarks.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
t0=$(date +%s)
C=$(mktemp -d /tmp/hxq-carry.XXXXXX)
tar -C "$C" -xzf .cuda-carry/carry.tar.gz || { echo "!! cannot unpack .cuda-carry/carry.tar.gz"; exit 1; }
export LD_LIBRARY_PATH="$C/lib"
{
  echo "== host: $(uname -srm), $(nproc) cores, $(date -u +%FT%TZ)"
  echo "== git: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), carried binaries built at $(cat .cuda-carry/commit 2>/dev/null || echo '?')"
  nvidia-smi || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,mig.mode.current \
    --format=csv || true
  ls -l "$C" "$C/lib" || true
  ldd "$C/hxq_cuda_tests" | grep -E 'not found' && echo "!! missing libraries" || echo "libraries: all found"
} 2>&1 | tee "$OUT/env.log"

# Does the CUDA runtime (static, CUDA 13) see the GPU? CudaNoDevice is skipped when it does. If the
# driver is older than the runtime, try the toolkit's forward-compatibility libcuda.
probe() { "$C/hxq_cuda_tests" --gtest_filter='CudaNoDevice*' 2>&1 | tee -a "$OUT/env.log" | grep -q 'SKIPPED \] CudaNoDevice'; }
if ! probe; then
  echo "!! the CUDA runtime sees no device (reason above); trying forward-compatibility libraries"
  for d in /usr/local/cuda/compat /usr/local/cuda-13*/compat; do
    if [ -e "$d/libcuda.so.1" ]; then
      export LD_LIBRARY_PATH="$C/lib:$d"
      if probe; then echo "using libcuda from $d"; break; fi
      export LD_LIBRARY_PATH="$C/lib"
    fi
  done
fi

echo "== tests (Cuda*, without the CPU-only CudaEmu*)"
timeout -k 5 80 "$C/hxq_cuda_tests" --gtest_filter='Cuda*:-CudaEmu*' --gtest_output="json:$OUT/tests.json" 2>&1 |
  tee "$OUT/tests.log"
rc_tests=${PIPESTATUS[0]}
echo "== tests rc=$rc_tests after $(($(date +%s) - t0)) s"

echo "== bench (Cuda)"
timeout -k 5 120 "$C/hxq_bench" --benchmark_filter='Cuda' --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_counters_tabular=true \
  --benchmark_out="$OUT/bench.json" --benchmark_out_format=json 2>&1 | tee "$OUT/bench.log"
rc_bench=${PIPESTATUS[0]}
echo "== bench rc=$rc_bench after $(($(date +%s) - t0)) s"

# Cross-check of the bandwidth baseline with PyTorch (BF16 matvec and a copy), if it is there.
echo "== torch cross-check"
timeout -k 5 25 python3 - <<'PY' 2>&1 | tee "$OUT/torch.log" || true
import torch, time
if not torch.cuda.is_available():
    raise SystemExit("torch: no CUDA")
dev = "cuda"
def timed(fn, reps=50):
    fn(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps): fn()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / reps * 1e-3
print("torch", torch.__version__, torch.cuda.get_device_name(0))
for N, K in [(8512, 2048), (2048, 4096), (16384, 4096)]:
    ws = [torch.randn(N, K, device=dev).to(torch.bfloat16) for _ in range(max(2, (256 << 20) // (2 * N * K) + 1))]
    x = torch.randn(K, device=dev).to(torch.bfloat16)
    i = [0]
    def mv():
        i[0] = (i[0] + 1) % len(ws)
        return torch.mv(ws[i[0]], x)
    s = timed(mv, 200)
    print(f"torch bf16 mv {N}x{K}: {s*1e6:.1f} us, {2*N*K/s/1e9:.0f} GB/s")
    del ws
big = torch.empty(1 << 28, dtype=torch.float32, device=dev)
dst = torch.empty_like(big)
s = timed(lambda: dst.copy_(big), 20)
print(f"torch copy 1 GiB: {2*big.numel()*4/s/1e9:.0f} GB/s (read + write)")
PY

{
  echo "tests rc=$rc_tests, bench rc=$rc_bench, total $(($(date +%s) - t0)) s"
  grep -E '^\[  (PASSED|FAILED|  SKIPPED) |^\[  FAILED  \]' "$OUT/tests.log" || true
  python3 - "$OUT/bench.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
print("median of 3 repetitions:")
for b in d["benchmarks"]:
    if b.get("aggregate_name", "median") != "median" and b.get("run_type") == "aggregate":
        continue
    if "error_message" in b:
        print(f'{b["name"]}: ERROR {b["error_message"]}'); continue
    keys = ["us_per_call", "GB/s", "bw_frac", "GFLOP/s", "tokens/s", "read_GB/s", "copy_GB/s", "theoretical_GB/s"]
    print(b["name"] + ": " + ", ".join(f"{k} {b[k]:.4g}" for k in keys if k in b))
PY
} 2>&1 | tee "$OUT/summary.txt"
exit 0
