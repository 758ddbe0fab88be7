#pragma once
// The gate stage: one hard-concrete gate per attention unit of a CausalLM, mixing each unit's
// full-attention and sliding-window outputs. Units are a whole layer, a KV group (one KV head and
// the query heads that share it; the default, since only it shrinks the KV cache) or a query head.
//
// With several windows (gates.windows), each unit has nested gates, one per level: level 0
// chooses full attention against the local spans, level k >= 1 the k-th widest window against the
// narrower ones. A unit's output mixes the branches by the products of its gates:
//   z0 * FA + (1 - z0) * (z1 * SWA(widest) + (1 - z1) * (... SWA(narrowest))).
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "consa/attention/attention.h"
#include "consa/gate/hard_concrete.h"
#include "consa/model/decoder.h"

namespace consa {

enum class GateUnit { Layer, KvHead, Head };
GateUnit parse_gate_unit(const std::string& name);  // "layer" | "kv_head" | "head"
const char* gate_unit_name(GateUnit unit);
// Gate units in one layer: 1, its KV heads or its query heads.
int64_t units_per_layer(GateUnit unit, int64_t num_heads, int64_t num_kv_heads);
inline int64_t units_per_layer(GateUnit unit, const ModelConfig& c) {
  return units_per_layer(unit, c.num_heads, c.num_kv_heads);
}

struct GateOptions {
  GateUnit unit = GateUnit::KvHead;
  AttentionSpan swa = AttentionSpan::sliding(1024);  // what a unit switches to; with several windows, the widest
  // The windows of gates.windows below swa's, widest first (empty: one window). The sinks are swa's.
  std::vector<int64_t> narrower_windows;
  HardConcreteOptions hard_concrete;

  int64_t levels() const { return 1 + static_cast<int64_t>(narrower_windows.size()); }
  // Every window, widest first: swa's, then the narrower ones (gates.windows, sorted).
  std::vector<int64_t> windows() const {
    std::vector<int64_t> all{swa.window};
    all.insert(all.end(), narrower_windows.begin(), narrower_windows.end());
    return all;
  }
  // The local spans a unit can end on, widest first: swa, then each narrower window.
  std::vector<AttentionSpan> local_spans() const {
    std::vector<AttentionSpan> spans;
    for (int64_t w : windows()) spans.push_back(AttentionSpan::sliding(w, swa.sinks));
    return spans;
  }
};

// A unit's expected cost under nested gates whose level k is open with probability open[k]: the
// branch of the first open level, or the narrowest when none is. `branch_costs` holds the cost of
// full attention, then of each local span, widest first (one more than `open`).
at::Tensor nested_expected_cost(const std::vector<at::Tensor>& open, const std::vector<double>& branch_costs);

class AttentionGatesImpl : public torch::nn::Module {
 public:
  AttentionGatesImpl(const ModelConfig& config, GateOptions options);

  int64_t num_layers() const { return log_alpha.size(0); }
  int64_t units_per_layer() const { return log_alpha.size(1) / options_.levels(); }
  int64_t levels() const { return options_.levels(); }
  const GateOptions& options() const { return options_; }
  const HardConcrete& hard_concrete() const { return hard_concrete_; }

  // z [layers, levels x units] (log_alpha's layout): sampled (training) or deterministic (eval).
  at::Tensor sample(c10::optional<at::Generator> generator = c10::nullopt) const;
  at::Tensor deterministic() const;
  // [layers, units]: the probability that each unit keeps some full attention (level 0).
  at::Tensor prob_nonzero() const;
  // Level `level`'s columns of a [layers, levels x units] tensor.
  at::Tensor level(const at::Tensor& t, int64_t level) const { return t.narrow(1, level * units_per_layer(), units_per_layer()); }
  // Each unit's expected cost [layers, units], differentiable in log_alpha, where
  // `branch_costs` holds the cost of full attention, then of each local span, widest first: a
  // unit pays a branch's cost when that branch's gate is the first of its levels to open (or
  // every level is closed, for the narrowest), each gate open with probability P(z > 0).
  at::Tensor expected_unit_cost(const std::vector<double>& branch_costs) const;

  // Makes every layer of `model` mix FA and SWA with per-query-head weights taken from z. z's
  // host values decide which branches run; the mix uses `z_on_device` (z's values on the model's
  // device, and what receives their gradient), or else a differentiable copy of z.
  void apply(CausalLM& model, const at::Tensor& z, const at::Tensor& z_on_device = {}) const;
  // Expands z [layers, levels x units] to per-query-head weights [layers, levels x num_heads].
  at::Tensor head_weights(const at::Tensor& z) const;
  // Clamps log_alpha into [-clamp, clamp] (after each optimizer step).
  void clamp_log_alpha();

  // [layers, levels x units], fp32, the only parameter: level k's gates are columns
  // [k x units, (k + 1) x units); one level (one window) is [layers, units].
  at::Tensor log_alpha;

 private:
  GateOptions options_;
  HardConcrete hard_concrete_;
  int64_t num_heads_;
};
TORCH_MODULE(AttentionGates);

// Returns every layer of `model` to its own per-group spans (no gate mixing).
void remove_gates(CausalLM& model);

}  // namespace consa
