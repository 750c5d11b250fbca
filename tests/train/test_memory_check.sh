#!/usr/bin/env bash
# A run whose memory estimate exceeds what the host has is refused before anything is allocated
# or written, with one line naming both figures (exit 2, no run directory, in well under a second
# and a few MB); the ranks on one host count together; train.check_memory=false starts anyway
# with a warning. DSTRAIN_HOST_MEMORY_BYTES stands in for the host's memory.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/train_memory_check; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
SMALL="train.steps=2 train.seq_len=32 train.micro_batch_size=4 log.every=1000"
ADVICE="lower train.micro_batch_size or train.seq_len, set train.activation_checkpointing, or use more hosts (train.check_memory=false starts anyway)"

# 1. 2^30 tokens a micro-batch: terabytes of activations, refused at once on any host
start=$(date +%s%N)
"$DSTRAIN" train train.steps=2 train.seq_len=16384 train.micro_batch_size=65536 run.dir=huge \
  > huge.out 2> huge.err; rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
check "huge micro-batch: exit 2" test $rc -eq 2
check "huge micro-batch: one line with the need and the host's memory" bash -c \
  "[ \$(wc -l < huge.err) -eq 1 ] && grep -qE '^dstrain: error: memory: the run needs [0-9.]+ TiB of host memory \(per rank: parameters 3.32 MiB, gradients 3.32 MiB, optimizer 6.63 MiB, activations [0-9.]+ TiB\), more than the [0-9.]+ [GT]iB this host has \((physical memory|the memory cgroup.s limit)\); ' huge.err"
check "huge micro-batch: refused in under 10 s (took ${ms} ms)" test $ms -lt 10000
check "huge micro-batch: no run directory" test ! -e huge

# 2. the figures, exactly, against a host of 1,000,000 bytes
DSTRAIN_HOST_MEMORY_BYTES=1000000 "$DSTRAIN" train $SMALL run.dir=small > small.out 2> small.err; rc=$?
check "small host: exit 2" test $rc -eq 2
check "small host: the line" test "$(cat small.err)" = "dstrain: error: memory: the run needs 18.56 MiB of host memory (per rank: parameters 3.32 MiB, gradients 3.32 MiB, optimizer 6.63 MiB, activations 5.29 MiB), more than the 976.56 KiB this host has (DSTRAIN_HOST_MEMORY_BYTES); $ADVICE"
check "small host: no run directory" test ! -e small
# EWC's pairs and Fisher pass count too
DSTRAIN_HOST_MEMORY_BYTES=1000000 "$DSTRAIN" train $SMALL continual.ewc.enabled=true run.dir=ewc > ewc.out 2> ewc.err
check "small host, EWC: the EWC figure" grep -q "activations 5.29 MiB, EWC 17.91 MiB), more than" ewc.err

# 3. train.check_memory=false: a warning naming the figures, and the run goes on
DSTRAIN_HOST_MEMORY_BYTES=1000000 "$DSTRAIN" train $SMALL run.dir=forced train.check_memory=false \
  > forced.out 2> forced.err; rc=$?
check "check_memory=false: exit 0 and an export" test $rc -eq 0 -a -f forced/export/config.json
check "check_memory=false: the warning" grep -q "^dstrain: warning: memory: the run needs 18.56 MiB of host memory .*; starting anyway (train.check_memory is false)$" forced.err
# and a host that has enough says nothing
DSTRAIN_HOST_MEMORY_BYTES=20000000 "$DSTRAIN" train $SMALL run.dir=enough > enough.out 2> enough.err; rc=$?
check "a host with 19 MiB runs the 18.56 MiB run quietly" bash -c "[ $rc -eq 0 ] && ! grep -q memory enough.err"

# 4. two ranks on one host need twice one rank's memory (ZeRO-1 halves the optimizer)
if command -v mpirun >/dev/null; then
  source "$SRC/tests/parallel/mpi_env.sh"
  export DSTRAIN_HOST_MEMORY_BYTES=30000000
  mpi_run 2 mpi.log train $SMALL run.dir=mpi; rc=$?
  check "2 ranks on a 28.61 MiB host: refused" test $rc -ne 0 -a ! -e mpi/metrics.jsonl
  check "2 ranks on a 28.61 MiB host: the ranks counted together" grep -q "^dstrain: error: rank 0: memory: the run needs 30.49 MiB of host memory for the 2 ranks on this host (per rank: parameters 3.32 MiB, gradients 3.32 MiB, optimizer 3.32 MiB, activations 5.29 MiB), more than the 28.61 MiB this host has (DSTRAIN_HOST_MEMORY_BYTES); " mpi.log
  unset DSTRAIN_HOST_MEMORY_BYTES
fi

echo "train/memory_check: $passes passed, $fails failed"
[ $fails -eq 0 ]
