#!/usr/bin/env bash
# Builds dstrain twice (release, and ASan + UBSan) and runs the whole test suite on both.
# Usage: tools/test.sh [--fast]   (--fast: the release build only)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
if [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j1)
if [ "${1:-}" != "--fast" ]; then
  # the sanitizer build checks the C code; the CUDA backend is compiled by the build above, and
  # the Slurm test (minutes of cluster scheduling around the same binary) runs in that build only
  cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSTRAIN_SANITIZE=ON -DDSTRAIN_CUDA=OFF >/dev/null
  cmake --build build-sanitize -j"$jobs"
  (cd build-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j1 -E '^slurm/')
fi
