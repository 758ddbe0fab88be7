#!/usr/bin/env bash
# Builds consa's libFuzzer targets (tests/fuzz/, clang with ASan + UBSan) into ./build-fuzz and
# runs each for a number of executions, printing executions, exec/s, crashes and coverage per
# target. Exits non-zero when any target crashes, or when a committed reproducer of a fixed
# crash (tests/fuzz/regressions/<target>/) fails again.
#
#   scripts/fuzz.sh                      10^6 executions per target
#   scripts/fuzz.sh --short              20,000 executions or 30 s per target (CI)
#   scripts/fuzz.sh --runs N --seconds S --jobs J [TARGET ...]
#
# A crash leaves its input in build-fuzz/artifacts/<target>/; replay it with
#   build-fuzz/tests/fuzz/<target> build-fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=1000000
SECONDS_LIMIT=0  # 0: no time limit
JOBS=$(nproc)
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --short) RUNS=20000; SECONDS_LIMIT=30 ;;
    --runs) RUNS="$2"; shift ;;
    --seconds) SECONDS_LIMIT="$2"; shift ;;
    --jobs) JOBS="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1") ;;
  esac
  shift
done
ALL_TARGETS=(fuzz_safetensors_header fuzz_safetensors_index fuzz_hf_config fuzz_recipe fuzz_token_shard
             fuzz_megatron fuzz_assignment)
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

# The main build's dependencies, then clang and its runtimes (libFuzzer, ASan, UBSan:
# libclang-rt-14-dev), which only this script needs.
bash scripts/install_deps.sh
missing=()
for p in clang-14 libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

BUILD=build-fuzz
build_start=$(date +%s)
if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD" -G Ninja -DCONSA_FUZZ=ON -DCONSA_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD" --target fuzz_all -j"$(nproc)"
echo "fuzz targets built in $(( $(date +%s) - build_start )) s"

# LibTorch is not instrumented: memory it allocates at start-up and keeps until exit would be
# reported as leaks after every input, so leak detection is off (detect_leaks=0). The other
# checks stay on; an UBSan finding aborts with its stack.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
# Huge allocations a header asks for are findings too: 2 GiB per process, and per malloc.
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20)

dict_of() {
  case "$1" in
    fuzz_safetensors_*) echo tests/fuzz/dict/safetensors.dict ;;
    fuzz_hf_config) echo tests/fuzz/dict/hf_config.dict ;;
    fuzz_assignment) echo tests/fuzz/dict/assignment.dict ;;
    fuzz_recipe) echo tests/fuzz/dict/recipe.dict ;;
    *) echo "" ;;
  esac
}

WORK="$BUILD/fuzz-work"
rm -rf "$WORK"
mkdir -p "$WORK" "$BUILD/artifacts"

# One target: the committed reproducers first (each must run clean), then the fuzzing run from
# the committed seeds in a fresh corpus. Writes its summary line to $WORK/<target>.summary.
run_target() {
  local t="$1" bin="$BUILD/tests/fuzz/$1" log="$WORK/$1.log" status=0
  local corpus="$WORK/$t.corpus" artifacts="$BUILD/artifacts/$t/"
  mkdir -p "$corpus" "$artifacts"
  local regressions=(tests/fuzz/regressions/"$t"/*)
  if [ -e "${regressions[0]}" ]; then
    if ! "$bin" "${LIMITS[@]}" "${regressions[@]}" >"$WORK/$t.regressions.log" 2>&1; then
      echo "$t regression FAILED (see $WORK/$t.regressions.log)" >"$WORK/$t.summary"
      return 0
    fi
  fi
  local dict args=(-runs="$RUNS" -print_final_stats=1 -artifact_prefix="$artifacts" "${LIMITS[@]}")
  dict=$(dict_of "$t")
  [ -n "$dict" ] && args+=(-dict="$dict")
  [ "$SECONDS_LIMIT" -gt 0 ] && args+=(-max_total_time="$SECONDS_LIMIT")
  local start end
  start=$(date +%s)
  "$bin" "${args[@]}" "$corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1 || status=$?
  end=$(date +%s)
  local runs speed cov ft crashes
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)
  cov=$( (grep -aoE 'cov: [0-9]+' "$log" || true) | tail -1 | cut -d' ' -f2)
  ft=$( (grep -aoE 'ft: [0-9]+' "$log" || true) | tail -1 | cut -d' ' -f2)
  crashes=0
  [ "$status" -ne 0 ] && crashes=1  # libFuzzer stops at the first crash
  printf '%-24s %10s %8s %6s %6s %6s %6ss%s\n' "$t" "${runs:-?}" "${speed:-?}" "$crashes" "${cov:-?}" "${ft:-?}" \
    "$((end - start))" "$([ "$crashes" -ne 0 ] && echo "  CRASH: see $log")" >"$WORK/$t.summary"
}

fuzz_start=$(date +%s)
running=0
for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/tests/fuzz/$t" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
  run_target "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
wait

printf '\n%-24s %10s %8s %6s %6s %6s %7s\n' target executions exec/s crash cov ft time
failed=0
for t in "${TARGETS[@]}"; do
  [ -f "$WORK/$t.summary" ] || echo "$t FAILED: no result (see $WORK/$t.log)" >"$WORK/$t.summary"
  cat "$WORK/$t.summary"
  if grep -qE 'CRASH|FAILED' "$WORK/$t.summary"; then failed=1; fi
done
echo "fuzzing took $(( $(date +%s) - fuzz_start )) s with $JOBS jobs"
if [ "$failed" -ne 0 ]; then
  for t in "${TARGETS[@]}"; do
    if grep -qE 'CRASH|no result' "$WORK/$t.summary"; then
      echo "--- $t:"
      grep -aE 'ERROR|SUMMARY|consa fuzz|what\(\)|runtime error|Test unit written' "$WORK/$t.log" | head -8
    fi
  done
  exit 1
fi
