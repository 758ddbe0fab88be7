#pragma once
// Building blocks of the Llama-family decoder. Parameters are registered under Hugging Face's
// names ("weight", "bias") and created uninitialised in the requested dtype and device, so that
// loading an 8B checkpoint does not first pay for a random initialisation it throws away.
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace consa {

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const { return at::linear(x, weight, bias); }
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out] or undefined
};
TORCH_MODULE(Linear);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab_size, int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& ids) const { return at::embedding(weight, ids); }
  at::Tensor weight;  // [vocab, dim]
};
TORCH_MODULE(Embedding);

// RMSNorm as Hugging Face computes it: normalise in fp32, cast back, then scale.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight;  // [dim]
  double eps;
  bool fused_kernels = false;  // consa/kernels/fused_ops.h: one CUDA kernel where it runs
};
TORCH_MODULE(RMSNorm);

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t hidden, int64_t intermediate, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  bool fused_kernels = false;  // silu(gate) * up in one CUDA kernel where it runs
};
TORCH_MODULE(Mlp);

}  // namespace consa
