#!/usr/bin/env bash
# Builds the consa command into build-gpu against the LibTorch inside the local PyTorch (GPU
# machine), without the tests; logs stay in /tmp and their tails are printed on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_deps.sh  # tokenizer.json's libraries, from .debs/ when carried (carry: [".debs"])
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
# NCCL's header comes with the nvidia-nccl wheel beside torch (c10d's ProcessGroupNCCL needs it).
NCCL_INCLUDE=$(python3 -c '
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
hits = glob.glob(os.path.join(site, "nvidia", "**", "nccl.h"), recursive=True)
print(os.path.dirname(hits[0]) if hits else "")')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX;$CONSA_DEPS_PREFIX" -DCONSA_BUILD_TESTS=OFF \
  ${NCCL_INCLUDE:+-DCONSA_NCCL_INCLUDE_DIR="$NCCL_INCLUDE"} \
  >/tmp/consa-configure.log 2>&1 || { tail -30 /tmp/consa-configure.log; exit 1; }
cmake --build build-gpu --target consa -j"$(nproc)" >/tmp/consa-build.log 2>&1 || { grep -A5 error /tmp/consa-build.log | head -40; exit 1; }
grep "consa: " /tmp/consa-configure.log
