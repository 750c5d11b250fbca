# common.sh: the preamble the GPU check scripts beside it share (inspect.sh, continual.sh, moe.sh),
# sourced by each after its `set -uo pipefail` as `. "$(dirname "$0")/common.sh" NAME`; not run by
# itself. Sets SRC (the source tree), BUILD (build dir, default /tmp/dstrain-gpu) and OUT (logs,
# default $BUILD/logs), both made, SUMMARY ($OUT/NAME-summary.txt, emptied; row() adds a line in
# run.sh's format and prints it) and status 0; build_dstrain builds dstrain in $BUILD; train_tiny
# trains the tiny preset on the GPU.
# shellcheck shell=bash
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-/tmp/dstrain-gpu}
OUT=${OUT:-$BUILD/logs}
mkdir -p "$BUILD" "$OUT"
CHECK_NAME=$1
SUMMARY=$OUT/$CHECK_NAME-summary.txt
: > "$SUMMARY"
# shellcheck disable=SC2034 # status: the exit status, which the sourcing script sets and uses
status=0
row() { printf '| %-44s | %-48s | %s |\n' "$1" "$2" "$3" | tee -a "$SUMMARY"; }

# train_tiny NAME ARGS...: a bf16 run of the tiny preset on the GPU for $STEPS steps into
# $W/NAME (W and STEPS set by the script), more key=value settings in ARGS, its log beside it
train_tiny() {
    local name=$1
    shift
    timeout 120 "$BUILD/dstrain" train device=cuda precision=bf16 train.steps="$STEPS" \
        log.every=10 export.enabled=false run.dir="$W/$name" "$@" > "$W/$name.log" 2>&1
}

# dstrain in $BUILD (Release, sm_90; built when missing or stale), the log in
# $OUT/NAME-build.log; when the build fails, the log's tail, a FAIL row and exit 1
build_dstrain() {
    local log=$OUT/$CHECK_NAME-build.log
    if ! { cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
            > "$log" 2>&1 &&
            cmake --build "$BUILD" -j"$(nproc)" --target dstrain >> "$log" 2>&1; }; then
        tail -40 "$log"
        row "$CHECK_NAME: build dstrain" "see $CHECK_NAME-build.log" FAIL
        exit 1
    fi
}
