#!/usr/bin/env bash
# The bad-input battery: every case in cases.sh runs one consa command on input built from a
# small valid base (a model from consa init, a token shard from consa tokenize, a training run,
# an assignment, a TorchScript export), made once per run in a scratch folder.
#
#   tests/battery/run.sh path/to/consa [--keep] [--only REGEX]
#
# A refused case must exit non-zero below 128 (no signal), print exactly one "consa: error:" line
# that matches the case's pattern and holds no raw library text, change no file that existed
# before it and create nothing. A case that must succeed must exit 0. Prints a summary and
# exits 1 when any case failed.
set -u
if [ $# -lt 1 ]; then
  echo "usage: $0 path/to/consa [--keep] [--only REGEX]" >&2
  exit 2
fi
C=$(realpath "$1")
shift
KEEP=0
ONLY=""
while [ $# -gt 0 ]; do
  case $1 in
    --keep) KEEP=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "$0: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/consa-battery.XXXXXX")
if [ "$KEEP" = 1 ]; then echo "scratch folder: $W"; else trap 'rm -rf "$W"' EXIT; fi
cd "$W" || exit 1
mkdir .battery

# Text that only a library, not consa, would print: each is a failure wherever it appears.
RAW='failed to parse|PytorchStreamReader|filesystem error|_M_range_check|basic_string|bad_alloc|enforce fail|terminate called|Storage size calculation|Option .* does not exist|Aborted|Segmentation|std::'

# One sorted line per file ("HASH PATH") and folder ("dir PATH"), the runner's own aside.
snapshot() {
  {
    find . -path ./.battery -prune -o -type d -printf 'dir %p\n'
    find . -path ./.battery -prune -o -type f -print0 | xargs -0 -r sha256sum | cut -c1-16,66-
  } | LC_ALL=C sort
}

matches_any() {  # PATH GLOB...: whether PATH matches one of the globs
  local path=$1 glob
  shift
  for glob in "$@"; do
    # shellcheck disable=SC2053
    [[ $path == $glob ]] && return 0
  done
  return 1
}

TOTAL=0
PASSED=0
FAILURES=()
CASE=""

# expect fail|ok PATTERN [--creates GLOB] [--changes GLOB] [--stdout REGEX] [--stderr REGEX] [--timeout S] -- COMMAND...
# fail: exit 1..127, one "consa: error:" line matching PATTERN (an extended regex), nothing
#       created or changed. ok: exit 0; new files allowed; PATTERN unused (give '').
expect() {
  local want=$1 pattern=$2
  shift 2
  local creates=() changes=() out_re="" err_re="" limit=120
  while [ "$1" != "--" ]; do
    case $1 in
      --creates) creates+=("$2") ;;
      --changes) changes+=("$2") ;;
      --stdout) out_re=$2 ;;
      --stderr) err_re=$2 ;;
      --timeout) limit=$2 ;;
      *) echo "battery: bad expect option '$1' in $CASE" >&2; exit 2 ;;
    esac
    shift 2
  done
  shift
  snapshot > .battery/before
  timeout "$limit" "$@" > .battery/out 2> .battery/err < /dev/null
  local rc=$?
  snapshot > .battery/after
  local problems=()
  if [ "$want" = ok ]; then
    [ "$rc" -eq 0 ] || problems+=("expected exit 0")
    [ -z "$out_re" ] || grep -Eq -- "$out_re" .battery/out || problems+=("stdout does not match /$out_re/")
    [ -z "$err_re" ] || grep -Eq -- "$err_re" .battery/err || problems+=("stderr does not match /$err_re/")
  else
    if [ "$rc" -eq 0 ]; then problems+=("succeeded; expected a refusal")
    elif [ "$rc" -eq 124 ]; then problems+=("timed out after ${limit}s")
    elif [ "$rc" -ge 128 ]; then problems+=("killed by signal $((rc - 128))")
    fi
    local errors
    errors=$(grep -c '^consa: error: ' .battery/err)
    [ "$errors" -eq 1 ] || problems+=("$errors 'consa: error:' lines; expected 1")
    grep '^consa: error: ' .battery/err | grep -Eq -- "$pattern" || problems+=("message does not match /$pattern/")
  fi
  if grep -Eq -- "$RAW" .battery/err; then problems+=("raw library text in stderr"); fi
  # Files that existed before must be as they were; a refused command creates nothing.
  local path
  while IFS= read -r path; do
    matches_any "$path" "${changes[@]+"${changes[@]}"}" || problems+=("changed or removed ${path}")
  done < <(LC_ALL=C comm -23 .battery/before .battery/after | cut -d' ' -f2- | LC_ALL=C sort -u)
  if [ "$want" = fail ]; then
    while IFS= read -r path; do
      matches_any "$path" "${creates[@]+"${creates[@]}"}" "${changes[@]+"${changes[@]}"}" || problems+=("created ${path}")
    done < <(LC_ALL=C comm -13 <(cut -d' ' -f2- .battery/before | LC_ALL=C sort) <(cut -d' ' -f2- .battery/after | LC_ALL=C sort))
  fi
  TOTAL=$((TOTAL + 1))
  if [ ${#problems[@]} -eq 0 ]; then
    PASSED=$((PASSED + 1))
    printf '  ok    %s\n' "$CASE"
  else
    local message
    message=$(grep -m1 '^consa: error: ' .battery/err || tail -n 1 .battery/err)
    local report="$CASE: ${problems[*]}"$'\n'"      command: ${*#"$C"}"$'\n'"      exit $rc: ${message}"
    FAILURES+=("$report")
    printf '  FAIL  %s (%s)\n' "$CASE" "$(IFS=';'; echo "${problems[*]}")"
  fi
}

# --- the valid base, made once -------------------------------------------------------------
base() {
  local log=.battery/base.log
  mkdir -p base && cp "$SRC/tests/fixtures/tokenizers/qwen2_style/tokenizer.json" base/tokenizer.json || return 1
  "$C" init --out base/model --vocab 4002 --hidden 32 --intermediate 48 --layers 2 --heads 4 --kv-heads 2 --seed 1 >> "$log" 2>&1 || return 1
  for i in $(seq 1 200); do echo "the quick brown fox number $i jumps over the lazy dog"; done > base/corpus.txt
  "$C" tokenize --tokenizer base/tokenizer.json --input base/corpus.txt --output base/train.tok >> "$log" 2>&1 || return 1
  cat > base/recipe.yaml <<'EOF'
model: {path: base/model, dtype: float32, device: cpu}
gates: {unit: kv_head, window: 4}
constraint: {target: 0.5}
data: {seq_len: 32, batch_size: 2, heldout_batches: 1, shards: [base/train.tok], synthetic_ratio: 0.5, value_digits: 2}
train: {steps: 4, log_every: 2, checkpoint_every: 2}
output: {dir: base/run}
EOF
  "$C" train base/recipe.yaml >> "$log" 2>&1 || return 1
  "$C" assign uniform base/model --target 0.5 --unit kv_head --window 4 --out base/uniform.json >> "$log" 2>&1 || return 1
  "$C" export base/run --format torchscript --out base/model.ts >> "$log" 2>&1 || return 1
}

# --- helpers for the cases -------------------------------------------------------------------
# st_file PATH HEADER_JSON DATA_BYTES: a safetensors file with this header and zero data.
st_file() {
  local len=${#2} i
  {
    for i in 0 1 2 3 4 5 6 7; do printf "\\$(printf '%03o' $(((len >> (8 * i)) & 255)))"; done
    printf '%s' "$2"
    head -c "$3" /dev/zero
  } > "$1"
}
# patch FILE OFFSET BYTES(printf escapes): overwrite bytes in place.
patch_bytes() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
# model_copy DIR: a copy of the base model to break.
model_copy() { mkdir -p "$(dirname "$1")" && cp -r base/model "$1"; }
# config_edit DIR SED: edit DIR/config.json with a sed expression.
config_edit() { sed -i "$2" "$1/config.json"; }
run_copy() { mkdir -p "$(dirname "$1")" && cp -r base/run "$1"; }

echo "consa bad-input battery: $C"
if ! base; then
  echo "battery: could not build the valid base; its log:" >&2
  cat .battery/base.log >&2
  exit 1
fi
# shellcheck source=cases.sh
source "$HERE/cases.sh"
for name in $(declare -F | awk '{print $3}' | grep '^case_' | sort); do
  [ -z "$ONLY" ] || [[ $name =~ $ONLY ]] || continue
  CASE=${name#case_}
  mkdir -p "c/$CASE"
  "$name"
done

echo
echo "$TOTAL cases, $PASSED passed, $((TOTAL - PASSED)) failed"
for f in "${FAILURES[@]+"${FAILURES[@]}"}"; do echo "  $f"; done
[ "$PASSED" -eq "$TOTAL" ] && [ "$TOTAL" -gt 0 ]
