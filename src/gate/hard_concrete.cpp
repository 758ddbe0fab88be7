#include "consa/gate/hard_concrete.h"

#include <cmath>

#include "consa/core/error.h"

namespace consa {

HardConcrete::HardConcrete(HardConcreteOptions options) : options_(options) {
  CONSA_CHECK(options_.beta > 0, "gates.temperature must be > 0, got ", options_.beta);
  CONSA_CHECK(options_.limit_l < 0 && options_.limit_r > 1, "gates.limit_l must be < 0 and gates.limit_r > 1, got ",
              options_.limit_l, " and ", options_.limit_r);
  CONSA_CHECK(options_.init_keep > 0 && options_.init_keep < 1, "gates.init_keep must be in (0, 1), got ",
              options_.init_keep);
  CONSA_CHECK(options_.eps > 0 && options_.eps < 0.5, "gates.eps must be in (0, 0.5), got ", options_.eps);
}

at::Tensor HardConcrete::sample(const at::Tensor& log_alpha, c10::optional<at::Generator> generator) const {
  at::Tensor u = at::empty(log_alpha.sizes(), log_alpha.options()).uniform_(options_.eps, 1 - options_.eps, generator);
  at::Tensor s = at::sigmoid((at::log(u) - at::log1p(-u) + log_alpha) / options_.beta);
  return at::clamp(s * (options_.limit_r - options_.limit_l) + options_.limit_l, 0.0, 1.0);
}

at::Tensor HardConcrete::deterministic(const at::Tensor& log_alpha) const {
  at::Tensor s = at::sigmoid(log_alpha / options_.beta * 0.8);
  return at::clamp(s * (options_.limit_r - options_.limit_l) + options_.limit_l, 0.0, 1.0);
}

namespace {

// P(z > 0) = sigmoid(log_alpha + shift), shift = -beta log(-gamma / zeta) (1.5986 for CoFi's).
double keep_shift(const HardConcreteOptions& o) { return -o.beta * std::log(-o.limit_l / o.limit_r); }

}  // namespace

at::Tensor HardConcrete::prob_nonzero(const at::Tensor& log_alpha) const {
  return at::sigmoid(log_alpha + keep_shift(options_));
}

at::Tensor HardConcrete::expected_swa_fraction(const at::Tensor& log_alpha) const {
  return 1.0 - prob_nonzero(log_alpha).mean();
}

std::pair<double, double> HardConcrete::keep_probability_range() const {
  const double shift = keep_shift(options_);
  auto sigmoid = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  return {sigmoid(shift - options_.log_alpha_clamp), sigmoid(shift + options_.log_alpha_clamp)};
}

double HardConcrete::clamp_reaching(double p) const {
  const double shift = keep_shift(options_);
  return std::abs(std::log(p) - std::log1p(-p) - shift);
}

double HardConcrete::initial_log_alpha() const {
  return std::log(options_.init_keep) - std::log1p(-options_.init_keep);
}

}  // namespace consa
