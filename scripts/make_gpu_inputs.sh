#!/usr/bin/env bash
# Prepares gpu_inputs/ on the CPU machine (LibTorch 1.13) for scripts/gpu_check.sh: a TorchScript
# export of the tiny recipe's run, prompt ids, and consa's logits for them from the Hugging Face
# export of the same run. gpu_check.sh then checks that PyTorch 2.x loads the 1.13 file.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-/tmp/consa-tiny-run}
[ -f "$RUN/assignment.json" ] || ./build/consa train recipes/tiny_cpu.yaml output.dir="$RUN" >/dev/null
mkdir -p gpu_inputs
ids=5,17,33,2,9,41,8,60,12,3,77,25,6,14,90,31,44,7,5,17,33,2,9,41,8,60,12,3,77,25,6,14,90,31,44,7
echo "$ids" > gpu_inputs/ids.txt
./build/consa export "$RUN" --format torchscript --out gpu_inputs/tiny_torch113.ts
./build/consa export "$RUN" --format hf --out "$RUN/hf" >/dev/null
./build/consa inspect "$RUN/hf" --prompt-ids "$ids" --logits-out gpu_inputs/expected.f32 >/dev/null
/usr/bin/python3 scripts/check_torchscript.py gpu_inputs/tiny_torch113.ts gpu_inputs/ids.txt gpu_inputs/expected.f32
