#pragma once
// Rule-based and post-hoc allocators that ConSA is compared against. Each scores every unit
// (higher = keep full attention) and takes exactly round(t * N) units to SWA with the `exact`
// rule (per layer under the per_layer scope), so every baseline meets its target exactly.
//   uniform        - Gemma/Mistral-style interleave: full attention on evenly spaced units
//                    (every k-th for t = 1 - 1/k), starting at `offset`
//   random         - seeded random scores
//   attention-span - post-hoc: the share of each unit's attention mass that falls outside the
//                    window on calibration data; the narrowest units go to SWA
//   duo            - DuoAttention-style: continuous gates in [0, 1] per unit mixing FA and SWA,
//                    weights frozen, trained to reproduce the full-attention model's final hidden
//                    states on the answer positions of retrieval samples (squared distance summed
//                    over hidden units) plus duo_l1 * sum(alpha), then ranked by the final gates
//                    (ties, e.g. several at 0, by their mean over training)
// With several windows (uniform and random only; a KV budget is needed) every unit of a scope
// starts on the narrowest window; then level by level, full attention first and then each wider
// window, widest first, as many of the units still on the narrowest move up as the scope's bytes
// allow: evenly spaced among them for uniform, in a seeded random order for random. So both take
// the same number of units to each span and differ only in where they put them.
#include <functional>
#include <string>

#include "consa/data/batches.h"
#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa {

enum class BaselineMethod { Uniform, Random, AttentionSpan, Duo };
BaselineMethod parse_baseline_method(const std::string& name);  // uniform | random | attention-span | duo
const char* baseline_method_name(BaselineMethod method);

struct BaselineOptions {
  GateUnit unit = GateUnit::KvHead;
  AttentionSpan swa = AttentionSpan::sliding(1024);
  double target = 0.5;
  // When defined, replaces `target`: its SWA fraction places the units, and the exact rule keeps
  // the cache within it (assignment_within_kv_budget), as for ConSA under the same recipe.
  KvBudget kv_budget;
  ConstraintScope scope = ConstraintScope::Global;
  // Windows below swa's (widest first; the sinks are swa's) for uniform and random allocations
  // of several windows, which need kv_budget: see make_baseline. Empty: one window.
  std::vector<int64_t> narrower_windows;
  int64_t offset = 0;  // uniform: index of the first full-attention unit
  uint64_t seed = 0;   // random; duo's sample order
  // Calibration data (attention-span, duo): sequences from this stream's training split.
  DataOptions data;
  int64_t calibration_batches = 4;  // attention-span
  int64_t duo_steps = 200;
  double duo_lr = 0.02;
  double duo_l1 = 0.05;  // weight of sum(alpha)
};

// Called after each duo step with (step, distillation loss, mean alpha).
using BaselineProgress = std::function<void(int64_t, double, double)>;

Assignment make_baseline(BaselineMethod method, CausalLM& model, const BaselineOptions& options,
                         const BaselineProgress& progress = {});

// Per unit [layers, units]: the mean share of attention mass outside `swa` over queries that
// have keys outside it, averaged over the unit's query heads and the batches.
at::Tensor attention_mass_outside(CausalLM& model, GateUnit unit, const AttentionSpan& swa,
                                  const std::vector<at::Tensor>& batches);

}  // namespace consa
