#!/usr/bin/env bash
# Build consa against the CUDA LibTorch inside the local PyTorch, run the whole test suite
# (including the [cuda] tests) and save the logs. Meant for a GPU machine, in one command:
#   OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/gpu.txt"

if ! cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
     >"$OUT/configure.log" 2>&1; then
  tail -40 "$OUT/configure.log"; exit 1
fi
grep "consa:" "$OUT/configure.log"
if ! cmake --build "$BUILD" -j"$(nproc)" >"$OUT/build.log" 2>&1; then
  grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1
fi
(cd "$BUILD" && ctest --output-on-failure 2>&1 | tee "$OUT/ctest.log" | tail -15)
status=${PIPESTATUS[0]}
"$BUILD/tests/consa_tests" "[cuda],[parity]" 2>&1 | grep -E "^(parity|cuda)" | tee "$OUT/figures.txt"
"$BUILD/consa" inspect tests/fixtures/qwen3_norm --device cuda --dtype bfloat16 --prompt-ids 1,2,3 \
  | tee "$OUT/inspect.txt" || status=1
# The tiny recipe on the GPU, fp32 and bf16 (flash), with gradient checkpointing on.
# mode full + stage 2 in bf16 exercises fp32 master weights and flash attention under training.
for run in "float32" "bfloat16" "bfloat16 train.mode=full train.steps=200 recover.steps=50"; do
  set -- $run
  dtype=$1; shift
  start=$(date +%s.%N)
  label="$dtype${1:+ $*}"
  "$BUILD/consa" train recipes/tiny_cpu.yaml model.device=cuda model.dtype=$dtype train.gradient_checkpointing=true "$@" \
    output.dir=/tmp/consa-gpu-runs/tiny_$dtype$# 2>/dev/null | sed "s/^/train cuda $label: /" | tee -a "$OUT/train_cuda.txt" || status=1
  echo "train cuda $label: wall $(python3 -c "import sys; print(round($(date +%s.%N) - $start, 1))") s" \
    | tee -a "$OUT/train_cuda.txt"
done
# A layer-granularity run exported in Hugging Face format must load in stock transformers and
# give consa's logits. The prompt is longer than the window, so the SWA layers matter.
prompt=5,17,33,2,9,41,8,60,12,3,77,25,6,14,90,31,44,7
"$BUILD/consa" train recipes/tiny_cpu.yaml gates.unit=layer train.steps=100 output.dir=/tmp/consa-gpu-runs/layer \
  >/dev/null 2>&1 || status=1
"$BUILD/consa" export /tmp/consa-gpu-runs/layer --format hf --out /tmp/consa-gpu-runs/layer-hf | tee "$OUT/hf_export.txt" || status=1
"$BUILD/consa" inspect /tmp/consa-gpu-runs/layer-hf --prompt-ids $prompt --top 5 > /tmp/consa-gpu-runs/inspect.txt || status=1
cat /tmp/consa-gpu-runs/inspect.txt >> "$OUT/hf_export.txt"
python3 scripts/check_hf_export.py /tmp/consa-gpu-runs/layer-hf /tmp/consa-gpu-runs/inspect.txt $prompt 2>&1 \
  | grep -v Warning | tee -a "$OUT/hf_export.txt" || status=1
if [ "$status" != 0 ] && command -v cuda-gdb >/dev/null; then
  # No gdb on the GPU machine; cuda-gdb debugs host code too.
  cuda-gdb -batch -ex run -ex bt --args "$BUILD/tests/consa_tests" "[config]" 2>&1 | tail -30
fi
exit "$status"
