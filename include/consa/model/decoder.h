#pragma once
// The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) as LibTorch modules whose parameter
// names are exactly Hugging Face's ("model.layers.3.self_attn.q_proj.weight", ...), so loading
// and saving are name-for-name copies.
//
// Attention is split into three steps so later stages can hook in between them:
//   project(x)      -> q [B, L, Hq, D], k, v [B, L, Hkv, D], RoPE applied
//   attend(q, k, v) -> per-head outputs [B, L, Hq, D], each KV group under its own span, or
//                      (gated) a per-head mix of full and sliding-window attention
//   output(heads)   -> o_proj
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <vector>

#include "consa/attention/attention.h"
#include "consa/model/config.h"
#include "consa/model/layers.h"
#include "consa/model/rope.h"

namespace consa {

struct ProjectedQKV {
  at::Tensor q;  // [B, L, Hq, D]
  at::Tensor k;  // [B, L, Hkv, D]
  at::Tensor v;  // [B, L, Hkv, D]
};

class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(const ModelConfig& config, int64_t layer, const at::TensorOptions& options);

  // With `documents`, attention stays inside each packed document (AttentionBackend::attend).
  at::Tensor forward(const at::Tensor& x, const RopeTables& rope, const PackedDocuments& documents = {});
  ProjectedQKV project(const at::Tensor& x, const RopeTables& rope) const;
  at::Tensor attend(const ProjectedQKV& qkv, const PackedDocuments& documents = {}) const;
  at::Tensor output(const at::Tensor& heads) const;  // [B, L, Hq, D] -> [B, L, hidden]
  // The gated mix; the FA or SWA branch is skipped for KV groups whose gates are all exactly 0
  // or all exactly 1 (hard-concrete samples often are).
  at::Tensor attend_gated(const ProjectedQKV& qkv, const PackedDocuments& documents = {}) const;
  // Gated mode with per-query-head weights `weights` (host or device) whose values on the host
  // are `on_host` (may be undefined when `weights` is on the host); undefined weights end it.
  void set_gate_weights(at::Tensor weights, at::Tensor on_host = {});
  // fa_weight's values on the host: fa_weight itself when it lives there, else
  // fa_weight_on_host (undefined when not known).
  const at::Tensor& gate_weights_on_host() const { return fa_weight.device().is_cpu() ? fa_weight : fa_weight_on_host; }

  int64_t num_heads, num_kv_heads, head_dim;
  double scale;
  // One span per KV group; runs of equal spans are computed in one backend call.
  std::vector<AttentionSpan> group_spans;
  // Gated mode (set by AttentionGates::apply): when defined, every query head h outputs
  // fa_weight[h] * FA + (1 - fa_weight[h]) * SWA(swa_span), and group_spans is not used. With
  // narrower_spans (several windows), fa_weight holds one row of num_heads per level, and the
  // local part nests: row k (k >= 1) mixes local span k - 1 (swa_span first) with the narrower
  // ones (AttentionGatesImpl).
  at::Tensor fa_weight;  // [levels x num_heads], on the host or the model's device
  // fa_weight's values on the host when fa_weight lives on the device: they decide which
  // branches run without reading the device. Set together with fa_weight by set_gate_weights.
  at::Tensor fa_weight_on_host;
  AttentionSpan swa_span;
  std::vector<AttentionSpan> narrower_spans;  // gated mode's windows below swa_span, widest first
  // Gated mode's local spans, widest first: swa_span, then narrower_spans.
  void set_local_spans(const std::vector<AttentionSpan>& spans) {
    swa_span = spans.front();
    narrower_spans.assign(spans.begin() + 1, spans.end());
  }
  // Hard per-head spans in gated mode's nested form (0/1 weights on `device`): head h takes
  // head_spans[h], full or one of `local_spans` (widest first).
  void set_head_spans(const std::vector<AttentionSpan>& head_spans, const std::vector<AttentionSpan>& local_spans,
                      const at::Device& device);
  // Set by hard-concrete gates, whose clamp gives a gate at exactly 0 or 1 no gradient: the
  // branch its weight zeroes can then be skipped even while the gates train.
  bool saturated_gates_have_no_gradient = false;
  std::shared_ptr<const AttentionBackend> backend;
  bool fused_kernels = false;  // RoPE in one CUDA kernel where it runs (CausalLMImpl::set_fused_kernels)

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // Qwen3 only
};
TORCH_MODULE(SelfAttention);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t layer, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden, const RopeTables& rope, const PackedDocuments& documents = {});

  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  SelfAttention self_attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// "model.*": embeddings, layers and the final norm.
class DecoderStackImpl : public torch::nn::Module {
 public:
  DecoderStackImpl(const ModelConfig& config, const at::TensorOptions& options);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  std::vector<DecoderLayer> layer_list;  // typed view of `layers`
};
TORCH_MODULE(DecoderStack);

class CausalLMImpl : public torch::nn::Module {
 public:
  CausalLMImpl(ModelConfig config, const at::TensorOptions& options);

  // input_ids [B, L] (int64) -> logits [B, L, vocab]. `document_ids` (optional, [B, L] on the
  // CPU, non-decreasing along a row) packs several documents into a row: attention never crosses
  // from one to the next, so each computes what it would alone (PackedDocuments).
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& document_ids = {});
  // input_ids [B, L] -> final normed hidden states [B, L, hidden].
  at::Tensor hidden_states(const at::Tensor& input_ids, const at::Tensor& document_ids = {});
  at::Tensor logits(const at::Tensor& hidden) const;
  // [vocab, hidden]: lm_head's weight, or the embeddings when they are tied.
  const at::Tensor& output_weight() const { return lm_head ? lm_head->weight : model->embed_tokens->weight; }

  const ModelConfig& config() const { return config_; }
  int64_t num_layers() const { return config_.num_layers; }
  SelfAttentionImpl& attention(int64_t layer) { return *model->layer_list.at(layer)->self_attn; }
  void set_attention_backend(std::shared_ptr<const AttentionBackend> backend);
  // RMSNorm with its residual add, SwiGLU and RoPE as consa's CUDA kernels (on a GPU, in a build
  // that has them; consa/kernels/fused_ops.h) or as ATen ops.
  void set_fused_kernels(bool on);
  bool fused_kernels() const { return model->norm->fused_kernels; }
  // Per-layer gradient checkpointing: under autograd, each layer keeps only its input and
  // recomputes its activations during backward (less memory, one more forward per layer).
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  int64_t parameter_count() const;
  at::ScalarType dtype() const { return model->embed_tokens->weight.scalar_type(); }
  at::Device device() const { return model->embed_tokens->weight.device(); }

  DecoderStack model{nullptr};
  Linear lm_head{nullptr};  // absent (null) when tie_word_embeddings

 private:
  ModelConfig config_;
  at::Tensor inv_freq_;  // fp32 on the CPU; moved per call (tiny)
  bool gradient_checkpointing_ = false;
};
TORCH_MODULE(CausalLM);

// While alive, `model` computes with full attention in every unit (no gates, full spans); its
// gates, spans and SWA spans come back on destruction. The dense teacher of training and the
// reference of the baselines.
class DenseView {
 public:
  explicit DenseView(CausalLM& model);
  ~DenseView();
  DenseView(const DenseView&) = delete;
  DenseView& operator=(const DenseView&) = delete;

 private:
  struct Saved {
    at::Tensor fa_weight, fa_weight_on_host;
    std::vector<AttentionSpan> group_spans;
    AttentionSpan swa_span;
    std::vector<AttentionSpan> narrower_spans;
  };
  CausalLM& model_;
  std::vector<Saved> saved_;
};

// Fills weights as transformers' _init_weights does: normal(0, std) for linear and embedding
// weights, zeros for biases, ones for norms. Deterministic for a given seed.
void init_random_weights(CausalLM& model, double std, uint64_t seed);

}  // namespace consa
