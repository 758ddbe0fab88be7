#!/usr/bin/env bash
# On a GPU machine, in one command: where a decode step's GPU time goes. Builds consa (unless
# CONSA names one), times decoding of fused exports (consa bench decode --kernels fused) and
# writes a Chrome trace of 8 more CUDA-graph decode steps per row, then sums each trace's kernels
# (scripts/trace_summary.py): kernel time per step against the span, which splits the step into
# time in kernels and time between them.
#   OUT=/some/dir bash scripts/gpu_decode_trace.sh
# CONTEXTS, SPARSITY, BATCH and SHAPE replace the defaults below. $OUT receives decode.json,
# decode.txt, traces/ and trace_summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT/traces"
source scripts/gpu_consa.sh  # $CONSA
"$CONSA" bench decode --shape "${SHAPE:-qwen3-0.6b}" --contexts "${CONTEXTS:-4096,32768}" \
  --sparsity "${SPARSITY:-0,0.75}" --batch "${BATCH:-1}" --kernels fused --repeats 3 \
  --trace "$OUT/traces" --out "$OUT/decode.json" 2>&1 | tee "$OUT/decode.txt"
for trace in "$OUT"/traces/*.json; do
  python3 scripts/trace_summary.py "$trace" --top 25 --steps 8
done 2>&1 | tee "$OUT/trace_summary.txt"
