#!/usr/bin/env bash
# On a GPU machine, in one command: build consa, its tests and libconsa_ops.so against the local
# PyTorch's LibTorch, run the [cuda] checks (the decode-attention kernel against softmax
# attention in fp64, fused-operator exports against portable ones), load a fused export in
# Python through torch.ops.load_library, then time decoding of exports made with aten and with
# fused operators side by side (consa bench decode --kernels aten,fused). Results land in $OUT:
# cuda_tests.log, python_check.txt, decode.json and decode.txt.
#   OUT=/some/dir bash scripts/gpu_decode.sh
# CONTEXTS, SPARSITY, BATCH and SHAPE replace the defaults below; CUDA_TESTS=0 skips the checks,
# CUDA_TEST_FILTER (a Catch test spec) runs some of them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
bash scripts/gpu_build_tests.sh || exit 1
status=0
if [ "${CUDA_TESTS:-1}" = 1 ]; then
  build-gpu/tests/consa_tests "${CUDA_TEST_FILTER:-[cuda]}" >"$OUT/cuda_tests.log" 2>&1 || status=1
  grep -E "^cuda|passed|failed|FAILED" "$OUT/cuda_tests.log" | head -100
  [ $status = 0 ] || grep -B3 -A15 FAILED "$OUT/cuda_tests.log" | head -80
fi
# Python (this machine's torch) loads a fused export of a parity fixture on the GPU and matches
# transformers' logits, with libconsa_ops.so loaded first.
fixture=tests/fixtures/qwen3_norm
build-gpu/consa export "$fixture" --format torchscript --kernels fused --out /tmp/fused.ts --overwrite >/dev/null || status=1
python3 - "$fixture" <<'PY' || status=1
import sys
from safetensors.torch import load_file
ref = load_file(sys.argv[1] + "/reference.safetensors")
open("/tmp/ids.txt", "w").write(" ".join(str(int(t)) for t in ref["input_ids"][0]))
open("/tmp/logits.f32", "wb").write(ref["logits"][0].float().contiguous().numpy().tobytes())
PY
python3 scripts/check_torchscript.py /tmp/fused.ts /tmp/ids.txt /tmp/logits.f32 --device cuda --tolerance 1e-4 \
  --ops-library build-gpu/libconsa_ops.so 2>&1 | tee "$OUT/python_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
build-gpu/consa bench decode --shape "${SHAPE:-qwen3-0.6b}" --contexts "${CONTEXTS:-4096,32768}" \
  --sparsity "${SPARSITY:-0,0.75}" --batch "${BATCH:-1,8}" --kernels aten,fused --repeats 1 \
  --out "$OUT/decode.json" 2>&1 | tee "$OUT/decode.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
