#pragma once
// The training objective: a weighted sum of next-token cross-entropy, distillation KL on logits
// and MSE on final hidden states. The teacher is the same model with every unit on full
// attention (consa/train/trainer.h decides which weights).
#include <ATen/ATen.h>

namespace consa {

struct ObjectiveWeights {
  double ce = 1.0;
  double kl = 0.0;
  double mse = 0.0;
  bool needs_teacher() const { return kl > 0 || mse > 0; }
};

struct LossTerms {
  at::Tensor total;         // differentiable scalar
  at::Tensor ce, kl, mse;   // detached fp32 scalars on the logits' device; zero when unweighted
};

// tokens [B, L]; ce_mask [B, L-1]; logits [B, L, V]; hidden [B, L, H]. Teacher tensors may be
// undefined when their weight is 0.
LossTerms compute_objective(const ObjectiveWeights& w, const at::Tensor& tokens, const at::Tensor& ce_mask,
                            const at::Tensor& logits, const at::Tensor& hidden,
                            const at::Tensor& teacher_logits, const at::Tensor& teacher_hidden);

// Masked mean next-token cross-entropy (fp32). Reads nothing back from the device.
at::Tensor next_token_cross_entropy(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& mask);

}  // namespace consa
