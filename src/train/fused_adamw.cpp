#include "consa/train/fused_adamw.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <type_traits>

#include "consa/core/torch_compat.h"

namespace consa {

namespace {

using State = torch::optim::AdamWParamState;

// The key torch::optim files a parameter's state under: its TensorImpl's address, as text in
// LibTorch 1.13 and as the pointer itself in 2.x.
template <typename Key>
Key state_key(const at::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << static_cast<const void*>(p.unsafeGetTensorImpl());
    return text.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

// torch::optim::AdamW's per-parameter update (without amsgrad), for groups the fused kernel
// does not take.
void update_one(at::Tensor& p, State& s, const torch::optim::AdamWOptions& o) {
  const at::Tensor& grad = p.grad();
  const auto [beta1, beta2] = o.betas();
  if (o.weight_decay() != 0) p.mul_(1 - o.lr() * o.weight_decay());
  s.exp_avg().mul_(beta1).add_(grad, 1 - beta1);
  s.exp_avg_sq().mul_(beta2).addcmul_(grad, grad, 1 - beta2);
  const double correction1 = 1 - std::pow(beta1, static_cast<double>(s.step()));
  const double correction2 = 1 - std::pow(beta2, static_cast<double>(s.step()));
  at::Tensor denom = (s.exp_avg_sq().sqrt() / std::sqrt(correction2)).add_(o.eps());
  p.addcdiv_(s.exp_avg(), denom, -o.lr() / correction1);
}

}  // namespace

torch::Tensor FusedAdamW::step(LossClosure closure) {
  at::NoGradGuard no_grad;
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  using Key = typename std::decay_t<decltype(state())>::key_type;
  for (auto& group : param_groups()) {
    auto& options = static_cast<torch::optim::AdamWOptions&>(group.options());
    TORCH_CHECK(!options.amsgrad(), "FusedAdamW: amsgrad is not supported");
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs;
    std::vector<State*> states;
    bool fusable = compat::fused_adamw_compiled();
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      TORCH_CHECK(!p.grad().is_sparse(), "FusedAdamW: sparse gradients are not supported");
      auto& slot = state()[state_key<Key>(p)];
      if (!slot) {
        auto fresh = std::make_unique<State>();
        fresh->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        fresh->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& s = static_cast<State&>(*slot);
      s.step(s.step() + 1);
      fusable = fusable && p.is_cuda() && p.scalar_type() == at::kFloat && p.grad().scalar_type() == at::kFloat &&
                p.device() == group.params().front().device();
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(s.exp_avg());
      exp_avg_sqs.push_back(s.exp_avg_sq());
      states.push_back(&s);
    }
    if (params.empty()) continue;
    // The kernel reads the step count from the device; every parameter of a group steps together.
    const bool same_step = std::all_of(states.begin(), states.end(),
                                       [&](const State* s) { return s->step() == states.front()->step(); });
    if (fusable && same_step) {
      const auto [beta1, beta2] = options.betas();
      const at::Tensor step = at::full({}, static_cast<double>(states.front()->step()),
                                       at::TensorOptions().dtype(at::kFloat).device(params.front().device()));
      compat::fused_adamw(params, grads, exp_avgs, exp_avg_sqs, std::vector<at::Tensor>(params.size(), step),
                          options.lr(), beta1, beta2, options.weight_decay(), options.eps());
    } else {
      for (size_t i = 0; i < params.size(); ++i) update_one(params[i], *states[i], options);
    }
  }
  return loss;
}

}  // namespace consa
