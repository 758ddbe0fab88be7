# The battery's cases (sourced by run.sh), one function each, named case_<class>_<what>; the
# classes are those of docs/reliability.md (15: everything else). Each builds its bad input in
# c/<case>/ from the base (base/model, base/train.tok, base/recipe.yaml, base/run,
# base/uniform.json, base/model.ts, base/tokenizer.json), then states what must happen:
#   expect fail|ok 'message pattern' [--creates GLOB] [--changes GLOB] [--stdout RE] [--stderr RE] -- command
# shellcheck shell=bash disable=SC2154
D() { echo "c/$CASE"; }

# --- 1. sizes in headers that overflow 64 bits ------------------------------------------------
case_01_safetensors_elements_overflow() {
  model_copy "$(D)/m"
  st_file "$(D)/m/model.safetensors" '{"model.norm.weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}' 16
  expect fail "model.safetensors: tensor 'model.norm.weight': shape .* more elements than 64 bits" -- "$C" inspect "$(D)/m"
}
case_01_safetensors_bytes_overflow() {
  model_copy "$(D)/m"
  st_file "$(D)/m/model.safetensors" '{"x":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}}' 16
  expect fail "tensor 'x': shape .* more bytes than 64 bits" -- "$C" inspect "$(D)/m"
}
case_01_safetensors_dim_beyond_int64() {
  model_copy "$(D)/m"
  st_file "$(D)/m/model.safetensors" '{"x":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,4]}}' 4
  expect fail "tensor 'x': shape must be .*below 2\^63" -- "$C" inspect "$(D)/m"
}
case_01_safetensors_header_length_huge() {
  model_copy "$(D)/m"
  patch_bytes "$(D)/m/model.safetensors" 0 '\xff\xff\xff\xff\xff\xff\xff\x7f'
  expect fail "model.safetensors: header length [0-9]+ runs beyond the end of the file" -- "$C" inspect "$(D)/m"
}
case_01_shard_count_times_width_wraps() {
  cp base/train.tok "$(D)/bad.tok"
  patch_bytes "$(D)/bad.tok" 16 '\x00\x00\x00\x00\x00\x00\x00\x80'  # 2^63 tokens of 2 bytes
  expect fail "bad.tok" -- "$C" validate base/recipe.yaml "data.shards=[$(D)/bad.tok]"
}
case_01_shard_truncated() {
  head -c 100 base/train.tok > "$(D)/short.tok"
  expect fail "short.tok" -- "$C" validate base/recipe.yaml "data.shards=[$(D)/short.tok]"
}
case_01_shard_bad_width() {
  cp base/train.tok "$(D)/w3.tok"
  patch_bytes "$(D)/w3.tok" 12 '\x03\x00\x00\x00'
  expect fail "w3.tok.*(bytes per token|width|2 or 4)" -- "$C" validate base/recipe.yaml "data.shards=[$(D)/w3.tok]"
}

# --- 2. config.json larger than its weights; caches beyond memory ----------------------------
# Under a 4 GiB address-space limit: the refusal must come before the model is allocated.
# AddressSanitizer (scripts/sanitize.sh) reserves terabytes of shadow address space, so there a
# cap of 4,000 MB on any one allocation takes the limit's place: a larger one fails and
# LibTorch's raw message fails the case.
if [ -n "${ASAN_OPTIONS:-}" ]; then
  LIMITED=(env "ASAN_OPTIONS=$ASAN_OPTIONS:max_allocation_size_mb=4000:allocator_may_return_null=1")
else
  LIMITED=(bash -c 'ulimit -v 4000000; exec "$@"' limited)
fi
case_02_config_intermediate_far_larger() {
  model_copy "$(D)/m"
  config_edit "$(D)/m" 's/"intermediate_size": 48/"intermediate_size": 48000000/'
  expect fail "tensor 'model.layers.0.mlp.gate_proj.weight' has shape \[48, 32\], expected \[48000000, 32\] from config.json" \
    --timeout 30 -- "${LIMITED[@]}" "$C" inspect "$(D)/m"
}
case_02_config_far_more_layers() {
  model_copy "$(D)/m"
  config_edit "$(D)/m" 's/"num_hidden_layers": 2/"num_hidden_layers": 200000/'
  expect fail "missing tensor 'model.layers.2.input_layernorm.weight' \(config.json has num_hidden_layers 200000" \
    --timeout 30 -- "${LIMITED[@]}" "$C" inspect "$(D)/m"
}
case_02_config_vocab_overflows() {
  model_copy "$(D)/m"
  config_edit "$(D)/m" 's/"vocab_size": 4002/"vocab_size": 9223372036854775807/'
  expect fail "config.json: its sizes .* describe a tensor of more elements than 64 bits can count" \
    --timeout 30 -- "${LIMITED[@]}" "$C" inspect "$(D)/m"
}
case_02_config_hidden_huge() {
  model_copy "$(D)/m"
  config_edit "$(D)/m" 's/"hidden_size": 32/"hidden_size": 3037000500/; s/"head_dim": 8/"head_dim": 8/'
  expect fail "expected \[[0-9]+, 3037000500\] from config.json|config.json" --timeout 30 -- "${LIMITED[@]}" "$C" inspect "$(D)/m"
}
case_02_config_layer_count_beyond_limit() {
  model_copy "$(D)/m"
  config_edit "$(D)/m" 's/"num_hidden_layers": 2/"num_hidden_layers": 1000000000000000/'
  expect fail "config.json: key 'num_hidden_layers' must be at most 2\^20" --timeout 30 -- "${LIMITED[@]}" "$C" inspect "$(D)/m"
}
case_02_generate_max_new_tokens_huge() {
  expect fail "--max-new-tokens 1000000000000: .*(more than any KV cache|more than half of this machine)" \
    -- "$C" generate base/model.ts --prompt-ids 1,2 --max-new-tokens 1000000000000
}
case_02_generate_max_new_tokens_negative() {
  expect fail "--max-new-tokens must be >= 0, got -5" -- "$C" generate base/model.ts --prompt-ids 1,2 --max-new-tokens=-5
}
case_02_init_model_beyond_memory() {
  expect fail "consa init: a float32 model of this shape needs .* more than half of this machine" \
    -- "$C" init --out "$(D)/huge" --vocab 1000000 --hidden 1000000 --layers 1 --heads 1 --kv-heads 1
}

# --- 3. assignments that do not fit the model ------------------------------------------------
# other_assignment DIR FLAGS...: a uniform assignment made for another model shape.
other_assignment() {
  local dir=$1
  shift
  "$C" init --out "$dir/other" --vocab 4002 --hidden 32 --intermediate 48 "$@" > /dev/null &&
    "$C" assign uniform "$dir/other" --target 0.5 --unit kv_head --window 4 --out "$dir/a.json" > /dev/null 2>&1
}
case_03_export_assignment_more_layers() {
  other_assignment "$(D)" --layers 3 --heads 4 --kv-heads 2
  expect fail "a.json: .*3 layers.*2" -- "$C" export base/model --assignment "$(D)/a.json" --format hf --out "$(D)/out"
}
case_03_export_torchscript_assignment_more_layers() {
  other_assignment "$(D)" --layers 3 --heads 4 --kv-heads 2
  expect fail "a.json: .*3 layers.*2" -- "$C" export base/model --assignment "$(D)/a.json" --format torchscript --out "$(D)/m.ts"
}
case_03_eval_assignment_wrong_heads() {
  other_assignment "$(D)" --layers 2 --heads 2 --kv-heads 1
  expect fail "a.json" -- "$C" eval base/model --assignment "$(D)/a.json" --tasks passkey --lengths 32 --samples 1
}
case_03_assignment_for_other_weights() {
  "$C" init --out "$(D)/other" --vocab 4002 --hidden 32 --intermediate 48 --layers 2 --heads 4 --kv-heads 2 --seed 9 > /dev/null
  expect fail "uniform.json: made for weights fnv1a64:[0-9a-f]+ but .*other holds" \
    -- "$C" export "$(D)/other" --assignment base/uniform.json --format hf --out "$(D)/out"
}
case_03_export_multi_window_assignment() {
  # One unit of base/uniform.json moved from window 4 to window 2: two windows in one model.
  sed '0,/^        4$/s//        2/' base/uniform.json > "$(D)/a.json"
  expect ok '' --creates "$(D)/out/config.json" \
    -- "$C" export base/model --assignment "$(D)/a.json" --format hf --out "$(D)/out"
  expect ok '' --creates "$(D)/out.ts" \
    -- "$C" export base/model --assignment "$(D)/a.json" --format torchscript --out "$(D)/out.ts"
}
case_03_inspect_assignment_truncated() {
  head -c 200 base/uniform.json > "$(D)/a.json"
  expect fail "a.json" -- "$C" inspect "$(D)/a.json"
}
case_03_inspect_assignment_wrong_type() {
  sed 's/"granularity": "kv_head"/"granularity": 3/' base/uniform.json > "$(D)/a.json"
  expect fail "a.json" -- "$C" inspect "$(D)/a.json"
}
case_03_inspect_assignment_ok() {
  expect ok '' --stdout 'sparsity +target 0.5' -- "$C" inspect base/uniform.json
}

# --- 4. a refused job leaves no state ----------------------------------------------------------
case_04_resume_mistyped_model_path() {
  run_copy "$(D)/run"
  expect fail "no-such-model" -- "$C" train base/recipe.yaml "output.dir=$(D)/run" "model.path=$(D)/no-such-model" --resume
}
case_04_run_refused_at_load_leaves_no_dir() {
  expect fail "no-such-model" -- "$C" train base/recipe.yaml "output.dir=$(D)/run" "model.path=$(D)/no-such-model"
}
case_04_resume_without_checkpoint() {
  expect fail "no checkpoint to resume from" -- "$C" train base/recipe.yaml "output.dir=$(D)/fresh" --resume
}
case_04_second_run_refused() {
  run_copy "$(D)/run"
  expect fail "(exists|earlier run|--overwrite)" -- "$C" train base/recipe.yaml "output.dir=$(D)/run"
}
case_04_resume_garbage_checkpoint() {
  run_copy "$(D)/run"
  echo "not a checkpoint" > "$(D)/run/checkpoint.pt"
  expect fail "checkpoint.pt: not a checkpoint written by consa train" \
    -- "$C" train base/recipe.yaml "output.dir=$(D)/run" train.steps=6 --resume
}
case_04_resume_truncated_checkpoint() {
  run_copy "$(D)/run"
  truncate -s 2000 "$(D)/run/checkpoint.pt"
  expect fail "checkpoint.pt: not a checkpoint written by consa train" \
    -- "$C" train base/recipe.yaml "output.dir=$(D)/run" train.steps=6 --resume
}

# --- 5. resume with a changed recipe ----------------------------------------------------------
case_05_resume_changed_target() {
  run_copy "$(D)/run"
  expect fail "constraint.target 0.5 -> 0.75" -- "$C" train base/recipe.yaml "output.dir=$(D)/run" constraint.target=0.75 train.steps=6 --resume
}
case_05_resume_changed_window() {
  run_copy "$(D)/run"
  expect fail "gates.window 4 -> 6" -- "$C" train base/recipe.yaml "output.dir=$(D)/run" gates.window=6 train.steps=6 --resume
}
case_05_resume_changed_seed() {
  run_copy "$(D)/run"
  expect fail "data.seed [0-9]+ -> 7" -- "$C" train base/recipe.yaml "output.dir=$(D)/run" data.seed=7 train.steps=6 --resume
}
case_05_resume_more_steps_succeeds() {
  run_copy "$(D)/run"
  expect ok '' --changes "./$(D)/run/*" --stdout 'expected SWA fraction' \
    -- "$C" train base/recipe.yaml "output.dir=$(D)/run" train.steps=6 --resume
}

# --- 6. one overwrite policy -----------------------------------------------------------------
case_06_export_into_run_dir() {
  expect fail "--out base/run: is a training run's directory" -- "$C" export base/run --format hf --out base/run
}
case_06_export_over_existing_file() {
  expect fail "--out base/model.ts: exists; pass --overwrite" -- "$C" export base/run --format torchscript --out base/model.ts
}
case_06_init_over_existing_model() {
  expect fail "--out base/model: exists; pass --overwrite" -- "$C" init --out base/model --vocab 40 --hidden 32 --layers 1
}
case_06_tokenize_over_existing_shard() {
  expect fail "--output base/train.tok: exists; pass --overwrite" \
    -- "$C" tokenize --tokenizer base/tokenizer.json --input base/corpus.txt --output base/train.tok
}
case_06_eval_out_unwritable() {
  expect fail "--out /proc/consa-battery.json: its folder is not writable" -- "$C" eval base/model --out /proc/consa-battery.json
}
case_06_assign_out_into_run() {
  expect fail "--out base/run: is a training run's directory" -- "$C" assign uniform base/model --target 0.5 --window 4 --out base/run
}
case_06_init_overwrite_succeeds() {
  "$C" init --out "$(D)/m" --vocab 40 --hidden 16 --intermediate 16 --layers 1 --heads 2 --kv-heads 1 > /dev/null
  expect ok '' --changes "./$(D)/m/*" --stdout 'layers +2' \
    -- "$C" init --out "$(D)/m" --vocab 40 --hidden 16 --intermediate 16 --layers 2 --heads 2 --kv-heads 1 --overwrite
}

# --- 7. command line and YAML -----------------------------------------------------------------
case_07_yaml_duplicate_key() {
  { cat base/recipe.yaml; echo "train: {steps: 9}"; } > "$(D)/r.yaml"
  expect fail "r.yaml: key 'train' appears twice" -- "$C" validate "$(D)/r.yaml"
}
case_07_override_empty_value() {
  expect fail "train.steps" -- "$C" validate base/recipe.yaml train.steps=
}
case_07_override_list_with_commas_succeeds() {
  expect ok '' --stdout 'passkey, associative_recall|\[passkey, associative_recall\]' \
    -- "$C" validate base/recipe.yaml "data.synthetic_tasks=[passkey,associative_recall]"
}
case_07_override_without_equals() {
  expect fail "'train.steps' is not an override; expected key.sub=value" -- "$C" validate base/recipe.yaml train.steps
}
case_07_override_unknown_key() {
  expect fail "train.stepz" -- "$C" validate base/recipe.yaml train.stepz=3
}
case_07_override_not_an_integer() {
  expect fail "train.steps: expected an integer, got 'abc'" -- "$C" validate base/recipe.yaml train.steps=abc
}
case_07_yaml_malformed() {
  printf 'model: {path: base/model\ntrain: [\n' > "$(D)/r.yaml"
  expect fail "r.yaml" -- "$C" validate "$(D)/r.yaml"
}
case_07_yaml_wrong_type() {
  sed 's/train: {steps: 4,/train: {steps: [1, 2],/' base/recipe.yaml > "$(D)/r.yaml"
  expect fail "r.yaml.*train.steps" -- "$C" validate "$(D)/r.yaml"
}

case_07_gates_windows_without_budget() {
  expect fail "gates.windows: several windows need constraint.kv_budget" -- "$C" validate base/recipe.yaml "gates.windows=[2,4]"
}
case_07_gates_window_not_among_windows() {
  expect fail "gates.window 4 is not among gates.windows" -- "$C" validate base/recipe.yaml "gates.windows=[2,8]"
}
case_07_gates_windows_with_budget_succeeds() {
  sed 's/constraint: {target: 0.5}/constraint: {kv_budget: {bytes: 3000, context: 64}}/' base/recipe.yaml > "$(D)/r.yaml"
  expect ok '' --stdout 'of the savable bytes over 4 units' -- "$C" validate "$(D)/r.yaml" "gates.windows=[2,4]"
}

# --- 8. validate as strict as train ------------------------------------------------------------
case_08_validate_sequence_too_short() {
  expect fail "seq_len|too short|does not fit" -- "$C" validate base/recipe.yaml data.seq_len=8
}
case_08_validate_missing_tokenizer() {
  expect fail "$(D)/none.json" -- "$C" validate base/recipe.yaml "data.tokenizer=$(D)/none.json"
}
case_08_validate_ids_beyond_vocabulary() {
  "$C" init --out "$(D)/small" --vocab 300 --hidden 16 --intermediate 16 --layers 1 --heads 2 --kv-heads 1 > /dev/null
  expect fail "train.tok.*vocabulary of 300" -- "$C" validate base/recipe.yaml "model.path=$(D)/small"
}
case_08_validate_succeeds() {
  expect ok '' --stdout 'base/recipe.yaml: ok' -- "$C" validate base/recipe.yaml
}

# --- 9. config.json precedence -----------------------------------------------------------------
case_09_rope_scaling_wins_over_rope_parameters() {
  model_copy "$(D)/m"
  config_edit "$(D)/m" 's/"rope_scaling": null/"rope_scaling": {"rope_type": "linear", "factor": 2.0}/'
  expect ok '' --stdout 'rope +linear, theta 10000, factor 2' -- "$C" inspect "$(D)/m"
}
case_09_rope_scaling_unsupported() {
  model_copy "$(D)/m"
  config_edit "$(D)/m" 's/"rope_scaling": null/"rope_scaling": {"rope_type": "yarn", "factor": 2.0}/'
  expect fail "config.json.*yarn" -- "$C" inspect "$(D)/m"
}

# --- 10. NaN and Inf weights -----------------------------------------------------------------
# The base's last tensor in the file is model.norm.weight (names are stored sorted).
last_value() {  # MODEL_DIR BYTES: overwrite the last float32 of model.safetensors
  local f=$1/model.safetensors
  patch_bytes "$f" $(($(stat -c %s "$f") - 4)) "$2"
}
case_10_nan_weight_inspect() {
  model_copy "$(D)/m" && last_value "$(D)/m" '\x00\x00\xc0\x7f'
  expect fail "model.safetensors: tensor 'model.norm.weight' holds 1 NaN or Inf value \(first at flat index 31\)" -- "$C" inspect "$(D)/m"
}
case_10_inf_weight_train() {
  model_copy "$(D)/m" && last_value "$(D)/m" '\x00\x00\x80\x7f'
  expect fail "tensor 'model.norm.weight' holds 1 NaN or Inf value" \
    -- "$C" train base/recipe.yaml "model.path=$(D)/m" "output.dir=$(D)/run"
}
case_10_nan_weight_eval() {
  model_copy "$(D)/m" && last_value "$(D)/m" '\x00\x00\xc0\xff'
  expect fail "tensor 'model.norm.weight' holds 1 NaN or Inf value" -- "$C" eval "$(D)/m" --tasks passkey --lengths 32 --samples 1
}
case_10_value_overflows_float16() {
  model_copy "$(D)/m" && last_value "$(D)/m" '\xca\xf2\x49\x71'  # 1e30
  expect fail "tensor 'model.norm.weight' is finite as stored .* but overflows Half" -- "$C" inspect "$(D)/m" --dtype float16
}

# --- 11. library messages become consa's ------------------------------------------------------
case_11_flag_not_an_integer() {
  expect fail "consa train: flag --stop-after expects an integer, got 'abc'" -- "$C" train base/recipe.yaml --stop-after abc
}
case_11_flag_fraction_for_integer() {
  expect fail "consa inspect: flag --top expects an integer, got '1.5'" -- "$C" inspect base/model --top=1.5
}
case_11_flag_not_a_number() {
  expect fail "consa assign: flag --target expects a number, got 'half'" -- "$C" assign uniform base/model --target half --out "$(D)/a.json"
}
case_11_flag_negative_for_unsigned() {
  expect fail "consa init: flag --seed expects a non-negative integer, got '-1'" -- "$C" init --out "$(D)/m" --seed=-1
}
case_11_flag_integer_out_of_range() {
  expect fail "consa init: flag --vocab expects an integer in range, got '99999999999999999999'" \
    -- "$C" init --out "$(D)/m" --vocab 99999999999999999999
}
case_11_flag_not_a_boolean() {
  expect fail "consa generate: flag --graphs expects true or false, got 'maybe'" \
    -- "$C" generate base/model.ts --prompt-ids 1,2 --graphs=maybe
}
case_11_flag_unknown() {
  expect fail "consa inspect: unknown flag --bogus" -- "$C" inspect base/model --bogus
}
case_11_flag_missing_value() {
  expect fail "consa train: flag --stop-after needs a value" -- "$C" train base/recipe.yaml --stop-after
}
case_11_switch_given_a_value() {
  expect fail "consa init: flag --overwrite (takes no value|expects true or false, got 'yes')" -- "$C" init --out "$(D)/m" --overwrite=yes
}
case_11_tokenize_flag_not_an_integer() {
  expect fail "consa tokenize: flag --threads expects an integer, got 'abc'" \
    -- "$C" tokenize --tokenizer base/tokenizer.json --input base/corpus.txt --output "$(D)/t.tok" --threads abc
}
case_11_torchscript_not_a_zip() {
  echo "garbage" > "$(D)/m.ts"
  expect fail "m.ts: not a TorchScript file \(not a zip archive\); expected a model written by consa export" -- "$C" eval "$(D)/m.ts"
}
case_11_torchscript_truncated() {
  head -c 3000 base/model.ts > "$(D)/m.ts"
  expect fail "m.ts: not a loadable TorchScript file \(a truncated or damaged zip archive\)" -- "$C" generate "$(D)/m.ts" --prompt-ids 1,2
}
case_11_config_is_a_directory() {
  model_copy "$(D)/m" && rm "$(D)/m/config.json" && mkdir "$(D)/m/config.json"
  expect fail "config.json: is a directory; expected a file" -- "$C" inspect "$(D)/m"
}
case_11_weights_are_a_directory() {
  model_copy "$(D)/m" && rm "$(D)/m/model.safetensors" && mkdir "$(D)/m/model.safetensors"
  expect fail "model.safetensors: is a directory; expected a file" -- "$C" inspect "$(D)/m"
}
case_11_recipe_is_a_directory() {
  expect fail "base: is a directory; expected a recipe YAML file" -- "$C" train base
}
case_11_missing_model() {
  expect fail "$(D)/none: not a directory \(expected a Hugging Face checkpoint\)" -- "$C" inspect "$(D)/none"
}
case_11_logits_out_is_a_directory() {
  expect fail "--logits-out base: is a directory; expected a file path" -- "$C" inspect base/model --prompt-ids 1,2 --logits-out base
}
case_11_tokenizer_not_sentencepiece() {
  expect fail "corpus.txt: not a sentencepiece model .*expected a sentencepiece tokenizer.model or a tokenizer.json" \
    -- "$C" tokenize --tokenizer base/corpus.txt --encode hello
}
case_11_eval_data_missing() {
  expect fail "$(D)/none.tok: not found" -- "$C" eval base/model --data "$(D)/none.tok"
}

# --- 12. invalid results and late failures ----------------------------------------------------
case_12_init_head_dim_zero() {
  expect fail "--head-dim must be > 0, got 0" -- "$C" init --out "$(D)/m" --head-dim 0
}
case_12_init_max_positions_zero() {
  expect fail "--max-positions must be > 0, got 0" -- "$C" init --out "$(D)/m" --max-positions 0
}
case_12_init_rope_theta_negative() {
  expect fail "--rope-theta must be > 0, got -1" -- "$C" init --out "$(D)/m" --rope-theta=-1
}
case_12_init_odd_head_dim() {
  expect fail "consa init: these flags describe a model that consa cannot load .*head_dim must be even" \
    -- "$C" init --out "$(D)/m" --hidden 28 --heads 4 --kv-heads 2
}
case_12_init_writes_what_it_loads() {
  expect ok '' --stdout 'next tokens after 2 prompt tokens' \
    -- bash -c '"$1" init --out "$2" --arch llama --vocab 64 --hidden 16 --intermediate 24 --layers 1 --heads 2 --kv-heads 1 >/dev/null &&
                "$1" inspect "$2" --prompt-ids 1,2' _ "$C" "$(D)/m"
}
case_12_eval_out_missing_folder_fails_first() {
  expect fail "--out /proc/none/report.json: its folder is not writable" --timeout 20 \
    -- "$C" eval base/run --out /proc/none/report.json
}

# --- 13. recipe settings honoured ----------------------------------------------------------
case_13_eval_takes_the_recipe_dtype() {
  sed 's/dtype: float32/dtype: bfloat16/' base/recipe.yaml > "$(D)/r.yaml"
  expect ok '' --stderr 'model on cpu in bfloat16 \(.*r.yaml\)' \
    -- "$C" eval base/model --recipe "$(D)/r.yaml" --tasks passkey --lengths 32 --depths 0.5 --samples 1 --heldout-batches 1
}
case_13_eval_flag_over_the_recipe() {
  sed 's/dtype: float32/dtype: bfloat16/' base/recipe.yaml > "$(D)/r.yaml"
  expect ok '' --stderr 'model on cpu in float32 \(flags over .*r.yaml\)' \
    -- "$C" eval base/model --recipe "$(D)/r.yaml" --dtype float32 --tasks passkey --lengths 32 --depths 0.5 --samples 1 --heldout-batches 1
}
case_13_eval_torchscript_refuses_dtype() {
  expect fail "--dtype applies to checkpoints; base/model.ts is a TorchScript export" -- "$C" eval base/model.ts --dtype bfloat16
}
case_13_assign_takes_the_recipe_dtype() {
  sed 's/dtype: float32/dtype: bfloat16/' base/recipe.yaml > "$(D)/r.yaml"
  expect ok '' --stderr 'model on cpu in bfloat16 \(the recipe\)' \
    -- "$C" assign uniform base/model --recipe "$(D)/r.yaml" --out "$(D)/a.json"
}

# --- 14. sharded indexes whose shards leave the checkpoint -------------------------------------
index_model() {  # DIR SHARD_NAME: a model whose index maps every tensor to SHARD_NAME
  model_copy "$1"
  local f=$1/model.safetensors n names name map=""
  n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
  names=$(head -c $((8 + n)) "$f" | tail -c "$n" | grep -o '"[^"]*":{"' | sed 's/^"//; s/":{"$//' | grep -v '^__metadata__$')
  for name in $names; do map="$map${map:+, }\"$name\": \"$2\""; done
  printf '{"metadata": {}, "weight_map": {%s}}\n' "$map" > "$1/model.safetensors.index.json"
}
case_14_index_shard_outside_with_dotdot() {
  index_model "$(D)/m" "../../../base/model/model.safetensors"
  expect fail "model.safetensors.index.json: weight_map\['.*'\] is '../../../base/model/model.safetensors'; expected a file name inside" \
    -- "$C" inspect "$(D)/m"
}
case_14_index_shard_absolute_path() {
  index_model "$(D)/m" "$PWD/base/model/model.safetensors"
  expect fail "model.safetensors.index.json: weight_map\[.*expected a file name inside" -- "$C" inspect "$(D)/m"
}
case_14_index_shard_missing() {
  index_model "$(D)/m" "model-00001-of-00002.safetensors"
  expect fail "maps to shard 'model-00001-of-00002.safetensors', which does not exist" -- "$C" inspect "$(D)/m"
}
case_14_index_not_json() {
  model_copy "$(D)/m" && echo '{"weight_map": ' > "$(D)/m/model.safetensors.index.json"
  expect fail "model.safetensors.index.json: not valid JSON" -- "$C" inspect "$(D)/m"
}
case_14_index_in_the_directory_succeeds() {
  index_model "$(D)/m" "model.safetensors"
  expect ok '' --stdout 'parameters +[0-9,]+' -- "$C" inspect "$(D)/m"
}

# --- 15. everything else: types, missing keys, sizes, commands -------------------------------
case_15_unknown_command() {
  expect fail "unknown command 'frobnicate'" -- "$C" frobnicate
}
case_15_config_missing_key() {
  model_copy "$(D)/m" && config_edit "$(D)/m" '/"hidden_size"/d'
  expect fail "config.json: missing required key 'hidden_size'" -- "$C" inspect "$(D)/m"
}
case_15_config_wrong_type() {
  model_copy "$(D)/m" && config_edit "$(D)/m" 's/"vocab_size": 4002/"vocab_size": "4002"/'
  expect fail "config.json: key 'vocab_size' must be a positive integer, got \"4002\"" -- "$C" inspect "$(D)/m"
}
case_15_config_not_an_object() {
  model_copy "$(D)/m" && echo '[1, 2]' > "$(D)/m/config.json"
  expect fail "config.json: expected a JSON object" -- "$C" inspect "$(D)/m"
}
case_15_config_truncated() {
  model_copy "$(D)/m" && head -c 100 base/model/config.json > "$(D)/m/config.json"
  expect fail "config.json: not valid JSON" -- "$C" inspect "$(D)/m"
}
case_15_config_negative_heads() {
  model_copy "$(D)/m" && config_edit "$(D)/m" 's/"num_attention_heads": 4/"num_attention_heads": -4/'
  expect fail "key 'num_attention_heads' must be a positive integer, got -4" -- "$C" inspect "$(D)/m"
}
case_15_config_fewer_layers_than_weights() {
  model_copy "$(D)/m" && config_edit "$(D)/m" 's/"num_hidden_layers": 2/"num_hidden_layers": 1/'
  expect fail "checkpoint has tensors this Qwen3ForCausalLM config does not use: model.layers.1" -- "$C" inspect "$(D)/m"
}
case_15_safetensors_truncated() {
  model_copy "$(D)/m" && truncate -s 5000 "$(D)/m/model.safetensors"
  expect fail "model.safetensors: tensor '.*': data_offsets .* out of range" -- "$C" inspect "$(D)/m"
}
case_15_safetensors_too_short() {
  model_copy "$(D)/m" && printf 'abc' > "$(D)/m/model.safetensors"
  expect fail "model.safetensors: file is 3 bytes, too short" -- "$C" inspect "$(D)/m"
}
case_15_prompt_id_beyond_vocabulary() {
  expect fail "token id 5000 is outside the vocabulary of 4002" -- "$C" inspect base/model --prompt-ids 1,5000
}
case_15_generate_prompt_id_beyond_vocabulary() {
  expect fail "token id 5000 is outside the vocabulary of 4002" -- "$C" generate base/model.ts --prompt-ids 1,5000
}
case_15_decode_id_beyond_vocabulary() {
  expect fail "--decode: token id 99999999 is outside the vocabulary of 4002" -- "$C" tokenize --tokenizer base/tokenizer.json --decode 1,99999999
}
case_15_eval_negative_length() {
  expect fail "--lengths: -5 is not a positive whole number" -- "$C" eval base/model --lengths=-5
}
case_15_eval_depth_outside_unit_interval() {
  expect fail "--depths: 1.5 is outside \[0, 1\]" -- "$C" eval base/model --depths 0.5,1.5
}
case_15_assign_recipe_with_several_windows() {
  sed -e 's/constraint: {target: 0.5}/constraint: {kv_budget: {bytes: 3000, context: 64}}/' \
    -e 's/window: 4}/windows: [2, 4]}/' base/recipe.yaml > "$(D)/r.yaml"
  expect ok '' --creates "$(D)/a.json" -- "$C" assign uniform base/model --recipe "$(D)/r.yaml" --out "$(D)/a.json"
  expect fail "consa assign: attention-span scores one window; with several windows \(the recipe's gates.windows\) use uniform or random, or pass --window W" \
    -- "$C" assign attention-span base/model --recipe "$(D)/r.yaml" --out "$(D)/b.json"
}
case_15_assign_windows_flags() {
  expect fail "consa assign: several windows need --kv-budget BYTES --kv-context N" \
    -- "$C" assign random base/model --windows 4,2 --out "$(D)/a.json"
  expect fail "--windows: expected at least two windows" \
    -- "$C" assign random base/model --windows 4 --kv-budget 3000 --kv-context 64 --out "$(D)/a.json"
  expect fail "--windows: 'x' is not a window" \
    -- "$C" assign random base/model --windows 4,x --kv-budget 3000 --kv-context 64 --out "$(D)/a.json"
  expect fail "consa assign: --kv-budget needs --kv-context" \
    -- "$C" assign random base/model --windows 4,2 --kv-budget 3000 --out "$(D)/a.json"
  expect fail "consa assign: give --window W or --windows W1,W2, not both" \
    -- "$C" assign random base/model --window 4 --windows 4,2 --kv-budget 3000 --kv-context 64 --out "$(D)/a.json"
}
case_15_sweep_kv_budgets_flags() {
  expect fail "consa sweep: give --targets or --kv-budgets, not both" \
    -- "$C" sweep base/recipe.yaml --targets 0.5 --kv-budgets 4KiB --out "$(D)/s"
  expect fail "sweep --kv-budgets needs constraint.kv_budget in the recipe" \
    -- "$C" sweep base/recipe.yaml --kv-budgets 4KiB --methods uniform --out "$(D)/s"
  sed 's/^constraint: .*/constraint: {kv_budget: {bytes: 1KiB, context: 64}}/' base/recipe.yaml > "$(D)/budget.yaml"
  expect fail "--kv-budgets: '12parsecs' has unit 'parsecs'" \
    -- "$C" sweep "$(D)/budget.yaml" --kv-budgets 1KiB,12parsecs --methods uniform --out "$(D)/s"
  expect fail "constraint.kv_budget is set: sweep --kv-budgets" \
    -- "$C" sweep "$(D)/budget.yaml" --targets 0.5 --methods uniform --out "$(D)/s"
  # 2 layers x 2 KV heads of head_dim 8 at 2 bytes: 128 bytes each on the 4-token window.
  expect fail "sweep --kv-budgets 100: 100 bytes at 64 tokens" \
    -- "$C" sweep "$(D)/budget.yaml" --kv-budgets 1KiB,100 --methods uniform --out "$(D)/s"
  expect ok '' --stdout 'uniform' -- "$C" sweep "$(D)/budget.yaml" --kv-budgets 1KiB --methods uniform \
    --lengths 32 --samples 1 --out "$(D)/s"
  expect ok '' --stdout ',1024,' -- cat "$(D)/s/sweep.csv"
}
case_15_assign_target_above_one() {
  expect fail "--target must be in \[0, 1\], got 1.5" -- "$C" assign uniform base/model --target 1.5 --window 4 --out "$(D)/a.json"
}
case_15_assign_unknown_method() {
  expect fail "magic" -- "$C" assign magic base/model --target 0.5 --out "$(D)/a.json"
}
case_15_export_unknown_format() {
  expect fail "--format 'onnx' is not available; supported: hf, torchscript" -- "$C" export base/run --format onnx --out "$(D)/x"
}
case_15_init_zero_layers() {
  expect fail "--layers must be > 0, got 0" -- "$C" init --out "$(D)/m" --layers 0
}
case_15_inspect_succeeds() {
  expect ok '' --stdout 'next tokens after 3 prompt tokens' -- "$C" inspect base/model --prompt-ids 1,2,3 --top 2
}
case_15_generate_succeeds() {
  expect ok '' --stderr 'decode 3 tokens' -- "$C" generate base/model.ts --prompt-ids 1,2,3 --max-new-tokens 3
}
case_15_export_unknown_kernels() {
  expect fail "--kernels 'cuda' is not available; supported: aten, fused" -- "$C" export base/run --format torchscript --kernels cuda --out "$(D)/m.ts"
}
case_15_export_kernels_for_hf() {
  expect fail "--kernels applies to --format torchscript only" -- "$C" export base/run --format hf --kernels fused --out "$(D)/hf"
}
case_15_export_fused_torchscript_succeeds() {
  expect ok '' --creates "$(D)/m.ts" --stdout 'kernels fused' -- "$C" export base/run --format torchscript --kernels fused --out "$(D)/m.ts"
}
case_15_export_hf_succeeds() {
  expect ok '' --stdout 'exported base/model' -- "$C" export base/run --format hf --out "$(D)/hf"
}
