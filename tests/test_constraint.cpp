// The Lagrangian sparsity constraint: target ramp, penalty value, and convergence of the
// expected SWA fraction to the target against a task term that pulls the other way.
#include <torch/optim/adam.h>

#include <cmath>
#include <limits>
#include <random>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/export/assignment.h"
#include "consa/gate/kv_budget.h"
#include "consa/gate/sparsity_constraint.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

// 6 layers of 8 KV heads: 48 gate units.
ModelConfig constraint_config() { return tiny_config(6, 8, 8, 2, /*vocab=*/8); }

struct Outcome {
  double s_hat, worst_layer_gap;
};

// Runs `steps` of the max-min game on the gates alone. The stand-in task loss rewards keeping
// full attention, unit by unit with different strengths, so it fights the constraint.
Outcome run_game(double target, ConstraintScope scope, int64_t steps) {
  GateOptions gate_opts;
  gate_opts.swa = AttentionSpan::sliding(4);
  AttentionGates gates(constraint_config(), gate_opts);
  ConstraintOptions opts;
  opts.target = target;
  opts.scope = scope;
  opts.warmup_steps = steps / 5;
  SparsityConstraint constraint(6, opts);
  at::manual_seed(3);
  at::Tensor task_weight = at::rand({6, 8}) * 0.2;

  torch::optim::Adam optimizer(
      {torch::optim::OptimizerParamGroup({gates->log_alpha}, std::make_unique<torch::optim::AdamOptions>(0.1)),
       torch::optim::OptimizerParamGroup({constraint->lambda1, constraint->lambda2},
                                         std::make_unique<torch::optim::AdamOptions>(0.05))});
  ConstraintTerms terms;
  for (int64_t step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    terms = constraint->evaluate(*gates, step);
    at::Tensor task = -(task_weight * gates->prob_nonzero()).mean();
    (task + terms.penalty).backward();
    constraint->ascend_lambdas();
    optimizer.step();
    gates->clamp_log_alpha();
  }
  terms = constraint->evaluate(*gates, steps);
  return {terms.s_hat.item<double>(), (terms.layer_s_hat - target).abs().max().item<double>()};
}

}  // namespace

TEST_CASE("the target ramps linearly over the warm-up", "[constraint]") {
  ConstraintOptions opts;
  opts.target = 0.8;
  opts.warmup_steps = 100;
  SparsityConstraint c(4, opts);
  CHECK(c->target_at(0) == 0.0);
  CHECK(c->target_at(25) == Approx(0.2));
  CHECK(c->target_at(100) == Approx(0.8));
  CHECK(c->target_at(1000) == Approx(0.8));
  opts.target = 1.5;
  CHECK_THROWS_WITH(SparsityConstraint(4, opts), contains("constraint.target must be in [0, 1], got 1.5"));
  CHECK_THROWS_WITH(parse_constraint_scope("layer"), contains("supported: global, per_layer"));
}

TEST_CASE("the penalty is lambda1 * gap + lambda2 * gap^2", "[constraint]") {
  GateOptions gate_opts;
  gate_opts.swa = AttentionSpan::sliding(4);
  AttentionGates gates(constraint_config(), gate_opts);
  ConstraintOptions opts;
  opts.target = 0.3;
  SparsityConstraint c(6, opts);
  c->lambda1.data().fill_(2.0);
  c->lambda2.data().fill_(5.0);
  // log_alpha 0 everywhere: P(z > 0) = sigmoid(1.5986), so s_hat = 1 - that.
  const double s_hat = 1.0 - 1.0 / (1.0 + std::exp(-1.5986122886681098));
  ConstraintTerms terms = c->evaluate(*gates, 0);
  CHECK(terms.s_hat.item<double>() == Approx(s_hat).epsilon(1e-4));  // fp32 sigmoid
  const double gap = s_hat - 0.3;
  CHECK(terms.penalty.item<double>() == Approx(2.0 * gap + 5.0 * gap * gap).epsilon(1e-5));
  // Gradient ascent on the lambdas: after the flip, a descent step raises lambda1 when s_hat > t.
  terms.penalty.backward();
  c->ascend_lambdas();
  CHECK(c->lambda1.grad().item<double>() == Approx(-gap).epsilon(1e-4));
}

TEST_CASE("the constraint brings s_hat to the target in both scopes", "[constraint]") {
  for (double target : {0.5, 0.75}) {
    Outcome global = run_game(target, ConstraintScope::Global, 600);
    Outcome per_layer = run_game(target, ConstraintScope::PerLayer, 600);
    INFO("target " << target << ": global s_hat " << global.s_hat << ", worst layer gap (global) "
                   << global.worst_layer_gap << ", per_layer s_hat " << per_layer.s_hat
                   << ", worst layer gap " << per_layer.worst_layer_gap);
    CHECK(std::abs(global.s_hat - target) <= 0.02);
    CHECK(std::abs(per_layer.s_hat - target) <= 0.02);
    CHECK(per_layer.worst_layer_gap <= 0.02);  // every layer at the target, not just the mean
  }
}

TEST_CASE("a KV budget is the SWA fraction whose expected bytes equal it", "[constraint]") {
  // 4 layers x 4 KV heads of head_dim 16, bf16: 64 bytes per position per KV head.
  const ModelConfig c = tiny_config(4, 8, 4, 16);
  const AttentionSpan swa = AttentionSpan::sliding(64, 4);
  const KvBudget budget{500000, 1024, 2};
  const KvBudgetPlan p = plan_kv_budget(c, GateUnit::KvHead, swa, budget, "r.yaml: constraint.kv_budget");
  CHECK(p.units == 16);
  CHECK(p.full_unit_bytes == 64 * 1024);
  CHECK(p.swa_unit_bytes == 64 * 68);
  CHECK(p.dense_bytes == 16 * 64 * 1024);
  CHECK(p.all_swa_bytes == 16 * 64 * 68);
  CHECK(p.target == Approx((16.0 * 64 * 1024 - 500000) / (16.0 * 64 * (1024 - 68))).epsilon(1e-12));
  CHECK(p.expected_bytes(p.target) == Approx(500000).epsilon(1e-12));
  // Layer units hold all 4 KV heads each: the same bytes, a quarter of the units.
  const KvBudgetPlan layers = plan_kv_budget(c, GateUnit::Layer, swa, budget, "b");
  CHECK(layers.units == 4);
  CHECK(layers.full_unit_bytes == 4 * p.full_unit_bytes);
  CHECK(layers.target == Approx(p.target).epsilon(1e-12));
  // Generous budgets need no SWA; impossible ones are refused, naming the key.
  CHECK(plan_kv_budget(c, GateUnit::KvHead, swa, {p.dense_bytes * 2, 1024, 2}, "b").target == 0);
  CHECK_THROWS_WITH(plan_kv_budget(c, GateUnit::KvHead, swa, {p.all_swa_bytes - 1, 1024, 2}, "r.yaml: constraint.kv_budget"),
                    contains("r.yaml: constraint.kv_budget: 69631 bytes at 1024 tokens is below the 69632 bytes"));
  CHECK_THROWS_WITH(plan_kv_budget(c, GateUnit::Head, swa, budget, "b"), contains("needs gates.unit layer or kv_head"));
  CHECK_THROWS_WITH(plan_kv_budget(c, GateUnit::KvHead, swa, {500000, 68, 2}, "b"), contains("is within the window"));
}

TEST_CASE("the exact rule under a KV budget never exceeds it and leaves no room for one more full unit",
          "[constraint]") {
  at::manual_seed(17);
  std::mt19937_64 rng(5);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t kv = int64_t{1} << pick(0, 3);
    ModelConfig c = tiny_config(pick(1, 6), kv * pick(1, 4), kv, 8 * pick(1, 8));
    const GateUnit unit = pick(0, 1) ? GateUnit::Layer : GateUnit::KvHead;
    const ConstraintScope scope = pick(0, 1) ? ConstraintScope::PerLayer : ConstraintScope::Global;
    const AttentionSpan swa = AttentionSpan::sliding(pick(1, 200), pick(0, 8));
    const int64_t context = swa.window + swa.sinks + pick(1, 5000), element_bytes = pick(0, 1) ? 2 : 4;
    const KvBudgetPlan p =  // the byte range: any budget above it
        plan_kv_budget(c, unit, swa, {std::numeric_limits<int64_t>::max(), context, element_bytes}, "b");
    const KvBudget budget{std::uniform_int_distribution<int64_t>(p.all_swa_bytes, p.dense_bytes * 11 / 10)(rng),
                          context, element_bytes};
    const int64_t units = unit == GateUnit::Layer ? 1 : kv;
    const at::Tensor scores = at::randn({c.num_layers, units}, at::kDouble);
    const Assignment a = assignment_within_kv_budget(c, unit, swa, scores, budget, scope);
    INFO("trial " << trial << ": " << c.num_layers << " layers x " << units << " units, budget " << budget.bytes
                  << " of " << p.all_swa_bytes << ".." << p.dense_bytes << ", " << constraint_scope_name(scope));
    // Bytes as Assignment::kv_cache_bytes counts them, per KV head (independent of the plan).
    const auto [fa, sw] = a.kv_cache_bytes(context, element_bytes);
    CHECK(fa + sw <= budget.bytes);
    const int64_t saving = p.full_unit_bytes - p.swa_unit_bytes;
    auto check_scope = [&](int64_t first_layer, int64_t layers, int64_t share) {
      int64_t used = 0;
      double lowest_full = INFINITY, highest_swa = -INFINITY;
      for (int64_t l = first_layer; l < first_layer + layers; ++l)
        for (int64_t u = 0; u < units; ++u) {
          const double s = scores[l][u].item<double>();
          used += a.full[l][u] ? p.full_unit_bytes : p.swa_unit_bytes;
          if (a.full[l][u]) lowest_full = std::min(lowest_full, s);
          else highest_swa = std::max(highest_swa, s);
        }
      CHECK(used <= share);
      if (highest_swa > -INFINITY) CHECK(used + saving > share);  // one more full unit would not fit
      CHECK(lowest_full >= highest_swa);                           // the highest scores keep full attention
    };
    if (scope == ConstraintScope::Global) {
      check_scope(0, c.num_layers, budget.bytes);
    } else {
      for (int64_t l = 0; l < c.num_layers; ++l) check_scope(l, 1, budget.bytes / c.num_layers);
    }
    CHECK(a.kv_budget.bytes == budget.bytes);
  }
}
