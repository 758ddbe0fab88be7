#!/usr/bin/env bash
# On a GPU machine: configures and builds build-gpu (consa, its tests and libconsa_ops.so) against
# the local PyTorch's LibTorch, with consa's CUDA kernels where nvcc is installed; prints the
# configuration line, and the errors on failure (logs in /tmp). gpu_train_step.sh and
# gpu_decode.sh start with it.
set -uo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" >/tmp/configure.log 2>&1 \
  || { tail -30 /tmp/configure.log; exit 1; }
grep "consa: " /tmp/configure.log
cmake --build build-gpu -j"$(nproc)" >/tmp/build.log 2>&1 || { grep -B2 -A8 "error" /tmp/build.log | head -80; exit 1; }
