// Evaluation metrics on cases with known answers, the baseline allocators (exact targets, the
// interleave pattern, attention mass against a closed form, frozen weights), and sweep resumption.
#include <ATen/core/grad_mode.h>
#include <torch/serialize/input-archive.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/data/token_shards.h"
#include "consa/eval/baselines.h"
#include "consa/eval/evaluate.h"
#include "consa/eval/sweep.h"
#include "consa/load/pretrained.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
namespace fs = std::filesystem;

namespace {

CausalLM random_model(const ModelConfig& c, uint64_t seed) {
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, seed);
  return model;
}

int64_t swa_units(const Assignment& a) {
  int64_t n = 0;
  for (const auto& l : a.full) n += std::count(l.begin(), l.end(), false);
  return n;
}

EvalOptions small_eval() {
  EvalOptions o;
  o.lengths = {48, 64};
  o.depths = {0.2, 0.8};
  o.samples = 4;
  o.value_digits = 3;
  o.num_needles = 2;
  return o;
}

// Held-out retrieval data for perplexity.
DataOptions small_data(int64_t seq_len) {
  DataOptions data;
  data.seq_len = seq_len;
  data.batch_size = 2;
  data.heldout_batches = 2;
  data.value_digits = 3;
  return data;
}

// A layout with no SWA unit, for evaluating plain functions.
Assignment dense_layout(const ModelConfig& c) {
  CausalLM m(c, at::TensorOptions().dtype(at::kFloat));
  return declared_assignment(m, "dense");
}

}  // namespace

TEST_CASE("retrieval scoring and perplexity on functions with known answers", "[eval]") {
  const ModelConfig c = tiny_config(2, 4, 2, 8, 40);
  const Assignment layout = dense_layout(c);
  EvalOptions o = small_eval();
  o.perplexity_data = small_data(32);
  // An oracle that puts all mass on the true next token retrieves everything.
  const LogitsFn oracle = [&](const at::Tensor& ids) {
    at::Tensor next = at::cat({ids.narrow(1, 1, ids.size(1) - 1), ids.narrow(1, 0, 1)}, 1);
    return at::one_hot(next, c.vocab_size).to(at::kFloat) * 50.0;
  };
  EvalReport perfect = evaluate(oracle, layout, c.vocab_size, o);
  CHECK(perfect.retrieval_accuracy() == 1.0);
  CHECK(perfect.retrieval.size() == 2 * 2 * 2);
  CHECK(perfect.perplexity() == Approx(1.0).margin(1e-6));
  // Flat logits: perplexity is the vocabulary size; the argmax (id 0) is never a digit here.
  const LogitsFn flat = [&](const at::Tensor& ids) { return at::zeros({ids.size(0), ids.size(1), c.vocab_size}); };
  o.first_id = 1;
  EvalReport uniform = evaluate(flat, layout, c.vocab_size, o);
  CHECK(uniform.retrieval_accuracy() == 0.0);
  CHECK(uniform.perplexity() == Approx(static_cast<double>(c.vocab_size)).epsilon(1e-6));
  // The oracle with its last answer digit wrong retrieves nothing.
  const LogitsFn off_by_one = [&](const at::Tensor& ids) {
    at::Tensor logits = oracle(ids);
    logits.select(1, ids.size(1) - 2).zero_();  // predicts id 0 for the final token
    return logits;
  };
  CHECK(evaluate(off_by_one, layout, c.vocab_size, o).retrieval_accuracy() == 0.0);
  // KV bytes: dense layout, bf16.
  CHECK(perfect.kv_cache[1].dense_bytes == 2 * 2 * 64 * 2 * 8 * 2);
  CHECK(perfect.kv_cache[1].full_attention_bytes == perfect.kv_cache[1].dense_bytes);
}

TEST_CASE("perplexity under data.document_mask runs each document alone and skips cross-document targets", "[eval]") {
  // Every token is its document's number, so a model that repeats its input is perfect inside a
  // document; any call that mixes documents, or a scored cross-document target, costs it.
  const std::string dir = scratch_dir("eval_documents");
  std::vector<int64_t> ids, starts;
  for (int64_t d = 0; d < 30; ++d) {
    starts.push_back(static_cast<int64_t>(ids.size()));
    ids.insert(ids.end(), 3 + (d * 7) % 11, 1 + d);
  }
  write_token_shard(dir + "/docs.tok", ids, starts);
  const ModelConfig c = tiny_config(2, 4, 2, 8, 40);
  EvalOptions o = small_eval();
  o.lengths.clear();
  DataOptions data;
  data.seq_len = 16;
  data.batch_size = 2;
  data.heldout_batches = 2;
  data.synthetic_ratio = 0;
  data.shards = {dir + "/docs.tok"};
  data.document_mask = true;
  o.perplexity_data = data;
  int64_t mixed_calls = 0;
  const LogitsFn repeat = [&](const at::Tensor& in) {
    for (int64_t r = 0; r < in.size(0); ++r) mixed_calls += !(in[r] == in[r][0]).all().item<bool>();
    return at::one_hot(in, c.vocab_size).to(at::kFloat) * 50.0;
  };
  CHECK(evaluate(repeat, dense_layout(c), c.vocab_size, o).perplexity() == Approx(1.0).margin(1e-6));
  CHECK(mixed_calls == 0);
  o.perplexity_data->document_mask = false;
  CHECK(evaluate(repeat, dense_layout(c), c.vocab_size, o).perplexity() > 1.5);
  CHECK(mixed_calls > 0);
}

TEST_CASE("a model whose attention adds nothing scores the same under any assignment", "[eval]") {
  const ModelConfig c = tiny_config(3, 4, 2, 8, 40);
  CausalLM model = random_model(c, 5);
  {
    at::NoGradGuard no_grad;
    for (int64_t l = 0; l < 3; ++l) model->attention(l).o_proj->weight.zero_();  // attention output is 0
  }
  EvalOptions o = small_eval();
  o.perplexity_data = small_data(48);
  BaselineOptions b;
  b.swa = AttentionSpan::sliding(4);
  std::vector<double> perplexities;
  for (double target : {0.0, 0.5, 1.0}) {
    b.target = target;
    Assignment a = make_baseline(BaselineMethod::Random, model, b);
    a.apply(model);
    EvalReport r = evaluate([&](const at::Tensor& ids) { return model->forward(ids); }, a, c.vocab_size, o);
    perplexities.push_back(r.perplexity());
    CHECK(r.kv_cache[0].full_attention_bytes + r.kv_cache[0].sliding_window_bytes <= r.kv_cache[0].dense_bytes);
  }
  CHECK(perplexities[0] == Approx(perplexities[1]).epsilon(1e-6));
  CHECK(perplexities[0] == Approx(perplexities[2]).epsilon(1e-6));
}

TEST_CASE("every baseline meets its target exactly, at every granularity and scope", "[eval]") {
  const ModelConfig c = tiny_config(4, 4, 2, 8, 40);
  CausalLM model = random_model(c, 6);
  const std::string before = weights_checksum(model);
  for (BaselineMethod method : {BaselineMethod::Uniform, BaselineMethod::Random, BaselineMethod::AttentionSpan,
                                BaselineMethod::Duo})
    for (GateUnit unit : {GateUnit::Layer, GateUnit::KvHead, GateUnit::Head})
      for (ConstraintScope scope : {ConstraintScope::Global, ConstraintScope::PerLayer})
        for (double target : {0.25, 0.5, 0.75}) {
          if (unit == GateUnit::Layer && scope == ConstraintScope::PerLayer) continue;  // one unit a layer
          BaselineOptions b;
          b.unit = unit;
          b.scope = scope;
          b.target = target;
          b.swa = AttentionSpan::sliding(6, 1);
          b.data.seq_len = 40;
          b.data.batch_size = 2;
          b.data.value_digits = 3;
          b.calibration_batches = 1;
          b.duo_steps = 3;
          Assignment a = make_baseline(method, model, b);
          const int64_t units = unit == GateUnit::Layer ? 1 : unit == GateUnit::KvHead ? 2 : 4;
          INFO(baseline_method_name(method) << " " << gate_unit_name(unit) << " " << constraint_scope_name(scope)
                                            << " target " << target);
          CHECK(a.method == baseline_method_name(method));
          const int64_t expected = scope == ConstraintScope::PerLayer ? 4 * std::llround(target * units)
                                                                      : std::llround(target * 4 * units);
          CHECK(swa_units(a) == expected);
          if (scope == ConstraintScope::PerLayer)
            for (const auto& layer : a.full)
              CHECK(std::count(layer.begin(), layer.end(), false) == std::llround(target * units));
        }
  CHECK(weights_checksum(model) == before);  // duo trains gates only
  for (int64_t l = 0; l < 4; ++l) CHECK(!model->attention(l).fa_weight.defined());  // and leaves no gates behind
}

TEST_CASE("uniform keeps full attention on every k-th unit from the offset", "[eval]") {
  const ModelConfig c = tiny_config(6, 4, 2, 8, 40);
  CausalLM model = random_model(c, 7);
  BaselineOptions b;
  b.unit = GateUnit::Layer;
  b.target = 0.5;
  auto full_layers = [&](const Assignment& a) {
    std::vector<int64_t> out;
    for (int64_t l = 0; l < 6; ++l)
      if (a.full[l][0]) out.push_back(l);
    return out;
  };
  CHECK(full_layers(make_baseline(BaselineMethod::Uniform, model, b)) == std::vector<int64_t>{0, 2, 4});
  b.offset = 1;
  CHECK(full_layers(make_baseline(BaselineMethod::Uniform, model, b)) == std::vector<int64_t>{1, 3, 5});
  b.target = 5.0 / 6.0;  // Gemma 3: five local layers per global one
  b.offset = 5;
  CHECK(full_layers(make_baseline(BaselineMethod::Uniform, model, b)) == std::vector<int64_t>{5});
}

TEST_CASE("attention mass outside the window matches the closed form for uniform attention", "[eval]") {
  const ModelConfig c = tiny_config(2, 4, 2, 8, 40);
  CausalLM model = random_model(c, 8);
  {
    at::NoGradGuard no_grad;
    model->attention(0).q_proj->weight.zero_();  // all scores 0: each query spreads over its i + 1 keys
  }
  const int64_t window = 5, sinks = 2, len = 30;
  std::vector<at::Tensor> batches = {at::randint(0, 40, {2, len}, at::TensorOptions().dtype(at::kLong))};
  at::Tensor mass = attention_mass_outside(model, GateUnit::Head, AttentionSpan::sliding(window, sinks), batches);
  // Query i sees i + 1 keys; window + sinks of them stay visible: (i + 1 - window - sinks) / (i + 1).
  double expected = 0;
  for (int64_t i = window + sinks; i < len; ++i) expected += static_cast<double>(i + 1 - window - sinks) / (i + 1);
  expected /= static_cast<double>(len - window - sinks);
  for (int64_t h = 0; h < 4; ++h) CHECK(mass[0][h].item<double>() == Approx(expected).epsilon(1e-5));
  CHECK(mass[1].min().item<double>() >= 0.0);
  CHECK(mass[1].max().item<double>() <= 1.0);
  // Narrower heads go to SWA first.
  BaselineOptions b;
  b.unit = GateUnit::Head;
  b.swa = AttentionSpan::sliding(window, sinks);
  b.target = 0.5;
  b.data.seq_len = len;
  b.data.batch_size = 2;
  b.calibration_batches = 1;
  Assignment a = make_baseline(BaselineMethod::AttentionSpan, model, b);
  double max_swa = -1, min_full = 2;
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t h = 0; h < 4; ++h) {
      if (a.full[l][h]) min_full = std::min(min_full, a.scores[l][h]);
      else max_swa = std::max(max_swa, a.scores[l][h]);
    }
  CHECK(max_swa <= min_full);
}

namespace {

// A sweep recipe on the qwen3_norm fixture (3 stage-1 steps), with `extra` YAML sections.
Recipe sweep_recipe(const std::string& dir, const std::string& extra) {
  write_text(dir + "/recipe.yaml", "model: {path: " + fixture("qwen3_norm") + "}\n" +
                                       "gates: {window: 8}\n"
                                       "data: {seq_len: 40, batch_size: 2, heldout_batches: 1, value_digits: 3}\n"
                                       "train: {steps: 3, log_every: 1}\noutput: {dir: " + dir + "/unused}\n" + extra);
  return load_recipe(dir + "/recipe.yaml");
}

SweepOptions sweep_options(const std::string& dir, const Recipe& recipe, std::vector<double> targets,
                           std::vector<std::string> methods) {
  SweepOptions o;
  o.targets = std::move(targets);
  o.methods = std::move(methods);
  o.out_dir = dir + "/sweep";
  o.eval = small_eval();
  o.eval.value_digits = 3;
  o.eval.perplexity_data = recipe.data;
  return o;
}

}  // namespace

TEST_CASE("a sweep resumes without redoing finished runs", "[eval]") {
  const std::string dir = scratch_dir("sweep");
  const Recipe recipe = sweep_recipe(dir, "");
  SweepOptions o = sweep_options(dir, recipe, {0.5, 1.0}, {"consa", "uniform", "duo"});
  o.baseline.duo_steps = 2;
  std::ostringstream log;
  SweepSummary first = run_sweep(recipe, o, log);
  CHECK(first.ran == 6);
  CHECK(first.skipped == 0);
  const auto stamp = fs::last_write_time(sweep_run_dir(o.out_dir, "uniform", 0.5) + "/eval.json");
  fs::remove(sweep_run_dir(o.out_dir, "duo", 1.0) + "/eval.json");
  SweepSummary second = run_sweep(recipe, o, log);
  CHECK(second.ran == 1);
  CHECK(second.skipped == 5);
  CHECK(fs::last_write_time(sweep_run_dir(o.out_dir, "uniform", 0.5) + "/eval.json") == stamp);
  const std::string csv = read_text(o.out_dir + "/sweep.csv");
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 7);  // header + 6 rows
  CHECK_THAT(csv, contains("consa,0.5,0.5,"));
  CHECK_THAT(read_text(o.out_dir + "/sweep.md"), contains("| uniform | 1.000 | 1.000 |"));
  o.methods = {"frobnicate"};
  CHECK_THROWS_WITH(run_sweep(recipe, o, log), contains("unknown baseline method 'frobnicate'"));
}

TEST_CASE("a sweep's dense row trains the dense model for the recovery's steps and learning rate", "[eval]") {
  const std::string dir = scratch_dir("sweep_dense");
  const Recipe recipe = sweep_recipe(
      dir, "optimizer: {lr: 0.02}\nschedule: {kind: cosine, warmup_steps: 2}\nrecover: {steps: 4, lr: 0.005}\n");
  SweepOptions o = sweep_options(dir, recipe, {0.5, 0.75}, {"consa", "dense"});
  const std::vector<SweepRun> runs = sweep_runs(recipe, o);
  REQUIRE(runs.size() == 3);  // consa at each target, dense once
  CHECK(runs[2].method == "dense");
  CHECK(runs[2].target == 0);
  std::ostringstream log;
  CHECK(run_sweep(recipe, o, log).ran == 3);
  // The dense run's updates are stage 2's of a consa run: as many, at the same learning rates.
  auto stage2_lrs = [](const std::string& run) {
    std::vector<double> lrs;
    std::istringstream lines(read_text(run + "/metrics.jsonl"));
    for (std::string line; std::getline(lines, line);) {
      const auto m = nlohmann::json::parse(line);
      if (m.contains("lr") && m["stage"] == 2) lrs.push_back(m["lr"].get<double>());
    }
    return lrs;
  };
  const std::string dense = sweep_run_dir(o.out_dir, "dense", 0);
  const std::vector<double> dense_lrs = stage2_lrs(dense);
  CHECK(dense_lrs.size() == 4);
  CHECK(dense_lrs == stage2_lrs(sweep_run_dir(o.out_dir, "consa", 0.5)));
  const double peak = *std::max_element(dense_lrs.begin(), dense_lrs.end());  // recover.lr's schedule
  CHECK(peak <= 0.005 + 1e-12);
  CHECK(peak > 0.0025);
  // Its weights moved, and it keeps full attention everywhere.
  CausalLM base = load_pretrained(fixture("qwen3_norm"));
  CausalLM trained = load_pretrained(dense + "/model");
  CHECK(max_abs_diff(base->model->norm->weight, trained->model->norm->weight) +
            max_abs_diff(base->model->layer_list[0]->mlp->up_proj->weight, trained->model->layer_list[0]->mlp->up_proj->weight) >
        0);
  CHECK(Assignment::load(dense + "/assignment.json").achieved_sparsity() == 0);
  CHECK_THAT(read_text(o.out_dir + "/sweep.csv"), contains("\ndense,0.0,0.0,"));
  // It trained on stage 2's sequences: both runs end at the same place in the data.
  auto data_position = [](const std::string& run) {
    torch::serialize::InputArchive archive;
    archive.load_from(run + "/checkpoint.pt");
    at::Tensor position;
    archive.read("state/data_sequence", position);
    return position.item<int64_t>();
  };
  CHECK(data_position(dense) == data_position(sweep_run_dir(o.out_dir, "consa", 0.5)));
  CHECK(data_position(dense) == (3 + 4) * 2);  // (stage 1 + stage 2 steps) x batch_size
  // Without recovery there is nothing to match.
  Recipe no_recovery = recipe;
  no_recovery.recover.steps = 0;
  CHECK_THROWS_WITH(sweep_runs(no_recovery, o), contains("sweep method dense trains the dense model for recover.steps"));
}

TEST_CASE("a sweep over KV budgets with several windows meets every budget, each method in its own folder", "[eval]") {
  const std::string dir = scratch_dir("sweep_budgets");
  // qwen3_norm: 2 layers x 2 KV groups of head_dim 24; at context 40 and 4-byte elements a group
  // caches 2 * 24 * 4 = 192 bytes a token: 7680 in full, 1536 at window 8, 768 at window 4.
  write_text(dir + "/recipe.yaml", "model: {path: " + fixture("qwen3_norm") + "}\n" +
                                       "gates: {windows: [8, 4]}\n"
                                       "constraint: {kv_budget: {bytes: 20000, context: 40, element_bytes: 4}}\n"
                                       "data: {seq_len: 40, batch_size: 2, heldout_batches: 1, value_digits: 3}\n"
                                       "train: {steps: 3, log_every: 1}\noutput: {dir: " + dir + "/unused}\n");
  const Recipe recipe = load_recipe(dir + "/recipe.yaml");
  SweepOptions o = sweep_options(dir, recipe, {}, {"consa", "uniform", "random"});
  const std::vector<int64_t> budgets = {5000, 17000};
  o.kv_budgets = budgets;
  const std::vector<SweepRun> runs = sweep_runs(recipe, o);
  REQUIRE(runs.size() == 6);
  std::ostringstream log;
  CHECK(run_sweep(recipe, o, log).ran == 6);
  const int64_t dense_bytes = 4 * 7680, narrowest_bytes = 4 * 768;
  for (const SweepRun& run : runs) {
    const std::string run_dir = sweep_run_dir(o.out_dir, run);
    INFO(run_dir);
    CHECK(run_dir == o.out_dir + "/" + run.method + "_b" + std::to_string(run.kv_budget));
    const Assignment a = Assignment::load(run_dir + "/assignment.json");
    auto [fa, swa] = a.kv_cache_bytes(40, 4);
    CHECK(a.dense_kv_cache_bytes(40, 4) == dense_bytes);
    CHECK(fa + swa <= run.kv_budget);
    CHECK(fa + swa >= narrowest_bytes);
    // The baselines fill the budget level by level: at 17000 two groups keep their full cache
    // (2 x 6912 of the 13928 bytes above the narrowest), at 5000 two move up to window 8.
    if (run.method != "consa") CHECK(fa + swa == (run.kv_budget == 17000 ? narrowest_bytes + 2 * 6912 : narrowest_bytes + 2 * 768));
    const auto report = nlohmann::json::parse(read_text(run_dir + "/eval.json"));
    CHECK(report["kv_budget"] == run.kv_budget);
    CHECK(report["method"] == run.method);
  }
  const std::string csv = read_text(o.out_dir + "/sweep.csv");
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 7);  // header + 6 rows
  CHECK_THAT(csv, contains(",kv_budget,allocation_seconds,run_dir\n"));
  CHECK_THAT(csv, contains(",5000,"));
  CHECK_THAT(csv, contains(",17000,"));
  CHECK_THAT(read_text(o.out_dir + "/sweep.md"), contains("| KV budget |"));
  // A budget below every unit at the narrowest window is refused before any folder is made.
  SweepOptions unreachable = o;
  unreachable.out_dir = dir + "/unreachable";
  unreachable.kv_budgets = {1000};
  CHECK_THROWS_WITH(run_sweep(recipe, unreachable, log), contains("sweep --kv-budgets 1000"));
  CHECK_FALSE(fs::exists(unreachable.out_dir));
  // Scores of one window have no place among several.
  unreachable.methods = {"attention-span"};
  CHECK_THROWS_WITH(sweep_runs(recipe, unreachable), contains("sweep method attention-span scores one window"));
  // Budgets need the recipe's kv_budget for their context; targets refuse it.
  SweepOptions targets = o;
  targets.kv_budgets.clear();
  targets.targets = {0.5};
  CHECK_THROWS_WITH(sweep_runs(recipe, targets), contains("constraint.kv_budget is set"));
}

TEST_CASE("baselines score the full-attention model, whatever layout it was left in", "[eval]") {
  const ModelConfig c = tiny_config(3, 4, 2, 8, 40);
  CausalLM model = random_model(c, 9);
  BaselineOptions b;
  b.swa = AttentionSpan::sliding(6);
  b.data.seq_len = 40;
  b.data.batch_size = 2;
  b.data.value_digits = 3;
  b.calibration_batches = 1;
  b.duo_steps = 3;
  for (BaselineMethod method : {BaselineMethod::AttentionSpan, BaselineMethod::Duo}) {
    const Assignment fresh = make_baseline(method, model, b);
    // Leave the model under some other assignment (as a sweep's evaluation does), then score again.
    b.target = 0.75;
    Assignment other = make_baseline(BaselineMethod::Random, model, b);
    b.target = 0.5;
    other.apply(model);
    const Assignment again = make_baseline(method, model, b);
    INFO(baseline_method_name(method));
    for (int64_t l = 0; l < 3; ++l)
      for (int64_t u = 0; u < 2; ++u) CHECK(again.scores[l][u] == Approx(fresh.scores[l][u]).margin(1e-9));
    // ...and the model keeps the layout it had.
    for (int64_t l = 0; l < 3; ++l)
      for (int64_t g = 0; g < 2; ++g)
        CHECK(model->attention(l).group_spans[g] == (other.full[l][g] ? AttentionSpan::full() : b.swa));
    Assignment dense_layout = declared_assignment(model, "x");
    for (auto& layer : dense_layout.full) std::fill(layer.begin(), layer.end(), true);
    dense_layout.apply(model);
  }
}
