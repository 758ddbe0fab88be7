#include "consa/model/layers.h"

#include "consa/kernels/fused_ops.h"

namespace consa {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias,
                       const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({out_features, in_features}, options));
  if (with_bias) bias = register_parameter("bias", at::empty({out_features}, options));
}

EmbeddingImpl::EmbeddingImpl(int64_t vocab_size, int64_t dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({vocab_size, dim}, options));
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const at::TensorOptions& options) : eps(eps_) {
  weight = register_parameter("weight", at::ones({dim}, options));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) const {
  return kernels::rms_norm(x, weight, eps, fused_kernels);
}

MlpImpl::MlpImpl(int64_t hidden, int64_t intermediate, const at::TensorOptions& options) {
  gate_proj = register_module("gate_proj", Linear(hidden, intermediate, false, options));
  up_proj = register_module("up_proj", Linear(hidden, intermediate, false, options));
  down_proj = register_module("down_proj", Linear(intermediate, hidden, false, options));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) const {
  return down_proj->forward(kernels::swiglu(gate_proj->forward(x), up_proj->forward(x), fused_kernels));
}

}  // namespace consa
