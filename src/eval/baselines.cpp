#include "consa/eval/baselines.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <torch/optim/adam.h>

#include <cmath>
#include <functional>
#include <numeric>

#include "consa/core/enum_names.h"
#include "consa/core/error.h"
#include "consa/gate/kv_budget.h"
#include "consa/model/rope.h"
#include "consa/train/objective.h"

namespace consa {

namespace {

constexpr EnumName<BaselineMethod> kMethods[] = {{BaselineMethod::Uniform, "uniform"},
                                                 {BaselineMethod::Random, "random"},
                                                 {BaselineMethod::AttentionSpan, "attention-span"},
                                                 {BaselineMethod::Duo, "duo"}};

// Per-head values [layers, heads] -> per-unit means [layers, units].
at::Tensor heads_to_units(const at::Tensor& per_head, const ModelConfig& c, GateUnit unit) {
  if (unit == GateUnit::Head) return per_head;
  if (unit == GateUnit::Layer) return per_head.mean(1, /*keepdim=*/true);
  return per_head.view({c.num_layers, c.num_kv_heads, c.group_size()}).mean(2);
}

// Full attention on evenly spaced units of each group (the whole model, or each layer).
at::Tensor uniform_scores(const ModelConfig& c, const BaselineOptions& o) {
  const int64_t units = units_per_layer(o.unit, c);
  at::Tensor scores = at::full({c.num_layers, units}, -1.0, at::kDouble);
  auto mark = [&](int64_t first, int64_t count) {
    const int64_t full = count - std::llround(o.target * static_cast<double>(count));
    for (int64_t i = 0; i < full; ++i) {
      // floor(i * count / full) is strictly increasing when full <= count: `full` distinct units.
      const int64_t idx = first + (o.offset + i * count / full) % count;
      scores.view(-1)[idx] = 1.0;
    }
  };
  if (o.scope == ConstraintScope::PerLayer) {
    for (int64_t l = 0; l < c.num_layers; ++l) mark(l * units, units);
  } else {
    mark(0, c.num_layers * units);
  }
  return scores;
}

at::Tensor random_scores(const ModelConfig& c, const BaselineOptions& o) {
  auto gen = at::detail::createCPUGenerator(o.seed);
  return at::rand({c.num_layers, units_per_layer(o.unit, c)}, gen, at::kDouble);
}

// Several windows: choose_levels below, the units to move chosen by `pick` (candidates, count).
using LevelPick = std::function<std::vector<int64_t>(const std::vector<int64_t>&, int64_t)>;

// One scope's units (indices into the flat [layers x units] order) within `share` bytes. `cost`
// holds a unit's bytes on full attention, then on each window, widest first; choice[i] is the
// option of unit i (0 full, b >= 1 window b - 1), the narrowest to start with.
void choose_levels(const std::vector<int64_t>& units, const std::vector<int64_t>& cost, int64_t share,
                   const LevelPick& pick, std::vector<int64_t>& choice) {
  const int64_t narrowest = static_cast<int64_t>(cost.size()) - 1;
  int64_t used = 0;
  for (int64_t i : units) choice[i] = narrowest, used += cost.back();
  CONSA_CHECK(used <= share, "baseline: every unit on its narrowest window still caches ", used,
              " bytes, above the budget's ", share);
  for (int64_t b = 0; b < narrowest; ++b) {
    std::vector<int64_t> candidates;
    for (int64_t i : units)
      if (choice[i] == narrowest) candidates.push_back(i);
    const int64_t extra = cost[b] - cost.back();
    const int64_t count = std::min<int64_t>(static_cast<int64_t>(candidates.size()), (share - used) / extra);
    if (count <= 0) continue;
    for (int64_t i : pick(candidates, count)) choice[i] = b;
    used += count * extra;
  }
}

// uniform and random with several windows (BaselineOptions::narrower_windows).
Assignment window_baseline(BaselineMethod method, const ModelConfig& c, const BaselineOptions& o) {
  CONSA_CHECK(method == BaselineMethod::Uniform || method == BaselineMethod::Random, "baseline ",
              baseline_method_name(method), ": scores one window; with several windows use uniform or random");
  CONSA_CHECK(o.kv_budget.defined(), "baseline ", baseline_method_name(method),
              ": several windows need a KV budget (which windows a fraction of units would take is not said)");
  GateOptions gates;
  gates.unit = o.unit;
  gates.swa = o.swa;
  gates.narrower_windows = o.narrower_windows;
  const KvBudgetPlan plan = plan_kv_budget(c, gates, o.kv_budget, "constraint.kv_budget");
  std::vector<int64_t> cost{plan.full_unit_bytes};
  cost.insert(cost.end(), plan.local_unit_bytes.begin(), plan.local_unit_bytes.end());
  auto gen = at::detail::createCPUGenerator(o.seed);
  const LevelPick evenly = [&](const std::vector<int64_t>& candidates, int64_t count) {
    // floor(i * n / count) is strictly increasing for count <= n: `count` distinct candidates.
    const int64_t n = static_cast<int64_t>(candidates.size());
    std::vector<int64_t> out;
    for (int64_t i = 0; i < count; ++i) out.push_back(candidates[(o.offset + i * n / count) % n]);
    return out;
  };
  const LevelPick at_random = [&](const std::vector<int64_t>& candidates, int64_t count) {
    const at::Tensor order = at::randperm(static_cast<int64_t>(candidates.size()), gen, at::kLong);
    std::vector<int64_t> out;
    for (int64_t i = 0; i < count; ++i) out.push_back(candidates[order[i].item<int64_t>()]);
    return out;
  };
  const LevelPick& pick = method == BaselineMethod::Uniform ? evenly : at_random;
  const int64_t units = units_per_layer(o.unit, c), n = c.num_layers * units;
  std::vector<int64_t> choice(n, 0);
  if (o.scope == ConstraintScope::PerLayer) {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      std::vector<int64_t> idx(units);
      std::iota(idx.begin(), idx.end(), l * units);
      choose_levels(idx, cost, o.kv_budget.bytes / c.num_layers, pick, choice);
    }
  } else {
    std::vector<int64_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    choose_levels(idx, cost, o.kv_budget.bytes, pick, choice);
  }
  std::vector<double> scores;  // the wider a unit's span, the higher
  for (int64_t b : choice) scores.push_back(b == 0 ? 1.0 : -static_cast<double>(b));
  Assignment a = assignment_from_window_choices(c, gates, choice, scores);
  a.rule = BinarizeRule::Exact;
  a.kv_budget = o.kv_budget;
  a.target = plan.target;
  return a;
}

std::vector<at::Tensor> calibration_batches(CausalLM& model, const BaselineOptions& o, int64_t count) {
  BatchStream stream(o.data, model->config().vocab_size,
                     distance_beyond(o.swa, o.data.min_distance), Split::Train);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < count; ++i) out.push_back(stream.next().tokens);
  return out;
}

// Restores the parameters' requires_grad on exit.
class FrozenWeights {
 public:
  explicit FrozenWeights(CausalLM& model) : model_(model) {
    for (auto& p : model->parameters()) {
      requires_grad_.push_back(p.requires_grad());
      p.requires_grad_(false);
    }
  }
  ~FrozenWeights() {
    size_t i = 0;
    for (auto& p : model_->parameters()) p.requires_grad_(requires_grad_[i++]);
  }

 private:
  CausalLM& model_;
  std::vector<bool> requires_grad_;
};

at::Tensor duo_scores(CausalLM& model, const BaselineOptions& o, const BaselineProgress& progress) {
  const ModelConfig& c = model->config();
  FrozenWeights frozen(model);
  at::Tensor alpha = at::ones({c.num_layers, units_per_layer(o.unit, c)}, at::kFloat).requires_grad_(true);
  torch::optim::Adam optimizer({alpha}, torch::optim::AdamOptions(o.duo_lr));
  DataOptions data = o.data;
  data.seed = o.seed;
  BatchStream stream(data, c.vocab_size, distance_beyond(o.swa, data.min_distance),
                     Split::Train);
  at::Tensor alpha_sum = at::zeros(alpha.sizes(), at::kDouble);
  for (int64_t step = 1; step <= o.duo_steps; ++step) {
    Batch batch = stream.next();
    at::Tensor tokens = batch.tokens.to(model->device());
    at::Tensor teacher;
    {
      at::NoGradGuard no_grad;
      for (int64_t l = 0; l < c.num_layers; ++l) model->attention(l).set_gate_weights({});  // full spans
      teacher = model->hidden_states(tokens, batch.document_ids).to(at::kFloat);
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      at::Tensor a = alpha[l];
      if (o.unit == GateUnit::Layer) a = a.expand({c.num_heads});
      else if (o.unit == GateUnit::KvHead) a = a.repeat_interleave(c.group_size());
      model->attention(l).set_gate_weights(a);
      model->attention(l).saturated_gates_have_no_gradient = false;  // alpha at 1 still has a gradient
      model->attention(l).swa_span = o.swa;
    }
    at::Tensor student = model->hidden_states(tokens, batch.document_ids).to(at::kFloat);
    // Over the positions whose next token is an answer token, the squared distance summed over
    // hidden units, as DuoAttention's.
    at::Tensor distill = mean_over_target_positions((student - teacher).pow(2).sum(-1), batch.ce_mask);
    at::Tensor loss = distill + o.duo_l1 * alpha.sum();
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    {
      at::NoGradGuard no_grad;
      alpha.clamp_(0.0, 1.0);
      alpha_sum += alpha.detach().to(at::kDouble);
    }
    if (progress) progress(step, distill.item<double>(), alpha.mean().item<double>());
  }
  // Rank by the final gates; gates that ended equal (both at 0 or 1) by how long they stayed up.
  return alpha.detach().to(at::kDouble) + 1e-3 * alpha_sum / static_cast<double>(std::max<int64_t>(o.duo_steps, 1));
}

}  // namespace

BaselineMethod parse_baseline_method(const std::string& name) { return parse_enum(kMethods, name, "baseline method"); }
const char* baseline_method_name(BaselineMethod method) { return enum_name(kMethods, method); }

at::Tensor attention_mass_outside(CausalLM& model, GateUnit unit, const AttentionSpan& swa,
                                  const std::vector<at::Tensor>& batches) {
  const ModelConfig& c = model->config();
  at::NoGradGuard no_grad;
  at::Tensor per_head = at::zeros({c.num_layers, c.num_heads}, at::kDouble);
  const at::Tensor inv_freq = rope_inv_freq(c.rope, c.head_dim);
  for (const at::Tensor& tokens : batches) {
    const int64_t len = tokens.size(1);
    CONSA_CHECK(len > swa.window + swa.sinks, "attention-span calibration: sequences of ", len,
                " tokens never reach past a window of ", swa.window, " + ", swa.sinks, " sinks; use longer ones");
    at::Tensor h = model->model->embed_tokens->forward(tokens.to(model->device()));
    RopeTables rope = rope_tables(inv_freq, 0, len, h.scalar_type(), h.device());
    const at::Tensor visible = visibility_mask(len, len, swa, h.device());
    const at::Tensor causal = visibility_mask(len, len, AttentionSpan::full(), h.device());
    const at::Tensor outside = (causal & ~visible).to(at::kFloat);  // [L, L]
    // Queries with some key outside the span: i >= window + sinks.
    const int64_t first_query = swa.window + swa.sinks;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      DecoderLayerImpl& layer = *model->model->layer_list[l];
      const SelfAttentionImpl& attn = *layer.self_attn;
      ProjectedQKV qkv = attn.project(layer.input_layernorm->forward(h), rope);
      const int64_t group = c.group_size();
      for (int64_t g = 0; g < c.num_kv_heads; ++g) {
        at::Tensor q = qkv.q.narrow(2, g * group, group).transpose(1, 2).to(at::kFloat);  // [B, G, L, D]
        at::Tensor k = qkv.k.select(2, g).unsqueeze(1).to(at::kFloat);                   // [B, 1, L, D]
        at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * attn.scale;
        at::Tensor probs = at::softmax(scores.masked_fill(~causal, -INFINITY), -1);
        at::Tensor mass = (probs * outside).sum(-1).narrow(-1, first_query, len - first_query);  // [B, G, Lq]
        per_head[l].narrow(0, g * group, group) += mass.mean(at::IntArrayRef{0, 2}).to(at::kDouble).cpu();
      }
      h = layer.forward(h, rope);
    }
  }
  return heads_to_units(per_head / static_cast<double>(batches.size()), c, unit);
}

Assignment make_baseline(BaselineMethod method, CausalLM& model, const BaselineOptions& options,
                         const BaselineProgress& progress) {
  const ModelConfig& c = model->config();
  BaselineOptions o = options;
  if (!o.narrower_windows.empty()) {
    Assignment a = window_baseline(method, c, o);
    a.method = baseline_method_name(method);
    a.weights_checksum = weights_checksum(model);
    return a;
  }
  if (o.kv_budget.defined()) o.target = plan_kv_budget(c, o.unit, o.swa, o.kv_budget, "constraint.kv_budget").target;
  CONSA_CHECK(o.target >= 0 && o.target <= 1, "baseline target must be in [0, 1], got ", o.target);
  // Scores come from the model with full attention everywhere, whatever layout it was left in.
  DenseView dense(model);
  at::Tensor scores;
  switch (method) {
    case BaselineMethod::Uniform: scores = uniform_scores(c, o); break;
    case BaselineMethod::Random: scores = random_scores(c, o); break;
    case BaselineMethod::AttentionSpan:
      scores = attention_mass_outside(model, o.unit, o.swa, calibration_batches(model, o, o.calibration_batches));
      break;
    case BaselineMethod::Duo: scores = duo_scores(model, o, progress); break;
  }
  Assignment a = o.kv_budget.defined()
                     ? assignment_within_kv_budget(c, o.unit, o.swa, scores, o.kv_budget, o.scope)
                     : assignment_from_scores(c, o.unit, o.swa, scores, BinarizeRule::Exact, o.target, o.scope);
  a.method = baseline_method_name(method);
  a.weights_checksum = weights_checksum(model);
  return a;
}

}  // namespace consa
