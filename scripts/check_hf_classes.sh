#!/usr/bin/env bash
# Every Hugging Face class consa declares, in transformers, on small random models of each
# family (fp32, CPU): consa's hybrid class through the export's remote code (trust_remote_code)
# for kv_head and head units with 0 and 2 sinks, with one window and with two (8 and 4), and the
# stock classes of whole-layer layouts.
# Logits at every position must be within 1e-4 of consa's on a prompt longer than window +
# sinks, greedy generation through the cache must equal recompute, and the cache must hold the
# analytic bytes; a hybrid must not load without trust_remote_code. Needs transformers (the GPU
# machine has it):
#   BUILD=build-gpu bash scripts/check_hf_classes.sh
# ARCHS picks families (default "qwen3 qwen2 llama mistral"; all take over 5 minutes on the GPU
# machine's CPU); the stock cases run for the families picked.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
status=0
R=/tmp/consa-gpu-runs/hf-classes
rm -rf "$R" && mkdir -p "$R"
ids=5,17,33,2,9,41,8,60,12,3,77,25,6,14,90,31,44,7,101,250,19,64,128,3  # 24 tokens; window 8, sinks 2
# hf_case NAME MODEL ASSIGN-ARGS...: the assignment, the export and consa's logits, $R/NAME{.json,,.f32}
hf_case() {
  local name=$1 model=$2; shift 2
  assignment "$name" "$model" "$@" && export_case "$name" "$model"
}
assignment() {
  local name=$1 model=$2; shift 2
  "$BUILD/consa" assign random "$R/$model" --seed 3 "$@" --out "$R/$name.json" >/dev/null
}
export_case() {
  local name=$1 model=$2
  "$BUILD/consa" export "$R/$model" --format hf --assignment "$R/$name.json" --out "$R/$name" >/dev/null &&
    "$BUILD/consa" inspect "$R/$name" --prompt-ids $ids --logits-out "$R/$name.f32" >/dev/null
}
# narrow_some_heads IN OUT: IN's assignment with every third sliding unit on the window 4.
narrow_some_heads() {
  python3 - "$1" "$2" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
k = 0
for layer in a["layers"]:
    for u, kind in enumerate(layer["units"]):
        if kind == "sliding":
            layer["windows"][u] = 4 if k % 3 == 1 else 8
            k += 1
used = sorted({w for layer in a["layers"] for w in layer["windows"] if w}, reverse=True)
assert used == [8, 4], used
a["windows"], a["window"] = used, used[0]
json.dump(a, open(sys.argv[2], "w"), indent=2)
PY
}
hybrids=()
ARCHS=${ARCHS:-qwen3 qwen2 llama mistral}
for arch in $ARCHS; do
  tie=""
  [ $arch = llama ] && tie=--tie-embeddings  # one family without lm_head.weight
  "$BUILD/consa" init --out "$R/$arch" --arch $arch --vocab 256 --hidden 64 --intermediate 128 --layers 4 \
    --heads 8 --kv-heads 2 --head-dim 16 --std 0.1 --seed 1 $tie >/dev/null || status=1
  for unit in kv_head head; do
    for sinks in 0 2; do
      # Without sinks, per-layer targets keep every layer mixed, so the export needs consa's class.
      # Head units at 0.75 leave some KV groups wholly sliding beside the mixed ones.
      scope=global target=0.5
      [ $sinks = 0 ] && scope=per_layer
      [ $unit = head ] && target=0.75
      name=$arch-$unit-sinks$sinks
      hf_case $name $arch --unit $unit --window 8 --target $target --sinks $sinks --scope $scope || status=1
      python3 scripts/check_hf_export.py remote "$R/$name" "$R/$name.f32" $ids || status=1
      hybrids+=("$R/$name")
      # Two windows. kv_head: a random allocation of full / 8 / 4 within a budget halfway between
      # every group on the window 4 and the dense cache at the prompt's 24 tokens (fp32). head
      # (no byte budget for query heads): the one-window assignment with every third SWA head on 4.
      name=$arch-$unit-sinks$sinks-windows
      if [ $unit = kv_head ]; then
        assignment $name $arch --unit kv_head --windows 8,4 --sinks $sinks --kv-budget 15000 --kv-context 24 \
          --kv-element-bytes 4 || status=1
      else
        narrow_some_heads "$R/$arch-$unit-sinks$sinks.json" "$R/$name.json" || status=1
      fi
      export_case $name $arch || status=1
      python3 scripts/check_hf_export.py remote "$R/$name" "$R/$name.f32" $ids || status=1
      hybrids+=("$R/$name")
    done
  done
done
python3 scripts/check_hf_export.py refuse "${hybrids[@]}" || status=1
for case in "qwen3 0.5 Qwen3ForCausalLM" "llama 0.5 MinistralForCausalLM" "llama 1 MistralForCausalLM"; do
  set -- $case
  [[ " $ARCHS " == *" $1 "* ]] || continue
  name=stock-$1-$2
  hf_case $name $1 --unit layer --window 8 --target $2 --sinks 0 || status=1
  python3 scripts/check_hf_export.py stock "$R/$name" "$R/$name.f32" $ids --expect-class $3 || status=1
done
exit "$status"
