#!/usr/bin/env bash
# On a GPU machine, in one command: build consa and its tests against the local PyTorch's
# LibTorch (with consa's CUDA kernels where nvcc is installed), run the [cuda] checks (every
# kernel against the math path, flash against math, packed documents among them), then time
# the training step side by side: ATen ops against the fused kernels (--kernels), cross-entropy
# from whole logits and from chunks, with and without checkpointing. Results land in $OUT:
# cuda_tests.log, bench_<ce>_<ckpt>.json, bench.txt and, with TRACE=1, the top kernels of one
# traced step per configuration (trace_<ce>_<ckpt>.txt, scripts/trace_summary.py).
#   OUT=/some/dir bash scripts/gpu_train_step.sh
# SHAPES, SEQ_LENS, MODES, KERNELS, CROSS_ENTROPY and CHECKPOINTING replace the defaults below;
# CUDA_TESTS=0 skips the checks; CUDA_TEST_FILTER (a Catch test spec) runs some of them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
SHAPES=${SHAPES:-qwen3-0.6b}
SEQ_LENS=${SEQ_LENS:-8192}
MODES=${MODES:-dense,gated,hard}
KERNELS=${KERNELS:-aten,fused}
CROSS_ENTROPY=${CROSS_ENTROPY:-full chunked}
CHECKPOINTING=${CHECKPOINTING:-true false}
bash scripts/gpu_build_tests.sh || exit 1
status=0
if [ "${CUDA_TESTS:-1}" = 1 ]; then
  build-gpu/tests/consa_tests "${CUDA_TEST_FILTER:-[cuda]}" >"$OUT/cuda_tests.log" 2>&1 || status=1
fi
if [ -f "$OUT/cuda_tests.log" ]; then
  grep -E "^cuda|passed|failed|FAILED" "$OUT/cuda_tests.log" | head -80
  [ $status = 0 ] || grep -B3 -A15 FAILED "$OUT/cuda_tests.log" | head -80
fi
for ckpt in $CHECKPOINTING; do
  for ce in $CROSS_ENTROPY; do
    trace=()
    if [ "${TRACE:-0}" = 1 ]; then trace=(--trace "/tmp/trace_${ce}_${ckpt}"); mkdir -p "${trace[1]}"; fi
    build-gpu/consa bench train --shapes "$SHAPES" --seq-lens "$SEQ_LENS" --modes "$MODES" --kernels "$KERNELS" \
      --checkpointing=$ckpt --cross-entropy $ce --warmup 1 --steps 2 --repeats 3 "${trace[@]}" \
      --out "$OUT/bench_${ce}_${ckpt}.json" 2>&1 | tee -a "$OUT/bench.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    if [ "${TRACE:-0}" = 1 ]; then
      for t in "${trace[1]}"/*.json; do
        echo "== $t"; python3 scripts/trace_summary.py "$t" 2>&1 | head -30
      done >"$OUT/trace_${ce}_${ckpt}.txt"
    fi
  done
done
if [ $status != 0 ] && command -v cuda-gdb >/dev/null; then
  # No gdb on the GPU machine; cuda-gdb debugs host code too. A jump to address 0 leaves no
  # frame to unwind: the return addresses on the stack name the caller.
  cuda-gdb -batch -ex run -ex bt -ex 'x/16a $sp' --args build-gpu/consa bench train --shapes tiny --seq-lens 64 \
    --tokens-per-step 128 --modes dense --warmup 0 --steps 1 --repeats 1 2>&1 | grep -v "Thread\|warning: Cuda" | tail -30
fi
exit $status
