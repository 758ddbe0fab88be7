#!/usr/bin/env bash
# On a GPU machine, in one command: build consa against the local PyTorch's LibTorch, time the demo
# on the GPU, then sweep all five methods at targets 0.5 and 0.75 on the demo model and plot it.
#   OUT=/some/dir bash scripts/gpu_sweep.sh
# $OUT receives demo.txt, sweep.txt and sweep.tar.gz (sweep.csv, sweep.md, plots, each run's
# assignment.json and eval.json).
set -euo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
bash scripts/build_gpu.sh
rm -rf runs/demo
start=$(date +%s.%N)
CONSA=build-gpu/consa DEVICE=cuda bash scripts/demo.sh 2>&1 | grep -v "^stage 1 (gates) step\|^sweep: " | tee "$OUT/demo.txt"
python3 -c "print('demo wall time on the GPU: %.1f s' % ($(date +%s.%N) - $start))" | tee -a "$OUT/demo.txt"
SWEEP=runs/gpu_sweep
rm -rf "$SWEEP"
build-gpu/consa sweep recipes/demo_consa.yaml model.device=cuda --targets 0.5,0.75 \
  --methods consa,uniform,random,attention-span,duo --lengths 64,128 --samples 32 --out "$SWEEP" 2>&1 \
  | grep -v "^stage 1 (gates) step" | tee "$OUT/sweep.txt"
python3 scripts/plot_sweep.py "$SWEEP" 2>&1 | tee -a "$OUT/sweep.txt" || echo "plots: skipped (no matplotlib?)" | tee -a "$OUT/sweep.txt"
tar czf "$OUT/sweep.tar.gz" --exclude=checkpoint.pt --exclude=model -C runs gpu_sweep
