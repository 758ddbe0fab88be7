// Hard-concrete gates: sampling range, the deterministic value and P(z > 0) against closed forms
// and Monte Carlo; gated models at z = 1 and z = 0 against the dense and pure-SWA models.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/gate/attention_gates.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

ModelConfig gate_config() { return tiny_config(3, 4, 2, 8, /*vocab=*/40); }

CausalLM gate_model() {
  CausalLM m(gate_config(), at::TensorOptions().dtype(at::kFloat));
  init_random_weights(m, 0.3, 21);
  return m;
}

at::Tensor ids() { return at::randint(0, 40, {2, 16}, at::TensorOptions().dtype(at::kLong)); }

}  // namespace

TEST_CASE("hard-concrete samples lie in [0, 1] with mass at both ends", "[gates]") {
  HardConcrete hc;
  at::Tensor z = hc.sample(at::zeros({20000}));
  CHECK(z.min().item<double>() >= 0.0);
  CHECK(z.max().item<double>() <= 1.0);
  CHECK((z == 0).sum().item<int64_t>() > 0);  // the stretch gives exact zeros and ones
  CHECK((z == 1).sum().item<int64_t>() > 0);
}

TEST_CASE("P(z > 0) matches the closed form and a Monte Carlo estimate", "[gates]") {
  HardConcrete hc;
  // The closed form from the method: sigmoid(log_alpha + 1.5986) for the CoFi constants.
  for (double la : {-3.0, -1.0, 0.0, 0.7, 2.5}) {
    const double closed = sigmoid(la - (2.0 / 3.0) * std::log(0.1 / 1.1));
    CHECK(hc.prob_nonzero(at::scalar_tensor(la)).item<double>() == Approx(closed).epsilon(1e-6));
    CHECK(closed == Approx(sigmoid(la + 1.5986)).epsilon(1e-4));
    auto gen = at::detail::createCPUGenerator(1234);
    at::Tensor z = hc.sample(at::full({200000}, la, at::kDouble), gen);
    const double monte_carlo = (z > 0).to(at::kDouble).mean().item<double>();
    INFO("log_alpha " << la);
    CHECK(std::abs(monte_carlo - closed) < 0.005);
  }
  at::Tensor la = at::tensor({-2.0, 0.0, 3.0});
  const double expected = 1.0 - (sigmoid(-2 + 1.598612) + sigmoid(1.598612) + sigmoid(3 + 1.598612)) / 3;
  CHECK(hc.expected_swa_fraction(la).item<double>() == Approx(expected).epsilon(1e-5));
}

TEST_CASE("the clamp bounds the keep probability, and the clamp that reaches a target", "[gates]") {
  HardConcreteOptions o;
  o.log_alpha_clamp = 4.6;
  const HardConcrete hc(o);
  const auto [lowest, highest] = hc.keep_probability_range();
  // Gates held at -clamp and +clamp, sampled: the fractions of nonzero z are the bounds.
  auto gen = at::detail::createCPUGenerator(7);
  const double at_low = (hc.sample(at::full({400000}, -4.6, at::kDouble), gen) > 0).to(at::kDouble).mean().item<double>();
  const double at_high = (hc.sample(at::full({400000}, 4.6, at::kDouble), gen) > 0).to(at::kDouble).mean().item<double>();
  CHECK(std::abs(at_low - lowest) < 0.002);
  CHECK(std::abs(at_high - highest) < 0.002);
  CHECK(lowest == Approx(sigmoid(-4.6 - (2.0 / 3.0) * std::log(0.1 / 1.1))).epsilon(1e-9));  // 0.047
  // 1 unit of 32 on full attention needs keep probability 1/32 below that bound; the clamp that
  // reaches it puts its lowest keep probability exactly there.
  const double clamp = hc.clamp_reaching(1.0 / 32);
  CHECK(clamp > 4.6);
  o.log_alpha_clamp = clamp;
  CHECK(HardConcrete(o).keep_probability_range().first == Approx(1.0 / 32).epsilon(1e-9));
  CHECK(hc.clamp_reaching(1 - 1.0 / 32) > 0);
  o.log_alpha_clamp = hc.clamp_reaching(1 - 1.0 / 32);
  CHECK(HardConcrete(o).keep_probability_range().second == Approx(1 - 1.0 / 32).epsilon(1e-9));
}

TEST_CASE("deterministic gates follow CoFi's eval formula", "[gates]") {
  HardConcrete hc;
  for (double la : {-6.0, -0.5, 0.0, 0.5, 6.0}) {
    const double expected = std::min(1.0, std::max(0.0, sigmoid(la / (2.0 / 3.0) * 0.8) * 1.2 - 0.1));
    CHECK(hc.deterministic(at::scalar_tensor(la)).item<double>() == Approx(expected).epsilon(1e-6));
  }
  CHECK(hc.initial_log_alpha() == Approx(0.0).margin(1e-12));  // init_keep 0.5 = CoFi's drop rate 0.5
  HardConcreteOptions bad;
  bad.init_keep = 1.0;
  CHECK_THROWS_WITH(HardConcrete(bad), contains("gates.init_keep must be in (0, 1)"));
}

TEST_CASE("gate units map onto query heads", "[gates]") {
  GateOptions opts;
  opts.swa = AttentionSpan::sliding(4);
  for (auto [unit, units] : {std::pair<GateUnit, int64_t>{GateUnit::Layer, 1}, {GateUnit::KvHead, 2}, {GateUnit::Head, 4}}) {
    opts.unit = unit;
    AttentionGates gates(gate_config(), opts);
    CHECK(gates->units_per_layer() == units);
    at::Tensor z = at::arange(3 * units, at::kFloat).reshape({3, units});
    at::Tensor w = gates->head_weights(z);
    REQUIRE(w.sizes() == at::IntArrayRef({3, 4}));
    for (int64_t l = 0; l < 3; ++l)
      for (int64_t h = 0; h < 4; ++h) CHECK(w[l][h].item<float>() == z[l][h * units / 4].item<float>());
  }
  CHECK_THROWS_WITH(parse_gate_unit("group"), contains("supported: layer, kv_head, head"));
}

TEST_CASE("all gates at 1 give the dense model, all at 0 pure sliding-window attention", "[gates]") {
  CausalLM model = gate_model();
  GateOptions opts;
  opts.swa = AttentionSpan::sliding(3, 1);
  AttentionGates gates(model->config(), opts);
  at::NoGradGuard no_grad;
  at::Tensor input = ids();
  at::Tensor dense = model->forward(input);
  for (int64_t l = 0; l < 3; ++l) model->attention(l).group_spans.assign(2, opts.swa);
  at::Tensor pure_swa = model->forward(input);
  REQUIRE(max_abs_diff(dense, pure_swa) > 1e-2);

  gates->apply(model, at::ones({3, 2}));
  CHECK(max_abs_diff(model->forward(input), dense) == 0.0);
  gates->apply(model, at::zeros({3, 2}));
  CHECK(max_abs_diff(model->forward(input), pure_swa) == 0.0);

  // Mixed: KV group 1 of layer 2 on SWA, the rest on FA, equals the per-group span assignment.
  at::Tensor z = at::ones({3, 2});
  z[2][1] = 0.0;
  gates->apply(model, z);
  at::Tensor gated = model->forward(input);
  remove_gates(model);
  for (int64_t l = 0; l < 3; ++l) model->attention(l).group_spans.assign(2, AttentionSpan::full());
  model->attention(2).group_spans[1] = opts.swa;
  CHECK(max_abs_diff(gated, model->forward(input)) < 1e-6);
}

TEST_CASE("gradients reach log_alpha through sampled gates", "[gates]") {
  CausalLM model = gate_model();
  GateOptions opts;
  opts.swa = AttentionSpan::sliding(2);
  AttentionGates gates(model->config(), opts);
  auto gen = at::detail::createCPUGenerator(5);
  gates->apply(model, gates->sample(gen));
  model->forward(ids()).pow(2).mean().backward();
  REQUIRE(gates->log_alpha.grad().defined());
  CHECK(gates->log_alpha.grad().abs().sum().item<double>() > 0.0);
  gates->log_alpha.data().fill_(9.0);
  gates->clamp_log_alpha();
  CHECK(gates->log_alpha.max().item<double>() == Approx(4.6));
}

TEST_CASE("gradient checkpointing gives the same gradients for weights and gates", "[gates]") {
  auto grads = [](bool checkpointing) {
    CausalLM model = gate_model();
    model->set_gradient_checkpointing(checkpointing);
    GateOptions opts;
    opts.swa = AttentionSpan::sliding(3);
    AttentionGates gates(model->config(), opts);
    auto gen = at::detail::createCPUGenerator(8);
    gates->apply(model, gates->sample(gen));
    at::manual_seed(4);
    model->forward(ids()).pow(2).mean().backward();
    return std::make_pair(gates->log_alpha.grad().clone(),
                          model->model->layer_list[1]->mlp->up_proj->weight.grad().clone());
  };
  auto plain = grads(false), checkpointed = grads(true);
  CHECK(plain.first.abs().sum().item<double>() > 0.0);
  CHECK(max_abs_diff(plain.first, checkpointed.first) < 1e-6);
  CHECK(max_abs_diff(plain.second, checkpointed.second) < 1e-6);
}

TEST_CASE("gated attention skips branches whose weight is exactly 0, with the same outputs and gradients", "[gates]") {
  ModelConfig c = tiny_config(1, 6, 3, 8);
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, 4);
  SelfAttentionImpl& attn = model->attention(0);
  attn.backend = make_attention_backend(AttentionImpl::Math);
  attn.swa_span = AttentionSpan::sliding(4, 1);
  at::manual_seed(3);
  const at::Tensor q0 = at::randn({2, 12, 6, 8}), k0 = at::randn({2, 12, 3, 8}), v0 = at::randn({2, 12, 3, 8});
  const at::Tensor weights = at::randn({2, 12, 6, 8});
  // Group 0 all at 1 (no SWA needed), group 1 all at 0 (no FA), group 2 mixed; then a branch
  // needed by one group of three only (computed on that group alone, gathered and scattered).
  for (const std::vector<float>& zs :
       {std::vector<float>{1, 1, 0, 0, 0.3f, 1}, std::vector<float>{1, 1, 1, 1, 1, 1}, std::vector<float>{0, 0, 0, 0, 0, 0},
        std::vector<float>{0.5f, 1, 0, 0.2f, 1, 0}, std::vector<float>{0, 0, 0, 0, 0.3f, 1},
        std::vector<float>{1, 1, 1, 1, 0.4f, 1}}) {
    auto run = [&](bool reference, bool skip) {
      return attention_gradients(q0, k0, v0, at::tensor(zs), weights, [&](const ProjectedQKV& qkv, const at::Tensor& z) {
        if (reference) {  // both branches everywhere, the unit formula
          at::Tensor full = attn.backend->attend(qkv.q, qkv.k, qkv.v, AttentionSpan::full(), attn.scale);
          at::Tensor swa = attn.backend->attend(qkv.q, qkv.k, qkv.v, attn.swa_span, attn.scale);
          return full * z.view({1, 1, 6, 1}) + swa * (1 - z.view({1, 1, 6, 1}));
        }
        attn.fa_weight = z;
        attn.saturated_gates_have_no_gradient = skip;
        return attn.attend(qkv);
      });
    };
    const auto want = run(true, false);
    // Skipping (hard-concrete gates): same outputs and q/k/v gradients.
    const auto skipped = run(false, true);
    for (size_t i = 0; i < 4; ++i) CHECK(max_abs_diff(skipped[i], want[i]) < 1e-6);
    // Gates whose gradient counts at 0 and 1 (duo's): nothing skipped, the gate gradient exact too.
    const auto exact = run(false, false);
    for (size_t i = 0; i < 4; ++i) CHECK(max_abs_diff(exact[i], want[i]) < 1e-6);
    // The gate gradient sums grad * (FA - SWA) over batch, positions and channels; the two
    // formulas sum in different orders, so they agree to fp32 rounding of that sum.
    const double gate_scale = want[4].abs().max().item<double>();
    INFO("gate gradient scale " << gate_scale << ", difference " << max_abs_diff(exact[4], want[4]));
    CHECK(max_abs_diff(exact[4], want[4]) < 1e-5 * (1 + gate_scale));
  }
}
