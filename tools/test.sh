#!/usr/bin/env bash
# Builds dstrain twice (release, and ASan + UBSan) and runs the whole test suite on both.
# Usage: tools/test.sh [--fast]   (--fast: the release build only)
# Both halves run even when the first fails (a failing test must not hide what the sanitizers
# find); both results are printed at the end, and the exit status is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
test_jobs=$((jobs < 4 ? jobs : 4)) # tests at a time: a core each, at most 4 (MPI tests run 4 ranks)
if [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi

release() {
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    cmake --build build -j"$jobs" &&
    (cd build && ctest --output-on-failure -j"$test_jobs")
}

# the sanitizer build checks the C code; the CUDA backend is compiled by the release build, and
# the Slurm test (minutes of cluster scheduling around the same binary) runs in that build only.
# Tests run test_jobs at a time (each runs its ranks with 2 OpenMP threads and a single-threaded
# BLAS; the Slurm tests run alone: CMakeLists.txt)
sanitize() {
  cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSTRAIN_SANITIZE=ON \
    -DDSTRAIN_CUDA=OFF >/dev/null &&
    cmake --build build-sanitize -j"$jobs" &&
    (cd build-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$test_jobs" -E '^slurm/')
}

result() { [ "$1" -eq 0 ] && echo "passed" || echo "FAILED (exit $1)"; }

release
release_status=$?
sanitize_status=skipped
if [ "${1:-}" != "--fast" ]; then
  sanitize
  sanitize_status=$?
fi

echo
echo "tools/test.sh: release build (build/):              $(result "$release_status")"
if [ "$sanitize_status" = skipped ]; then
  echo "tools/test.sh: ASan + UBSan build (build-sanitize/): not run (--fast)"
  exit "$((release_status != 0))"
fi
echo "tools/test.sh: ASan + UBSan build (build-sanitize/): $(result "$sanitize_status")"
# bounded fuzzing, 10 s a harness (tests/fuzz/README.md); it passes by itself without clang
fuzz_status=0
if [ -x tools/fuzz.sh ]; then
  tools/fuzz.sh --ci
  fuzz_status=$?
  echo "tools/test.sh: fuzz harnesses (build-fuzz/):           $(result "$fuzz_status")"
fi
[ "$release_status" -eq 0 ] && [ "$sanitize_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ]
