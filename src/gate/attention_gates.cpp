#include "consa/gate/attention_gates.h"

#include <ATen/core/grad_mode.h>

#include "consa/core/device.h"
#include "consa/core/enum_names.h"
#include "consa/core/error.h"

namespace consa {

namespace {
constexpr EnumName<GateUnit> kGateUnits[] = {
    {GateUnit::Layer, "layer"}, {GateUnit::KvHead, "kv_head"}, {GateUnit::Head, "head"}};
}  // namespace

GateUnit parse_gate_unit(const std::string& name) { return parse_enum(kGateUnits, name, "gate unit"); }

const char* gate_unit_name(GateUnit unit) { return enum_name(kGateUnits, unit); }

int64_t units_per_layer(GateUnit unit, int64_t num_heads, int64_t num_kv_heads) {
  return unit == GateUnit::Layer ? 1 : unit == GateUnit::KvHead ? num_kv_heads : num_heads;
}

AttentionGatesImpl::AttentionGatesImpl(const ModelConfig& config, GateOptions options)
    : options_(options),
      hard_concrete_(options.hard_concrete),
      num_heads_(config.num_heads) {
  CONSA_CHECK(!options_.swa.is_full(), "gates: the sliding window must be > 0, got ", options_.swa.window);
  for (size_t i = 0; i < options_.narrower_windows.size(); ++i) {
    const int64_t wider = i == 0 ? options_.swa.window : options_.narrower_windows[i - 1];
    CONSA_CHECK(options_.narrower_windows[i] > 0 && options_.narrower_windows[i] < wider,
                "gates: windows must be distinct and > 0, listed widest first, got ", options_.narrower_windows[i],
                " after ", wider);
  }
  const int64_t units = consa::units_per_layer(options_.unit, config);
  log_alpha = register_parameter(
      "log_alpha",
      at::full({config.num_layers, units * options_.levels()}, hard_concrete_.initial_log_alpha(), at::kFloat));
}

at::Tensor AttentionGatesImpl::sample(c10::optional<at::Generator> generator) const {
  return hard_concrete_.sample(log_alpha, generator);
}

at::Tensor AttentionGatesImpl::deterministic() const { return hard_concrete_.deterministic(log_alpha); }

at::Tensor AttentionGatesImpl::prob_nonzero() const { return hard_concrete_.prob_nonzero(level(log_alpha, 0)); }

at::Tensor nested_expected_cost(const std::vector<at::Tensor>& open, const std::vector<double>& branch_costs) {
  CONSA_CHECK(!open.empty() && branch_costs.size() == open.size() + 1, "gates: ", open.size() + 1,
              " branch costs expected (full, then each window), got ", branch_costs.size());
  // From the narrowest window outwards: level k pays its branch if open, else what lies below.
  at::Tensor cost = at::full_like(open.back(), branch_costs.back());
  for (size_t k = open.size(); k-- > 0;) cost = open[k] * branch_costs[k] + (1 - open[k]) * cost;
  return cost;
}

at::Tensor AttentionGatesImpl::expected_unit_cost(const std::vector<double>& branch_costs) const {
  const at::Tensor open = hard_concrete_.prob_nonzero(log_alpha);
  std::vector<at::Tensor> levels_open;
  for (int64_t k = 0; k < levels(); ++k) levels_open.push_back(level(open, k));
  return nested_expected_cost(levels_open, branch_costs);
}

at::Tensor AttentionGatesImpl::head_weights(const at::Tensor& z) const {
  CONSA_CHECK(z.sizes() == log_alpha.sizes(), "gates: z has shape ", z.sizes(), ", expected ",
              log_alpha.sizes());
  // Query head h belongs to KV group h / (num_heads / num_kv_heads); each level's block expands
  // alike, since the levels' columns are whole blocks of units.
  const int64_t repeat = num_heads_ / units_per_layer();
  // Expanded by hand: some LibTorch versions' repeat_interleave reads its output size back.
  return repeat == 1 ? z : z.unsqueeze(2).expand({z.size(0), z.size(1), repeat}).reshape({z.size(0), -1});
}

void AttentionGatesImpl::apply(CausalLM& model, const at::Tensor& z, const at::Tensor& z_on_device) const {
  CONSA_CHECK(model->num_layers() == num_layers(), "gates: built for ", num_layers(),
              " layers, model has ", model->num_layers());
  const at::Tensor weights = head_weights(z);
  // One copy of all layers' weights to the model's device per step (no per-layer transfers,
  // and one gradient transfer back in backward); the host values decide the skipped branches.
  const at::Tensor on_device =
      z_on_device.defined() ? head_weights(z_on_device) : to_device_async(weights, model->device());
  const std::vector<AttentionSpan> local = options_.local_spans();
  for (int64_t l = 0; l < num_layers(); ++l) {
    SelfAttentionImpl& attn = model->attention(l);
    attn.set_local_spans(local);
    attn.set_gate_weights(on_device[l], weights[l]);
    attn.saturated_gates_have_no_gradient = true;  // z = clamp(...): flat at 0 and 1
  }
}

void AttentionGatesImpl::clamp_log_alpha() {
  at::NoGradGuard no_grad;
  const double c = options_.hard_concrete.log_alpha_clamp;
  log_alpha.clamp_(-c, c);
}

void remove_gates(CausalLM& model) {
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    model->attention(l).set_gate_weights({});
    model->attention(l).narrower_spans.clear();
  }
}

}  // namespace consa
