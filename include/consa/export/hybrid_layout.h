#pragma once
// The stored head layout of an exported hybrid model. In every layer the KV groups that need a
// full-length cache come first and the sliding-window-only groups after them, widest window
// first; within a group the full-attention query heads come first, then the widest windows.
// q/k/v rows, their biases and o_proj columns are moved together, so the permuted model computes
// exactly what the original did under the assignment, and attention runs as contiguous slices:
// the full-cache groups, then one ring-buffer slice per window.
#include <vector>

#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa {

struct LayerHeadLayout {
  std::vector<int64_t> kv_order;  // stored KV group i is original group kv_order[i]
  std::vector<int64_t> q_order;   // stored query head i is original head q_order[i]
  int64_t full_kv_heads = 0;      // stored groups [0, full_kv_heads) keep every position
  std::vector<int64_t> kv_windows;    // per stored KV group: its cache's window (0: every position)
  std::vector<int64_t> head_windows;  // per stored query head: its window (0: full attention)
};

LayerHeadLayout hybrid_layout(const Assignment& assignment, int64_t layer);

// Reorders the heads of `layer` to `layout` (weights and the per-group spans).
void permute_attention_heads(CausalLM& model, int64_t layer, const LayerHeadLayout& layout);

// A copy of `model` with every layer permuted to its hybrid layout and the assignment applied;
// `layouts` receives the layout of each layer. The caller's model is left as it was.
CausalLM hybrid_model_copy(CausalLM& model, const Assignment& assignment, std::vector<LayerHeadLayout>* layouts);

// The assignment that describes a permuted copy: same units and scores, in stored order.
Assignment permuted_assignment(const Assignment& assignment, const std::vector<LayerHeadLayout>& layouts);

}  // namespace consa
