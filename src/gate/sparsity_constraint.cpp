#include "consa/gate/sparsity_constraint.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "consa/core/enum_names.h"
#include "consa/core/error.h"

namespace consa {

namespace {
constexpr EnumName<ConstraintScope> kScopes[] = {{ConstraintScope::Global, "global"},
                                                 {ConstraintScope::PerLayer, "per_layer"}};
}  // namespace

ConstraintScope parse_constraint_scope(const std::string& name) {
  return parse_enum(kScopes, name, "constraint scope");
}

const char* constraint_scope_name(ConstraintScope scope) { return enum_name(kScopes, scope); }

SparsityConstraintImpl::SparsityConstraintImpl(int64_t num_layers, ConstraintOptions options, KvBudgetPlan plan)
    : options_(options), plan_(std::move(plan)) {
  CONSA_CHECK(options_.target >= 0.0 && options_.target <= 1.0,
              "constraint.target must be in [0, 1], got ", options_.target);
  CONSA_CHECK(options_.warmup_steps >= 0, "constraint.warmup_steps must be >= 0, got ",
              options_.warmup_steps);
  const int64_t n = options_.scope == ConstraintScope::Global ? 1 : num_layers;
  lambda1 = register_parameter("lambda1", at::zeros({n}, at::kFloat));
  lambda2 = register_parameter("lambda2", at::zeros({n}, at::kFloat));
}

double SparsityConstraintImpl::target_at(int64_t step) const {
  if (options_.warmup_steps == 0) return options_.target;
  return options_.target * std::min(1.0, static_cast<double>(step) / options_.warmup_steps);
}

ConstraintTerms SparsityConstraintImpl::evaluate(const AttentionGatesImpl& gates, int64_t step) const {
  ConstraintTerms terms;
  terms.target = target_at(step);
  if (gates.levels() == 1) {
    at::Tensor keep = gates.prob_nonzero();  // [layers, units]
    terms.layer_s_hat = 1.0 - keep.mean(1);
    terms.s_hat = 1.0 - keep.mean();
  } else {
    CONSA_CHECK(plan_.local_unit_bytes.size() == static_cast<size_t>(gates.levels()),
                "constraint: gates with ", gates.levels(), " windows need constraint.kv_budget");
    // Costs relative to a full unit, so the fp32 sums stay near 1.
    const at::Tensor saved = plan_.saved_share(gates.expected_unit_cost(plan_.relative_branch_costs()));
    terms.layer_s_hat = saved.mean(1);
    terms.s_hat = saved.mean();
  }
  at::Tensor gap = (options_.scope == ConstraintScope::Global ? terms.s_hat.reshape({1}) : terms.layer_s_hat) -
                   terms.target;
  terms.penalty = (lambda1 * gap + lambda2 * gap.pow(2)).mean();
  return terms;
}

void SparsityConstraintImpl::ascend_lambdas() {
  at::NoGradGuard no_grad;
  for (at::Tensor* lambda : {&lambda1, &lambda2})
    if (lambda->grad().defined()) lambda->mutable_grad().neg_();
}

}  // namespace consa
