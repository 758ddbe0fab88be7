// The consa command: init and dense training, inspect, tokenize, train/export/generate, and
// bad input giving one line on stderr and a non-zero exit.
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <filesystem>

#include "catch_compat.h"
#include "consa/data/token_shards.h"
#include "consa/export/assignment.h"
#include "consa/load/pretrained.h"
#include "helpers.h"

using namespace consa_test;

namespace {
size_t lines(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }
}  // namespace

TEST_CASE("consa init writes a random model that dense training then trains", "[cli]") {
  std::string out, err;
  const std::string dir = scratch_dir("init");
  REQUIRE(run_consa("init --out " + dir + "/init --arch llama --vocab 40 --hidden 32 --intermediate 48 --layers 2 "
                    "--heads 4 --kv-heads 2 --seed 3",
                    &out, &err) == 0);
  CHECK_THAT(out, contains("architecture  LlamaForCausalLM"));
  CHECK_THAT(out, contains("heads         4 query, 2 KV (2 per group), head_dim 8"));
  consa::CausalLM created = consa::load_pretrained(dir + "/init");
  write_text(dir + "/recipe.yaml", "model: {path: " + dir + "/init}\n" +
                                       "gates: {window: 4}\n"
                                       "data: {seq_len: 24, batch_size: 2, heldout_batches: 1, value_digits: 2}\n"
                                       "optimizer: {lr: 0.01}\n"
                                       "train: {mode: dense, steps: 3, log_every: 1}\noutput: {dir: " + dir + "/run}\n");
  REQUIRE(run_consa("train " + dir + "/recipe.yaml", &out, &err) == 0);
  CHECK_THAT(out, contains("dense training done: weights in " + dir + "/run/model"));
  consa::CausalLM trained = consa::load_pretrained(dir + "/run/model");
  CHECK(consa::weights_checksum(trained) != consa::weights_checksum(created));  // the weights moved
  CHECK(!std::filesystem::exists(dir + "/run/gates.json"));                      // no gates trained
  for (int64_t l = 0; l < 2; ++l) CHECK(trained->attention(l).group_spans[0].is_full());
  CHECK(run_consa("init --out " + dir + "/x --arch gpt2", &out, &err) == 1);
  CHECK_THAT(err, contains("--arch 'gpt2' is not supported; supported: llama, mistral, qwen2, qwen3"));
  // One overwrite policy: an existing --out is refused unless --overwrite, and left as it was.
  const std::string config_before = read_text(dir + "/init/config.json");
  CHECK(run_consa("init --out " + dir + "/init --arch qwen3 --vocab 40 --hidden 32 --layers 1", &out, &err) == 1);
  CHECK_THAT(err, contains("--out " + dir + "/init: exists; pass --overwrite to replace it"));
  CHECK(read_text(dir + "/init/config.json") == config_before);
  REQUIRE(run_consa("init --out " + dir + "/init --arch qwen3 --vocab 40 --hidden 32 --intermediate 48 --layers 1 "
                    "--heads 2 --kv-heads 1 --overwrite", &out, &err) == 0);
  CHECK(read_text(dir + "/init/config.json") != config_before);
}

TEST_CASE("consa inspect summarises a checkpoint and predicts next tokens", "[cli]") {
  std::string out, err;
  REQUIRE(run_consa("inspect " + fixture("qwen3_norm") + " --prompt-ids 1,2,3 --top 3", &out, &err) == 0);
  CHECK_THAT(out, contains("architecture  Qwen3ForCausalLM"));
  CHECK_THAT(out, contains("heads         4 query, 2 KV (2 per group), head_dim 24"));
  CHECK_THAT(out, contains("next tokens after 3 prompt tokens"));
  REQUIRE(run_consa("inspect " + fixture("mistral_swa"), &out, &err) == 0);
  CHECK_THAT(out, contains("attention     layers 0-1: swa(W=5)"));
}

TEST_CASE("bad input gives a one-line error and a non-zero exit", "[cli]") {
  std::string out, err;
  CHECK(run_consa("inspect /nonexistent/model", &out, &err) == 1);
  CHECK_THAT(err, contains("consa: error: /nonexistent/model: not a directory"));
  CHECK(lines(err) == 1);

  CHECK(run_consa("inspect " + fixture("llama_gqa") + " --prompt-ids 1,x,3", &out, &err) == 1);
  CHECK_THAT(err, contains("--prompt-ids: 'x' is not a token id"));
  CHECK(lines(err) == 1);

  CHECK(run_consa("inspect " + fixture("llama_gqa") + " --prompt-ids 1,500", &out, &err) == 1);
  CHECK_THAT(err, contains("token id 500 is outside the vocabulary of 96"));

  CHECK(run_consa("inspect " + fixture("llama_gqa") + " --device cuda:0 --dtype fp8", &out, &err) == 1);
  CHECK(lines(err) == 1);

  CHECK(run_consa("frobnicate", &out, &err) == 2);
  CHECK_THAT(err, contains("unknown command 'frobnicate'"));
}

TEST_CASE("consa tokenize trains a tokenizer and writes shards that consa train reads", "[cli]") {
  const std::string dir = scratch_dir("tokenize");
  std::string corpus;
  const char* words[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"};
  for (int i = 0; i < 300; ++i) corpus += std::string(words[i % 8]) + " " + words[(i * 3) % 8] + " " + words[(i * 5) % 8] + "\n";
  write_text(dir + "/corpus.txt", corpus);
  std::string out, err;
  REQUIRE(run_consa("tokenize --train-tokenizer --input " + dir + "/corpus.txt --tokenizer " + dir +
                        "/spm/tok.model --vocab-size 24 --eos 39 --output " + dir + "/train.tok",
                    &out, &err) == 0);
  CHECK_THAT(out, contains("from 300 documents"));
  consa::TokenShard shard = consa::TokenShard::open(dir + "/train.tok");
  // Lines i and i + 8 are the same text, so their token runs between end-of-line ids match.
  std::vector<std::vector<int64_t>> lines(1);
  for (int64_t i = 0; i < shard.size(); ++i) {
    if (shard.token(i) == 39) lines.emplace_back();
    else lines.back().push_back(shard.token(i));
  }
  lines.pop_back();
  REQUIRE(lines.size() == 300);
  for (size_t i = 0; i + 8 < lines.size(); ++i) CHECK(lines[i] == lines[i + 8]);
  CHECK(lines[0] != lines[1]);

  // The shard feeds training, mixed half and half with synthetic sequences.
  write_text(dir + "/recipe.yaml", "model: {path: " + fixture("qwen3_norm") + "}\n" +
                                       "gates: {window: 4}\n"
                                       "data: {seq_len: 32, batch_size: 2, heldout_batches: 1, shards: [" + dir +
                                       "/train.tok], synthetic_ratio: 0.5, value_digits: 2}\n"
                                       "train: {steps: 4, log_every: 2}\noutput: {dir: " + dir + "/run}\n");
  REQUIRE(run_consa("train " + dir + "/recipe.yaml", &out, &err) == 0);
  CHECK_THAT(out, contains("expected SWA fraction"));
  CHECK(read_text(dir + "/run/metrics.jsonl").find("\"step\":4") != std::string::npos);

  // consa generate tokenizes --prompt and streams text: the same as decoding its ids.
  const std::string tok = dir + "/spm/tok.model";
  REQUIRE(run_consa("tokenize --tokenizer " + tok + " --encode 'gamma alpha beta'", &out, &err) == 0);
  std::string prompt_ids = out.substr(0, out.find('\n'));
  std::replace(prompt_ids.begin(), prompt_ids.end(), ' ', ',');  // --encode prints ids separated by spaces
  const std::string model_dir = dir + "/vocab24";  // a random model over the tokenizer's 24 ids
  {
    consa::CausalLM model(tiny_config(2, 4, 2, 8, 24), at::TensorOptions().dtype(at::kFloat));
    consa::init_random_weights(model, 0.5, 3);
    consa::save_pretrained(model, model_dir);
  }
  REQUIRE(run_consa("generate " + model_dir + " --prompt-ids " + prompt_ids + " --max-new-tokens 12", &out, &err) == 0);
  std::string ids_per_line = out;
  std::replace(ids_per_line.begin(), ids_per_line.end(), ' ', '\n');
  write_text(dir + "/generated.txt", ids_per_line);
  REQUIRE(run_consa("tokenize --tokenizer " + tok + " --decode-stream < " + dir + "/generated.txt", &out, &err) == 0);
  const std::string decoded = out;
  REQUIRE(run_consa("generate " + model_dir + " --prompt 'gamma alpha beta' --tokenizer " + tok +
                        " --max-new-tokens 12",
                    &out, &err) == 0);
  CHECK(out == decoded + "\n");
  CHECK(!decoded.empty());
  // A cache that cannot fit is refused before it is allocated.
  CHECK(run_consa("generate " + model_dir + " --prompt-ids 1,2 --max-new-tokens 10000000000", &out, &err) == 1);
  CHECK_THAT(err, contains("--max-new-tokens 10000000000: a KV cache of 10000000002 positions needs"));
  CHECK(run_consa("generate " + model_dir + " --prompt-ids 1,2 --max-new-tokens 100000000000000", &out, &err) == 1);
  CHECK_THAT(err, contains("positions are more than any KV cache here can hold"));

  CHECK(run_consa("tokenize --input " + dir + "/missing.txt --tokenizer x.model", &out, &err) == 1);
  CHECK_THAT(err, contains("missing.txt: no such input file"));
}

TEST_CASE("consa inspect prints an assignment as a layer x unit map", "[cli]") {
  const std::string dir = scratch_dir("inspect-assignment");
  std::string out, err;
  REQUIRE(run_consa(std::string("train ") + CONSA_SOURCE_DIR + "/recipes/tiny_cpu.yaml model.path=" + fixture("qwen3_norm") +
                        " train.steps=20 output.dir=" + dir,
                    &out, &err) == 0);
  REQUIRE(run_consa("inspect " + dir + "/assignment.json --kv-context 1024", &out, &err) == 0);
  std::string again_out, again_err;
  CHECK(run_consa(std::string("train ") + CONSA_SOURCE_DIR + "/recipes/tiny_cpu.yaml model.path=" + fixture("qwen3_norm") +
                      " train.steps=2 output.dir=" + dir,
                  &again_out, &again_err) == 1);
  CHECK_THAT(again_err, contains("holds an earlier run (checkpoint.pt); pass --resume"));

  CHECK_THAT(out, contains("units         kv_head, SWA swa(W=8), rule exact"));
  CHECK_THAT(out, contains("achieved 0.5 (2 of 4 units on SWA)"));
  CHECK_THAT(out, contains("layer  units (F full, S sliding)"));
  CHECK_THAT(out, contains("KV cache      1024 tokens"));
  // The run exports in Hugging Face format, and the export loads back under its assignment.
  REQUIRE(run_consa("export " + dir + " --format hf --out " + dir + "/hf", &out, &err) == 0);
  CHECK_THAT(out, contains("kv_head units, 0.5 on SWA"));
  REQUIRE(run_consa("inspect " + dir + "/hf", &out, &err) == 0);
  CHECK_THAT(out, contains("swa(W=8)"));  // the hybrid layout comes back from config.json

  // The TorchScript export generates through its cache exactly the greedy tokens that full
  // recompute with the reloaded Hugging Face export gives.
  REQUIRE(run_consa("export " + dir + " --format torchscript --out " + dir + "/model.ts", &out, &err) == 0);
  REQUIRE(run_consa("generate " + dir + "/model.ts --prompt-ids 5,6,7,8 --max-new-tokens 24", &out, &err) == 0);
  CHECK_THAT(err, contains("tokens/s"));
  // Layer 0 keeps 2 KV heads x 28 positions, layer 1 2 x 8 (the window); K and V, 24 floats each.
  CHECK_THAT(err, contains("KV cache 13,824 bytes in use for 28 positions"));
  consa::CausalLM reloaded = consa::load_pretrained(dir + "/hf");
  std::vector<int64_t> expected = {5, 6, 7, 8};
  {
    at::NoGradGuard no_grad;
    for (int i = 0; i < 24; ++i)
      expected.push_back(reloaded->forward(at::tensor(expected, at::kLong).unsqueeze(0))[0][-1].argmax().item<int64_t>());
  }
  std::string expected_text;
  for (size_t i = 4; i < expected.size(); ++i) expected_text += std::to_string(expected[i]) + " ";
  CHECK(out == expected_text + "\n");
  // consa eval on the run (binarized and soft gates), and a baseline's assignment on the checkpoint.
  const std::string eval_flags = " --lengths 48 --depths 0.5 --samples 2 --value-digits 3";
  REQUIRE(run_consa("eval " + dir + eval_flags + " --out " + dir + "/eval.json", &out, &err) == 0);
  CHECK_THAT(out, contains("layout       consa, kv_head units, swa(W=8) (0.500 of units on SWA)"));
  CHECK_THAT(out, contains("perplexity"));
  CHECK(nlohmann::json::parse(read_text(dir + "/eval.json"))["retrieval"].size() == 2);
  REQUIRE(run_consa("eval " + dir + " --soft-gates" + eval_flags, &out, &err) == 0);
  CHECK_THAT(out, contains("consa (soft gates)"));
  REQUIRE(run_consa("assign uniform " + fixture("qwen3_norm") + " --target 0.5 --unit kv_head --window 8 --out " + dir +
                        "/uniform.json",
                    &out, &err) == 0);
  REQUIRE(run_consa("eval " + fixture("qwen3_norm") + " --assignment " + dir + "/uniform.json" + eval_flags, &out, &err) == 0);
  CHECK_THAT(out, contains("layout       uniform, kv_head units"));
  CHECK(run_consa("eval " + fixture("llama_gqa") + " --assignment " + dir + "/uniform.json", &out, &err) == 1);
  CHECK_THAT(err, contains("uniform.json: made for 2 layers x 4/2 heads x 24 but the model has 2 x 4/2 x 16"));
  // assign runs the model as the recipe says, or as the flags override it, and says which.
  const std::string tiny_recipe = std::string(CONSA_SOURCE_DIR) + "/recipes/tiny_cpu.yaml";
  REQUIRE(run_consa("assign uniform " + fixture("qwen3_norm") + " --recipe " + tiny_recipe + " --out " + dir + "/u2.json",
                    &out, &err) == 0);
  CHECK_THAT(err, contains("model on cpu in float32 (the recipe)"));
  REQUIRE(run_consa("assign uniform " + fixture("qwen3_norm") + " --recipe " + tiny_recipe + " --dtype bfloat16 --out " +
                        dir + "/u3.json",
                    &out, &err) == 0);
  CHECK_THAT(err, contains("model on cpu in bfloat16 (flags over the recipe)"));
  CHECK(run_consa("assign widest " + fixture("qwen3_norm") + " --out x.json", &out, &err) == 1);
  CHECK_THAT(err, contains("unknown baseline method 'widest'; supported: uniform, random, attention-span, duo"));
  // The run's own directory is never an export target, with or without --overwrite.
  const std::string assignment_before = read_text(dir + "/assignment.json");
  CHECK(run_consa("export " + dir + " --format hf --out " + dir + " --overwrite", &out, &err) == 1);
  CHECK_THAT(err, contains(": is a training run's directory; write the output elsewhere"));
  CHECK(read_text(dir + "/assignment.json") == assignment_before);
  CHECK(run_consa("export " + dir + " --format torchscript --out " + dir + "/model.ts", &out, &err) == 1);
  CHECK_THAT(err, contains("model.ts: exists; pass --overwrite"));
  CHECK(run_consa("eval " + dir + " --samples 1 --out /proc/consa-eval.json", &out, &err) == 1);
  CHECK_THAT(err, contains("--out /proc/consa-eval.json: its folder is not writable"));
  CHECK(run_consa("export " + dir + " --format onnx --out " + dir + "/x", &out, &err) == 1);
  CHECK_THAT(err, contains("--format 'onnx' is not available; supported: hf, torchscript"));
  CHECK(run_consa("generate " + dir + "/model.ts --prompt hello", &out, &err) == 1);
  CHECK_THAT(err, contains("--prompt needs a --tokenizer"));
}

TEST_CASE("consa validate prints the resolved recipe or a one-line error", "[cli]") {
  std::string out, err;
  REQUIRE(run_consa(std::string("validate ") + CONSA_SOURCE_DIR + "/recipes/tiny_cpu.yaml constraint.target=0.25", &out, &err) == 0);
  CHECK_THAT(out, contains("target: 0.25"));
  CHECK_THAT(out, contains("tiny_cpu.yaml: ok"));
  CHECK(run_consa(std::string("validate ") + CONSA_SOURCE_DIR + "/recipes/tiny_cpu.yaml gates.window=-1", &out, &err) == 1);
  CHECK_THAT(err, contains("gates.window: must be in [1, inf], got -1"));
  CHECK(lines(err) == 1);
  // What train would refuse at step 1, validate refuses too: a sequence too short for the
  // window and the needles, and a data.tokenizer that is not there.
  const std::string tiny = std::string(CONSA_SOURCE_DIR) + "/recipes/tiny_cpu.yaml model.path=" + fixture("qwen3_norm");
  REQUIRE(run_consa("validate " + tiny, &out, &err) == 0);
  CHECK_THAT(out, contains("# data.synthetic_tasks: a sample of each fits seq_len 48"));
  CHECK(run_consa("validate " + tiny + " data.seq_len=12", &out, &err) == 1);
  CHECK_THAT(err, contains("seq_len 12 is too short for min_distance 9"));
  CHECK(run_consa("validate " + tiny + " data.tokenizer=/nonexistent/tok", &out, &err) == 1);
  CHECK_THAT(err, contains("/nonexistent/tok: no such file or directory"));
  // A target the clamp cannot reach in expectation is named with the clamp that does reach it.
  REQUIRE(run_consa("validate " + tiny + " constraint.target=0.96875", &out, &err) == 0);
  CHECK_THAT(err, contains("consa: warning: constraint.target 0.96875 is beyond what gates.log_alpha_clamp 4.6 "
                           "reaches in expectation") &&
                      contains("gates.log_alpha_clamp=6.1 reaches it"));
  REQUIRE(run_consa("validate " + tiny + " constraint.target=0.96875 gates.log_alpha_clamp=6.1", &out, &err) == 0);
  CHECK_THAT(err, !contains("warning"));
  REQUIRE(run_consa("validate " + tiny + " constraint.target=0.9", &out, &err) == 0);
  CHECK_THAT(err, !contains("warning"));
  // Fused kernels where they cannot run: the CPU (and, in CPU builds, anywhere).
  CHECK(run_consa("validate " + tiny + " model.kernels=fused", &out, &err) == 1);
  CHECK_THAT(err, contains("model.kernels: fused"));
  CHECK(lines(err) == 1);
  REQUIRE(run_consa("validate " + tiny + " model.kernels=aten", &out, &err) == 0);
  CHECK_THAT(out, contains("kernels: aten"));
}

TEST_CASE("consa validate turns a KV budget into its SWA fraction, or refuses it in one line", "[cli]") {
  std::string out, err;
  const std::string model = " model.path=" + fixture("qwen3_norm");
  const std::string tiny = std::string(CONSA_SOURCE_DIR) + "/recipes/tiny_cpu.yaml" + model;
  CHECK(run_consa("validate " + tiny + " constraint.kv_budget.bytes=1MiB constraint.kv_budget.context=1024", &out, &err) == 1);
  CHECK_THAT(err, contains("constraint.target and constraint.kv_budget both set"));
  // 2 layers x 2 KV heads x head_dim 24 in bf16: 96 bytes a position per unit; at 1,024 tokens
  // the dense cache is 393,216 bytes and the all-SWA one (window 8) 3,072.
  const std::string dir = scratch_dir("budget_recipe");
  std::string text = read_text(std::string(CONSA_SOURCE_DIR) + "/recipes/tiny_cpu.yaml");
  const size_t at = text.find("  target: 0.5\n");
  REQUIRE(at != std::string::npos);
  text.replace(at, 14, "  kv_budget: {bytes: 198144, context: 1024}\n");
  write_text(dir + "/r.yaml", text);
  const std::string budget = dir + "/r.yaml" + model;
  REQUIRE(run_consa("validate " + budget, &out, &err) == 0);
  CHECK_THAT(out, contains("# constraint.kv_budget: 198144 bytes at 1024 tokens = SWA fraction 0.5 of 4 units "
                           "(dense 393216 bytes, all SWA 3072)"));
  CHECK_THAT(out, contains("kv_budget:") && !contains("target:"));
  CHECK(run_consa("validate " + budget + " constraint.kv_budget.bytes=3000", &out, &err) == 1);
  CHECK_THAT(err, contains("constraint.kv_budget: 3000 bytes at 1024 tokens is below the 3072 bytes"));
  CHECK(lines(err) == 1);
  CHECK(run_consa("validate " + budget + " gates.unit=head", &out, &err) == 1);
  CHECK_THAT(err, contains("constraint.kv_budget: needs gates.unit layer or kv_head"));
  CHECK(run_consa("validate " + budget + " constraint.kv_budget.context=8", &out, &err) == 1);
  CHECK_THAT(err, contains("context 8 is within the window 8"));
  CHECK(run_consa("validate " + budget + " constraint.kv_budget.bytes=lots", &out, &err) == 1);
  CHECK_THAT(err, contains("constraint.kv_budget.bytes"));
}

TEST_CASE("consa bench train times every mode and counts model FLOPs in closed form", "[cli]") {
  const std::string dir = scratch_dir("bench_train");
  std::string out, err;
  REQUIRE(run_consa("bench train --shapes tiny --seq-lens 48 --modes dense,gated,gates,hard --tokens-per-step 96 "
                    "--window 16 --sparsity 0.5 --warmup 1 --steps 1 --repeats 2 --device cpu --dtype float32 --out " +
                        dir + "/train.json",
                    &out, &err) == 0);
  const nlohmann::json report = nlohmann::json::parse(read_text(dir + "/train.json"));
  REQUIRE(report["results"].size() == 4);
  // The tiny shape: 2 layers, 4 query heads of 16, 2 KV heads, hidden 64, MLP 128, vocab 256, tied.
  // Per layer: two norms of 64, q/k norms of 16, q and o 64 x 64, k and v 64 x 32, MLP 3 x 64 x 128.
  const double params = 256.0 * 64 + 2 * (2 * 64 + 64 * 16 * 4 * 2 + 64 * 16 * 2 * 2 + 3 * 64 * 128 + 2 * 16) + 64;
  const double batch = 2, length = 48, window = 16;
  const double full_pairs = length * (length + 1) / 2;
  const double window_pairs = window * (window + 1) / 2 + (length - window) * window;
  const double per_head = 3 * 4 * 16 * batch;  // forward + backward, QK^T and PV
  for (const auto& row : report["results"]) {
    INFO(row.dump());
    CHECK(row["batch"] == 2);
    CHECK(row["repeat_step_ms"].size() == 2);
    CHECK(row["step_ms"].get<double>() > 0);
    CHECK(row["tokens_per_s"].get<double>() == Approx(batch * length / (row["step_ms"].get<double>() / 1e3)));
    // Hard: half the KV groups (2 of the 4 query heads per layer) on the window.
    const bool hard = row["mode"] == "hard";
    const double pairs = 2 * (hard ? 2 * full_pairs + 2 * window_pairs : 4 * full_pairs);
    CHECK(row["model_flops_per_step"].get<double>() == Approx(6 * params * batch * length + per_head * pairs));
  }
  CHECK(out.find("gated") != std::string::npos);
  CHECK(run_consa("bench train --shapes tiny --modes sparse --device cpu", &out, &err) == 1);
  CHECK(err.find("--modes: 'sparse' is not a mode") != std::string::npos);
  CHECK(run_consa("bench speed", &out, &err) == 1);
}

TEST_CASE("consa bench decode reports every batch, context and sparsity with the closed-form KV bytes", "[cli]") {
  const std::string dir = scratch_dir("bench_decode");
  std::string out, err;
  REQUIRE(run_consa("bench decode --shape tiny --contexts 40 --sparsity 0,0.5 --window 16 --batch 1,2 "
                    "--decode-steps 2 --repeats 1 --device cpu --dtype float32 --out " + dir + "/decode.json",
                    &out, &err) == 0);
  const nlohmann::json report = nlohmann::json::parse(read_text(dir + "/decode.json"));
  REQUIRE(report["results"].size() == 4);
  // The tiny shape: 2 layers of 2 KV heads of 16 dims; the cache holds 40 + 2 decoded positions,
  // K and V in fp32. At rho 0.5 one KV head per layer keeps only its window of 16.
  const double capacity = 42, per_position = 2 * 16 * 4;
  for (const auto& row : report["results"]) {
    INFO(row.dump());
    const double batch = row["batch"].get<double>();
    const double positions = row["sparsity"] == 0 ? 2 * 2 * capacity : 2 * (capacity + 16);
    CHECK(row["kv_bytes"].get<double>() == batch * positions * per_position);
    CHECK(row["kv_bytes_analytic"].get<double>() == batch * positions * per_position);
    CHECK(row["decode_path"] == "extend");  // no CUDA graphs on a CPU
    CHECK(row["query_block"] == 1024);      // the export's, up to batch 8
    CHECK(row["decode_ms_per_step"].get<double>() == row["decode_eager_ms_per_step"].get<double>());
    CHECK(row["decode_tokens_per_s"].get<double>() == Approx(batch * 1e3 / row["decode_ms_per_step"].get<double>()));
  }
  CHECK(run_consa("bench decode --shape tiny --batch 0 --device cpu", &out, &err) == 1);
  CHECK(err.find("--batch: sizes must be > 0") != std::string::npos);
  CHECK(run_consa("bench decode --shape tiny --query-block -1 --device cpu", &out, &err) == 1);
  CHECK(err.find("--query-block must be >= 0") != std::string::npos);
}

TEST_CASE("bench decode --memory-budget decodes the most sequences whose weights and KV cache fit", "[cli]") {
  const std::string dir = scratch_dir("memory-budget");
  std::string out, err;
  REQUIRE(run_consa("bench decode --shape tiny --device cpu --dtype float32 --contexts 64 --sparsity 0,1 --window 8 "
                    "--decode-steps 2 --repeats 1 --graphs=false --memory-budget 1MiB --out " + dir + "/b.json",
                    &out, &err) == 0);
  const auto report = nlohmann::json::parse(read_text(dir + "/b.json"));
  const int64_t layers = report["layers"], kv_heads = report["kv_heads"], head_dim = report["head_dim"];
  const int64_t capacity = 64 + 2, budget = 1 << 20;
  REQUIRE(report["results"].size() == 2);
  for (const auto& row : report["results"]) {
    // Closed form: a full-attention KV head keeps every position, a sliding one the window.
    const int64_t positions = row["sparsity"] == 0 ? capacity : 8;
    const int64_t per_sequence = layers * kv_heads * positions * 2 * head_dim * 4;
    const int64_t weights = row["weight_bytes"], batch = row["batch"];
    CHECK(row["kv_bytes_per_sequence"] == per_sequence);
    CHECK(weights + batch * per_sequence <= budget);
    CHECK(weights + (batch + 1) * per_sequence > budget);
    CHECK(row["kv_bytes"] == batch * per_sequence);
    CHECK(row["decode_tokens_per_s_per_kv_gib"].get<double>() > 0);
  }
  CHECK(run_consa("bench decode --shape tiny --device cpu --memory-budget 1MiB --batch 3", &out, &err) == 1);
  CHECK_THAT(err, contains("--memory-budget chooses the batch"));
  CHECK(run_consa("bench decode --shape tiny --device cpu --memory-budget 12parsecs", &out, &err) == 1);
  CHECK_THAT(err, contains("--memory-budget: '12parsecs' has unit 'parsecs'"));
  CHECK(run_consa("bench decode --shape tiny --device cpu --memory-budget 1KiB", &out, &err) == 1);
  CHECK_THAT(err, contains("do not fit"));
}

TEST_CASE("overrides: lists with commas reach the recipe whole, empty values are refused", "[cli]") {
  std::string out, err;
  const std::string recipe = std::string(CONSA_SOURCE_DIR) + "/recipes/tiny_cpu.yaml";
  REQUIRE(run_consa("validate " + recipe + " data.synthetic_tasks=[passkey,associative_recall,multi_key_needle]", &out, &err) == 0);
  CHECK_THAT(out, contains("synthetic_tasks: [passkey, associative_recall, multi_key_needle]"));
  CHECK(run_consa("validate " + recipe + " train.steps=", &out, &err) == 1);
  CHECK_THAT(err, contains("override 'train.steps=': no value after '='"));
}
