#pragma once
// Hard-concrete L0 gates (Louizos et al.), with the constants of CoFi / Sheared-LLaMA.
// One gate per attention unit; z in [0, 1] is the unit's full-attention weight:
//   unit output = z * FA + (1 - z) * SWA.
//
//   training:  u ~ U(eps, 1 - eps)
//              s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
//              z = clamp(s * (zeta - gamma) + gamma, 0, 1)
//   eval:      z = clamp(sigmoid(log_alpha / beta * 0.8) * (zeta - gamma) + gamma, 0, 1)
//   P(z > 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))      (closed form)
//   expected SWA fraction  s_hat = 1 - mean_i P(z_i > 0)
#include <ATen/ATen.h>

namespace consa {

struct HardConcreteOptions {
  double beta = 2.0 / 3.0;    // temperature
  double limit_l = -0.1;      // gamma: stretch below 0, so z = 0 has mass
  double limit_r = 1.1;       // zeta: stretch above 1, so z = 1 has mass
  double eps = 1e-6;          // keeps u away from 0 and 1
  double init_keep = 0.5;     // initial P(keep) = 1 - CoFi's drop rate: log_alpha = logit(init_keep)
  double log_alpha_clamp = 4.6;  // |log_alpha| is kept within this during training
};

// Stateless gate math over a log_alpha tensor of any shape.
class HardConcrete {
 public:
  explicit HardConcrete(HardConcreteOptions options = {});
  const HardConcreteOptions& options() const { return options_; }

  at::Tensor sample(const at::Tensor& log_alpha, c10::optional<at::Generator> generator = c10::nullopt) const;
  at::Tensor deterministic(const at::Tensor& log_alpha) const;
  at::Tensor prob_nonzero(const at::Tensor& log_alpha) const;
  // 1 - mean P(z > 0): differentiable in log_alpha.
  at::Tensor expected_swa_fraction(const at::Tensor& log_alpha) const;
  // The log_alpha that starts every gate at init_keep.
  double initial_log_alpha() const;
  // The lowest and highest P(z > 0) that |log_alpha| <= log_alpha_clamp allows: the expected
  // SWA fraction stays within [1 - highest, 1 - lowest] whatever the constraint asks.
  std::pair<double, double> keep_probability_range() const;
  // The smallest log_alpha_clamp whose range includes keep probability p (0 < p < 1).
  double clamp_reaching(double p) const;

 private:
  HardConcreteOptions options_;
};

}  // namespace consa
