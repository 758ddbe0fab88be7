#!/usr/bin/env bash
# Builds the consa command into build-gpu against the LibTorch inside the local PyTorch (GPU
# machine), without the tests; logs stay in /tmp and their tails are printed on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" -DCONSA_BUILD_TESTS=OFF \
  >/tmp/consa-configure.log 2>&1 || { tail -30 /tmp/consa-configure.log; exit 1; }
cmake --build build-gpu --target consa -j"$(nproc)" >/tmp/consa-build.log 2>&1 || { grep -A5 error /tmp/consa-build.log | head -40; exit 1; }
