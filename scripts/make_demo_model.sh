#!/usr/bin/env bash
# Produces the demo's pretrained model (recipes/demo/model) with the committed recipe
# recipes/demo_pretrain.yaml: `consa init` writes a random Qwen3-shaped decoder, dense training
# teaches it passkey and multi-key-needle retrieval, `consa eval` reports its accuracy.
#   bash scripts/make_demo_model.sh [cpu|cuda] [extra recipe overrides...]
# About 2 minutes on one H200; the CPU machine takes hours, which is why the result is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
shift || true
BIN=${BIN:-./build/consa}
RUN=${RUN:-runs/demo}
"$BIN" init --out "$RUN/init" --arch qwen3 --vocab 64 --hidden 128 --intermediate 256 --layers 4 --heads 4 \
  --kv-heads 2 --head-dim 32 --max-positions 1024 --seed 1 >/dev/null
"$BIN" train recipes/demo_pretrain.yaml model.path="$RUN/init" model.device="$DEVICE" output.dir="$RUN/pretrain" \
  --overwrite "$@"
"$BIN" eval "$RUN/pretrain/model" --recipe recipes/demo_pretrain.yaml --lengths 128 --samples 32 --device "$DEVICE" \
  --out "$RUN/pretrain/eval.json"
