#!/usr/bin/env bash
# Builds hxq twice — Release, and Debug with AddressSanitizer + UndefinedBehaviorSanitizer — and
# runs the whole CTest suite on each. The Release build includes the Python extension: CTest's
# PythonPackage pip-installs it (offline) into build/pyenv and runs tests/python with pytest; the
# sanitizer build leaves Python out (an ASan library cannot be loaded into Debian's python3).
# Test data: $HXQ_TEST_DATA (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
export HXQ_TEST_DATA=${HXQ_TEST_DATA:-$(cd .. && pwd)/shared}
[ -d "$HXQ_TEST_DATA" ] || echo "warning: test data $HXQ_TEST_DATA not found; data-dependent tests will be skipped"

phase() { echo "test.sh: $1 done after ${SECONDS} s"; }  # where the suite's time goes

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$JOBS"
phase "Release build"
(cd build && ctest --output-on-failure -j "$JOBS" --timeout 900)
phase "Release tests"

# The optional CUDA kernels, where nvcc exists (no GPU needed: device tests skip themselves, the
# CudaEmu* tests run the kernels on the CPU). HXQ_SKIP_CUDA=1 skips this step.
if [ "${HXQ_SKIP_CUDA:-0}" != 1 ] && { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }; then
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DHXQ_CUDA=ON -DHXQ_PYTHON=OFF >/dev/null
  cmake --build build-cuda -j "$JOBS" --target hxq_cuda_tests hxq_bench
  phase "CUDA build"
  (cd build-cuda && ctest --output-on-failure -j "$JOBS" --timeout 900 -R '^Cuda')
  phase "CUDA tests"
fi

if [ "${HXQ_SKIP_SANITIZERS:-0}" != 1 ]; then
  # -O1 -g1: fast enough to run, line numbers in reports, and a much cheaper compile than -O2 -g
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
    -DHXQ_SANITIZE=ON -DHXQ_BUILD_BENCH=OFF -DHXQ_PYTHON=OFF >/dev/null
  cmake --build build-asan -j "$JOBS"
  phase "sanitizer build"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  (cd build-asan && HXQ_SANITIZED=1 ctest --output-on-failure -j "$JOBS" --timeout 1800)
  phase "sanitizer tests"
fi
