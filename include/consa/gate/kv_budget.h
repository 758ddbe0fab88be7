#pragma once
// constraint.kv_budget: the target as KV-cache bytes per sequence at a context length, which is
// what a deployment pays for, instead of a fraction of units. A unit on full attention caches
// `context` positions, one on SWA min(context, window + sinks); each position costs
// 2 (K and V) x head_dim x element_bytes per KV head the unit holds. Every layer or KV-head unit
// of a model costs the same, so expected bytes are affine in the expected SWA fraction s:
//   E[bytes] = dense - s * (dense - all_swa)
// and a budget is one exact fraction, which the Lagrangian then holds (SparsityConstraint).
// With several windows (gates.windows) a unit costs what its span caches, and s is the expected
// share of the bytes that putting every unit on the narrowest window would save.
#include <cstdint>
#include <string>
#include <vector>

#include "consa/attention/attention.h"
#include "consa/gate/attention_gates.h"
#include "consa/model/config.h"

namespace consa {

struct KvBudget {
  int64_t bytes = 0;          // per sequence; 0: no budget (constraint.target holds)
  int64_t context = 0;        // tokens per sequence the budget is for
  int64_t element_bytes = 2;  // bytes per cached element (2: bf16 / fp16)
  bool defined() const { return bytes > 0; }
};

struct KvBudgetPlan {
  int64_t units = 0;               // gate units of the model
  int64_t full_unit_bytes = 0;     // one unit's cache at `context` on full attention
  int64_t swa_unit_bytes = 0;      // and on SWA (the narrowest window)
  std::vector<int64_t> local_unit_bytes;  // on each local span, widest first (one: swa_unit_bytes)
  int64_t dense_bytes = 0;         // every unit full
  int64_t all_swa_bytes = 0;       // every unit on SWA (the narrowest window)
  // The SWA fraction (several windows: the share of the savable bytes) whose expected bytes are
  // the budget, in [0, 1].
  double target = 0;
  // Branch costs relative to a full unit: 1, then each local span, widest first.
  std::vector<double> relative_branch_costs() const {
    std::vector<double> costs{1.0};
    for (int64_t b : local_unit_bytes) costs.push_back(static_cast<double>(b) / static_cast<double>(full_unit_bytes));
    return costs;
  }
  // The share of the savable bytes that a unit of this relative expected cost saves (a double or
  // a tensor of them).
  template <typename Cost>
  Cost saved_share(const Cost& relative_cost) const {
    return (1.0 - relative_cost) / (1.0 - static_cast<double>(swa_unit_bytes) / static_cast<double>(full_unit_bytes));
  }
  double expected_bytes(double swa_fraction) const {
    return static_cast<double>(dense_bytes) - swa_fraction * static_cast<double>(dense_bytes - all_swa_bytes);
  }
};

// Checks the budget against the model and span and solves for its SWA fraction. Refused, naming
// `where`: head units (query heads share their KV heads, so bytes are not a sum over units), a
// context that a window already covers (SWA would save nothing), and a budget below the all-SWA
// cache. A budget at or above the dense cache gives fraction 0.
KvBudgetPlan plan_kv_budget(const ModelConfig& config, const GateOptions& gates, const KvBudget& budget,
                            const std::string& where);
// One window.
KvBudgetPlan plan_kv_budget(const ModelConfig& config, GateUnit unit, const AttentionSpan& swa, const KvBudget& budget,
                            const std::string& where);

// How many of `units` units (one scope: the model, or one layer holding `share` of the budget's
// bytes) must be on SWA for their cache to fit `share` bytes: the fewest that do.
int64_t swa_units_within(const KvBudgetPlan& plan, int64_t units, int64_t share);

}  // namespace consa
