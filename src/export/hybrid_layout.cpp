#include "consa/export/hybrid_layout.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cstdint>

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
  auto head_span = [&](int64_t h) {
    switch (a.unit) {
      case GateUnit::Layer: return a.unit_span(layer, 0);
      case GateUnit::KvHead: return a.unit_span(layer, h / group);
      case GateUnit::Head: return a.unit_span(layer, h);
    }
    return AttentionSpan::full();
  };
  // Full first, then the widest windows; a stable sort keeps equal spans in their own order.
  auto rank = [](const AttentionSpan& s) { return s.is_full() ? INT64_MAX : s.window; };
  LayerHeadLayout out;
  for (int64_t g = 0; g < a.num_kv_heads; ++g) out.kv_order.push_back(g);
  std::stable_sort(out.kv_order.begin(), out.kv_order.end(), [&](int64_t x, int64_t y) {
    return rank(a.kv_head_span(layer, x)) > rank(a.kv_head_span(layer, y));
  });
  for (int64_t g : out.kv_order) {
    const AttentionSpan cache = a.kv_head_span(layer, g);
    out.full_kv_heads += cache.is_full() ? 1 : 0;
    out.kv_windows.push_back(cache.is_full() ? 0 : cache.window);
    std::vector<int64_t> heads;
    for (int64_t h = g * group; h < (g + 1) * group; ++h) heads.push_back(h);
    std::stable_sort(heads.begin(), heads.end(),
                     [&](int64_t x, int64_t y) { return rank(head_span(x)) > rank(head_span(y)); });
    for (int64_t h : heads) {
      const AttentionSpan span = head_span(h);
      out.q_order.push_back(h);
      out.head_windows.push_back(span.is_full() ? 0 : span.window);
    }
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
  if (a.fa_weight.defined()) {  // [levels x heads]: each level's heads move
    const at::Tensor order = at::tensor(layout.q_order, at::kLong);
    const at::Tensor& on_host = a.gate_weights_on_host();
    auto permuted = [&](const at::Tensor& w) {
      return w.view({-1, a.num_heads}).index_select(1, order.to(w.device())).reshape({-1});
    };
    a.set_gate_weights(permuted(a.fa_weight), on_host.defined() ? permuted(on_host) : at::Tensor());
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
