#!/usr/bin/env bash
# On a GPU machine, in one command: quality against KV bytes on the demo model for one window and
# for several. Three budget sweeps of recipes/demo_kv_budget.yaml at the same budgets:
#   w16    gates.window 16:        consa, uniform, duo
#   w8     gates.window 8:         consa, uniform, duo
#   w16_8  gates.windows [16, 8]:  consa, uniform, random
# then scripts/plot_frontier.py over the three (docs/results.md#kv-budgets-and-several-windows).
#   OUT=/some/dir bash scripts/gpu_frontier.sh        (CONSA=path/to/consa skips the build)
# $OUT receives frontier.txt (the logs and the table), frontier.png and frontier.tar.gz (each
# sweep's tables and each run's assignment.json and eval.json). BUDGETS replaces the budgets,
# SAMPLES the retrieval samples per cell (64), HELDOUT the held-out batches of perplexity (64:
# 1,024 answer tokens; the recipe's 2 give 32, too few to tell allocations apart), RUNS the
# folder (runs/frontier). DEVICE (default cuda) and EXTRA (more overrides and flags, e.g.
# train.steps=4 --duo-steps 4 for a quick look on the CPU) go to every sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
source scripts/gpu_consa.sh  # $CONSA
# Per 128-token sequence in float32 a KV head costs 32 KiB on full attention, 4 KiB on window 16
# and 2 KiB on window 8; 8 heads. Each budget separates the settings differently (results.md).
BUDGETS=${BUDGETS:-60KiB,76KiB,88KiB,112KiB,120KiB}
RUNS=${RUNS:-runs/frontier}
rm -rf "$RUNS"
EVAL=(--lengths 64,128 --samples "${SAMPLES:-64}")
sweep() {  # name, methods, recipe overrides...
  local name=$1 methods=$2
  shift 2
  echo "== $name: $*"
  # shellcheck disable=SC2086  # EXTRA is a list of words
  "$CONSA" sweep recipes/demo_kv_budget.yaml model.device="${DEVICE:-cuda}" data.heldout_batches="${HELDOUT:-64}" "$@" ${EXTRA:-} --kv-budgets "$BUDGETS" \
    --methods "$methods" "${EVAL[@]}" --out "$RUNS/$name" 2>&1 | grep -v "^stage 1 (gates) step"
}
start=$(date +%s.%N)
{
  sweep w16 consa,uniform,duo gates.window=16
  sweep w8 consa,uniform,duo gates.window=8
  sweep w16_8 consa,uniform,random "gates.windows=[16,8]"
  python3 -c "print('sweeps: %.1f s on ${DEVICE:-cuda}' % ($(date +%s.%N) - $start))"
  for run in "$RUNS"/w16_8/consa_b*; do
    echo "-- $run"
    "$CONSA" inspect "$run/assignment.json" --kv-context 128 | tail -6
  done
  python3 scripts/plot_frontier.py "$OUT/frontier.png" "$RUNS/w16=W16" "$RUNS/w8=W8" "$RUNS/w16_8=W16|8" \
    || echo "plot: failed (no matplotlib?)"
} 2>&1 | tee "$OUT/frontier.txt"
tar czf "$OUT/frontier.tar.gz" --exclude=checkpoint.pt --exclude=model -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
