// The Lagrangian sparsity constraint: target ramp, penalty value, and convergence of the
// expected SWA fraction to the target against a task term that pulls the other way.
#include <torch/optim/adam.h>

#include <cmath>

#include "catch_compat.h"
#include "consa/core/error.h"
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
