#pragma once
// The Lagrangian that holds the expected SWA fraction at the user's target:
//   penalty = lambda1 * (s_hat - t) + lambda2 * (s_hat - t)^2
// lambda1 and lambda2 start at 0 and are trained by gradient *ascent* (a max-min game): call
// ascend_lambdas() between backward() and the optimizer step. The target t ramps linearly from 0
// to the final target over `warmup_steps`.
// Scope global: one s_hat over all units and one (lambda1, lambda2). Scope per_layer: each layer
// has its own s_hat and lambda pair, so every layer reaches the same SWA fraction; the penalty is
// the mean of the per-layer terms.
// With several windows (gates.windows) the constrained quantity is bytes: s_hat is the expected
// share of the savable KV bytes (kv_budget.h), from each unit's expected cost under its nested
// gates, and the target is the budget's share. With one window the two are the same number.
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "consa/gate/attention_gates.h"
#include "consa/gate/kv_budget.h"

namespace consa {

enum class ConstraintScope { Global, PerLayer };
ConstraintScope parse_constraint_scope(const std::string& name);  // "global" | "per_layer"
const char* constraint_scope_name(ConstraintScope scope);

struct ConstraintOptions {
  double target = 0.5;           // final expected SWA fraction, in [0, 1]
  ConstraintScope scope = ConstraintScope::Global;
  int64_t warmup_steps = 0;      // steps over which t ramps from 0 to target
  // Instead of `target`: KV bytes per sequence; training solves it for `target` once the model
  // is known (plan_kv_budget), and the exact rule binarizes within it.
  KvBudget kv_budget;
};

struct ConstraintTerms {
  at::Tensor penalty;          // scalar, differentiable in log_alpha and the lambdas
  at::Tensor s_hat;            // scalar expected SWA fraction over all units (several windows: savable bytes' share)
  at::Tensor layer_s_hat;      // [layers]
  double target = 0.0;         // t at this step
};

class SparsityConstraintImpl : public torch::nn::Module {
 public:
  // `plan`: options.kv_budget against the model (plan_kv_budget); needed with several windows.
  SparsityConstraintImpl(int64_t num_layers, ConstraintOptions options, KvBudgetPlan plan = {});

  double target_at(int64_t step) const;
  ConstraintTerms evaluate(const AttentionGatesImpl& gates, int64_t step) const;
  // Negates the lambdas' gradients so a minimising optimizer step ascends on them.
  void ascend_lambdas();
  const ConstraintOptions& options() const { return options_; }

  at::Tensor lambda1, lambda2;  // [1] (global) or [layers] (per_layer)

 private:
  ConstraintOptions options_;
  KvBudgetPlan plan_;
};
TORCH_MODULE(SparsityConstraint);

}  // namespace consa
