#!/usr/bin/env bash
# The distributed trainer on the GPU machine, in one command:
#   OUT=/some/dir bash scripts/gpu_distributed.sh
# 1. the tiny recipe on CUDA in modes gates and full, as one plain process and under torchrun
#    at world size 1: NCCL through the same path as N GPUs (the agent's store, a process group,
#    the gates' gradient all-reduced, the weights' gradients reduce-scattered in buckets into the
#    sharded optimizer and the updated weights all-gathered). The two runs' metrics must agree.
# 2. `consa bench train` alone and under torchrun at world size 1 (BENCH_ARGS): the step time of
#    the distributed path against the plain one, and its exposed communication.
# 3. WITH_HF=1 also runs scripts/check_hf_classes.sh (transformers loads every exported class).
# Results: $OUT/distributed.txt, $OUT/bench_plain.json, $OUT/bench_torchrun.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
BUILD=${BUILD:-build-gpu}
BENCH_ARGS=${BENCH_ARGS:---shapes qwen3-0.6b --seq-lens 8192 --modes dense,gated,gates,hard --warmup 2 --steps 3 --repeats 3}
status=0
start=$(date +%s)
bash scripts/build_gpu.sh || exit 1
echo "build: $(( $(date +%s) - start )) s"
TORCHRUN="python3 -m torch.distributed.run --nproc-per-node 1 --no-python"
R=/tmp/consa-gpu-dist
rm -rf "$R" && mkdir -p "$R"
{
  for mode in gates full; do
    extra="train.steps=60 train.log_every=1 train.checkpoint_every=30 model.device=cuda data.synthetic_tasks=[passkey]"
    [ $mode = full ] && extra="$extra train.mode=full optimizer.lr=0.001 objective.kl=0"
    "$BUILD/consa" train recipes/tiny_cpu.yaml $extra output.dir=$R/plain_$mode >/dev/null 2>$R/plain_$mode.err || { status=1; tail -3 $R/plain_$mode.err; }
    $TORCHRUN "$BUILD/consa" train recipes/tiny_cpu.yaml $extra output.dir=$R/nccl_$mode >/dev/null 2>$R/nccl_$mode.err || { status=1; tail -5 $R/nccl_$mode.err; }
    python3 - "$R/plain_$mode" "$R/nccl_$mode" "$mode" <<'PY' || status=1
import json, sys
a, b, mode = sys.argv[1:]
rows = lambda d: [json.loads(l) for l in open(d + "/metrics.jsonl") if '"ce"' in l]
ma, mb = rows(a), rows(b)
assert len(ma) == len(mb) == 60, (len(ma), len(mb))
assert all(r.get("world_size") == 1 for r in mb), "the torchrun run did not form a process group"
worst = max(abs(x[k] - y[k]) / max(1.0, abs(x[k])) for x, y in zip(ma, mb) for k in ("ce", "kl", "s_hat"))
ga = json.load(open(a + "/gates.json"))["log_alpha"]; gb = json.load(open(b + "/gates.json"))["log_alpha"]
gates = max(abs(u - v) for ra, rb in zip(ga, gb) for u, v in zip(ra, rb))
same = [l["units"] for l in json.load(open(a + "/assignment.json"))["layers"]] == \
       [l["units"] for l in json.load(open(b + "/assignment.json"))["layers"]]
print(f"{mode}: plain vs NCCL world 1 over 60 steps: max relative loss/s_hat difference {worst:.2e}, "
      f"log_alpha {gates:.2e}, same assignment {same}")
sys.exit(0 if worst < 1e-4 and gates < 1e-4 and same else 1)
PY
  done
  ls "$R/nccl_full/optimizer_shards"
  "$BUILD/consa" bench train $BENCH_ARGS --out "$OUT/bench_plain.json" || status=1
  $TORCHRUN "$BUILD/consa" bench train $BENCH_ARGS --out "$OUT/bench_torchrun.json" || status=1
  python3 - "$OUT/bench_plain.json" "$OUT/bench_torchrun.json" <<'PY' || status=1
import json, sys
plain, dist = (json.load(open(p))["results"] for p in sys.argv[1:])
for a, b in zip(plain, dist):
    print(f"{a['shape']} {a['seq_len']} {a['mode']:5s}: plain {a['step_ms']:.1f} ms, torchrun world 1 {b['step_ms']:.1f} ms "
          f"({b['step_ms'] / a['step_ms']:.3f}x), exposed communication {b['exposed_comm_ms']:.2f} ms, "
          f"peak {a['peak_bytes'] / 2**30:.2f} vs {b['peak_bytes'] / 2**30:.2f} GiB")
PY
  echo "distributed part: $(( $(date +%s) - start )) s"
  if [ "${WITH_HF:-1}" = 1 ]; then
    BUILD="$BUILD" bash scripts/check_hf_classes.sh 2>&1 | grep -v -i warning > "$OUT/hf_classes.txt" || status=1
    grep -E "FAIL|max|refus|class|error" "$OUT/hf_classes.txt" | tail -40
  fi
  echo "total: $(( $(date +%s) - start )) s"
  [ "$status" = 0 ]
} 2>&1 | tee "$OUT/distributed.txt"
exit "${PIPESTATUS[0]}"
