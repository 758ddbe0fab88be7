// The training job: recipe validation, data, objective terms, schedule, resume equivalence and
// the tiny recipe reaching its sparsity target.
#include <filesystem>
#include <fstream>
#include <limits>
#include <torch/serialize/input-archive.h>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/data/batches.h"
#include "consa/data/token_shards.h"
#include "consa/gate/hard_concrete.h"
#include "consa/export/assignment.h"
#include "consa/gate/kv_budget.h"
#include "consa/load/hf_config.h"
#include "consa/load/pretrained.h"
#include "consa/train/fused_adamw.h"
#include "consa/train/linear_cross_entropy.h"
#include "consa/train/objective.h"
#include "consa/train/trainer.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string repo_file(const std::string& rel) { return std::string(CONSA_SOURCE_DIR) + "/" + rel; }

// A recipe file in a scratch dir pointing at a fixture, with extra YAML appended.
std::string write_recipe(const std::string& dir, const std::string& extra) {
  const std::string path = dir + "/recipe.yaml";
  write_text(path, "model:\n  path: " + fixture("qwen3_norm") + "\n" + extra);
  return path;
}

std::vector<json> read_metrics(const std::string& dir) {
  std::vector<json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    j.erase("tokens_per_s");  // wall-clock, differs run to run
    out.push_back(j);
  }
  return out;
}

}  // namespace

TEST_CASE("every shipped recipe validates", "[train]") {
  int count = 0;
  for (const auto& entry : fs::directory_iterator(repo_file("recipes"))) {
    if (entry.path().extension() != ".yaml") continue;
    INFO(entry.path().string());
    CHECK_NOTHROW(load_recipe(entry.path().string()));
    ++count;
  }
  CHECK(count >= 3);
}

TEST_CASE("recipe errors name the file, the key path and what is allowed", "[train]") {
  const std::string dir = scratch_dir("recipe");
  const std::string path = write_recipe(dir, "constraint:\n  target: 0.5\n");
  CHECK(load_recipe(path).constraint.target == 0.5);
  CHECK_THROWS_WITH(load_recipe(path, {"constraint.target=1.5"}),
                    contains(path) && contains("constraint.target: must be in [0, 1], got 1.5"));
  CHECK_THROWS_WITH(load_recipe(path, {"gates.window=0"}), contains("gates.window: must be in [1, inf], got 0"));
  CHECK_THROWS_WITH(load_recipe(path, {"gates.windw=8"}),
                    contains("unknown key 'gates.windw'; allowed in gates: unit, window, windows, sinks"));
  CHECK_THROWS_WITH(load_recipe(path, {"optimizer.lr=fast"}), contains("optimizer.lr: expected a number, got 'fast'"));
  CHECK_THROWS_WITH(load_recipe(path, {"gates.unit=group"}),
                    contains("gates.unit: 'group' is not allowed; allowed: layer, kv_head, head"));
  CHECK_THROWS_WITH(load_recipe(path, {"model.path="}), contains("override 'model.path=': no value after '='"));
  CHECK_THROWS_WITH(load_recipe(path, {"train.steps="}), contains("override 'train.steps=': no value after '='"));
  CHECK_THROWS_WITH(load_recipe(path, {"nonsense"}), contains("expected key.sub=value"));
  CHECK_THROWS_WITH(load_recipe(dir + "/nope.yaml"), contains("nope.yaml: recipe not found"));
  write_text(dir + "/twice.yaml", "model: {path: m}\ntrain:\n  steps: 5\n  steps: 9\n");
  CHECK_THROWS_WITH(load_recipe(dir + "/twice.yaml"), contains("twice.yaml: key 'train.steps' appears twice"));
  write_text(dir + "/twice_top.yaml", "train: {steps: 5}\ntrain: {steps: 9}\n");
  CHECK_THROWS_WITH(load_recipe(dir + "/twice_top.yaml"), contains("key 'train' appears twice"));
  write_text(dir + "/bad.yaml", "model: [unclosed\n");
  CHECK_THROWS_WITH(load_recipe(dir + "/bad.yaml"), contains("bad.yaml: not valid YAML"));
  // Overrides reach nested keys and may add sections the file leaves out.
  Recipe r = load_recipe(path, {"train.steps=7", "data.synthetic_tasks=[passkey, multi_key_needle]"});
  CHECK(r.train.steps == 7);
  CHECK(r.data.synthetic_tasks.size() == 2);
  // The resolved YAML round-trips.
  write_text(dir + "/resolved.yaml", recipe_to_yaml(r));
  Recipe again = load_recipe(dir + "/resolved.yaml");
  CHECK(again.train.steps == 7);
  CHECK((again.data.synthetic_tasks == r.data.synthetic_tasks));
  CHECK(again.gates.swa.window == r.gates.swa.window);
}

TEST_CASE("token shards round-trip and bad shards are refused", "[train]") {
  const std::string dir = scratch_dir("shard");
  std::vector<int64_t> small = {1, 2, 65535, 7};
  write_token_shard(dir + "/a.tok", small);
  CHECK(fs::file_size(dir + "/a.tok") == 32 + 4 * 2 + 2 * 8);  // uint16 when every id fits; one document
  TokenShard a = TokenShard::open(dir + "/a.tok");
  std::vector<int64_t> back(4);
  a.read(0, 4, back.data());
  CHECK(back == small);
  write_token_shard(dir + "/b.tok", {70000, 3});
  CHECK(TokenShard::open(dir + "/b.tok").token(0) == 70000);
  write_text(dir + "/c.tok", "not a shard at all, really");
  CHECK_THROWS_WITH(TokenShard::open(dir + "/c.tok"), contains(dir + "/c.tok: not a consa token shard"));
  std::string truncated = read_text(dir + "/a.tok");
  write_text(dir + "/d.tok", truncated.substr(0, truncated.size() - 1));
  CHECK_THROWS_WITH(TokenShard::open(dir + "/d.tok"),
                    contains("header says 4 tokens of 2 bytes and 1 documents (1 + 1 offsets of 8 bytes) but the file holds 23"));
}

TEST_CASE("batches pack shards deterministically and keep held-out windows apart", "[train]") {
  const std::string dir = scratch_dir("batches");
  std::vector<int64_t> ids(1000);
  for (int64_t i = 0; i < 1000; ++i) ids[i] = i % 90;
  write_token_shard(dir + "/s1.tok", std::vector<int64_t>(ids.begin(), ids.begin() + 333));
  write_token_shard(dir + "/s2.tok", std::vector<int64_t>(ids.begin() + 333, ids.end()));
  DataOptions o;
  o.seq_len = 50;
  o.batch_size = 2;
  o.heldout_batches = 2;
  o.shards = {dir + "/s1.tok", dir + "/s2.tok"};
  o.synthetic_ratio = 0.0;
  BatchStream train(o, 96, 10, Split::Train), heldout(o, 96, 10, Split::Heldout);
  // 20 windows of 50 tokens; the last 4 are held out. Window w starts at token 50 w.
  CHECK(train.heldout_windows() == 4);
  Batch b = train.batch_at(3);  // sequences 6 and 7 -> windows 6 and 7 (crossing the shard boundary)
  for (int64_t t = 0; t < 50; ++t) CHECK(b.tokens[0][t].item<int64_t>() == ids[300 + t]);
  CHECK(b.ce_mask.sum().item<float>() == 2 * 49);
  auto window_tokens = [&](int64_t w) { return at::tensor(std::vector<int64_t>(ids.begin() + 50 * w, ids.begin() + 50 * w + 50)); };
  for (int64_t i = 0; i < 20; ++i) {  // held-out sequence i -> window 16 + i % 4, training i -> i % 16
    CHECK(heldout.batch_at(i / 2).tokens[i % 2].equal(window_tokens(16 + i % 4)));
    CHECK(train.batch_at(i / 2).tokens[i % 2].equal(window_tokens(i % 16)));
  }
  // Synthetic sequences mask only the answer.
  o.shards.clear();
  o.synthetic_ratio = 1.0;
  o.value_digits = 3;
  Batch s = BatchStream(o, 96, 10, Split::Train).batch_at(0);
  CHECK(s.ce_mask.sum().item<float>() == 2 * 3);
  CHECK(BatchStream(o, 96, 10, Split::Train).batch_at(5).tokens.equal(BatchStream(o, 96, 10, Split::Train).batch_at(5).tokens));
  CHECK(!BatchStream(o, 96, 10, Split::Heldout).batch_at(0).tokens.equal(s.tokens));
}

TEST_CASE("objective terms against closed forms", "[train]") {
  at::manual_seed(0);
  at::Tensor tokens = at::tensor({1, 2, 0}, at::kLong).reshape({1, 3});
  at::Tensor logits = at::randn({1, 3, 4});
  at::Tensor mask = at::tensor({1.f, 0.f}).reshape({1, 2});
  // CE over the single unmasked target (token 2 predicted at position 0).
  const double expected_ce = -at::log_softmax(logits[0][0], 0)[2].item<double>();
  CHECK(next_token_cross_entropy(logits, tokens, mask).item<double>() == Approx(expected_ce).epsilon(1e-6));
  ObjectiveWeights w;
  w.ce = 0.0;
  w.kl = 1.0;
  w.mse = 2.0;
  at::Tensor hidden = at::randn({1, 3, 5}), weight = at::randn({4, 5});
  const at::Tensor student_logits = at::linear(hidden, weight);
  LossTerms same = compute_objective(w, tokens, mask, hidden, weight, student_logits, hidden);
  CHECK(same.kl.item<double>() == Approx(0.0).margin(1e-6));
  CHECK(same.mse.item<double>() == 0.0);
  LossTerms shifted = compute_objective(w, tokens, mask, hidden, weight, student_logits, hidden + 0.5);
  CHECK(shifted.mse.item<double>() == Approx(0.25));
  CHECK(shifted.total.item<double>() == Approx(0.5).epsilon(1e-5));
  // With distill_scored_only: KL(p || q) for two known distributions at the one scored position:
  // q's logits are the weight's column. The teacher's last position (no next token) differs and
  // does not count.
  w.distill_scored_only = true;
  at::Tensor p = at::log(at::tensor({0.5f, 0.25f, 0.25f, 0.8f, 0.1f, 0.1f})).reshape({1, 2, 3});
  at::Tensor q = at::log(at::tensor({0.25f, 0.5f, 0.25f})).reshape({3, 1});
  w.mse = 0.0;
  LossTerms kl = compute_objective(w, at::zeros({1, 2}, at::kLong), at::ones({1, 1}), at::ones({1, 2, 1}), q, p,
                                   at::zeros({1, 2, 1}));
  CHECK(kl.kl.item<double>() == Approx(0.5 * std::log(2.0) + 0.25 * std::log(0.5)).epsilon(1e-5));
  // Distillation counts only the positions cross-entropy scores: a teacher that differs from the
  // student at unscored positions alone costs nothing, and MSE is the masked brute-force mean.
  w.mse = 1.0;
  at::Tensor off_target = student_logits.clone(), hidden_off = hidden.clone();
  off_target[0][1] += at::randn({4});
  off_target[0][2] += at::randn({4});
  hidden_off[0][1] += 1.0;
  hidden_off[0][2] += 3.0;
  LossTerms masked = compute_objective(w, tokens, mask, hidden, weight, off_target, hidden_off);
  CHECK(masked.kl.item<double>() == Approx(0.0).margin(1e-6));
  CHECK(masked.mse.item<double>() == 0.0);
  at::Tensor both = at::ones({1, 2});
  LossTerms scored = compute_objective(w, tokens, both, hidden, weight, student_logits, hidden_off);
  CHECK(scored.mse.item<double>() == Approx((1.0 + 0.0) / 2).epsilon(1e-6));  // positions 0 and 1, mean over H
  // By default every position counts: the brute-force means over all of them.
  w.distill_scored_only = false;
  LossTerms every = compute_objective(w, tokens, mask, hidden, weight, off_target, hidden_off);
  const at::Tensor t_log = at::log_softmax(off_target, -1), s_log = at::log_softmax(student_logits, -1);
  CHECK(every.kl.item<double>() == Approx((t_log.exp() * (t_log - s_log)).sum(-1).mean().item<double>()).epsilon(1e-5));
  CHECK(every.kl.item<double>() > 0.0);
  CHECK(every.mse.item<double>() == Approx((0.0 + 1.0 + 9.0) / 3).epsilon(1e-6));
  // Cross-entropy alone goes through the chunked path, with the full-logits value.
  w = ObjectiveWeights{};
  CHECK(compute_objective(w, tokens, mask, hidden, weight, {}, {}).ce.item<double>() ==
        Approx(next_token_cross_entropy(student_logits, tokens, mask).item<double>()).epsilon(1e-6));
}

TEST_CASE("chunked linear cross-entropy equals cross-entropy of the full logits, value and gradients", "[train]") {
  at::manual_seed(4);
  const int64_t b = 3, l = 17, h = 6, v = 50;
  const at::Tensor hidden = at::randn({b, l, h}, at::kDouble), weight = at::randn({v, h}, at::kDouble);
  const at::Tensor tokens = at::randint(0, v, {b, l}, at::kLong);
  at::Tensor mask = (at::rand({b, l - 1}) > 0.3).to(at::kFloat);
  auto value_and_grads = [&](bool chunked, const at::Tensor& m, int64_t chunk_bytes, bool weight_grad) {
    at::Tensor hh = hidden.clone().requires_grad_(true), ww = weight.clone().requires_grad_(weight_grad);
    // The reference: the definition on whole fp64 logits.
    at::Tensor nll = -at::log_softmax(at::linear(hh, ww).narrow(1, 0, l - 1), -1)
                          .gather(-1, tokens.narrow(1, 1, l - 1).unsqueeze(-1))
                          .squeeze(-1);
    at::Tensor loss = chunked ? linear_cross_entropy(hh, ww, tokens, m, chunk_bytes)
                              : (nll * m).sum() / m.sum().clamp_min(1.0);
    (loss * 1.7).backward();
    return std::make_tuple(loss.item<double>(), hh.grad(), weight_grad ? ww.grad() : at::Tensor());
  };
  const auto [want, want_dh, want_dw] = value_and_grads(false, mask, 0, true);
  // 7 rows a chunk (7 x 50 x 4 bytes): the scored positions in chunks, the last one short.
  // 0: the scored positions' whole logits through autograd.
  for (int64_t chunk_bytes : {int64_t{7 * 50 * 4}, int64_t{1}, int64_t{1} << 30, int64_t{0}}) {
    const auto [got, dh, dw] = value_and_grads(true, mask, chunk_bytes, true);
    INFO("chunk bytes " << chunk_bytes);
    CHECK(got == Approx(want).epsilon(1e-12));
    CHECK(max_abs_diff(dh, want_dh) < 1e-12);
    CHECK(max_abs_diff(dw, want_dw) < 1e-12);
  }
  // Frozen weights: no weight gradient.
  const auto [frozen, frozen_dh, no_dw] = value_and_grads(true, mask, 7 * 50 * 4, false);
  CHECK(frozen == Approx(want).epsilon(1e-12));
  CHECK(max_abs_diff(frozen_dh, want_dh) < 1e-12);
  CHECK(!no_dw.defined());
  // Nothing scored: zero loss and zero gradients, as the full-logits form gives.
  const auto [none, none_dh, none_dw] = value_and_grads(true, at::zeros_like(mask), 7 * 50 * 4, true);
  CHECK(none == 0.0);
  CHECK(none_dh.abs().max().item<double>() == 0.0);
  CHECK(none_dw.abs().max().item<double>() == 0.0);
}

TEST_CASE("FusedAdamW: one step is the closed-form AdamW update, later steps match torch::optim::AdamW", "[train]") {
  // Step 1: m = (1 - b1) g, v = (1 - b2) g^2, so after bias correction the update is
  // lr * g / (|g| + eps) on top of the decoupled decay p * (1 - lr * wd).
  at::Tensor p = at::tensor({0.5f, -2.0f, 3.0f}).requires_grad_(true);
  const at::Tensor start = p.detach().clone();
  const at::Tensor g = at::tensor({0.1f, -4.0f, 0.0f});
  consa::FusedAdamW optimizer({p}, torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.1).eps(1e-8));
  p.mutable_grad() = g.clone();
  optimizer.step();
  const at::Tensor expected = start * (1 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8);
  CHECK(max_abs_diff(p.detach(), expected) < 1e-6);
  // Over several steps, on two groups: the same parameters as LibTorch's own AdamW.
  CHECK(adamw_max_difference(at::kCPU, 5) < 1e-6);
}

TEST_CASE("learning-rate schedule", "[train]") {
  CHECK(lr_multiplier("cosine", 10, 0, 110) == Approx(0.1));
  CHECK(lr_multiplier("cosine", 10, 9, 110) == Approx(1.0));
  CHECK(lr_multiplier("cosine", 10, 60, 110) == Approx(0.5));
  CHECK(lr_multiplier("linear", 10, 85, 110) == Approx(0.25));
  CHECK(lr_multiplier("constant", 0, 100, 110) == 1.0);
}

TEST_CASE("resuming with a recipe that changes the math is refused naming the keys; more steps are fine", "[train]") {
  const std::string dir = scratch_dir("resume-changed");
  const std::string recipe = write_recipe(dir,
                                          "gates: {window: 4}\n"
                                          "data: {seq_len: 24, batch_size: 2, heldout_batches: 1, value_digits: 2}\n"
                                          "train: {steps: 6, log_every: 1, checkpoint_every: 3}\n");
  const std::vector<std::string> out = {"output.dir=" + dir + "/run"};
  TrainControl first;
  first.stop_after = 3;
  REQUIRE_FALSE(run_training(load_recipe(recipe, out), first).finished);
  TrainControl resume;
  resume.resume = true;
  for (const std::string& change : {std::string("constraint.target=0.75"), std::string("gates.window=6"),
                                    std::string("data.seed=7")}) {
    INFO(change);
    std::vector<std::string> changed = out;
    changed.push_back(change);
    const std::string key = change.substr(0, change.find('='));
    CHECK_THROWS_WITH(run_training(load_recipe(recipe, changed), resume),
                      contains("the recipe changed since this checkpoint (" + key) && contains("may change on --resume"));
  }
  std::vector<std::string> longer = out;
  longer.push_back("train.steps=8");
  const TrainOutcome done = run_training(load_recipe(recipe, longer), resume);
  CHECK(done.finished);
  CHECK(done.global_step == 8);
}

TEST_CASE("a resumed run produces the same metrics as an uninterrupted one", "[train]") {
  const std::string dir = scratch_dir("resume");
  const std::string recipe = write_recipe(dir,
                                          "gates: {window: 4}\n"
                                          "data: {seq_len: 24, batch_size: 2, heldout_batches: 1, value_digits: 2}\n"
                                          "objective: {ce: 1.0, kl: 0.5, mse: 0.1}\n"
                                          "optimizer: {lr: 0.001, accumulation: 2}\n"
                                          "schedule: {kind: cosine, warmup_steps: 3}\n"
                                          "train: {mode: full, steps: 12, log_every: 1, keep_prob_every: 4, checkpoint_every: 5}\n"
                                          "recover: {steps: 6, lr: 0.001}\n");
  Recipe whole = load_recipe(recipe, {"output.dir=" + dir + "/whole"});
  TrainOutcome a = run_training(whole);
  REQUIRE(a.finished);

  for (int64_t stop : {7, 15}) {  // interrupted in stage 1, then in stage 2
    const std::string out = dir + "/split" + std::to_string(stop);
    Recipe split = load_recipe(recipe, {"output.dir=" + out});
    TrainControl first;
    first.stop_after = stop;
    TrainOutcome part = run_training(split, first);
    CHECK(!part.finished);
    CHECK(part.global_step == stop);
    TrainControl resume;
    resume.resume = true;
    TrainOutcome b = run_training(split, resume);
    REQUIRE(b.finished);
    INFO("stopped after " << stop);
    CHECK(read_metrics(out) == read_metrics(dir + "/whole"));
    CHECK(b.s_hat == a.s_hat);
    CausalLM ma = load_pretrained(dir + "/whole/model"), mb = load_pretrained(out + "/model");
    CHECK(max_abs_diff(ma->model->norm->weight, mb->model->norm->weight) == 0.0);
  }
  CHECK(read_metrics(dir + "/whole").size() == 12 + 3 + 6);  // per-step lines, keep_prob lines, stage 2
  CHECK_THROWS_WITH(run_training(load_recipe(recipe, {"output.dir=" + dir + "/none"}), TrainControl{true, -1}),
                    contains("no checkpoint to resume from"));
}

TEST_CASE("overlapped gate updates follow the LM gradient one step late", "[train]") {
  // lambda_lr 0 keeps both lambdas at 0, so the constraint adds no gradient and the gates move by
  // their LM gradient alone. AdamW's first step moves each parameter by lr * sign(gradient).
  const std::string dir = scratch_dir("late_gates");
  const std::string recipe = write_recipe(dir,
                                          "gates: {window: 4}\n"
                                          "data: {seq_len: 24, batch_size: 2, heldout_batches: 0, value_digits: 2}\n"
                                          "optimizer: {gate_lr: 0.1, lambda_lr: 0.0, accumulation: 2}\n"
                                          "train: {steps: 1, log_every: 1}\n");
  auto log_alpha_after = [&](int64_t steps, bool overlap) {
    const std::string out = dir + "/" + std::to_string(steps) + (overlap ? "_late" : "_now");
    run_training(load_recipe(recipe, {"output.dir=" + out, "train.steps=" + std::to_string(steps),
                                      std::string("train.overlap_gate_updates=") + (overlap ? "true" : "false")}));
    std::ifstream in(out + "/gates.json");
    const auto rows = json::parse(in)["log_alpha"].get<std::vector<std::vector<double>>>();
    std::vector<double> flat;
    for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
    return flat;
  };
  const double initial = HardConcrete(HardConcreteOptions{}).initial_log_alpha();
  const std::vector<double> now1 = log_alpha_after(1, false);
  const std::vector<double> late1 = log_alpha_after(1, true);
  const std::vector<double> late2 = log_alpha_after(2, true);
  REQUIRE(now1.size() == late2.size());
  int moved = 0;
  for (size_t i = 0; i < now1.size(); ++i) {
    INFO("unit " << i << ": " << now1[i] << " " << late1[i] << " " << late2[i]);
    const double step = std::abs(now1[i] - initial);
    CHECK((step < 1e-9 || std::abs(step - 0.1) < 1e-4));  // 0 where every sample saturated
    moved += step > 1e-9;
    CHECK(std::abs(late1[i] - initial) < 1e-6);       // step 1: no LM gradient has arrived yet
    CHECK(std::abs(late2[i] - now1[i]) < 1e-6);       // step 2: step 1's gradient
  }
  CHECK(moved > 0);
}

TEST_CASE("the tiny CPU recipe reaches its sparsity target", "[train]") {
  for (auto [target, scope] : {std::pair<std::string, std::string>{"0.5", "global"}, {"0.75", "per_layer"}}) {
    const std::string out = scratch_dir("tiny");
    Recipe r = load_recipe(repo_file("recipes/tiny_cpu.yaml"),
                           {"model.path=" + fixture("qwen3_norm"), "constraint.target=" + target,
                            "constraint.scope=" + scope, "output.dir=" + out});
    TrainOutcome o = run_training(r);
    INFO("target " << target << " scope " << scope << " s_hat " << o.s_hat);
    CHECK(std::abs(o.s_hat - std::stod(target)) <= 0.02);
    CHECK(fs::exists(out + "/gates.json"));
    CHECK(fs::exists(out + "/checkpoint.pt"));
    // The exact rule: round(t * 4) units globally, round(t * 2) per layer (2 KV groups a layer).
    const double t = std::stod(target);
    const double expected = scope == "global" ? std::llround(t * 4) / 4.0 : std::llround(t * 2) / 2.0;
    CHECK(o.achieved_sparsity == expected);
    CHECK(Assignment::load(out + "/assignment.json").achieved_sparsity() == expected);
  }
}

TEST_CASE("the tiny CPU recipe meets a KV-memory budget", "[train]") {
  // The budget whose fraction is 0.5 on this model at 1,024 tokens, as a user would write it.
  const std::string out = scratch_dir("tiny_budget");
  Recipe r = load_recipe(repo_file("recipes/tiny_cpu.yaml"), {"model.path=" + fixture("qwen3_norm"), "output.dir=" + out});
  const KvBudgetPlan range = plan_kv_budget(read_hf_config(fixture("qwen3_norm")), r.gates.unit, r.gates.swa,
                                            {std::numeric_limits<int64_t>::max(), 1024, 2}, "b");
  r.constraint.kv_budget = {(range.dense_bytes + range.all_swa_bytes) / 2, 1024, 2};
  const TrainOutcome o = run_training(r);
  const double expected = range.expected_bytes(o.s_hat), budget = static_cast<double>(r.constraint.kv_budget.bytes);
  INFO("s_hat " << o.s_hat << ": expected KV bytes " << expected << " for a budget of " << budget);
  CHECK(std::abs(expected - budget) <= 0.02 * budget);
  // The assignment fits the budget and says so; training logged the expected bytes.
  const Assignment a = Assignment::load(out + "/assignment.json");
  const auto [fa, sw] = a.kv_cache_bytes(1024, 2);
  CHECK(fa + sw <= r.constraint.kv_budget.bytes);
  CHECK(a.kv_budget.bytes == r.constraint.kv_budget.bytes);
  CHECK(read_text(out + "/metrics.jsonl").find("\"expected_kv_bytes\"") != std::string::npos);
  // recipe.yaml keeps the budget, not a fraction, and reads back.
  CHECK(load_recipe(out + "/recipe.yaml").constraint.kv_budget.bytes == r.constraint.kv_budget.bytes);
}

TEST_CASE("bf16 weights train through fp32 master weights and optimizer state", "[train]") {
  const std::string dir = scratch_dir("bf16");
  const std::string recipe = write_recipe(dir,
                                          "  dtype: bfloat16\n"
                                          "gates: {window: 4}\n"
                                          "data: {seq_len: 16, batch_size: 2, heldout_batches: 0, value_digits: 2}\n"
                                          "optimizer: {lr: 0.01}\n"
                                          "train: {mode: full, steps: 6, log_every: 1, checkpoint_every: 3}\n");
  TrainOutcome whole = run_training(load_recipe(recipe, {"output.dir=" + dir + "/whole"}));
  REQUIRE(whole.finished);
  Recipe split = load_recipe(recipe, {"output.dir=" + dir + "/split"});
  run_training(split, TrainControl{false, 4});
  REQUIRE(run_training(split, TrainControl{true, -1}).finished);
  CHECK(read_metrics(dir + "/split") == read_metrics(dir + "/whole"));

  torch::serialize::InputArchive archive;
  archive.load_from(dir + "/whole/checkpoint.pt");
  at::Tensor stored;
  archive.read("weights/model.norm.weight", stored);
  CHECK(stored.scalar_type() == at::kFloat);  // the fp32 master, not the bf16 copy
  CausalLM trained = load_pretrained(dir + "/whole/model");
  CHECK(trained->dtype() == at::kBFloat16);
  CausalLM original = load_pretrained(fixture("qwen3_norm"));
  CHECK(max_abs_diff(trained->model->norm->weight, original->model->norm->weight) > 0.0);  // it trained
  CHECK(max_abs_diff(trained->model->norm->weight, stored) < 1e-2);  // bf16 rounding of the master
}
