#include "consa/gate/kv_budget.h"

#include <algorithm>

#include "consa/core/checked_math.h"
#include "consa/core/error.h"

namespace consa {

namespace {
// a * b of non-negative sizes, refused beyond int64.
int64_t product(int64_t a, int64_t b, const std::string& where) {
  uint64_t out = 0;
  CONSA_CHECK(a >= 0 && b >= 0 && checked_multiply(static_cast<uint64_t>(a), static_cast<uint64_t>(b), &out) &&
                  fits_int64(out),
              where, ": the KV cache at this context is more bytes than int64 counts");
  return static_cast<int64_t>(out);
}
}  // namespace

KvBudgetPlan plan_kv_budget(const ModelConfig& c, const GateOptions& gates, const KvBudget& budget,
                            const std::string& where) {
  CONSA_CHECK(budget.defined() && budget.context > 0 && budget.element_bytes > 0, where,
              ": bytes, context and element_bytes must be > 0");
  CONSA_CHECK(gates.unit != GateUnit::Head, where,
              ": needs gates.unit layer or kv_head; head units share their KV heads, so their cache is not a sum over "
              "units");
  const AttentionSpan& swa = gates.swa;  // the widest window
  CONSA_CHECK(std::min(budget.context, swa.window + swa.sinks) < budget.context, where, ": context ", budget.context,
              " is within the window ", swa.window, " + sinks ", swa.sinks,
              ", where SWA caches as much as full attention; use a longer context");
  const int64_t kv_heads_per_unit = gates.unit == GateUnit::Layer ? c.num_kv_heads : 1;
  KvBudgetPlan plan;
  plan.units = c.num_layers * units_per_layer(gates.unit, c);
  const int64_t per_position = product(product(2 * kv_heads_per_unit, c.head_dim, where), budget.element_bytes, where);
  plan.full_unit_bytes = product(per_position, budget.context, where);
  for (const AttentionSpan& span : gates.local_spans())
    plan.local_unit_bytes.push_back(product(per_position, std::min(budget.context, span.window + span.sinks), where));
  plan.swa_unit_bytes = plan.local_unit_bytes.back();
  plan.dense_bytes = product(plan.full_unit_bytes, plan.units, where);
  plan.all_swa_bytes = product(plan.swa_unit_bytes, plan.units, where);
  const AttentionSpan narrowest = gates.local_spans().back();
  CONSA_CHECK(budget.bytes >= plan.all_swa_bytes, where, ": ", budget.bytes, " bytes at ", budget.context,
              " tokens is below the ", plan.all_swa_bytes, " bytes this model caches with every unit on SWA (",
              narrowest.describe(), "); the dense cache is ", plan.dense_bytes, " bytes");
  const double saved = static_cast<double>(plan.dense_bytes - plan.all_swa_bytes);
  plan.target = std::clamp(static_cast<double>(plan.dense_bytes - budget.bytes) / saved, 0.0, 1.0);
  return plan;
}

KvBudgetPlan plan_kv_budget(const ModelConfig& c, GateUnit unit, const AttentionSpan& swa, const KvBudget& budget,
                            const std::string& where) {
  GateOptions gates;
  gates.unit = unit;
  gates.swa = swa;
  return plan_kv_budget(c, gates, budget, where);
}

int64_t swa_units_within(const KvBudgetPlan& plan, int64_t units, int64_t share) {
  const int64_t dense = plan.full_unit_bytes * units;
  if (share >= dense) return 0;
  const int64_t saving = plan.full_unit_bytes - plan.swa_unit_bytes;
  return std::min(units, (dense - share + saving - 1) / saving);  // ceil: never over the share
}

}  // namespace consa
