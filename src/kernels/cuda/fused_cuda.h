#pragma once
// consa's CUDA kernels on tensors (fused_cuda.cpp): allocation, the current stream and the
// launch. Callers (src/kernels/fused_ops.cpp) have checked fused_supported() first.
#include <ATen/core/Tensor.h>

#include <tuple>

#include "launchers.h"

namespace consa::kernels::detail {

// Whether the kernels take these tensors as they are: CUDA, one floating type, contiguous,
// 16-byte aligned, and a last dimension of whole 16-byte packs (within `max_dim`).
bool cuda_kernels_take(std::initializer_list<at::Tensor> tensors, int64_t dim, int64_t max_dim);

struct RmsNormOutputs {
  at::Tensor y, sum, rstd;  // sum: only with a residual
};
RmsNormOutputs rms_norm_forward_cuda(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                     double eps);
// {gradient of the normalised input s (plus sum_grad where defined), gradient of the weight}
std::pair<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& dy, const at::Tensor& sum_grad,
                                                         const at::Tensor& input, const at::Tensor& rstd,
                                                         const at::Tensor& weight);

at::Tensor swiglu_forward_cuda(const at::Tensor& gate, const at::Tensor& up);
std::pair<at::Tensor, at::Tensor> swiglu_backward_cuda(const at::Tensor& dy, const at::Tensor& gate,
                                                       const at::Tensor& up);

// x [B, L, H, D], cos/sin [L, D]; transpose: the backward's adjoint rotation.
at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool transpose);

// full/swa [B, L, H, D], z [H] fp32; backward returns {full_grad, swa_grad, z_grad (fp32)}.
at::Tensor gated_mix_forward_cuda(const at::Tensor& full, const at::Tensor& swa, const at::Tensor& z);
std::tuple<at::Tensor, at::Tensor, at::Tensor> gated_mix_backward_cuda(const at::Tensor& dy, const at::Tensor& full,
                                                                       const at::Tensor& swa, const at::Tensor& z);

// Logits [rows, vocab] and int64 targets [rows] (contiguous, on one GPU): {lse, target logit}
// in fp32, and the in-place gradient (cuda::cross_entropy_forward and _backward).
bool cross_entropy_cuda_takes(const at::Tensor& logits, const at::Tensor& targets);
std::pair<at::Tensor, at::Tensor> cross_entropy_forward_cuda(const at::Tensor& logits, const at::Tensor& targets);
void cross_entropy_backward_cuda_(at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                                  const at::Tensor& coef);

// One query per sequence q [B, n G, 1, D] over k, v [B, n, T, D] (contiguous, the cache
// tensors) with an fp32 bias [T] or [n, G, T]; out [B, n G, 1, D]. With k2, v2, bias2 (a second
// source of n2 KV heads, the ring) q holds n G + n2 G heads and both sources run in one launch.
// decode_attention_cuda_takes says whether the kernel runs these shapes.
bool decode_attention_cuda_takes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                                 const at::Tensor& k2 = {}, const at::Tensor& v2 = {}, const at::Tensor& bias2 = {});
at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                                 double scale, const at::Tensor& k2 = {}, const at::Tensor& v2 = {},
                                 const at::Tensor& bias2 = {});

// The decode step's split, q/k norms, RoPE and cache writes (consa/kernels/fused_ops.h,
// kernels::decode_qkv), where the kernel takes the tensors as they are.
bool decode_qkv_cuda_takes(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm,
                           const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position,
                           const at::Tensor& slot, const at::Tensor& full_k, const at::Tensor& full_v,
                           const at::Tensor& ring_k, const at::Tensor& ring_v);
at::Tensor decode_qkv_cuda(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm, double eps,
                           const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position,
                           const at::Tensor& slot, const at::Tensor& full_k, const at::Tensor& full_v,
                           const at::Tensor& ring_k, const at::Tensor& ring_v);

// A linear layer over few rows with its input's RMSNorm or SwiGLU and its output's residual add
// (cuda::decode_linear; consa/kernels/fused_ops.h, kernels::linear and the functions beside it).
// norm_weight, bias, residual: undefined for none; out has x's shape with weight's rows last.
bool decode_linear_cuda_takes(cuda::LinearInput input, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& norm_weight);
at::Tensor decode_linear_cuda(cuda::LinearInput input, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& norm_weight,
                              double eps);

}  // namespace consa::kernels::detail
