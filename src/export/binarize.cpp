// Binarization: learned gate scores to a hard assignment (consa/export/assignment.h).
//
// One window: the threshold rule, or the exact rule's count of lowest-scoring units on SWA.
//
// Several windows: each unit has options full, then each window widest first, costing what its
// span caches at the budget's context. A unit's option has the probability of its branch under
// the nested gates (P(z > 0) per level). The exact rule picks one option per unit with the
// highest total log-probability whose cache fits the budget: a multiple-choice knapsack, solved
// exactly by dynamic programming over the budget in units of the costs' greatest common divisor.
// Where that table would pass kMaxTableCells, a greedy rule stands in: it starts with every unit
// full and, while the cache exceeds the budget, takes the move (one unit to a narrower option)
// that loses the least log-probability per byte saved; then, while a unit has a more probable
// narrower option (it always fits), the largest gain, or else a more probable wider option that
// fits, the best gain per byte. Either way the result never exceeds the budget, and no single
// move to a more probable option would fit.
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "consa/core/error.h"
#include "consa/export/assignment.h"
#include "consa/gate/kv_budget.h"

namespace consa {

namespace {

// Marks the k lowest-scoring of `indices` as SWA (stable: ties keep the earlier unit on SWA).
void mark_lowest_swa(const std::vector<double>& scores, std::vector<int64_t> indices, int64_t k,
                     std::vector<bool>& full) {
  std::stable_sort(indices.begin(), indices.end(), [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  for (int64_t i = 0; i < k; ++i) full[indices[i]] = false;
}

// The exact rule with `swa_count(units in scope)` units on SWA in each scope, lowest scores first.
template <typename SwaCount>
Assignment exact_assignment(const ModelConfig& config, GateUnit unit, const AttentionSpan& swa,
                            const at::Tensor& unit_scores, BinarizeRule rule, double target, ConstraintScope scope,
                            SwaCount swa_count) {
  Assignment a = Assignment::for_model(config);
  a.unit = unit;
  a.swa = swa;
  a.rule = rule;
  a.target = target;
  at::Tensor la = unit_scores.detach().to(at::kDouble).cpu().contiguous();
  const int64_t layers = la.size(0), units = la.size(1);
  CONSA_CHECK(layers == config.num_layers, "unit scores: ", layers, " layers for a model of ", config.num_layers);
  std::vector<double> scores(la.data_ptr<double>(), la.data_ptr<double>() + la.numel());
  std::vector<bool> flat(scores.size(), true);
  if (rule == BinarizeRule::Threshold) {
    for (size_t i = 0; i < scores.size(); ++i) flat[i] = scores[i] > 0;
  } else if (scope == ConstraintScope::PerLayer) {
    for (int64_t l = 0; l < layers; ++l) {
      std::vector<int64_t> idx(units);
      std::iota(idx.begin(), idx.end(), l * units);
      mark_lowest_swa(scores, idx, swa_count(units, layers), flat);
    }
  } else {
    std::vector<int64_t> idx(scores.size());
    std::iota(idx.begin(), idx.end(), 0);
    mark_lowest_swa(scores, idx, swa_count(static_cast<int64_t>(scores.size()), 1), flat);
  }
  for (int64_t l = 0; l < layers; ++l) {
    a.full.emplace_back(flat.begin() + l * units, flat.begin() + (l + 1) * units);
    a.scores.emplace_back(scores.begin() + l * units, scores.begin() + (l + 1) * units);
  }
  return a;
}

}  // namespace

Assignment assignment_from_scores(const ModelConfig& config, GateUnit unit, const AttentionSpan& swa,
                                  const at::Tensor& unit_scores, BinarizeRule rule, double target, ConstraintScope scope) {
  return exact_assignment(config, unit, swa, unit_scores, rule, target, scope, [&](int64_t units, int64_t) {
    return static_cast<int64_t>(std::llround(target * static_cast<double>(units)));
  });
}

Assignment binarize(const ModelConfig& config, const AttentionGatesImpl& gates, BinarizeRule rule, double target,
                    ConstraintScope scope) {
  if (gates.levels() > 1) {
    CONSA_CHECK(rule == BinarizeRule::Threshold, "export.rule exact with several gates.windows needs "
                "constraint.kv_budget (a fraction of units does not say which windows)");
    Assignment a = assignment_from_window_scores(config, gates.options(), gates.log_alpha, rule, {}, scope);
    a.target = target;
    return a;
  }
  return assignment_from_scores(config, gates.options().unit, gates.options().swa, gates.log_alpha, rule, target,
                                scope);
}

Assignment assignment_within_kv_budget(const ModelConfig& config, GateUnit unit, const AttentionSpan& swa,
                                       const at::Tensor& unit_scores, const KvBudget& budget, ConstraintScope scope) {
  const KvBudgetPlan plan = plan_kv_budget(config, unit, swa, budget, "constraint.kv_budget");
  // Per layer, each layer gets an equal share (rounded down, so the shares sum within budget).
  Assignment a = exact_assignment(config, unit, swa, unit_scores, BinarizeRule::Exact, plan.target, scope,
                                  [&](int64_t units, int64_t scopes) {
                                    return swa_units_within(plan, units, budget.bytes / scopes);
                                  });
  a.kv_budget = budget;
  return a;
}

Assignment binarize_within_kv_budget(const ModelConfig& config, const AttentionGatesImpl& gates, const KvBudget& budget,
                                     ConstraintScope scope) {
  if (gates.levels() > 1)
    return assignment_from_window_scores(config, gates.options(), gates.log_alpha, BinarizeRule::Exact, budget, scope);
  return assignment_within_kv_budget(config, gates.options().unit, gates.options().swa, gates.log_alpha, budget, scope);
}


namespace {

constexpr int64_t kMaxTableCells = int64_t{1} << 26;  // one byte each: 64 MiB

// The exact rule by dynamic programming, or false (nothing chosen) when the table would exceed
// kMaxTableCells. best[c] is the highest total log-probability of the units so far within c
// budget steps; pick[i][c] the option unit i took there.
bool choose_exactly(const std::vector<int64_t>& units, const std::vector<int64_t>& cost,
                    const std::vector<std::vector<double>>& log_p, int64_t share, std::vector<int64_t>& choice) {
  int64_t step = 0;
  for (int64_t c : cost) step = std::gcd(step, c);
  const int64_t n = static_cast<int64_t>(units.size());
  const int64_t capacity = std::min(share, cost[0] * n) / step;
  if (n == 0 || (capacity + 1) > kMaxTableCells / n) return false;
  const int64_t options = static_cast<int64_t>(cost.size());
  constexpr double kNone = -std::numeric_limits<double>::infinity();
  std::vector<double> best(capacity + 1, 0.0), next(capacity + 1);
  std::vector<uint8_t> pick(static_cast<size_t>(n * (capacity + 1)));
  for (int64_t i = 0; i < n; ++i) {
    std::fill(next.begin(), next.end(), kNone);
    uint8_t* row = pick.data() + i * (capacity + 1);
    for (int64_t c = 0; c <= capacity; ++c)
      for (int64_t b = 0; b < options; ++b) {
        const int64_t need = cost[b] / step;
        if (need > c || best[c - need] == kNone) continue;
        const double value = best[c - need] + log_p[units[i]][b];
        if (value > next[c]) next[c] = value, row[c] = static_cast<uint8_t>(b);
      }
    best.swap(next);
  }
  CONSA_CHECK(best[capacity] != kNone, "binarize: every unit on its narrowest window still exceeds ", share, " bytes");
  for (int64_t i = n - 1, c = capacity; i >= 0; --i) {
    const int64_t b = pick[i * (capacity + 1) + c];
    choice[units[i]] = b;
    c -= cost[b] / step;
  }
  return true;
}

// One scope's units (indices into the flat [layers x units] order) within `share` bytes;
// `cost[b]` is option b's bytes, `log_p[u][b]` unit u's log-probability. Exact where the table
// fits, else the greedy rule above.
void choose_within(const std::vector<int64_t>& units, const std::vector<int64_t>& cost,
                   const std::vector<std::vector<double>>& log_p, int64_t share, std::vector<int64_t>& choice) {
  if (choose_exactly(units, cost, log_p, share, choice)) return;
  const int64_t options = static_cast<int64_t>(cost.size());
  int64_t used = 0;
  for (int64_t u : units) choice[u] = 0, used += cost[0];
  while (used > share) {  // the narrowest options fit: plan_kv_budget checked the budget
    double best = std::numeric_limits<double>::infinity();
    int64_t best_unit = -1, best_option = -1;
    for (int64_t u : units)
      for (int64_t b = choice[u] + 1; b < options; ++b) {
        const double loss = (log_p[u][choice[u]] - log_p[u][b]) / static_cast<double>(cost[choice[u]] - cost[b]);
        if (loss < best) best = loss, best_unit = u, best_option = b;
      }
    CONSA_CHECK(best_unit >= 0, "binarize: every unit is on its narrowest window and the cache still exceeds ", share,
                " bytes");
    used -= cost[choice[best_unit]] - cost[best_option];
    choice[best_unit] = best_option;
  }
  // Narrower options that are more probable always fit: take them, the largest gain first. Then
  // the wider ones that fit, the best gain per byte. Each move raises the total log-probability.
  for (;;) {
    double best = 0;
    int64_t best_unit = -1, best_option = -1;
    for (int64_t u : units)
      for (int64_t b = choice[u] + 1; b < options; ++b) {
        const double gain = log_p[u][b] - log_p[u][choice[u]];
        if (gain > best) best = gain, best_unit = u, best_option = b;
      }
    if (best_unit < 0) {
      for (int64_t u : units)
        for (int64_t b = 0; b < choice[u]; ++b) {
          const int64_t extra = cost[b] - cost[choice[u]];
          const double gain = log_p[u][b] - log_p[u][choice[u]];
          if (used + extra > share || gain <= 0) continue;
          if (gain / static_cast<double>(extra) > best)
            best = gain / static_cast<double>(extra), best_unit = u, best_option = b;
        }
    }
    if (best_unit < 0) break;
    used += cost[best_option] - cost[choice[best_unit]];
    choice[best_unit] = best_option;
  }
}

}  // namespace

Assignment assignment_from_window_scores(const ModelConfig& config, const GateOptions& gates,
                                         const at::Tensor& level_scores, BinarizeRule rule, const KvBudget& budget,
                                         ConstraintScope scope) {
  const int64_t levels = gates.levels();
  at::Tensor la = level_scores.detach().to(at::kDouble).cpu().contiguous();
  CONSA_CHECK(la.dim() == 2 && la.size(0) == config.num_layers && la.size(1) % levels == 0,
              "level scores: expected [", config.num_layers, ", ", levels, " x units], got ", la.sizes());
  const int64_t layers = la.size(0), units = la.size(1) / levels;
  // Unit i's level k in the [layers, levels x units] layout.
  auto at_level = [&](int64_t i, int64_t k) { return (i / units) * levels * units + k * units + i % units; };
  const double* score = la.data_ptr<double>();
  auto logit = [&](int64_t i, int64_t k) { return score[at_level(i, k)]; };
  const int64_t n = layers * units;
  std::vector<int64_t> choice(n, 0);  // 0 full, b >= 1 local span b - 1
  KvBudgetPlan plan;
  if (rule == BinarizeRule::Threshold) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t b = 0;
      while (b < levels && logit(i, b) <= 0) ++b;
      choice[i] = b;
    }
  } else {
    CONSA_CHECK(budget.defined(), "binarize: the exact rule with several windows needs constraint.kv_budget");
    plan = plan_kv_budget(config, gates, budget, "constraint.kv_budget");
    std::vector<int64_t> cost{plan.full_unit_bytes};
    cost.insert(cost.end(), plan.local_unit_bytes.begin(), plan.local_unit_bytes.end());
    // Each option's log-probability: the levels above it closed, its own open.
    const HardConcrete hc(gates.hard_concrete);
    const at::Tensor open = hc.prob_nonzero(la).clamp(1e-12, 1 - 1e-12).contiguous();
    const double* p = open.data_ptr<double>();
    std::vector<std::vector<double>> log_p(n, std::vector<double>(levels + 1));
    for (int64_t i = 0; i < n; ++i) {
      double closed = 0;
      for (int64_t k = 0; k < levels; ++k) {
        const double pk = p[at_level(i, k)];
        log_p[i][k] = closed + std::log(pk);
        closed += std::log1p(-pk);
      }
      log_p[i][levels] = closed;
    }
    if (scope == ConstraintScope::PerLayer) {
      for (int64_t l = 0; l < layers; ++l) {
        std::vector<int64_t> idx(units);
        std::iota(idx.begin(), idx.end(), l * units);
        choose_within(idx, cost, log_p, budget.bytes / layers, choice);
      }
    } else {
      std::vector<int64_t> idx(n);
      std::iota(idx.begin(), idx.end(), 0);
      choose_within(idx, cost, log_p, budget.bytes, choice);
    }
  }
  std::vector<double> scores(n);
  for (int64_t i = 0; i < n; ++i) scores[i] = logit(i, 0);
  Assignment a = assignment_from_window_choices(config, gates, choice, scores);
  a.rule = rule;
  a.kv_budget = budget;
  a.target = plan.target;
  return a;
}

Assignment assignment_from_window_choices(const ModelConfig& config, const GateOptions& gates,
                                          const std::vector<int64_t>& choice, const std::vector<double>& scores) {
  const std::vector<AttentionSpan> local = gates.local_spans();
  const int64_t units = units_per_layer(gates.unit, config);
  CONSA_CHECK(static_cast<int64_t>(choice.size()) == config.num_layers * units && scores.size() == choice.size(),
              "window choices: one per unit expected (", config.num_layers * units, "), got ", choice.size());
  Assignment a = Assignment::for_model(config);
  a.unit = gates.unit;
  a.swa = gates.swa;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    std::vector<bool> full;
    std::vector<int64_t> windows;
    std::vector<double> layer_scores;
    for (int64_t u = 0; u < units; ++u) {
      const int64_t b = choice[l * units + u];
      CONSA_CHECK(b >= 0 && b <= static_cast<int64_t>(local.size()), "window choices: option ", b, " of unit ", u,
                  " in layer ", l, " is none of full and ", local.size(), " windows");
      full.push_back(b == 0);
      windows.push_back(b == 0 ? 0 : local[b - 1].window);
      layer_scores.push_back(scores[l * units + u]);
    }
    a.full.push_back(full);
    a.windows.push_back(windows);
    a.scores.push_back(layer_scores);
  }
  a.swa.window = a.local_windows().front();  // the widest window in use (never empty)
  return a;
}

}  // namespace consa
