#!/usr/bin/env bash
# The README's first command: install dependencies, build, and run consa's main job on a
# built-in default, with no download:
#   1. the demo model (recipes/demo/model: a 4-layer Qwen3-shaped decoder pretrained on passkey
#      and multi-key-needle retrieval by recipes/demo_pretrain.yaml) evaluated dense;
#   2. ConSA at 50% SWA (recipes/demo_consa.yaml) against the uniform interleave at the same
#      sparsity: `consa sweep` trains, allocates, evaluates and tabulates;
#   3. the ConSA run exported (TorchScript and Hugging Face) and decoding a passkey prompt
#      through the sliding-window KV cache.
# About 2.5 minutes on 2 CPU cores after the build. DEVICE=cuda runs it on a GPU; CONSA=path/to/consa
# uses an existing build instead of installing and building. Outputs: runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
if [ -z "${CONSA:-}" ]; then
  bash scripts/install_deps.sh
  bash scripts/build.sh
  CONSA=./build/consa
fi
EVAL=(--lengths 128 --samples 32)
mkdir -p runs/demo

echo "== 1/3  the pretrained demo model, full attention everywhere"
$CONSA eval recipes/demo/model --recipe recipes/demo_consa.yaml "${EVAL[@]}" --device "$DEVICE" --out runs/demo/dense_eval.json

echo
echo "== 2/3  ConSA vs uniform interleave at 50% of KV heads on a 16-token window"
$CONSA sweep recipes/demo_consa.yaml model.device="$DEVICE" --targets 0.5 --methods consa,uniform \
  --out runs/demo/sweep "${EVAL[@]}"
for method in consa uniform; do
  echo "-- $method"
  $CONSA inspect runs/demo/sweep/${method}_t0.5/assignment.json --kv-context 128 | tail -5
done

echo
echo "== 3/3  export the ConSA model and decode a passkey prompt through its KV cache"
$CONSA export runs/demo/sweep/consa_t0.5 --format torchscript --out runs/demo/consa.ts --overwrite
$CONSA export runs/demo/sweep/consa_t0.5 --format hf --out runs/demo/consa_hf --overwrite
$CONSA generate runs/demo/consa.ts --synthetic passkey --length 128 --value-digits 4 --min-distance 40 \
  --max-new-tokens 4 --device "$DEVICE"
echo
echo "done: runs/demo/ (sweep/sweep.md, consa.ts, consa_hf/); what it means: docs/results.md"
