#!/usr/bin/env bash
# On a GPU machine, in one command: the checks of several windows per unit. On one H200 the
# build, the frontier and the CUDA tests take about 5 minutes; the Hugging Face classes take over
# 5 more, so under a 10-minute limit run scripts/check_hf_classes.sh on its own as well.
#   1. build consa and its tests against the local PyTorch's LibTorch (CUDA kernels with nvcc);
#   2. the KV-budget frontier on the demo model (scripts/gpu_frontier.sh);
#   3. the [cuda] tests of TorchScript exports and decode attention, one window and several;
#   4. every Hugging Face class in transformers, multi-window remote code included
#      (scripts/check_hf_classes.sh).
#   OUT=/some/dir bash scripts/gpu_windows.sh
# Each step writes its log to $OUT as it finishes, so a cut-short run still returns the earlier ones.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
status=0
start=$(date +%s)
elapsed() { echo "[$(($(date +%s) - start)) s] $*"; }

PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" >"$OUT/configure.log" 2>&1 \
  || { tail -30 "$OUT/configure.log"; exit 1; }
grep "consa: " "$OUT/configure.log"
cmake --build build-gpu --target consa consa_tests consa_ops -j"$(nproc)" >/tmp/consa-build.log 2>&1 \
  || { grep -B2 -A8 "error" /tmp/consa-build.log | head -80; exit 1; }
elapsed "built"

CONSA=build-gpu/consa OUT="$OUT" bash scripts/gpu_frontier.sh >"$OUT/frontier.log" 2>&1 || status=1
elapsed "frontier: exit $status"
tail -25 "$OUT/frontier.txt"

build-gpu/tests/consa_tests "TorchScript exports run on CUDA*,fused-operator exports on CUDA*,CUDA decode*,decoding through a CUDA graph*" \
  >"$OUT/cuda_tests.log" 2>&1 || status=1
elapsed "cuda tests"
grep -E "^cuda|passed|failed|FAILED" "$OUT/cuda_tests.log" | tail -40

BUILD=build-gpu bash scripts/check_hf_classes.sh >"$OUT/hf_classes.txt" 2>&1 || status=1
elapsed "hf classes"
grep -v -i warning "$OUT/hf_classes.txt" | tail -30
exit "$status"
