#pragma once
// Binarization of learned gates into a hard FA/SWA assignment, and assignment.json (schema in
// docs/export.md). Two rules:
//   threshold - a unit keeps full attention iff log_alpha > 0 (the paper's rule);
//   exact     - exactly round(t * N) units become SWA, those with the lowest log_alpha; per layer
//               (round(t * units per layer) each) when the constraint scope is per_layer. Under a
//               KV budget (constraint.kv_budget): the fewest units on SWA, lowest first, whose
//               cache fits the budget (per layer: each layer within its equal share).
// With several windows (gates.windows) each unit ends on one span: full or one of the windows
// (src/export/binarize.cpp says how each rule picks it).
#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "consa/gate/attention_gates.h"
#include "consa/gate/sparsity_constraint.h"
#include "consa/model/decoder.h"

namespace consa {

enum class BinarizeRule { Threshold, Exact };
BinarizeRule parse_binarize_rule(const std::string& name);  // "threshold" | "exact"
const char* binarize_rule_name(BinarizeRule rule);

// Version 2 gives each unit its window; version 1 files (one window) still read.
constexpr int kAssignmentSchemaVersion = 2;

struct Assignment {
  // Model identity.
  std::string architecture;
  int64_t num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::string weights_checksum;  // "fnv1a64:..." over parameter names and bytes
  // Granularity and the SWA span (with several windows, the widest; the sinks are every window's).
  GateUnit unit = GateUnit::KvHead;
  AttentionSpan swa;
  BinarizeRule rule = BinarizeRule::Exact;
  // Who chose the units: "consa" (learned gates), a baseline allocator ("uniform", "random",
  // "attention-span", "duo"), or "declared" (a checkpoint's own layout).
  std::string method = "consa";
  // Per layer, per unit: true = full attention; and the gate score (log_alpha) behind it.
  std::vector<std::vector<bool>> full;
  std::vector<std::vector<double>> scores;
  // Per layer, per unit: the window of a unit on SWA (0 where full). Empty, or 0 for a unit on
  // SWA: swa.window.
  std::vector<std::vector<int64_t>> windows;
  double target = 0;
  // The budget the assignment was made under (undefined: a target fraction); assignment.json and
  // `consa inspect` then give its bytes beside the fraction.
  KvBudget kv_budget;

  // An empty assignment carrying `config`'s identity (architecture and head counts).
  static Assignment for_model(const ModelConfig& config);

  int64_t units_per_layer() const { return full.empty() ? 0 : static_cast<int64_t>(full[0].size()); }
  double achieved_sparsity() const;  // fraction of units on SWA
  // Whether KV head g of `layer` needs a full-length cache (some query head of it keeps FA).
  bool kv_head_full(int64_t layer, int64_t kv_head) const;
  // The span of one unit, and of KV head g of `layer` (the widest of the query heads that share it).
  AttentionSpan unit_span(int64_t layer, int64_t unit) const;
  AttentionSpan kv_head_span(int64_t layer, int64_t kv_head) const;
  // The windows that SWA units use, widest first ({swa.window} when there is one, or none on SWA).
  std::vector<int64_t> local_windows() const;
  bool multi_window() const { return local_windows().size() > 1; }
  // swa.describe(), or with several windows "swa(W=1024|128,S=4)".
  std::string describe_windows() const;
  int schema_version = kAssignmentSchemaVersion;  // of the file it was read from, or the one it writes

  // KV-cache bytes for one sequence of `context` tokens: {full-attention part, SWA part}.
  // FA KV heads hold `context` positions; SWA ones min(context, window + sinks). Throws
  // consa::Error when a figure does not fit int64 (the shape may come from a file).
  std::pair<int64_t, int64_t> kv_cache_bytes(int64_t context, int64_t bytes_per_element) const;
  // The same model's KV-cache bytes with full attention everywhere.
  int64_t dense_kv_cache_bytes(int64_t context, int64_t bytes_per_element) const;

  nlohmann::json to_json(int64_t kv_context, int64_t bytes_per_element) const;
  static Assignment from_json(const nlohmann::json& j, const std::string& source);
  void save(const std::string& path, int64_t kv_context = 4096, int64_t bytes_per_element = 2) const;
  static Assignment load(const std::string& path);

  // The one compatibility check of an assignment with a model, before anything uses it: layers,
  // query and KV heads and head_dim must be the model's. `source` names the file in the error.
  void check_fits(const ModelConfig& config, const std::string& source) const;

  // Sets each layer's per-KV-group spans (layer and kv_head units), or its per-head fa_weight
  // of 0/1 (head units), so `model` computes with this assignment.
  void apply(CausalLM& model) const;
};

// With several windows the exact rule needs a KV budget (binarize_within_kv_budget).
Assignment binarize(const ModelConfig& config, const AttentionGatesImpl& gates, BinarizeRule rule, double target,
                    ConstraintScope scope);
// The same rules over any per-unit scores [layers, units] (higher = keep full attention).
Assignment assignment_from_scores(const ModelConfig& config, GateUnit unit, const AttentionSpan& swa,
                                  const at::Tensor& unit_scores, BinarizeRule rule, double target, ConstraintScope scope);

// The exact rule under a KV budget (kv_budget.h): per scope, the swa_units_within count of the
// lowest scores on SWA, so the cache at the budget's context never exceeds its bytes.
Assignment binarize_within_kv_budget(const ModelConfig& config, const AttentionGatesImpl& gates, const KvBudget& budget,
                                     ConstraintScope scope);
Assignment assignment_within_kv_budget(const ModelConfig& config, GateUnit unit, const AttentionSpan& swa,
                                       const at::Tensor& unit_scores, const KvBudget& budget, ConstraintScope scope);

// Several windows: one span per unit from its nested gates' logits `level_scores`
// [layers, levels x units] (AttentionGatesImpl's layout). threshold: the first level whose logit
// is > 0 opens its branch (every level closed: the narrowest window). exact: within `budget`
// (needed), the most probable choice under the gates that fits (src/export/binarize.cpp).
Assignment assignment_from_window_scores(const ModelConfig& config, const GateOptions& gates,
                                         const at::Tensor& level_scores, BinarizeRule rule, const KvBudget& budget,
                                         ConstraintScope scope);
// The assignment of one option per unit (flat [layers x units]): 0 full attention, b >= 1 local
// span b - 1 of gates.local_spans(); `scores` per unit, in the same order.
Assignment assignment_from_window_choices(const ModelConfig& config, const GateOptions& gates,
                                          const std::vector<int64_t>& choice, const std::vector<double>& scores);

// The layout a checkpoint declares itself, as an assignment: a consa hybrid export's kv_head or
// head split, or else per-layer windows (layer units; transformers' layer_types, Mistral's
// sliding_window). Scores are +1 (full) / -1 (sliding): there are no learned gates.
Assignment declared_assignment(CausalLM& model, const std::string& source);

// FNV-1a 64 over parameter names and bytes, in name order: identifies the weights an assignment
// was learned on.
std::string weights_checksum(CausalLM& model);

// A readable layer x unit map ("F" full, "S" sliding) with the sparsity and KV-cache figures.
void print_assignment(std::ostream& out, const Assignment& a, const std::string& source, int64_t kv_context);

}  // namespace consa
