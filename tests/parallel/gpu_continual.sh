#!/usr/bin/env bash
# gpu_continual.sh: the continual-learning layout check (test_continual_layouts.sh) on the CUDA
# backend with one rank per GPU over NCCL, run by hand on a node with 2 or more GPUs (not in
# ctest: CI has no GPU). From the repository root, with the build dependencies the node lacks in
# .devdeps (see the device notes). With 2 GPUs the layouts are np=1, tp=2, dp=2 (with and
# without ZeRO-1); with 4 or more, tp=2 x dp=2 too. The EWC state and the fused update run on
# the device; the Fisher's squares go through host memory in chunks.
set -uo pipefail
build=${BUILD:-/tmp/dstrain-continual-gpu}
out=${OUT:-/tmp/dstrain-continual-gpu-out}
mkdir -p "$out"
source .devdeps/activate
export NCCL_NVLS_ENABLE=0
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/cmake.log" 2>&1 &&
  cmake --build "$build" -j16 --target dstrain >"$out/build.log" 2>&1 ||
  { tail -30 "$out/build.log" "$out/cmake.log"; exit 1; }
nvidia-smi -L
gpus=$(nvidia-smi -L | wc -l)
DSTRAIN="$build/dstrain" SRC="$PWD" TMPROOT="$out/tmp" DSTRAIN_DEVICE=cuda \
  MAX_NP=$((gpus >= 4 ? 4 : 2)) bash tests/parallel/test_continual_layouts.sh
rc=$?
grep -h "memory per rank" "$out"/tmp/parallel-continual/cls-*.log | sort -u
exit $rc
