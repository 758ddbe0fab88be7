#pragma once
// The training objective: a weighted sum of next-token cross-entropy, distillation KL on logits
// and MSE on final hidden states (over every position, or with distill_scored_only the scored
// ones). The teacher is the same model with every unit on full attention (consa/train/trainer.h
// decides which weights).
#include <ATen/ATen.h>

namespace consa {

struct ObjectiveWeights {
  double ce = 1.0;
  double kl = 0.0;
  double mse = 0.0;
  // Cross-entropy alone comes from the hidden states of the scored positions (linear_cross_entropy):
  // from their whole logits, or (true) in chunks that never hold them whole: 25 GiB less at 8K on
  // Qwen3-0.6B, 6-10% slower with ATen ops and 4% faster with consa's CUDA kernels (1.7B: 1.3%
  // slower; docs/performance.md).
  bool chunked_cross_entropy = false;
  // KL and MSE over the positions cross-entropy scores only (a synthetic sample's answer), not
  // every position: where the filler is noise, matching the teacher there outweighs the answer.
  bool distill_scored_only = false;
  bool needs_teacher() const { return kl > 0 || mse > 0; }
};

struct LossTerms {
  at::Tensor total;         // differentiable scalar
  at::Tensor ce, kl, mse;   // detached fp32 scalars on the logits' device; zero when unweighted
};

// tokens [B, L]; ce_mask [B, L-1] (on the host, only its scored positions are projected);
// hidden [B, L, H], the student's final hidden states, and output_weight [V, H], its output
// projection. Student logits are formed whole only for the KL term; cross-entropy alone runs
// through linear_cross_entropy's chunks, with consa's CUDA kernels when `fused_kernels`. Teacher tensors may be undefined when their weight is 0.
LossTerms compute_objective(const ObjectiveWeights& w, const at::Tensor& tokens, const at::Tensor& ce_mask,
                            const at::Tensor& hidden, const at::Tensor& output_weight,
                            const at::Tensor& teacher_logits, const at::Tensor& teacher_hidden,
                            bool fused_kernels = false);

// The mean of per-position values [B, L] over the positions whose next token is a target
// (ce_mask [B, L-1], 1 where it counts); the last position predicts nothing. Duo's distillation,
// and KL and MSE with distill_scored_only, average over these positions, as cross-entropy does.
at::Tensor mean_over_target_positions(const at::Tensor& per_position, const at::Tensor& ce_mask);

// Masked mean next-token cross-entropy (fp32). Reads nothing back from the device.
at::Tensor next_token_cross_entropy(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& mask);

}  // namespace consa
