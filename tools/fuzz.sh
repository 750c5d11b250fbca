#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (clang, ASan + UBSan) in build-fuzz (or
# $FUZZ_BUILD) and runs each from its committed seed corpus (tests/fuzz/corpus/<harness>); new
# inputs are kept in build-fuzz/corpus/<harness>, crashes, leaks and hangs in
# build-fuzz/findings/<harness>.
# Usage: tools/fuzz.sh [--ci] [--seconds N] [HARNESS ...]
#   --ci         10 s each from a fixed seed (the bounded run of tools/test.sh: under two minutes
#                for all eleven, the same inputs on every machine as fast as this one, so the gate
#                passes or fails by the code, not by luck; the open search is the runs without it);
#                without clang it says so and exits 0, since fuzzing needs clang's libFuzzer
#                (tools/install-deps.sh installs it)
#   --seconds N  N seconds each (default 600)
# Exit status 1 when a harness found something; record hours and findings in tests/fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=600 ci=0 names=() seed=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) ci=1 seconds=10 seed=(-seed=1) ;;
    --seconds) seconds=$2; shift ;;
    *) names+=("$1") ;;
  esac
  shift
done
CC=${FUZZ_CC:-$(command -v clang || command -v clang-14 || true)}
if [ -z "$CC" ] || ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n){return 0;}' |
     "$CC" -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "fuzz: clang with libFuzzer is not installed (tools/install-deps.sh installs it); skipped"
  [ $ci -eq 1 ] && exit 0 || exit 1
fi
B=${FUZZ_BUILD:-build-fuzz}
cmake -S . -B "$B" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDSTRAIN_FUZZ=ON -DDSTRAIN_TESTS=OFF -DDSTRAIN_CUDA=OFF >/dev/null || exit 1
cmake --build "$B" -j"$(nproc)" > "$B/build.log" 2>&1 ||
  { echo "fuzz: build failed ($B/build.log)"; exit 1; }
if [ ${#names[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.c; do
    names+=("$(basename "$f" .c)")
  done
fi
found=0
for name in "${names[@]}"; do
  corpus=$B/corpus/$name findings=$B/findings/$name
  mkdir -p "$corpus" "$findings"
  # libhdf5 leaks blocks of its own on damaged files (tests/fuzz/lsan-hdf5.supp): its harness
  # shuts the library down after each input and runs without leak detection; dstrain's own
  # leaks on those files are the ASan suite's (tests/data/test_dataset)
  leaks=1
  [ "$name" = fuzz_hdf5_open ] && leaks=0
  # libFuzzer's exit: 0 clean; a crash, leak, timeout or out-of-memory leaves an artifact
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
    LSAN_OPTIONS="suppressions=$PWD/tests/fuzz/lsan-hdf5.supp" \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    "$B/$name" "$corpus" "tests/fuzz/corpus/$name" -max_total_time="$seconds" "${seed[@]}" \
      -detect_leaks=$leaks -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$findings/" -print_final_stats=1 > "$B/$name.log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$B/$name.log" | grep -o '[0-9]*$')
  if [ $rc -ne 0 ]; then
    found=1
    echo "fuzz: $name: FOUND something (exit $rc) after ${execs:-?} runs: $(ls "$findings" | head -3)"
    grep -m3 -E 'ERROR|SUMMARY' "$B/$name.log"
  else
    echo "fuzz: $name: clean, ${execs:-?} runs in ${seconds} s"
  fi
done
exit $found
