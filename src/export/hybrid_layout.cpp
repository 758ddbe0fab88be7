#include "consa/export/hybrid_layout.h"

#include <ATen/core/grad_mode.h>

#include "consa/core/error.h"

namespace consa {

namespace {

// Row indices of consecutive blocks of `dim` rows, taken in `order`.
at::Tensor block_index(const std::vector<int64_t>& order, int64_t dim) {
  std::vector<int64_t> idx;
  for (int64_t h : order)
    for (int64_t d = 0; d < dim; ++d) idx.push_back(h * dim + d);
  return at::tensor(idx, at::kLong);
}

void reorder(at::Tensor& t, int64_t dim, const at::Tensor& idx) {
  if (t.defined()) t.copy_(t.index_select(dim, idx.to(t.device())));
}

}  // namespace

LayerHeadLayout hybrid_layout(const Assignment& a, int64_t layer) {
  const int64_t group = a.num_heads / a.num_kv_heads;
  auto head_is_full = [&](int64_t h) {
    switch (a.unit) {
      case GateUnit::Layer: return static_cast<bool>(a.full[layer][0]);
      case GateUnit::KvHead: return static_cast<bool>(a.full[layer][h / group]);
      case GateUnit::Head: return static_cast<bool>(a.full[layer][h]);
    }
    return true;
  };
  LayerHeadLayout out;
  for (bool want_full_cache : {true, false})
    for (int64_t g = 0; g < a.num_kv_heads; ++g)
      if (a.kv_head_full(layer, g) == want_full_cache) out.kv_order.push_back(g);
  for (int64_t g = 0; g < a.num_kv_heads; ++g)
    out.full_kv_heads += a.kv_head_full(layer, g) ? 1 : 0;
  for (int64_t g : out.kv_order)
    for (bool want_full : {true, false})
      for (int64_t h = g * group; h < (g + 1) * group; ++h)
        if (head_is_full(h) == want_full) {
          out.q_order.push_back(h);
          out.head_full.push_back(want_full);
        }
  return out;
}

void permute_attention_heads(CausalLM& model, int64_t layer, const LayerHeadLayout& layout) {
  SelfAttentionImpl& a = model->attention(layer);
  at::NoGradGuard no_grad;
  const at::Tensor q_idx = block_index(layout.q_order, a.head_dim);
  const at::Tensor kv_idx = block_index(layout.kv_order, a.head_dim);
  reorder(a.q_proj->weight, 0, q_idx);
  reorder(a.q_proj->bias, 0, q_idx);
  reorder(a.k_proj->weight, 0, kv_idx);
  reorder(a.k_proj->bias, 0, kv_idx);
  reorder(a.v_proj->weight, 0, kv_idx);
  reorder(a.v_proj->bias, 0, kv_idx);
  reorder(a.o_proj->weight, 1, q_idx);
  std::vector<AttentionSpan> spans;
  for (int64_t g : layout.kv_order) spans.push_back(a.group_spans[g]);
  a.group_spans = spans;
  if (a.fa_weight.defined()) {
    const at::Tensor order = at::tensor(layout.q_order, at::kLong);
    const at::Tensor& on_host = a.gate_weights_on_host();
    a.set_gate_weights(a.fa_weight.index_select(0, order.to(a.fa_weight.device())),
                       on_host.defined() ? on_host.index_select(0, order) : at::Tensor());
  }
}

Assignment permuted_assignment(const Assignment& assignment, const std::vector<LayerHeadLayout>& layouts) {
  Assignment out = assignment;
  if (assignment.unit == GateUnit::Layer) return out;
  for (int64_t l = 0; l < assignment.num_layers; ++l) {
    const auto& order = assignment.unit == GateUnit::KvHead ? layouts[l].kv_order : layouts[l].q_order;
    for (size_t i = 0; i < order.size(); ++i) {
      out.full[l][i] = assignment.full[l][order[i]];
      out.scores[l][i] = assignment.scores[l][order[i]];
      if (!assignment.windows.empty()) out.windows[l][i] = assignment.windows[l][order[i]];
    }
  }
  return out;
}

CausalLM hybrid_model_copy(CausalLM& model, const Assignment& assignment, std::vector<LayerHeadLayout>* layouts) {
  CONSA_CHECK(!assignment.multi_window(), "assignment: units use ", assignment.local_windows().size(),
              " windows; exports hold one window per model (evaluate a multi-window assignment with consa eval)");
  CausalLM work(model->config(), at::TensorOptions().dtype(model->dtype()).device(model->device()));
  {
    at::NoGradGuard no_grad;
    auto src = model->named_parameters();
    for (auto& item : work->named_parameters()) item.value().copy_(src[item.key()]);
  }
  layouts->clear();
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    layouts->push_back(hybrid_layout(assignment, l));
    permute_attention_heads(work, l, layouts->back());
  }
  permuted_assignment(assignment, *layouts).apply(work);
  return work;
}

}  // namespace consa
