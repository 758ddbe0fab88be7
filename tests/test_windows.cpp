// Several windows per unit (gates.windows): nested gates' expected cost against enumeration,
// the nested mix against the sum over branches, the exact rule within a KV budget, schema
// version 2 (and version 1 still read), the recipe keys and a tiny run that meets its budget.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/export/assignment.h"
#include "consa/eval/baselines.h"
#include "consa/export/hybrid_layout.h"
#include "consa/gate/attention_gates.h"
#include "consa/gate/kv_budget.h"
#include "consa/gate/sparsity_constraint.h"
#include "consa/load/hf_config.h"
#include "consa/train/recipe.h"
#include "consa/train/trainer.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
namespace fs = std::filesystem;

namespace {

std::string repo_file(const std::string& rel) { return std::string(CONSA_SOURCE_DIR) + "/" + rel; }

GateOptions three_windows(GateUnit unit = GateUnit::KvHead) {
  GateOptions o;
  o.unit = unit;
  o.swa = AttentionSpan::sliding(6, 1);
  o.narrower_windows = {4, 2};
  return o;
}

// The cost of one unit by enumerating every open/closed outcome of its levels: the first open
// level's branch, or the narrowest when all are closed.
double enumerated_cost(const std::vector<double>& open, const std::vector<double>& costs) {
  const size_t levels = open.size();
  double total = 0;
  for (uint64_t mask = 0; mask < (uint64_t{1} << levels); ++mask) {
    double p = 1;
    size_t first = levels;
    for (size_t k = 0; k < levels; ++k) {
      const bool is_open = (mask >> k) & 1;
      p *= is_open ? open[k] : 1 - open[k];
      if (is_open && first == levels) first = k;
    }
    total += p * costs[first];
  }
  return total;
}

}  // namespace

TEST_CASE("nested gates' expected cost equals enumeration and Monte Carlo", "[windows]") {
  const ModelConfig c = tiny_config(3, 4, 2, 8);
  const GateOptions o = three_windows();
  AttentionGates gates(c, o);
  REQUIRE(gates->levels() == 3);
  REQUIRE(gates->log_alpha.sizes() == at::IntArrayRef({3, 6}));
  REQUIRE(gates->units_per_layer() == 2);
  at::manual_seed(3);
  {
    at::NoGradGuard no_grad;
    gates->log_alpha.copy_(at::randn({3, 6}) * 2);
  }
  const std::vector<double> costs{1.0, 0.4, 0.25, 0.1};
  const at::Tensor expected = gates->expected_unit_cost(costs);
  const HardConcrete hc(o.hard_concrete);
  const at::Tensor open = hc.prob_nonzero(gates->log_alpha.detach().to(at::kDouble));
  for (int64_t l = 0; l < 3; ++l)
    for (int64_t u = 0; u < 2; ++u) {
      std::vector<double> p;
      for (int64_t k = 0; k < 3; ++k) p.push_back(open[l][k * 2 + u].item<double>());
      CHECK(expected[l][u].item<double>() == Approx(enumerated_cost(p, costs)).epsilon(1e-5));
    }
  // Sampled gates: a unit pays the branch of its first nonzero level.
  auto gen = at::detail::createCPUGenerator(11);
  const at::Tensor la = gates->log_alpha.detach().to(at::kDouble);
  const at::Tensor z = hc.sample(la.unsqueeze(0).expand({40000, 3, 6}).contiguous(), gen);
  const at::Tensor open0 = z.narrow(2, 0, 2) > 0, open1 = z.narrow(2, 2, 2) > 0, open2 = z.narrow(2, 4, 2) > 0;
  const at::Tensor cost = at::tensor(costs, at::kDouble);
  const at::Tensor paid =
      at::where(open0, cost[0], at::where(open1, cost[1], at::where(open2, cost[2], cost[3]))).to(at::kDouble).mean(0);
  CHECK(max_abs_diff(paid, expected.detach().to(at::kDouble)) < 0.01);
  // The gradient of the summed cost against enumeration's, by central differences.
  expected.sum().backward();
  const at::Tensor grad = gates->log_alpha.grad().to(at::kDouble);
  const double h = 1e-4;
  for (int64_t i = 0; i < 6; ++i) {
    auto total_at = [&](double delta) {
      at::Tensor moved = la.clone();
      moved[1][i] += delta;
      const at::Tensor p = hc.prob_nonzero(moved);
      double sum = 0;
      for (int64_t l = 0; l < 3; ++l)
        for (int64_t u = 0; u < 2; ++u)
          sum += enumerated_cost({p[l][u].item<double>(), p[l][2 + u].item<double>(), p[l][4 + u].item<double>()}, costs);
      return sum;
    };
    const double numeric = (total_at(h) - total_at(-h)) / (2 * h);
    CHECK(grad[1][i].item<double>() == Approx(numeric).margin(1e-4));
  }
}

TEST_CASE("the nested mix equals the sum over branches of each branch's weight, skipping included", "[windows]") {
  ModelConfig c = tiny_config(1, 6, 3, 8);
  CausalLM model(c, at::TensorOptions().dtype(at::kDouble));
  SelfAttentionImpl& attn = model->attention(0);
  attn.backend = make_attention_backend(AttentionImpl::Math);
  const GateOptions o = three_windows();
  const std::vector<AttentionSpan> spans{AttentionSpan::full(), o.local_spans()[0], o.local_spans()[1],
                                         o.local_spans()[2]};
  attn.swa_span = spans[1];
  attn.narrower_spans = {spans[2], spans[3]};
  at::manual_seed(5);
  const at::Tensor q0 = at::randn({2, 12, 6, 8}, at::kDouble), k0 = at::randn({2, 12, 3, 8}, at::kDouble),
                   v0 = at::randn({2, 12, 3, 8}, at::kDouble), weights = at::randn({2, 12, 6, 8}, at::kDouble);
  // Rows: level 0 (full vs local), level 1 (W6 vs narrower), level 2 (W4 vs W2); per head.
  for (const std::vector<double>& zs : {
           std::vector<double>{0.3, 0.7, 0.5, 0.1, 0.9, 0.2, 0.4, 0.6, 0.8, 0.35, 0.55, 0.15, 0.5, 0.5, 0.25, 0.75, 0.6, 0.1},
           // saturated: group 0 full, group 1 on W4 exactly, group 2 mixed with a 0 and a 1
           std::vector<double>{1, 1, 0, 0, 0.5, 0, 0, 0, 0, 0, 1, 0.3, 0, 0, 1, 1, 0.6, 0},
           std::vector<double>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
           std::vector<double>{1, 1, 1, 1, 1, 1, 0.2, 0.4, 0, 1, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3}}) {
    auto run = [&](bool reference, bool skip) {
      return attention_gradients(q0, k0, v0, at::tensor(zs, at::kDouble), weights,
                                 [&](const ProjectedQKV& qkv, const at::Tensor& z) {
        if (reference) {
          // w_full = z0, w_W6 = (1 - z0) z1, w_W4 = (1 - z0)(1 - z1) z2, w_W2 = (1 - z0)(1 - z1)(1 - z2)
          const at::Tensor z0 = z.narrow(0, 0, 6).view({1, 1, 6, 1}), z1 = z.narrow(0, 6, 6).view({1, 1, 6, 1}),
                           z2 = z.narrow(0, 12, 6).view({1, 1, 6, 1});
          const std::vector<at::Tensor> w{z0, (1 - z0) * z1, (1 - z0) * (1 - z1) * z2, (1 - z0) * (1 - z1) * (1 - z2)};
          at::Tensor out = at::zeros_like(q0);
          for (size_t b = 0; b < 4; ++b) out = out + w[b] * attn.backend->attend(qkv.q, qkv.k, qkv.v, spans[b], attn.scale);
          return out;
        }
        attn.set_gate_weights(z);
        attn.saturated_gates_have_no_gradient = skip;
        return attn.attend(qkv);
      });
    };
    const auto want = run(true, false);
    const auto skipped = run(false, true);
    for (size_t i = 0; i < 4; ++i) CHECK(max_abs_diff(skipped[i], want[i]) < 1e-10);
    const auto exact = run(false, false);
    for (size_t i = 0; i < 5; ++i) CHECK(max_abs_diff(exact[i], want[i]) < 1e-10);
  }
  attn.narrower_spans.clear();
  CHECK_THROWS_WITH(attn.attend({q0, k0, v0}), contains("1 levels of 6 heads expected, got 18 values"));
}

TEST_CASE("binarized nested gates compute what the assignment's per-unit windows do", "[windows]") {
  const ModelConfig c = tiny_config(2, 4, 2, 8, 40);
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, 9);
  const GateOptions o = three_windows();
  AttentionGates gates(c, o);
  // Logits that open: layer 0 unit 0 full; unit 1 W4; layer 1 unit 0 W6; unit 1 W2 (all closed).
  at::Tensor la = at::full({2, 6}, -3.0);
  la[0][0] = 2;
  la[0][2 * 2 + 1] = 2;
  la[1][1 * 2 + 0] = 2;
  {
    at::NoGradGuard no_grad;
    gates->log_alpha.copy_(la);
  }
  const Assignment a = binarize(c, *gates, BinarizeRule::Threshold, 0, ConstraintScope::Global);
  CHECK(a.full == std::vector<std::vector<bool>>{{true, false}, {false, false}});
  CHECK(a.windows == std::vector<std::vector<int64_t>>{{0, 4}, {6, 2}});
  CHECK(a.local_windows() == std::vector<int64_t>{6, 4, 2});
  CHECK(a.multi_window());
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::randint(0, 40, {2, 16}, at::TensorOptions().dtype(at::kLong));
  gates->apply(model, (gates->log_alpha > 0).to(at::kFloat));
  const at::Tensor gated = model->forward(ids);
  remove_gates(model);
  a.apply(model);
  CHECK(model->attention(1).group_spans[0] == AttentionSpan::sliding(6, 1));
  CHECK(model->attention(1).group_spans[1] == AttentionSpan::sliding(2, 1));
  CHECK(max_abs_diff(model->forward(ids), gated) < 1e-6);
  // Head units: each query head its own window, as a 0/1 nested mix; the same spans per KV group
  // compute what the kv_head assignment does.
  Assignment heads = a;
  heads.unit = GateUnit::Head;
  heads.full = {{true, true, false, false}, {false, false, false, false}};
  heads.windows = {{0, 0, 4, 4}, {6, 6, 2, 2}};
  heads.scores = {{1, 1, -1, -1}, {-1, -1, -1, -1}};
  const at::Tensor per_group = model->forward(ids);
  heads.apply(model);
  CHECK(max_abs_diff(model->forward(ids), per_group) < 1e-6);
  // KV bytes: per KV head, the widest span of its query heads.
  heads.windows[1] = {6, 2, 2, 2};
  const auto [fa, sw] = heads.kv_cache_bytes(100, 2);
  CHECK(fa == 100 * 2 * 8 * 2);                                   // one KV head full
  CHECK(sw == (4 + 1 + 6 + 1 + 2 + 1) * 2 * 8 * 2);  // W4; W6 (the wider of 6 and 2); W2; each + 1 sink
  // The permuted copy (the exports' stored layout) computes what the assignment does.
  std::vector<LayerHeadLayout> layouts;
  heads.windows[1] = {6, 6, 2, 2};
  heads.apply(model);
  CHECK(max_abs_diff(hybrid_model_copy(model, heads, &layouts)->forward(ids), model->forward(ids)) < 1e-5);
  CHECK(layouts[1].kv_windows == std::vector<int64_t>{6, 2});
  CHECK(layouts[0].head_windows == std::vector<int64_t>{0, 0, 4, 4});
}

TEST_CASE("the exact rule with several windows never exceeds the budget and no more probable option fits",
          "[windows]") {
  std::mt19937_64 rng(9);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  at::manual_seed(2);
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t kv = int64_t{1} << pick(0, 2);
    const ModelConfig c = tiny_config(pick(1, 5), kv * pick(1, 3), kv, 8 * pick(1, 4));
    GateOptions o;
    o.unit = pick(0, 1) ? GateUnit::Layer : GateUnit::KvHead;
    const int64_t sinks = pick(0, 4);
    std::vector<int64_t> windows{pick(1, 40)};
    for (int64_t extra = pick(1, 3); extra > 0; --extra) windows.push_back(windows.back() + pick(1, 60));
    o.swa = AttentionSpan::sliding(windows.back(), sinks);
    o.narrower_windows.assign(windows.rbegin() + 1, windows.rend());
    const ConstraintScope scope = pick(0, 1) ? ConstraintScope::PerLayer : ConstraintScope::Global;
    const int64_t context = o.swa.window + sinks + pick(1, 3000), element_bytes = pick(0, 1) ? 2 : 4;
    const KvBudgetPlan range = plan_kv_budget(c, o, {std::numeric_limits<int64_t>::max(), context, element_bytes}, "b");
    const KvBudget budget{std::uniform_int_distribution<int64_t>(range.all_swa_bytes, range.dense_bytes * 11 / 10)(rng),
                          context, element_bytes};
    const int64_t units = o.unit == GateUnit::Layer ? 1 : kv, levels = o.levels();
    const at::Tensor scores = at::randn({c.num_layers, levels * units}, at::kDouble) * 3;
    const Assignment a = assignment_from_window_scores(c, o, scores, BinarizeRule::Exact, budget, scope);
    INFO("trial " << trial << ": " << c.num_layers << " x " << units << " units, " << levels << " levels, budget "
                  << budget.bytes << " in " << range.all_swa_bytes << ".." << range.dense_bytes << ", "
                  << constraint_scope_name(scope));
    const auto [fa, sw] = a.kv_cache_bytes(context, element_bytes);
    CHECK(fa + sw <= budget.bytes);
    // Each unit's options by the closed form of their probabilities; a more probable wider option
    // of any one unit must not fit beside the rest (per scope).
    const HardConcrete hc(o.hard_concrete);
    const at::Tensor open = hc.prob_nonzero(scores);
    const std::vector<AttentionSpan> local = o.local_spans();
    auto option = [&](int64_t l, int64_t u) -> int64_t {
      const AttentionSpan s = a.unit_span(l, u);
      if (s.is_full()) return 0;
      for (size_t k = 0; k < local.size(); ++k)
        if (local[k].window == s.window) return static_cast<int64_t>(k) + 1;
      return -1;
    };
    auto log_p = [&](int64_t l, int64_t u, int64_t b) {
      double lp = 0;
      for (int64_t k = 0; k < std::min(b, levels); ++k) lp += std::log1p(-open[l][k * units + u].item<double>());
      if (b < levels) lp += std::log(open[l][b * units + u].item<double>());
      return lp;
    };
    std::vector<int64_t> cost{range.full_unit_bytes};
    cost.insert(cost.end(), range.local_unit_bytes.begin(), range.local_unit_bytes.end());
    const int64_t scopes = scope == ConstraintScope::PerLayer ? c.num_layers : 1;
    const int64_t share = budget.bytes / scopes;
    for (int64_t s = 0; s < scopes; ++s) {
      const int64_t first = scope == ConstraintScope::PerLayer ? s : 0, last = scope == ConstraintScope::PerLayer ? s + 1 : c.num_layers;
      int64_t used = 0;
      for (int64_t l = first; l < last; ++l)
        for (int64_t u = 0; u < units; ++u) {
          REQUIRE(option(l, u) >= 0);
          used += cost[option(l, u)];
        }
      CHECK(used <= share);
      for (int64_t l = first; l < last; ++l)
        for (int64_t u = 0; u < units; ++u)
          for (int64_t b = 0; b <= levels; ++b)  // narrower options always fit: never more probable
            if (log_p(l, u, b) > log_p(l, u, option(l, u)) + 1e-12)
              CHECK(used - cost[option(l, u)] + cost[b] > share);
    }
  }
}

namespace {

// Each unit's option log-probabilities under nested gates with these logits (closed form).
std::vector<std::vector<double>> option_log_probs(const at::Tensor& scores, int64_t levels, const HardConcrete& hc) {
  const int64_t units = scores.size(1) / levels;
  const at::Tensor open = hc.prob_nonzero(scores).clamp(1e-12, 1 - 1e-12);
  std::vector<std::vector<double>> out;
  for (int64_t l = 0; l < scores.size(0); ++l)
    for (int64_t u = 0; u < units; ++u) {
      std::vector<double> lp;
      double closed = 0;
      for (int64_t k = 0; k < levels; ++k) {
        const double p = open[l][k * units + u].item<double>();
        lp.push_back(closed + std::log(p));
        closed += std::log1p(-p);
      }
      lp.push_back(closed);
      out.push_back(lp);
    }
  return out;
}

int64_t option_of(const Assignment& a, const GateOptions& o, int64_t l, int64_t u) {
  const AttentionSpan s = a.unit_span(l, u);
  if (s.is_full()) return 0;
  const std::vector<AttentionSpan> local = o.local_spans();
  for (size_t k = 0; k < local.size(); ++k)
    if (local[k].window == s.window) return static_cast<int64_t>(k) + 1;
  return -1;
}

}  // namespace

TEST_CASE("the exact rule with several windows is the most probable choice within the budget", "[windows]") {
  // Brute force over every choice of small models: the rule's total log-probability is the best
  // that fits.
  std::mt19937_64 rng(21);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  at::manual_seed(6);
  for (int trial = 0; trial < 150; ++trial) {
    const ModelConfig c = tiny_config(pick(1, 2), 4, pick(1, 2) == 1 ? 2 : 4, 8);
    GateOptions o;
    o.unit = GateUnit::KvHead;
    o.swa = AttentionSpan::sliding(pick(20, 60), pick(0, 3));
    o.narrower_windows = {pick(6, 19)};
    if (pick(0, 1)) o.narrower_windows.push_back(pick(1, 5));
    const int64_t levels = o.levels(), units = c.num_kv_heads, n = c.num_layers * units;
    const int64_t context = 100 + pick(0, 50);
    const KvBudgetPlan range = plan_kv_budget(c, o, {std::numeric_limits<int64_t>::max(), context, 2}, "b");
    const KvBudget budget{std::uniform_int_distribution<int64_t>(range.all_swa_bytes, range.dense_bytes)(rng), context, 2};
    const at::Tensor scores = at::randn({c.num_layers, levels * units}, at::kDouble) * 2;
    const Assignment a = assignment_from_window_scores(c, o, scores, BinarizeRule::Exact, budget, ConstraintScope::Global);
    const auto lp = option_log_probs(scores, levels, HardConcrete(o.hard_concrete));
    std::vector<int64_t> cost{range.full_unit_bytes};
    cost.insert(cost.end(), range.local_unit_bytes.begin(), range.local_unit_bytes.end());
    double chosen = 0;
    for (int64_t i = 0; i < n; ++i) chosen += lp[i][option_of(a, o, i / units, i % units)];
    double best = -INFINITY;
    std::vector<int64_t> combo(n, 0);
    for (;;) {
      int64_t used = 0;
      double total = 0;
      for (int64_t i = 0; i < n; ++i) used += cost[combo[i]], total += lp[i][combo[i]];
      if (used <= budget.bytes) best = std::max(best, total);
      int64_t i = 0;
      while (i < n && ++combo[i] == levels + 1) combo[i++] = 0;
      if (i == n) break;
    }
    INFO("trial " << trial << ": " << n << " units, " << levels << " levels, budget " << budget.bytes);
    CHECK(chosen == Approx(best).margin(1e-9));
    const auto [fa, sw] = a.kv_cache_bytes(context, 2);
    CHECK(fa + sw <= budget.bytes);
  }
}

TEST_CASE("on models too large for the exact table the greedy rule still fits the budget", "[windows]") {
  // 48 layers x 8 KV heads, a prime context and windows of coprime spans: the table would need
  // 384 units x millions of budget steps, so the greedy rule decides.
  const ModelConfig c = tiny_config(48, 8, 8, 8);
  GateOptions o;
  o.swa = AttentionSpan::sliding(7);
  o.narrower_windows = {3};
  const int64_t context = 65537, levels = 2, units = 8;
  const KvBudgetPlan range = plan_kv_budget(c, o, {std::numeric_limits<int64_t>::max(), context, 1}, "b");
  at::manual_seed(12);
  const at::Tensor scores = at::randn({48, levels * units}, at::kDouble) * 2;
  const auto lp = option_log_probs(scores, levels, HardConcrete(o.hard_concrete));
  std::vector<int64_t> cost{range.full_unit_bytes};
  cost.insert(cost.end(), range.local_unit_bytes.begin(), range.local_unit_bytes.end());
  for (const int64_t bytes : {range.all_swa_bytes, (range.dense_bytes + range.all_swa_bytes) / 3, range.dense_bytes - 1,
                              range.dense_bytes * 2}) {
    const KvBudget budget{bytes, context, 1};
    const Assignment a = assignment_from_window_scores(c, o, scores, BinarizeRule::Exact, budget, ConstraintScope::Global);
    const auto [fa, sw] = a.kv_cache_bytes(context, 1);
    INFO("budget " << bytes);
    CHECK(fa + sw <= bytes);
    int64_t used = 0;
    for (int64_t i = 0; i < 48 * units; ++i) used += cost[option_of(a, o, i / units, i % units)];
    CHECK(used == fa + sw);
    for (int64_t i = 0; i < 48 * units; ++i) {
      const int64_t b0 = option_of(a, o, i / units, i % units);
      for (int64_t b = 0; b <= levels; ++b)  // narrower options always fit: never more probable
        if (lp[i][b] > lp[i][b0] + 1e-12) CHECK(used - cost[b0] + cost[b] > bytes);
    }
  }
}

TEST_CASE("the threshold rule opens the first level above 0, and the exact rule needs a budget", "[windows]") {
  const ModelConfig c = tiny_config(1, 4, 4, 8);
  const GateOptions o = three_windows();
  const at::Tensor scores =
      at::tensor(std::vector<double>{1, -1, -1, -1, /*level 1*/ 0, 2, -1, -1, /*level 2*/ 0, 0, 3, -2}).view({1, 12});
  const Assignment a = assignment_from_window_scores(c, o, scores, BinarizeRule::Threshold, {}, ConstraintScope::Global);
  CHECK(a.windows[0] == std::vector<int64_t>{0, 6, 4, 2});
  CHECK(a.scores[0] == std::vector<double>{1, -1, -1, -1});
  CHECK_THROWS_WITH(assignment_from_window_scores(c, o, scores, BinarizeRule::Exact, {}, ConstraintScope::Global),
                    contains("needs constraint.kv_budget"));
  AttentionGates gates(c, o);
  CHECK_THROWS_WITH(binarize(c, *gates, BinarizeRule::Exact, 0.5, ConstraintScope::Global),
                    contains("needs constraint.kv_budget"));
}

TEST_CASE("assignment schema 2 keeps each unit's window, and version 1 files still read", "[windows]") {
  const ModelConfig c = tiny_config(2, 4, 2, 8);
  Assignment a = Assignment::for_model(c);
  a.unit = GateUnit::KvHead;
  a.swa = AttentionSpan::sliding(6, 1);
  a.full = {{true, false}, {false, false}};
  a.windows = {{0, 4}, {6, 2}};
  a.scores = {{1, -1}, {-1, -2}};
  const std::string dir = scratch_dir("windows_schema");
  a.save(dir + "/a.json", 100);
  const nlohmann::json j = nlohmann::json::parse(read_text(dir + "/a.json"));
  CHECK(j["version"] == 2);
  CHECK(j["windows"] == nlohmann::json({6, 4, 2}));
  CHECK(j["layers"][1]["windows"] == nlohmann::json({6, 2}));
  CHECK(j["layers"][1]["units"] == nlohmann::json({"sliding", "sliding"}));
  const Assignment back = Assignment::load(dir + "/a.json");
  CHECK(back.windows == a.windows);
  CHECK(back.kv_cache_bytes(100, 2) == a.kv_cache_bytes(100, 2));
  std::ostringstream shown;
  print_assignment(shown, back, "a.json", 100);
  CHECK(shown.str().find("1 = swa(W=6,S=1), 2 = swa(W=4,S=1), 3 = swa(W=2,S=1)") != std::string::npos);
  CHECK(shown.str().find("\n    0  F2\n    1  13\n") != std::string::npos);
  // Version 1: no per-unit windows; every sliding unit has the file's window.
  nlohmann::json v1 = j;
  v1["version"] = 1;
  v1.erase("windows");
  for (auto& layer : v1["layers"]) layer.erase("windows");
  write_text(dir + "/v1.json", v1.dump());
  const Assignment old = Assignment::load(dir + "/v1.json");
  CHECK(old.windows.empty());
  CHECK(old.unit_span(1, 1) == AttentionSpan::sliding(6, 1));
  CHECK_FALSE(old.multi_window());
  // Refusals name the file and the entry.
  nlohmann::json bad = j;
  bad["layers"][0]["windows"][0] = 4;
  write_text(dir + "/bad.json", bad.dump());
  CHECK_THROWS_WITH(Assignment::load(dir + "/bad.json"),
                    contains("bad.json: layers[0].windows[0] is 4 for a full unit (expected 0)"));
  bad = j;
  bad["window"] = 8;
  write_text(dir + "/bad.json", bad.dump());
  CHECK_THROWS_WITH(Assignment::load(dir + "/bad.json"), contains("window is 8 but the widest window the units use is 6"));
  bad = j;
  bad["layers"][1]["windows"] = {6};
  write_text(dir + "/bad.json", bad.dump());
  CHECK_THROWS_WITH(Assignment::load(dir + "/bad.json"), contains("layers[1] has 2 units and 1 windows"));
  bad = j;
  bad["version"] = 3;
  write_text(dir + "/bad.json", bad.dump());
  CHECK_THROWS_WITH(Assignment::load(dir + "/bad.json"), contains("schema version 3, this consa reads versions 1 and 2"));
}

TEST_CASE("gates.windows in a recipe, and the constraint on bytes", "[windows]") {
  const std::string dir = scratch_dir("windows_recipe");
  // model.path is required; the recipe is only read here.
  const std::string budget = "model: {path: m}\nconstraint: {kv_budget: {bytes: 9000, context: 1024}}\n";
  write_text(dir + "/r.yaml", "gates: {windows: [128, 16, 1024]}\n" + budget);
  const Recipe r = load_recipe(dir + "/r.yaml");
  CHECK(r.gates.swa.window == 1024);
  CHECK(r.gates.narrower_windows == std::vector<int64_t>{128, 16});
  // recipe.yaml writes the list back.
  write_text(dir + "/again.yaml", recipe_to_yaml(r));
  CHECK(load_recipe(dir + "/again.yaml").gates.narrower_windows == r.gates.narrower_windows);
  // gates.window may stay when it is one of the windows.
  write_text(dir + "/both.yaml", "gates: {window: 16, windows: [16, 128]}\n" + budget);
  CHECK(load_recipe(dir + "/both.yaml").gates.swa.window == 128);
  for (auto [text, message] : std::vector<std::pair<std::string, std::string>>{
           {"gates: {window: 64, windows: [16, 128]}\n" + budget, "gates.window 64 is not among gates.windows"},
           {"gates: {windows: [16, 16]}\n" + budget, "gates.windows: window 16 is listed twice"},
           {"gates: {windows: [16, 0]}\n" + budget, "gates.windows: windows must be >= 1, got 0"},
           {"gates: {windows: [16, x]}\n" + budget, "gates.windows: expected integers, got 'x'"},
           {"gates: {windows: 16}\n" + budget, "gates.windows: expected a list of windows"},
           {"model: {path: m}\ngates: {windows: [16, 128]}\n", "gates.windows: several windows need constraint.kv_budget"}}) {
    write_text(dir + "/bad.yaml", text);
    CHECK_THROWS_WITH(load_recipe(dir + "/bad.yaml"), contains(dir + "/bad.yaml: " + message));
  }
  // The constraint's s_hat is the expected share of the savable bytes (closed form per unit).
  const ModelConfig c = tiny_config(2, 4, 2, 8);
  GateOptions o;
  o.swa = AttentionSpan::sliding(64);
  o.narrower_windows = {16};
  const KvBudgetPlan plan = plan_kv_budget(c, o, {20000, 256, 2}, "b");
  CHECK(plan.local_unit_bytes == std::vector<int64_t>{64 * 32, 16 * 32});
  CHECK(plan.all_swa_bytes == 4 * 16 * 32);
  AttentionGates gates(c, o);
  {
    at::NoGradGuard no_grad;
    gates->log_alpha.copy_(at::tensor({0.5, -1.0, 2.0, 0.0, -2.0, 1.0, 0.3, -0.7}).view({2, 4}));
  }
  ConstraintOptions co;
  co.kv_budget = {20000, 256, 2};
  co.target = plan.target;
  SparsityConstraint constraint(2, co, plan);
  const ConstraintTerms terms = constraint->evaluate(*gates, 0);
  const HardConcrete hc;
  const at::Tensor p = hc.prob_nonzero(gates->log_alpha.detach().to(at::kDouble));
  double bytes = 0;
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t u = 0; u < 2; ++u)
      bytes += enumerated_cost({p[l][u].item<double>(), p[l][2 + u].item<double>()},
                               {256.0 * 32, 64.0 * 32, 16.0 * 32});
  CHECK(plan.expected_bytes(terms.s_hat.item<double>()) == Approx(bytes).epsilon(1e-5));
  // Without a plan the constraint refuses several windows.
  SparsityConstraint unplanned(2, co);
  CHECK_THROWS_WITH(unplanned->evaluate(*gates, 0), contains("need constraint.kv_budget"));
}

TEST_CASE("the reach warning knows several windows", "[windows]") {
  Recipe r;
  r.gates.swa = AttentionSpan::sliding(64);
  r.gates.narrower_windows = {16};
  const ModelConfig c = tiny_config(2, 4, 2, 8);
  const KvBudgetPlan plan = plan_kv_budget(c, r.gates, {std::numeric_limits<int64_t>::max(), 4096, 2}, "b");
  // A budget barely above every unit on the narrowest window: a share the clamp cannot reach.
  const std::string warning = target_reach_warning(r, 0.995, &plan);
  CHECK(warning.find("of the savable KV bytes") != std::string::npos);
  const size_t at = warning.find("gates.log_alpha_clamp=");
  REQUIRE(at != std::string::npos);
  Recipe wider = r;
  wider.gates.hard_concrete.log_alpha_clamp = std::stod(warning.substr(at + std::strlen("gates.log_alpha_clamp=")));
  CHECK(target_reach_warning(wider, 0.995, &plan).empty());
  CHECK(target_reach_warning(r, 0.5, &plan).empty());
}

TEST_CASE("the tiny CPU recipe with two windows meets its KV budget", "[windows]") {
  const std::string out = scratch_dir("tiny_windows");
  Recipe r = load_recipe(repo_file("recipes/tiny_cpu.yaml"), {"model.path=" + fixture("qwen3_norm"), "output.dir=" + out});
  r.gates.swa = AttentionSpan::sliding(8);
  r.gates.narrower_windows = {4};
  const KvBudgetPlan range =
      plan_kv_budget(read_hf_config(fixture("qwen3_norm")), r.gates, {std::numeric_limits<int64_t>::max(), 1024, 2}, "b");
  r.constraint.kv_budget = {(range.dense_bytes + range.all_swa_bytes) / 2, 1024, 2};
  r.train.log_every = 20;
  const TrainOutcome o = run_training(r);
  // The expected bytes over the last 100 steps (sampled gates keep s_hat moving by about 0.02).
  double sum = 0;
  int count = 0;
  std::istringstream metrics(read_text(out + "/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json m = nlohmann::json::parse(line);
    if (m.contains("s_hat") && m["step"].get<int64_t>() > r.train.steps - 100) sum += m["s_hat"].get<double>(), ++count;
  }
  REQUIRE(count == 5);
  const double expected = range.expected_bytes(sum / count), budget = static_cast<double>(r.constraint.kv_budget.bytes);
  INFO("final s_hat " << o.s_hat << ", mean of the last 100 steps " << sum / count << ": expected KV bytes " << expected
                      << " for a budget of " << budget);
  CHECK(std::abs(expected - budget) <= 0.02 * budget);
  const Assignment a = Assignment::load(out + "/assignment.json");
  const auto [fa, sw] = a.kv_cache_bytes(1024, 2);
  CHECK(fa + sw <= r.constraint.kv_budget.bytes);
  const nlohmann::json gates = nlohmann::json::parse(read_text(out + "/gates.json"));
  CHECK(gates["windows"] == nlohmann::json({8, 4}));
  CHECK(gates["window_log_alpha"].size() == 1);
  const Recipe again = load_recipe(out + "/recipe.yaml");
  CHECK(again.gates.narrower_windows == std::vector<int64_t>{4});
  // The run's stage-1 model, every unit mixing its branches by its deterministic nested gates.
  std::string stdout_text, stderr_text;
  REQUIRE(run_consa("eval " + out + " --soft-gates --lengths 48 --samples 2", &stdout_text, &stderr_text) == 0);
  CHECK(stdout_text.find("consa (soft gates), kv_head units") != std::string::npos);
  // gates.json for other windows than the recipe's is refused, naming both.
  std::string yaml = recipe_to_yaml(again);
  const size_t at = yaml.find("windows: [8, 4]");
  REQUIRE(at != std::string::npos);
  write_text(out + "/recipe.yaml", yaml.replace(at, 15, "windows: [8, 2]"));
  CHECK(run_consa("eval " + out + " --soft-gates --lengths 48 --samples 2", &stdout_text, &stderr_text) == 1);
  CHECK(stderr_text.find("gates.json: gates for windows 8, 4, the recipe names 8, 2") != std::string::npos);
}

TEST_CASE("uniform and random baselines of several windows fill a KV budget level by level", "[windows][eval]") {
  const ModelConfig c = tiny_config(4, 4, 4, 8);
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  const int64_t n = 16, context = 64;
  // A unit (one KV head of one layer) caches 2 x 8 x 2 bytes per position: 64 positions on full
  // attention, 8 on the window 8, 2 on the window 2.
  const int64_t full = 2048, wide = 256, narrow = 64;
  BaselineOptions o;
  o.unit = GateUnit::KvHead;
  o.swa = AttentionSpan::sliding(8);
  o.narrower_windows = {2};
  for (int64_t extra : {0, 50, 191}) {
    // Room for 5 units on full attention and 3 on the window 8 over all on the window 2.
    o.kv_budget = KvBudget{n * narrow + 5 * (full - narrow) + 3 * (wide - narrow) + extra, context, 2};
    std::vector<std::vector<int64_t>> placements;
    for (auto [method, seed] : std::vector<std::pair<BaselineMethod, uint64_t>>{
             {BaselineMethod::Uniform, 0}, {BaselineMethod::Random, 1}, {BaselineMethod::Random, 2}}) {
      o.seed = seed;
      const Assignment a = make_baseline(method, model, o);
      INFO(baseline_method_name(method) << " seed " << seed << " extra " << extra);
      std::vector<int64_t> flat;
      for (const auto& layer : a.windows) flat.insert(flat.end(), layer.begin(), layer.end());
      REQUIRE(static_cast<int64_t>(flat.size()) == n);
      CHECK(std::count(flat.begin(), flat.end(), 0) == 5);
      CHECK(std::count(flat.begin(), flat.end(), 8) == 3);
      CHECK(std::count(flat.begin(), flat.end(), 2) == 8);
      const auto [fa, swa] = a.kv_cache_bytes(context, 2);
      CHECK(fa + swa <= o.kv_budget.bytes);
      CHECK(o.kv_budget.bytes - (fa + swa) < wide - narrow);  // no unit left that could move up
      CHECK(a.kv_budget.bytes == o.kv_budget.bytes);
      CHECK(a.method == baseline_method_name(method));
      if (method == BaselineMethod::Uniform) {
        // Full attention evenly spaced: gaps between consecutive full units (cyclically) differ by <= 1.
        std::vector<int64_t> at;
        for (int64_t i = 0; i < n; ++i)
          if (flat[i] == 0) at.push_back(i);
        std::vector<int64_t> gaps;
        for (size_t i = 0; i < at.size(); ++i) gaps.push_back((at[(i + 1) % at.size()] - at[i] + n) % n);
        CHECK(*std::max_element(gaps.begin(), gaps.end()) - *std::min_element(gaps.begin(), gaps.end()) <= 1);
      }
      placements.push_back(flat);
    }
    CHECK(placements[1] != placements[2]);  // seeds place them differently
  }
  // Per layer: each layer within its share of the budget.
  o.scope = ConstraintScope::PerLayer;
  o.kv_budget = KvBudget{4 * (4 * narrow + (full - narrow) + (wide - narrow)), context, 2};
  const Assignment a = make_baseline(BaselineMethod::Uniform, model, o);
  for (const auto& layer : a.windows) {
    CHECK(std::count(layer.begin(), layer.end(), 0) == 1);
    CHECK(std::count(layer.begin(), layer.end(), 8) == 1);
  }
  // Refusals: a method that scores one window, and no budget.
  CHECK_THROWS_WITH(make_baseline(BaselineMethod::AttentionSpan, model, o),
                    contains("attention-span: scores one window; with several windows use uniform or random"));
  o.kv_budget = {};
  CHECK_THROWS_WITH(make_baseline(BaselineMethod::Random, model, o), contains("several windows need a KV budget"));
}
