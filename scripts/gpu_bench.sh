#!/usr/bin/env bash
# Exported-model decode benchmark on a GPU machine, in one command:
#   OUT=/some/dir bash scripts/gpu_bench.sh
# Builds consa against the local PyTorch's LibTorch, then runs `consa bench decode` on a random
# Qwen3-0.6B-shaped model (bf16, window 1024) at contexts 4K and 32K for sparsity 0, 0.5, 0.75,
# with batch 1 and batch 4. Writes bench_b1.json, bench_b4.json and bench.txt to $OUT.
set -euo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
bash scripts/build_gpu.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/bench.txt"
build-gpu/consa bench decode --shape qwen3-0.6b --contexts 4096,32768 --sparsity 0,0.5,0.75 --batch 1 \
  --out "$OUT/bench_b1.json" | tee -a "$OUT/bench.txt"
build-gpu/consa bench decode --shape qwen3-0.6b --contexts 32768 --sparsity 0,0.5,0.75 --batch 4 --repeats 1 \
  --out "$OUT/bench_b4.json" | tee -a "$OUT/bench.txt"
