#pragma once
// AdamW with the update of all of a group's CUDA fp32 parameters in one multi-tensor kernel
// (at::_fused_adamw_, LibTorch >= 2.1) instead of about ten kernels per parameter: with a few
// hundred parameters the per-parameter update is bound by kernel launches. Same state, same
// serialisation and same results as torch::optim::AdamW (decoupled weight decay, no amsgrad);
// groups the kernel cannot take (CPU gates, other dtypes) get the per-parameter update.
#include <torch/optim/adamw.h>

namespace consa {

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace consa
