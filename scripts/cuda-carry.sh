#!/usr/bin/env bash
# Builds build-cuda (HXQ_CUDA=ON) on this machine and gathers what the GPU machine needs to run the
# CUDA tests and benchmarks (it lacks our -dev packages): hxq_cuda_tests, hxq_bench and, in lib/, the
# shared libraries they load that are not part of the base system (libc, libstdc++, libgcc_s, libm:
# the device's newer ones are used), staged in build-cuda/carry/ and packed (gzip: libicudata alone
# is 30 MiB) as .cuda-carry/carry.tar.gz, which scripts/cuda-device-check.sh unpacks and runs.
# Usage: bash scripts/cuda-carry.sh [extra cmake args, e.g. -DCMAKE_CUDA_ARCHITECTURES=90]
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DHXQ_CUDA=ON "$@" >/dev/null
cmake --build build-cuda -j2 --target hxq_cuda_tests hxq_bench
stage=build-cuda/carry
rm -rf .cuda-carry "$stage"
mkdir -p .cuda-carry "$stage/lib"
for b in hxq_cuda_tests hxq_bench; do
  # Drop the host debug info (not the device line info): smaller to carry, same code.
  objcopy --strip-debug "build-cuda/$b" "$stage/$b"
done
ldd build-cuda/hxq_cuda_tests build-cuda/hxq_bench | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | libgcc_s.so* | libstdc++.so*) ;;
    *) cp -L "$lib" "$stage/lib/" ;;
  esac
done
# Check: everything resolves with only the carried folder and the base system, and starts.
if env -i LD_LIBRARY_PATH="$stage/lib" ldd "$stage/hxq_cuda_tests" "$stage/hxq_bench" | grep -q 'not found'; then
  echo "cuda-carry: unresolved libraries" >&2
  exit 1
fi
env -i LD_LIBRARY_PATH="$stage/lib" "$stage/hxq_cuda_tests" >"$stage/selfcheck.log" 2>&1 ||
  { tail -20 "$stage/selfcheck.log"; echo "cuda-carry: the carried hxq_cuda_tests does not run here" >&2; exit 1; }
tar -C "$stage" -czf .cuda-carry/carry.tar.gz hxq_cuda_tests hxq_bench lib
git rev-parse HEAD >.cuda-carry/commit 2>/dev/null || true
ls -l "$stage" "$stage/lib" .cuda-carry
du -sh .cuda-carry
size=$(du -sm .cuda-carry | cut -f1)
if [ "$size" -ge 60 ]; then
  echo "cuda-carry: .cuda-carry is ${size} MiB (the carry limit is 64 MiB)" >&2
  exit 1
fi
