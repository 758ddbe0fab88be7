#!/usr/bin/env bash
# The performance benchmark on a GPU machine, in one command (about 7.5 minutes on an H200,
# the build included):
#   OUT=/some/dir bash scripts/gpu_bench.sh
#   OUT=/some/dir PARTS="train reference" bash scripts/gpu_bench.sh
# Builds consa against the local PyTorch's LibTorch, then, on random weights of Qwen3 shapes:
#   train      consa bench train: dense / gated / hard steps at 2K, 8K, 16K, Qwen3-0.6B and 1.7B
#   reference  scripts/reference_train_step.py: the same dense and gated steps in eager PyTorch
#   decode     consa bench decode: prefill/decode speed and KV bytes at 4K and 32K, rho 0/0.5/0.75,
#              batches 1 and 8, decoding eagerly and through a CUDA graph, portable exports and
#              exports with consa's fused operators (--kernels aten,fused)
# and joins the JSON in $OUT into report.md with the goals (scripts/bench_report.py); parts run
# in earlier invocations with the same $OUT are joined too. TRAIN_ARGS, REFERENCE_ARGS and
# DECODE_ARGS replace the default options below (e.g. TRAIN_ARGS="--shapes qwen3-0.6b
# --seq-lens 8192"); CONSA=path/to/consa skips the build.
set -euo pipefail
OUT=${OUT:-$PWD/gpu-out}
PARTS=${PARTS:-train reference decode}
# 1 warm-up step, then the median of 3 timed runs of 2 steps: this keeps the whole benchmark
# inside one 10-minute command; the step times vary by about 1% between runs.
TIMING="--warmup 1 --steps 2 --repeats 3"
TRAIN_ARGS=${TRAIN_ARGS:-"$TIMING"}
REFERENCE_ARGS=${REFERENCE_ARGS:-"$TIMING"}
DECODE_ARGS=${DECODE_ARGS:-"--shape qwen3-0.6b --contexts 4096,32768 --sparsity 0,0.5,0.75 --batch 1,8 --kernels aten,fused --repeats 1"}
mkdir -p "$OUT"
source scripts/gpu_consa.sh  # $CONSA
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"; } | tee "$OUT/bench.txt"
for part in $PARTS; do
  start=$(date +%s)
  case $part in
    train)
      # shellcheck disable=SC2086
      "$CONSA" bench train $TRAIN_ARGS --out "$OUT/train.json" | tee -a "$OUT/bench.txt" ;;
    reference)
      # shellcheck disable=SC2086
      python3 scripts/reference_train_step.py $REFERENCE_ARGS --out "$OUT/reference.json" | tee -a "$OUT/bench.txt" ;;
    decode)
      # shellcheck disable=SC2086
      "$CONSA" bench decode $DECODE_ARGS --out "$OUT/decode.json" | tee -a "$OUT/bench.txt" ;;
    *) echo "gpu_bench.sh: unknown part '$part' (train, reference, decode)" >&2; exit 2 ;;
  esac
  echo "gpu_bench.sh: $part took $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.txt"
done
args=()
[ -f "$OUT/train.json" ] && args+=(--train "$OUT/train.json")
[ -f "$OUT/reference.json" ] && args+=(--reference "$OUT/reference.json")
[ -f "$OUT/decode.json" ] && args+=(--decode "$OUT/decode.json")
if [ -f "$OUT/train.json" ]; then python3 scripts/bench_report.py "${args[@]}" | tee "$OUT/report.md"; fi
