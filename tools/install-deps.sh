#!/usr/bin/env bash
# Installs what dstrain needs on Debian 12: compilers, CMake, Open MPI, HDF5, libuv, libyaml,
# cJSON, OpenBLAS, Criterion, and Python's h5py/numpy/safetensors for the tests' cross-checks
# (scikit-learn for the continual-learning benchmark's digits), Prometheus (promtool and a real
# server for the scrape test), gnuplot (dstrain plot), tokenizers (dstrain generate), and clang
# with libFuzzer's runtime (tools/fuzz.sh).
# The CUDA toolkit is not a Debian package: when /usr/local/cuda is there, CUDA is built too.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
pkgs=(build-essential cmake pkg-config git openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
      libuv1-dev libyaml-dev libcjson-dev libopenblas-dev libcriterion-dev
      python3 python3-pip python3-h5py python3-numpy slurm-wlm munge
      prometheus gnuplot-nox curl clang libclang-rt-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# the python3 first on PATH may not be Debian's: give it the same modules
if ! python3 -c "import h5py, numpy, safetensors, sklearn, tokenizers" >/dev/null 2>&1; then
  python3 -m pip install -q h5py numpy safetensors scikit-learn tokenizers 2>/dev/null ||
    python3 -m pip install -q --break-system-packages h5py numpy safetensors scikit-learn tokenizers
fi
echo "dstrain: dependencies installed"
