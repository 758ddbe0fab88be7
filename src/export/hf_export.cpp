#include "consa/export/hf_export.h"

#include <ATen/core/grad_mode.h>

#include <filesystem>

#include "consa/core/error.h"
#include "consa/load/pretrained.h"

namespace consa {
namespace fs = std::filesystem;

namespace {

// Row indices of `heads` consecutive blocks of `dim` rows, taken in `order`.
at::Tensor block_index(const std::vector<int64_t>& order, int64_t dim) {
  std::vector<int64_t> idx;
  for (int64_t h : order)
    for (int64_t d = 0; d < dim; ++d) idx.push_back(h * dim + d);
  return at::tensor(idx, at::kLong);
}

void reorder_rows(at::Tensor& t, const at::Tensor& idx) {
  if (t.defined()) t.copy_(t.index_select(0, idx.to(t.device())));
}

}  // namespace

void permute_kv_groups(CausalLM& model, int64_t layer, const std::vector<int64_t>& perm) {
  SelfAttentionImpl& a = model->attention(layer);
  const int64_t group = a.num_heads / a.num_kv_heads;
  std::vector<int64_t> q_order;
  for (int64_t g : perm)
    for (int64_t r = 0; r < group; ++r) q_order.push_back(g * group + r);
  at::NoGradGuard no_grad;
  const at::Tensor q_idx = block_index(q_order, a.head_dim), kv_idx = block_index(perm, a.head_dim);
  reorder_rows(a.q_proj->weight, q_idx);
  reorder_rows(a.q_proj->bias, q_idx);
  reorder_rows(a.k_proj->weight, kv_idx);
  reorder_rows(a.k_proj->bias, kv_idx);
  reorder_rows(a.v_proj->weight, kv_idx);
  reorder_rows(a.v_proj->bias, kv_idx);
  a.o_proj->weight.copy_(a.o_proj->weight.index_select(1, q_idx.to(a.o_proj->weight.device())));
  std::vector<AttentionSpan> spans;
  for (int64_t g : perm) spans.push_back(a.group_spans[g]);
  a.group_spans = spans;
}

void export_hf(CausalLM& model, const Assignment& assignment, const std::string& dir) {
  CONSA_CHECK(assignment.unit != GateUnit::Head, dir,
              ": head-granularity assignments cannot be exported in Hugging Face format yet; supported: layer, "
              "kv_head");
  ModelConfig config = model->config();
  // Work on a copy: the caller's model keeps its head order and attention settings.
  CausalLM work(config, at::TensorOptions().dtype(model->dtype()).device(model->device()));
  {
    at::NoGradGuard no_grad;
    auto src = model->named_parameters();
    for (auto& item : work->named_parameters()) item.value().copy_(src[item.key()]);
  }
  assignment.apply(work);
  if (assignment.unit == GateUnit::Layer) {
    CONSA_CHECK(assignment.swa.sinks == 0, dir,
                ": transformers has no attention sinks; export a layer assignment with sinks 0");
    for (int64_t l = 0; l < config.num_layers; ++l)
      config.layer_window[l] = assignment.full[l][0] ? 0 : assignment.swa.window;
  } else {
    config.hybrid_full_kv_heads.clear();
    for (int64_t l = 0; l < config.num_layers; ++l) {
      std::vector<int64_t> perm;
      for (int64_t g = 0; g < config.num_kv_heads; ++g)
        if (assignment.kv_head_full(l, g)) perm.push_back(g);
      config.hybrid_full_kv_heads.push_back(static_cast<int64_t>(perm.size()));
      for (int64_t g = 0; g < config.num_kv_heads; ++g)
        if (!assignment.kv_head_full(l, g)) perm.push_back(g);
      permute_kv_groups(work, l, perm);
    }
    config.hybrid_window = assignment.swa.window;
    config.hybrid_sinks = assignment.swa.sinks;
    std::fill(config.layer_window.begin(), config.layer_window.end(), 0);
  }
  save_pretrained(work, dir, 4ull << 30, &config);
  // assignment.json describes the weights as stored: with kv_head units the FA groups come first.
  Assignment saved = assignment;
  if (assignment.unit == GateUnit::KvHead)
    for (int64_t l = 0; l < config.num_layers; ++l) {
      std::vector<double> scores;
      for (bool want_full : {true, false})
        for (int64_t g = 0; g < config.num_kv_heads; ++g)
          if (assignment.full[l][g] == want_full) scores.push_back(assignment.scores[l][g]);
      const int64_t n = config.hybrid_full_kv_heads[l];
      for (int64_t g = 0; g < config.num_kv_heads; ++g) saved.full[l][g] = g < n;
      saved.scores[l] = scores;
    }
  saved.weights_checksum = weights_checksum(work);
  saved.save((fs::path(dir) / "assignment.json").string());
}

}  // namespace consa
