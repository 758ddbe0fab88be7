#!/usr/bin/env bash
# On a GPU machine, in one command: build consa and its tests against the local PyTorch's
# LibTorch, run the [cuda] checks (flash against math, packed documents through flash's varlen
# kernels among them), then time the training step with cross-entropy from whole logits and from
# chunks (objective.chunked_cross_entropy), same shapes, same run, with and without
# checkpointing. Results land in $OUT: cuda_tests.log, bench_<ce>_<ckpt>.json, bench.txt.
#   OUT=/some/dir bash scripts/gpu_cross_entropy.sh
# SHAPES, SEQ_LENS and MODES replace the benchmark's defaults below; CUDA_TESTS=0 skips the checks.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
SHAPES=${SHAPES:-qwen3-0.6b}
SEQ_LENS=${SEQ_LENS:-8192}
MODES=${MODES:-dense,gated,gates}
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" >/tmp/configure.log 2>&1 \
  || { tail -30 /tmp/configure.log; exit 1; }
cmake --build build-gpu -j"$(nproc)" >/tmp/build.log 2>&1 || { grep -A5 "error" /tmp/build.log | head -60; exit 1; }
status=0
if [ "${CUDA_TESTS:-1}" = 1 ]; then build-gpu/tests/consa_tests "[cuda]" >"$OUT/cuda_tests.log" 2>&1 || status=1; fi
if [ -f "$OUT/cuda_tests.log" ]; then
  grep -E "^cuda|passed|failed|FAILED" "$OUT/cuda_tests.log" | head -40
  [ $status = 0 ] || grep -B3 -A15 FAILED "$OUT/cuda_tests.log" | head -80
fi
for ckpt in true false; do
  for ce in full chunked; do
    build-gpu/consa bench train --shapes "$SHAPES" --seq-lens "$SEQ_LENS" --modes "$MODES" --checkpointing=$ckpt \
      --cross-entropy $ce --warmup 1 --steps 2 --repeats 3 --out "$OUT/bench_${ce}_${ckpt}.json" 2>&1 \
      | tee -a "$OUT/bench.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
done
if [ $status != 0 ] && command -v cuda-gdb >/dev/null; then
  # No gdb on the GPU machine; cuda-gdb debugs host code too. A jump to address 0 leaves no
  # frame to unwind: the return addresses on the stack name the caller.
  cuda-gdb -batch -ex run -ex bt -ex 'x/16a $sp' --args build-gpu/consa bench train --shapes tiny --seq-lens 64 \
    --tokens-per-step 128 --modes dense --warmup 0 --steps 1 --repeats 1 2>&1 | grep -v "Thread\|warning: Cuda" | tail -30
fi
exit $status
