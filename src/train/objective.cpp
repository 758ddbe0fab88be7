#include "consa/train/objective.h"

#include "consa/core/device.h"
#include "consa/core/error.h"
#include "consa/train/linear_cross_entropy.h"

namespace consa {

namespace {
// The mean of values [B, L-1] where mask [B, L-1] is 1 (0 when nothing counts).
at::Tensor masked_mean(const at::Tensor& values, const at::Tensor& mask) {
  at::Tensor m = to_device_async(mask, values.device()).to(values.scalar_type());
  return (values * m).sum() / m.sum().clamp_min(1.0);
}
}  // namespace

at::Tensor next_token_cross_entropy(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& mask) {
  const int64_t len = tokens.size(1);
  at::Tensor log_probs = at::log_softmax(logits.narrow(1, 0, len - 1).to(at::kFloat), -1);
  at::Tensor targets = tokens.narrow(1, 1, len - 1).to(logits.device()).unsqueeze(-1);
  at::Tensor nll = -log_probs.gather(-1, targets).squeeze(-1);  // [B, L-1]
  return masked_mean(nll, mask);
}

at::Tensor mean_over_target_positions(const at::Tensor& per_position, const at::Tensor& ce_mask) {
  const int64_t len = per_position.size(1);
  CONSA_CHECK(ce_mask.dim() == 2 && ce_mask.size(0) == per_position.size(0) && ce_mask.size(1) == len - 1,
              "objective: mask of shape ", ce_mask.sizes(), " for ", per_position.sizes(), " positions");
  return masked_mean(per_position.narrow(1, 0, len - 1), ce_mask);
}

LossTerms compute_objective(const ObjectiveWeights& w, const at::Tensor& tokens, const at::Tensor& ce_mask,
                            const at::Tensor& hidden, const at::Tensor& output_weight,
                            const at::Tensor& teacher_logits, const at::Tensor& teacher_hidden, bool fused_kernels) {
  LossTerms terms;
  at::Tensor total = at::zeros({}, hidden.options().dtype(at::kFloat));
  terms.ce = terms.kl = terms.mse = total;
  const at::Tensor logits = w.kl > 0 ? at::linear(hidden, output_weight) : at::Tensor();
  if (w.ce > 0) {
    at::Tensor ce = logits.defined() ? next_token_cross_entropy(logits, tokens, ce_mask)
                                     : linear_cross_entropy(hidden, output_weight, tokens, ce_mask,
                                                            w.chunked_cross_entropy ? int64_t{1} << 30 : 0, fused_kernels);
    terms.ce = ce.detach();
    total = total + w.ce * ce;
  }
  if (w.kl > 0) {
    CONSA_CHECK(teacher_logits.defined(), "objective.kl needs teacher logits");
    at::Tensor t = at::log_softmax(teacher_logits.to(at::kFloat), -1);
    at::Tensor s = at::log_softmax(logits.to(at::kFloat), -1);
    const at::Tensor per_position = (t.exp() * (t - s)).sum(-1);  // KL(teacher || student)
    at::Tensor kl = w.distill_scored_only ? mean_over_target_positions(per_position, ce_mask) : per_position.mean();
    terms.kl = kl.detach();
    total = total + w.kl * kl;
  }
  if (w.mse > 0) {
    CONSA_CHECK(teacher_hidden.defined(), "objective.mse needs teacher hidden states");
    const at::Tensor diff = hidden.to(at::kFloat) - teacher_hidden.to(at::kFloat);
    at::Tensor mse = w.distill_scored_only ? mean_over_target_positions(diff.pow(2).mean(-1), ce_mask) : diff.pow(2).mean();
    terms.mse = mse.detach();
    total = total + w.mse * mse;
  }
  terms.total = total;
  return terms;
}

}  // namespace consa
