#pragma once
// The gate stage: one hard-concrete gate per attention unit of a CausalLM, mixing each unit's
// full-attention and sliding-window outputs. Units are a whole layer, a KV group (one KV head and
// the query heads that share it; the default, since only it shrinks the KV cache) or a query head.
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "consa/attention/attention.h"
#include "consa/gate/hard_concrete.h"
#include "consa/model/decoder.h"

namespace consa {

enum class GateUnit { Layer, KvHead, Head };
GateUnit parse_gate_unit(const std::string& name);  // "layer" | "kv_head" | "head"
const char* gate_unit_name(GateUnit unit);

struct GateOptions {
  GateUnit unit = GateUnit::KvHead;
  AttentionSpan swa = AttentionSpan::sliding(1024);  // what a unit switches to
  HardConcreteOptions hard_concrete;
};

class AttentionGatesImpl : public torch::nn::Module {
 public:
  AttentionGatesImpl(const ModelConfig& config, GateOptions options);

  int64_t num_layers() const { return log_alpha.size(0); }
  int64_t units_per_layer() const { return log_alpha.size(1); }
  const GateOptions& options() const { return options_; }
  const HardConcrete& hard_concrete() const { return hard_concrete_; }

  // z [layers, units]: sampled (training) or deterministic (eval).
  at::Tensor sample(c10::optional<at::Generator> generator = c10::nullopt) const;
  at::Tensor deterministic() const;
  at::Tensor prob_nonzero() const;  // [layers, units]

  // Makes every layer of `model` mix FA and SWA with per-query-head weights taken from z. z's
  // host values decide which branches run; the mix uses `z_on_device` (z's values on the model's
  // device, and what receives their gradient), or else a differentiable copy of z.
  void apply(CausalLM& model, const at::Tensor& z, const at::Tensor& z_on_device = {}) const;
  // Expands z [layers, units] to per-query-head weights [layers, num_heads].
  at::Tensor head_weights(const at::Tensor& z) const;
  // Clamps log_alpha into [-clamp, clamp] (after each optimizer step).
  void clamp_log_alpha();

  at::Tensor log_alpha;  // [layers, units], fp32, the only parameter

 private:
  GateOptions options_;
  HardConcrete hard_concrete_;
  int64_t num_heads_;
};
TORCH_MODULE(AttentionGates);

// Returns every layer of `model` to its own per-group spans (no gate mixing).
void remove_gates(CausalLM& model);

}  // namespace consa
