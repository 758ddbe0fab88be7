#!/usr/bin/env bash
# Build consa against the CUDA LibTorch inside the local PyTorch, run the whole test suite
# (including the [cuda] tests) and save the logs. Meant for a GPU machine, in one command:
#   OUT=/some/dir bash scripts/gpu_check.sh
# With gpu_inputs/ from scripts/make_gpu_inputs.sh copied along, it also checks that PyTorch 2.x
# loads a TorchScript export written by LibTorch 1.13. It also loads every Hugging Face class
# consa declares in transformers, consa's own through trust_remote_code (hf_classes.txt in $OUT).
# FULL_CTEST=0 skips the CPU-side suite (about 6 minutes there) and runs only the [cuda] and
# [parity] tests.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
BUILD=${BUILD:-build-gpu}
LOGS=/tmp/consa-gpu-logs  # build logs stay on the machine; their tails are printed on failure
mkdir -p "$OUT" "$LOGS"
OUT=$(cd "$OUT" && pwd)  # before the cd below
cd "$(dirname "$0")/.."
source scripts/gpu_deps.sh  # tokenizer.json's libraries, from .debs/ when carried (carry: [".debs"])
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/summary.txt"
python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/summary.txt"

if ! cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX;$CONSA_DEPS_PREFIX" \
     >"$LOGS/configure.log" 2>&1; then
  tail -40 "$LOGS/configure.log"; exit 1
fi
grep "consa:" "$LOGS/configure.log"
if ! cmake --build "$BUILD" -j"$(nproc)" >"$LOGS/build.log" 2>&1; then
  grep -E "error|Error" -A3 "$LOGS/build.log" | head -60; exit 1
fi
status=0
if [ "${FULL_CTEST:-1}" = 1 ]; then
  (cd "$BUILD" && ctest --output-on-failure 2>&1 | tee "$OUT/ctest.log" | tail -15)
  status=${PIPESTATUS[0]}
fi
if ! "$BUILD/tests/consa_tests" "[cuda],[parity]" > "$LOGS/cuda_tests.log" 2>&1; then
  status=1
  grep -B5 -A25 "FAILED" "$LOGS/cuda_tests.log" | head -120
fi
grep -E "^(parity|cuda)|passed|failed" "$LOGS/cuda_tests.log" | tee -a "$OUT/summary.txt"
"$BUILD/consa" inspect tests/fixtures/qwen3_norm --device cuda --dtype bfloat16 --prompt-ids 1,2,3 \
  | tee -a "$OUT/summary.txt" || status=1
# The tiny recipe on the GPU, fp32 and bf16 (flash), with gradient checkpointing on.
# mode full + stage 2 in bf16 exercises fp32 master weights and flash attention under training.
for run in "float32" "bfloat16" "bfloat16 train.mode=full train.steps=200 recover.steps=50"; do
  set -- $run
  dtype=$1; shift
  start=$(date +%s.%N)
  label="$dtype${1:+ $*}"
  "$BUILD/consa" train recipes/tiny_cpu.yaml model.device=cuda model.dtype=$dtype train.gradient_checkpointing=true "$@" \
    output.dir=/tmp/consa-gpu-runs/tiny_$dtype$# 2>/dev/null | sed "s/^/train cuda $label: /" | tee -a "$OUT/summary.txt" || status=1
  echo "train cuda $label: wall $(python3 -c "import sys; print(round($(date +%s.%N) - $start, 1))") s" \
    | tee -a "$OUT/summary.txt"
done
# A layer-granularity run exported in Hugging Face format must load in stock transformers and
# give consa's logits. The prompt is longer than the window, so the SWA layers matter.
prompt=5,17,33,2,9,41,8,60,12,3,77,25,6,14,90,31,44,7
"$BUILD/consa" train recipes/tiny_cpu.yaml gates.unit=layer train.steps=100 output.dir=/tmp/consa-gpu-runs/layer \
  >/dev/null 2>&1 || status=1
"$BUILD/consa" export /tmp/consa-gpu-runs/layer --format hf --out /tmp/consa-gpu-runs/layer-hf | tee -a "$OUT/summary.txt" || status=1
"$BUILD/consa" inspect /tmp/consa-gpu-runs/layer-hf --prompt-ids $prompt --top 5 > /tmp/consa-gpu-runs/inspect.txt || status=1
cat /tmp/consa-gpu-runs/inspect.txt >> "$OUT/summary.txt"
python3 scripts/check_hf_export.py /tmp/consa-gpu-runs/layer-hf /tmp/consa-gpu-runs/inspect.txt $prompt 2>&1 \
  | grep -v Warning | tee -a "$OUT/summary.txt" || status=1
# Every Hugging Face class consa declares, loaded in transformers (scripts/check_hf_classes.sh).
BUILD="$BUILD" bash scripts/check_hf_classes.sh 2>&1 | grep -v -i warning | tee "$OUT/hf_classes.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# TorchScript portability. gpu_inputs/ (when present) holds an export written by LibTorch 1.13
# on the CPU machine, the ids and consa's logits for it: PyTorch 2.x must load and match it, on
# the CPU and on the GPU. The other way round, this build's export of the GPU-trained run goes
# back in $OUT for Python 1.13 to load.
{
  if [ -f gpu_inputs/tiny_torch113.ts ]; then
    for device in cpu cuda; do
      python3 scripts/check_torchscript.py gpu_inputs/tiny_torch113.ts gpu_inputs/ids.txt gpu_inputs/expected.f32 \
        --device $device --tolerance 1e-4 || status=1
    done
  fi
  "$BUILD/consa" export /tmp/consa-gpu-runs/tiny_float320 --format torchscript --out "$OUT/tiny_torch2.ts" || status=1
  "$BUILD/consa" export /tmp/consa-gpu-runs/tiny_float320 --format hf --out /tmp/consa-gpu-runs/tiny-hf >/dev/null || status=1
  ids=$(tr -d '\n' < gpu_inputs/ids.txt 2>/dev/null || echo $prompt)
  echo "$ids" > "$OUT/ids.txt"
  "$BUILD/consa" inspect /tmp/consa-gpu-runs/tiny-hf --prompt-ids "$ids" --logits-out "$OUT/expected_torch2.f32" >/dev/null || status=1
  python3 scripts/check_torchscript.py "$OUT/tiny_torch2.ts" "$OUT/ids.txt" "$OUT/expected_torch2.f32" --device cuda --tolerance 1e-4 || status=1
  # Generation on CUDA goes through a CUDA graph of decode_step; in fp32 its greedy tokens must
  # equal those of plain extend calls (in bf16 they may part after a near-tie: decode_step keeps
  # the scaled scores in fp32, one rounding fewer).
  for dtype in float32 bfloat16; do
    "$BUILD/consa" export /tmp/consa-gpu-runs/tiny_float320 --format torchscript --dtype $dtype --out /tmp/consa-gpu-runs/g.ts >/dev/null || status=1
    "$BUILD/consa" generate /tmp/consa-gpu-runs/g.ts --device cuda --prompt-ids "$ids" --max-new-tokens 64 \
      >/tmp/consa-gpu-runs/graph.txt 2>/tmp/consa-gpu-runs/graph.err || status=1
    "$BUILD/consa" generate /tmp/consa-gpu-runs/g.ts --device cuda --prompt-ids "$ids" --max-new-tokens 64 --graphs=false \
      >/tmp/consa-gpu-runs/eager.txt 2>/dev/null || status=1
    tail -2 /tmp/consa-gpu-runs/graph.err
    if cmp -s /tmp/consa-gpu-runs/graph.txt /tmp/consa-gpu-runs/eager.txt; then
      echo "generate $dtype: CUDA-graph tokens equal eager tokens"
    else
      echo "generate $dtype: CUDA-graph tokens differ from eager tokens"
      [ "$dtype" = float32 ] && status=1
    fi
  done
  [ "$status" = 0 ]
} 2>&1 | tee "$OUT/torchscript.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

if [ "$status" != 0 ] && command -v cuda-gdb >/dev/null; then
  # No gdb on the GPU machine; cuda-gdb debugs host code too.
  cuda-gdb -batch -ex run -ex bt --args "$BUILD/tests/consa_tests" "[config]" 2>&1 | tail -30
fi
exit "$status"
