#include "consa/model/decoder.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>

#include "consa/core/device.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/kernels/fused_ops.h"

namespace consa {

SelfAttentionImpl::SelfAttentionImpl(const ModelConfig& c, int64_t layer,
                                     const at::TensorOptions& options)
    : num_heads(c.num_heads),
      num_kv_heads(c.num_kv_heads),
      head_dim(c.head_dim),
      scale(1.0 / std::sqrt(static_cast<double>(c.head_dim))),
      group_spans(c.num_kv_heads),
      backend(make_attention_backend(AttentionImpl::Auto)) {
  for (int64_t g = 0; g < c.num_kv_heads; ++g) group_spans[g] = c.declared_span(layer, g);
  if (!c.hybrid_head_windows.empty()) {  // query-head hybrid: a 0/1 mix per head
    std::vector<AttentionSpan> heads, local;
    for (int64_t w : c.hybrid_head_windows.at(layer))
      heads.push_back(w == 0 ? AttentionSpan::full() : AttentionSpan::sliding(w, c.hybrid_sinks));
    for (int64_t w : c.hybrid_windows()) local.push_back(AttentionSpan::sliding(w, c.hybrid_sinks));
    set_head_spans(heads, local, at::kCPU);
  }
  q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_heads * c.head_dim, c.qkv_bias, options));
  k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias, options));
  v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias, options));
  o_proj = register_module("o_proj", Linear(c.num_heads * c.head_dim, c.hidden_size, c.o_bias, options));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(c.head_dim, c.rms_norm_eps, options));
    k_norm = register_module("k_norm", RMSNorm(c.head_dim, c.rms_norm_eps, options));
  }
}

ProjectedQKV SelfAttentionImpl::project(const at::Tensor& x, const RopeTables& rope) const {
  const int64_t b = x.size(0), l = x.size(1);
  at::Tensor q = q_proj->forward(x).view({b, l, num_heads, head_dim});
  at::Tensor k = k_proj->forward(x).view({b, l, num_kv_heads, head_dim});
  at::Tensor v = v_proj->forward(x).view({b, l, num_kv_heads, head_dim});
  if (q_norm) {  // Qwen3 normalises each head before RoPE
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  return {apply_rope(q, rope, fused_kernels), apply_rope(k, rope, fused_kernels), v};
}

at::Tensor SelfAttentionImpl::attend(const ProjectedQKV& qkv, const PackedDocuments& documents) const {
  if (fa_weight.defined()) return attend_gated(qkv, documents);
  const int64_t group = num_heads / num_kv_heads;
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < num_kv_heads;) {
    int64_t end = start + 1;
    while (end < num_kv_heads && group_spans[end] == group_spans[start]) ++end;
    if (start == 0 && end == num_kv_heads)
      return backend->attend(qkv.q, qkv.k, qkv.v, group_spans[start], scale, documents);
    parts.push_back(backend->attend(qkv.q.narrow(2, start * group, (end - start) * group),
                                    qkv.k.narrow(2, start, end - start), qkv.v.narrow(2, start, end - start),
                                    group_spans[start], scale, documents));
    start = end;
  }
  return at::cat(parts, 2);
}

at::Tensor SelfAttentionImpl::attend_gated(const ProjectedQKV& qkv, const PackedDocuments& documents) const {
  const int64_t group = num_heads / num_kv_heads;
  const int64_t levels = 1 + static_cast<int64_t>(narrower_spans.size());
  CONSA_CHECK(fa_weight.numel() == levels * num_heads, "gate weights: ", levels, " levels of ", num_heads,
              " heads expected, got ", fa_weight.numel(), " values");
  // Branch b's span: full attention, then the local spans widest first. Level k's gate opens
  // branch k; a head with every level closed takes the last (narrowest) branch.
  auto branch_span = [&](int64_t b) {
    return b == 0 ? AttentionSpan::full() : b == 1 ? swa_span : narrower_spans[b - 2];
  };
  // Which KV groups need each branch. Gates live on the host, so reading z costs no device
  // synchronisation. A branch whose weight (the product of the gates above it) is exactly 0 for
  // every head of a group is skipped there: a gate at exactly 0 or 1 gets no gradient from the
  // hard-concrete clamp, so neither the output nor any gradient changes.
  std::vector<std::vector<int64_t>> need(levels + 1);
  // Skipping changes d(out)/dz at saturated gates, so it needs those gradients to be unused.
  const bool may_skip =
      !at::GradMode::is_enabled() || !fa_weight.requires_grad() || saturated_gates_have_no_gradient;
  const at::Tensor& z_host = gate_weights_on_host();
  if (may_skip && z_host.defined()) {
    const at::Tensor zc = z_host.detach().to(at::kFloat).contiguous();
    const float* z = zc.data_ptr<float>();
    for (int64_t g = 0; g < num_kv_heads; ++g) {
      std::vector<bool> needed(levels + 1, false);
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        bool reached = true;  // some weight still flows past the levels above
        for (int64_t k = 0; k < levels && reached; ++k) {
          const float w = z[k * num_heads + h];
          if (w > 0) needed[k] = true;
          reached = w < 1;
        }
        if (reached) needed[levels] = true;
      }
      for (int64_t b = 0; b <= levels; ++b)
        if (needed[b]) need[b].push_back(g);
    }
  } else {  // compute every branch everywhere
    for (auto& groups : need)
      for (int64_t g = 0; g < num_kv_heads; ++g) groups.push_back(g);
  }
  // The branch output for the listed groups, zeros elsewhere (their weight is 0 there). With
  // more than half the groups listed the branch runs over all of them: gathering the listed
  // groups and scattering their output back would move more bytes than the attention it saves.
  auto branch = [&](const std::vector<int64_t>& groups, const AttentionSpan& span) -> at::Tensor {
    if (2 * static_cast<int64_t>(groups.size()) > num_kv_heads)
      return backend->attend(qkv.q, qkv.k, qkv.v, span, scale, documents);
    if (groups.empty()) return at::Tensor();
    const int64_t b = qkv.q.size(0), l = qkv.q.size(1), d = head_dim, n = static_cast<int64_t>(groups.size());
    const at::Tensor idx = to_device_async(at::tensor(groups, at::kLong), qkv.q.device());
    at::Tensor q = qkv.q.view({b, l, num_kv_heads, group, d}).index_select(2, idx).reshape({b, l, n * group, d});
    at::Tensor out =
        backend->attend(q, qkv.k.index_select(2, idx), qkv.v.index_select(2, idx), span, scale, documents);
    return at::zeros({b, l, num_kv_heads, group, d}, out.options())
        .index_copy(2, idx, out.view({b, l, n, group, d}))
        .view({b, l, num_heads, d});
  };
  std::vector<at::Tensor> outputs;
  for (int64_t b = 0; b <= levels; ++b) outputs.push_back(branch(need[b], branch_span(b)));
  const at::Tensor& like = *std::find_if(outputs.begin(), outputs.end(), [](const at::Tensor& t) { return t.defined(); });
  const at::Tensor z_device = to_device_async(fa_weight, like.device());
  // From the narrowest branch outwards: level k mixes its branch with what lies below it.
  at::Tensor mixed = outputs[levels];
  for (int64_t k = levels - 1; k >= 0; --k) {
    const at::Tensor& open = outputs[k];
    const at::Tensor zk = z_device.narrow(0, k * num_heads, num_heads);
    if (!open.defined() && !mixed.defined()) continue;
    const at::Tensor z = zk.to(like.scalar_type()).view({1, 1, num_heads, 1});
    if (!mixed.defined()) {
      mixed = open * z;
    } else if (!open.defined()) {
      mixed = mixed * (1 - z);
    } else {
      // z * open + (1 - z) * below in one kernel; lerp gives exactly each side at z == 1 and 0.
      mixed = kernels::gated_mix(open, mixed, zk, fused_kernels);
    }
  }
  return mixed;
}

void SelfAttentionImpl::set_gate_weights(at::Tensor weights, at::Tensor on_host) {
  CONSA_CHECK(!weights.defined() || (weights.dim() == 1 && weights.numel() % num_heads == 0 && weights.numel() > 0),
              "gate weights: expected ", num_heads, " per-head values per level, got shape ", weights.sizes());
  CONSA_CHECK(!on_host.defined() || on_host.device().is_cpu(), "gate weights: host values expected on the CPU, got ",
              on_host.device().str());
  fa_weight = std::move(weights);
  const bool on_device = fa_weight.defined() && !fa_weight.device().is_cpu();
  fa_weight_on_host = on_device && on_host.defined() ? on_host.detach() : at::Tensor();
}

void SelfAttentionImpl::set_head_spans(const std::vector<AttentionSpan>& head_spans,
                                       const std::vector<AttentionSpan>& local_spans, const at::Device& device) {
  CONSA_CHECK(static_cast<int64_t>(head_spans.size()) == num_heads && !local_spans.empty(), "head spans: ", num_heads,
              " spans and at least one local span expected, got ", head_spans.size(), " and ", local_spans.size());
  // Level 0 opens full attention, level k local span k - 1; a head with every level closed
  // takes the narrowest.
  const int64_t levels = static_cast<int64_t>(local_spans.size());
  std::vector<float> w(levels * num_heads, 0.0f);
  for (int64_t h = 0; h < num_heads; ++h) {
    const AttentionSpan& span = head_spans[h];
    int64_t k = 0;
    if (!span.is_full()) {
      k = std::find(local_spans.begin(), local_spans.end(), span) - local_spans.begin() + 1;
      CONSA_CHECK(k <= levels, "head spans: head ", h, "'s ", span.describe(), " is none of the local spans");
    }
    if (k < levels) w[k * num_heads + h] = 1.0f;
  }
  const at::Tensor on_host = at::tensor(w);
  set_local_spans(local_spans);
  set_gate_weights(device.is_cpu() ? on_host : to_device_async(on_host, device), on_host);
}

at::Tensor SelfAttentionImpl::output(const at::Tensor& heads) const {
  return o_proj->forward(heads.reshape({heads.size(0), heads.size(1), num_heads * head_dim}));
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& x, const RopeTables& rope, const PackedDocuments& documents) {
  return output(attend(project(x, rope), documents));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer,
                                   const at::TensorOptions& options) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
  self_attn = register_module("self_attn", SelfAttention(c, layer, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
  mlp = register_module("mlp", Mlp(c.hidden_size, c.intermediate_size, options));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& hidden, const RopeTables& rope,
                                     const PackedDocuments& documents) {
  const at::Tensor attended = self_attn->forward(input_layernorm->forward(hidden), rope, documents);
  const RMSNormImpl& norm = *post_attention_layernorm;
  auto [h, normed] = kernels::add_rms_norm(attended, hidden, norm.weight, norm.eps, norm.fused_kernels);
  return h + mlp->forward(normed);
}

DecoderStackImpl::DecoderStackImpl(const ModelConfig& c, const at::TensorOptions& options) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    layer_list.push_back(DecoderLayer(c, i, options));
    layers->push_back(layer_list.back());
  }
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
}

CausalLMImpl::CausalLMImpl(ModelConfig config, const at::TensorOptions& options)
    : config_(std::move(config)) {
  config_.validate("model config");
  model = register_module("model", DecoderStack(config_, options));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(config_.hidden_size, config_.vocab_size, false, options));
  inv_freq_ = rope_inv_freq(config_.rope, config_.head_dim);
}

namespace {

// Recomputes one decoder layer in backward instead of keeping its activations (as reentrant
// checkpointing does). Parameter gradients accumulate directly into the parameters during the
// recompute's backward; the gate weights fa_weight travel as an explicit input, so their gradient
// flows on to log_alpha through the ordinary graph. Without gates an always-trainable anchor
// takes that slot, so the node joins the graph even when its input needs no gradient.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& gate_or_anchor, DecoderLayerImpl* layer, const RopeTables* rope,
                            const PackedDocuments* documents) {
    ctx->saved_data["layer"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(layer));
    ctx->saved_data["cos"] = rope->cos;
    ctx->saved_data["sin"] = rope->sin;
    ctx->saved_data["documents"] = documents->defined();
    if (documents->defined()) {  // the caller's PackedDocuments is gone by backward
      ctx->saved_data["document_ids"] = documents->ids;
      ctx->saved_data["document_offsets"] = documents->offsets;
      ctx->saved_data["document_starts"] = documents->starts;
      ctx->saved_data["document_cu_lengths"] = documents->cu_lengths;
      ctx->saved_data["document_max_length"] = documents->max_length;
    }
    ctx->save_for_backward({hidden, gate_or_anchor});
    at::NoGradGuard no_grad;
    return layer->forward(hidden, *rope, *documents);
  }

  static PackedDocuments saved_documents(torch::autograd::AutogradContext* ctx) {
    PackedDocuments d;
    if (!ctx->saved_data["documents"].toBool()) return d;
    d.ids = ctx->saved_data["document_ids"].toTensor();
    d.offsets = ctx->saved_data["document_offsets"].toTensor();
    d.starts = ctx->saved_data["document_starts"].toTensor();
    d.cu_lengths = ctx->saved_data["document_cu_lengths"].toTensor();
    d.max_length = ctx->saved_data["document_max_length"].toInt();
    return d;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_output) {
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(static_cast<intptr_t>(ctx->saved_data["layer"].toInt()));
    RopeTables rope{ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor()};
    const PackedDocuments documents = saved_documents(ctx);
    torch::autograd::variable_list saved = ctx->get_saved_variables();
    at::Tensor hidden = saved[0].detach().requires_grad_(true);
    at::Tensor& fa_weight = layer->self_attn->fa_weight;
    const bool gated = fa_weight.defined();
    at::Tensor original_gate = fa_weight;
    at::Tensor gate = gated ? saved[1].detach().requires_grad_(true) : at::Tensor();
    if (gated) fa_weight = gate;
    {
      at::AutoGradMode enable(true);
      at::Tensor out = layer->forward(hidden, rope, documents);
      torch::autograd::backward({out}, {grad_output[0]});
    }
    if (gated) fa_weight = original_gate;
    return {hidden.grad(), gated ? gate.grad() : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor checkpointed_layer_forward(DecoderLayerImpl& layer, const at::Tensor& hidden, const RopeTables& rope,
                                      const PackedDocuments& documents) {
  const at::Tensor& z = layer.self_attn->fa_weight;
  at::Tensor gate_or_anchor = z.defined() ? z : at::zeros({}, at::TensorOptions().requires_grad(true));
  return CheckpointedLayer::apply(hidden, gate_or_anchor, &layer, &rope, &documents);
}

}  // namespace

at::Tensor CausalLMImpl::hidden_states(const at::Tensor& input_ids, const at::Tensor& document_ids) {
  CONSA_CHECK(input_ids.dim() == 2, "input_ids must be [batch, length], got ", input_ids.sizes());
  CONSA_CHECK(!document_ids.defined() || document_ids.sizes() == input_ids.sizes(), "document_ids ",
              document_ids.sizes(), " must have the shape of input_ids ", input_ids.sizes());
  at::Tensor h = model->embed_tokens->forward(input_ids.to(device()));
  RopeTables rope = rope_tables(inv_freq_, 0, input_ids.size(1), h.scalar_type(), h.device());
  const PackedDocuments documents =
      document_ids.defined() ? PackedDocuments::from_ids(document_ids, h.device()) : PackedDocuments{};
  const bool checkpoint = gradient_checkpointing_ && at::GradMode::is_enabled();
  for (auto& layer : model->layer_list)
    h = checkpoint ? checkpointed_layer_forward(*layer, h, rope, documents) : layer->forward(h, rope, documents);
  return model->norm->forward(h);
}

at::Tensor CausalLMImpl::logits(const at::Tensor& hidden) const {
  return at::linear(hidden, output_weight());
}

at::Tensor CausalLMImpl::forward(const at::Tensor& input_ids, const at::Tensor& document_ids) {
  return logits(hidden_states(input_ids, document_ids));
}

void CausalLMImpl::set_attention_backend(std::shared_ptr<const AttentionBackend> backend) {
  for (auto& layer : model->layer_list) layer->self_attn->backend = backend;
}

void CausalLMImpl::set_fused_kernels(bool on) {
  for (auto& layer : model->layer_list) {
    layer->input_layernorm->fused_kernels = layer->post_attention_layernorm->fused_kernels = on;
    layer->mlp->fused_kernels = layer->self_attn->fused_kernels = on;
    if (layer->self_attn->q_norm) layer->self_attn->q_norm->fused_kernels = layer->self_attn->k_norm->fused_kernels = on;
  }
  model->norm->fused_kernels = on;
}

int64_t CausalLMImpl::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

DenseView::DenseView(CausalLM& model) : model_(model) {
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    SelfAttentionImpl& a = model->attention(l);
    saved_.push_back({a.fa_weight, a.fa_weight_on_host, a.group_spans, a.swa_span, a.narrower_spans});
    a.set_gate_weights({});
    a.group_spans.assign(a.group_spans.size(), AttentionSpan::full());
  }
}

DenseView::~DenseView() {
  for (int64_t l = 0; l < model_->num_layers(); ++l) {
    SelfAttentionImpl& a = model_->attention(l);
    a.set_gate_weights(saved_[l].fa_weight, saved_[l].fa_weight_on_host);
    a.group_spans = saved_[l].group_spans;
    a.swa_span = saved_[l].swa_span;
    a.narrower_spans = saved_[l].narrower_spans;
  }
}

void init_random_weights(CausalLM& model, double std, uint64_t seed) {
  at::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor p = item.value();
    at::Tensor value;
    if (ends_with(name, "norm.weight")) {
      value = at::ones(p.sizes(), at::kFloat);
    } else if (ends_with(name, "bias")) {
      value = at::zeros(p.sizes(), at::kFloat);
    } else {
      value = at::normal(0.0, std, p.sizes(), gen);
    }
    p.copy_(value);
  }
}

}  // namespace consa
