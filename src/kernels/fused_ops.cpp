#include "consa/kernels/fused_ops.h"

#include <ATen/ATen.h>

#include "consa/core/dtype.h"
#include "consa/core/enum_names.h"
#include "consa/core/error.h"

#ifndef CONSA_WITH_CUDA_KERNELS  // set by CMake where src/kernels/cuda/ is built
#define CONSA_WITH_CUDA_KERNELS 0
#endif
#if CONSA_WITH_CUDA_KERNELS
#include <torch/csrc/autograd/custom_function.h>

#include "cuda/fused_cuda.h"
#endif

namespace consa {

namespace {
constexpr EnumName<KernelImpl> kKernelImpls[] = {
    {KernelImpl::Auto, "auto"}, {KernelImpl::Aten, "aten"}, {KernelImpl::Fused, "fused"}};
}  // namespace

KernelImpl parse_kernel_impl(const std::string& name) { return parse_enum(kKernelImpls, name, "kernel choice"); }

const char* kernel_impl_name(KernelImpl impl) { return enum_name(kKernelImpls, impl); }

bool fused_kernels_built() { return CONSA_WITH_CUDA_KERNELS != 0; }

bool use_fused_kernels(KernelImpl impl, const at::Device& device, const std::string& where) {
  if (impl == KernelImpl::Aten) return false;
  const bool runnable = fused_kernels_built() && device.is_cuda();
  if (impl == KernelImpl::Fused) {
    CONSA_CHECK(fused_kernels_built(), where, ": fused needs a build of consa with its CUDA kernels (CUDA LibTorch and nvcc); ",
                "this build has none; use auto or aten");
    CONSA_CHECK(device.is_cuda(), where, ": fused runs on a GPU, but the model is on ", device.str(),
                "; use auto or aten");
  }
  return runnable;
}

namespace kernels {

namespace {

at::Tensor rms_norm_math(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

at::Tensor rope_math(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);  // [L, 1, D] broadcasts over heads
}

#if CONSA_WITH_CUDA_KERNELS
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The backward kernel gathers the weight gradient in shared memory: one fp32 per column.
constexpr int64_t kMaxNormDim = 8192;

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    detail::RmsNormOutputs out = detail::rms_norm_forward_cuda(x, at::Tensor(), weight, eps);
    ctx->save_for_backward({x, out.rstd, weight});
    return out.y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto [input_grad, weight_grad] =
        detail::rms_norm_backward_cuda(grads[0].contiguous(), at::Tensor(), saved[0], saved[1], saved[2]);
    return {input_grad, weight_grad, at::Tensor()};
  }
};

// Outputs {s, y}; s's own gradient (from the residual stream) joins the norm's in the kernel.
struct AddRmsNormFunction : public torch::autograd::Function<AddRmsNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& residual,
                               const at::Tensor& weight, double eps) {
    detail::RmsNormOutputs out = detail::rms_norm_forward_cuda(x, residual, weight, eps);
    ctx->save_for_backward({out.sum, out.rstd, weight});
    return {out.sum, out.y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor sum_grad = grads[0].defined() ? grads[0].contiguous() : at::Tensor();
    const at::Tensor norm_grad = grads[1].defined() ? grads[1].contiguous() : at::zeros_like(saved[0]);
    auto [input_grad, weight_grad] = detail::rms_norm_backward_cuda(norm_grad, sum_grad, saved[0], saved[1], saved[2]);
    return {input_grad, input_grad, weight_grad, at::Tensor()};
  }
};

struct SwigluFunction : public torch::autograd::Function<SwigluFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return detail::swiglu_forward_cuda(gate, up);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto [gate_grad, up_grad] = detail::swiglu_backward_cuda(grads[0].contiguous(), saved[0], saved[1]);
    return {gate_grad, up_grad};
  }
};

struct RopeFunction : public torch::autograd::Function<RopeFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return detail::rope_cuda(x, cos, sin, /*transpose=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    return {detail::rope_cuda(grads[0].contiguous(), saved[0], saved[1], /*transpose=*/true), at::Tensor(), at::Tensor()};
  }
};

struct GatedMixFunction : public torch::autograd::Function<GatedMixFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& full, const at::Tensor& swa, const at::Tensor& z) {
    ctx->save_for_backward({full, swa, z});
    return detail::gated_mix_forward_cuda(full, swa, z);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto [full_grad, swa_grad, z_grad] = detail::gated_mix_backward_cuda(grads[0].contiguous(), saved[0], saved[1], saved[2]);
    return {full_grad, swa_grad, z_grad};
  }
};

bool norm_takes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& residual = {}) {
  const int64_t dim = x.size(-1);
  return weight.dim() == 1 && weight.size(0) == dim && (!residual.defined() || residual.sizes() == x.sizes()) &&
         detail::cuda_kernels_take({x, weight, residual}, dim, kMaxNormDim);
}
#endif

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && norm_takes(x, weight)) return RmsNormFunction::apply(x, weight, eps);
#endif
  return rms_norm_math(x, weight, eps);
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                               const at::Tensor& weight, double eps, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && norm_takes(x, weight, residual)) {
    variable_list out = AddRmsNormFunction::apply(x, residual, weight, eps);
    return {out[0], out[1]};
  }
#endif
  at::Tensor sum = x + residual;
  return {sum, rms_norm_math(sum, weight, eps)};
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  // Elementwise: any length works, so the pack check is on one element's 16 bytes.
  if (fused && gate.sizes() == up.sizes() && detail::cuda_kernels_take({gate, up}, 16 / gate.element_size(), 16))
    return SwigluFunction::apply(gate, up);
#endif
  return at::silu(gate) * up;
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && x.dim() == 4 && cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) == x.size(1) &&
      cos.size(1) == x.size(3) && x.size(3) % 2 == 0 && detail::cuda_kernels_take({x, cos, sin}, x.size(3) / 2, 1 << 16))
    return RopeFunction::apply(x, cos, sin);
#endif
  return rope_math(x, cos, sin);
}

at::Tensor gated_mix(const at::Tensor& full, const at::Tensor& swa, const at::Tensor& z, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && full.dim() == 4 && full.sizes() == swa.sizes() && z.scalar_type() == at::kFloat && z.dim() == 1 &&
      z.size(0) == full.size(2) && z.is_contiguous() && z.device() == full.device() &&
      full.size(2) <= 1024 && detail::cuda_kernels_take({full, swa}, full.size(3), 1 << 16))
    return GatedMixFunction::apply(full, swa, z);
#endif
  return at::lerp(swa, full, z.to(full.scalar_type()).view({1, 1, -1, 1}));
}

namespace {

#if CONSA_WITH_CUDA_KERNELS
bool cross_entropy_kernel_takes(const at::Tensor& logits, const at::Tensor& targets) {
  return logits.scalar_type() != at::kDouble && detail::cross_entropy_cuda_takes(logits, targets);
}
#endif
}  // namespace

std::pair<at::Tensor, at::Tensor> cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, bool fused) {
  CONSA_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.numel() == logits.size(0),
              "cross_entropy_rows: logits ", logits.sizes(), " need one target per row, got ", targets.sizes());
#if CONSA_WITH_CUDA_KERNELS
  if (fused && cross_entropy_kernel_takes(logits, targets)) return detail::cross_entropy_forward_cuda(logits, targets);
#endif
  const at::Tensor x = logits.to(accumulation_dtype(logits.scalar_type()));
  return {at::logsumexp(x, -1), x.gather(1, targets.unsqueeze(1)).squeeze(1)};
}

at::Tensor cross_entropy_logits_grad(at::Tensor logits, const at::Tensor& targets, const at::Tensor& lse,
                                     const at::Tensor& coef, bool fused) {
  CONSA_CHECK(logits.dim() == 2 && targets.numel() == logits.size(0) && lse.numel() == logits.size(0) &&
                  coef.numel() == logits.size(0),
              "cross_entropy_logits_grad: logits ", logits.sizes(), " need one target, lse and coef per row, got ",
              targets.numel(), ", ", lse.numel(), " and ", coef.numel());
#if CONSA_WITH_CUDA_KERNELS
  if (fused && cross_entropy_kernel_takes(logits, targets)) {
    detail::cross_entropy_backward_cuda_(logits, targets, lse, coef);
    return logits;
  }
#endif
  at::Tensor p = logits.to(accumulation_dtype(logits.scalar_type()));
  p.sub_(lse.unsqueeze(1)).exp_();
  p.scatter_add_(1, targets.unsqueeze(1), -at::ones({p.size(0), 1}, p.options()));
  p.mul_(coef.unsqueeze(1));
  return p.to(logits.scalar_type());
}

namespace {

// The portable export's decode attention op for op: scale, bias and the fp32 cast in one add.
at::Tensor portable_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& bias, double scale) {
  const int64_t b = q.size(0), n = k.size(1), group = q.size(1) / n, dim = q.size(3);
  const at::Tensor scores = at::matmul(q.reshape({b, n, group, dim}), k.transpose(2, 3));
  const at::Tensor probs = at::softmax(at::add(bias, scores, scale), -1).to(q.scalar_type());
  return at::matmul(probs, v).view({b, n * group, 1, dim});
}

}  // namespace

bool decode_attention_kernel_takes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& bias, const at::Tensor& k2, const at::Tensor& v2,
                                   const at::Tensor& bias2) {
#if CONSA_WITH_CUDA_KERNELS
  return detail::decode_attention_cuda_takes(q, k, v, bias, k2, v2, bias2);
#else
  return false;
#endif
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                            double scale, bool fused) {
  return hybrid_decode_attention(q, k, v, bias, at::Tensor(), at::Tensor(), at::Tensor(), scale, fused);
}

bool decode_qkv_kernel_takes(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm,
                             const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position,
                             const at::Tensor& slot, const at::Tensor& full_k, const at::Tensor& full_v,
                             const at::Tensor& ring_k, const at::Tensor& ring_v) {
#if CONSA_WITH_CUDA_KERNELS
  return detail::decode_qkv_cuda_takes(qkv, q_norm, k_norm, cos, sin, position, slot, full_k, full_v, ring_k, ring_v);
#else
  return false;
#endif
}

at::Tensor hybrid_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& bias, const at::Tensor& k2, const at::Tensor& v2,
                                   const at::Tensor& bias2, double scale, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && detail::decode_attention_cuda_takes(q, k, v, bias, k2, v2, bias2))
    return detail::decode_attention_cuda(q, k, v, bias, scale, k2, v2, bias2);
#endif
  if (!k2.defined()) return portable_decode_attention(q, k, v, bias, scale);
  const int64_t first = k.size(1) * (q.size(1) / (k.size(1) + k2.size(1)));  // the full slice's query heads
  return at::cat({portable_decode_attention(q.narrow(1, 0, first), k, v, bias, scale),
                  portable_decode_attention(q.narrow(1, first, q.size(1) - first), k2, v2, bias2, scale)},
                 1);
}

at::Tensor decode_qkv(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm, double eps,
                      const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position, const at::Tensor& slot,
                      const at::Tensor& full_k, const at::Tensor& full_v, const at::Tensor& ring_k,
                      const at::Tensor& ring_v, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && detail::decode_qkv_cuda_takes(qkv, q_norm, k_norm, cos, sin, position, slot, full_k, full_v, ring_k, ring_v))
    return detail::decode_qkv_cuda(qkv, q_norm, k_norm, eps, cos, sin, position, slot, full_k, full_v, ring_k, ring_v);
#endif
  // The portable export's _project and cache writes, op for op.
  const int64_t b = qkv.size(0), dim = cos.size(-1), full = full_k.size(1), kv = full + ring_k.size(1);
  const int64_t heads = qkv.size(-1) / dim - 2 * kv;
  at::Tensor q = qkv.narrow(-1, 0, heads * dim).view({b, 1, heads, dim});
  at::Tensor k = qkv.narrow(-1, heads * dim, kv * dim).view({b, 1, kv, dim});
  const at::Tensor v = qkv.narrow(-1, (heads + kv) * dim, kv * dim).view({b, 1, kv, dim}).transpose(1, 2);
  if (q_norm.defined()) q = rms_norm_math(q, q_norm, eps);
  if (k_norm.defined()) k = rms_norm_math(k, k_norm, eps);
  q = rope_math(q, cos, sin).transpose(1, 2);
  k = rope_math(k, cos, sin).transpose(1, 2);
  if (full > 0) {
    full_k.index_copy_(2, position, k.narrow(1, 0, full));
    full_v.index_copy_(2, position, v.narrow(1, 0, full));
  }
  if (full < kv) {
    ring_k.index_copy_(2, slot, k.narrow(1, full, kv - full));
    ring_v.index_copy_(2, slot, v.narrow(1, full, kv - full));
  }
  return q;
}

namespace {
at::Tensor add_residual(const at::Tensor& y, const at::Tensor& residual) {
  return residual.defined() ? residual + y : y;
}
}  // namespace

bool linear_kernel_takes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& residual, const at::Tensor& norm_weight) {
#if CONSA_WITH_CUDA_KERNELS
  const auto input = norm_weight.defined() ? cuda::LinearInput::RmsNorm : cuda::LinearInput::Plain;
  return detail::decode_linear_cuda_takes(input, x, weight, bias, residual, norm_weight);
#else
  return false;
#endif
}

bool swiglu_linear_kernel_takes(const at::Tensor& gate_up, const at::Tensor& weight, const at::Tensor& residual) {
#if CONSA_WITH_CUDA_KERNELS
  return detail::decode_linear_cuda_takes(cuda::LinearInput::Swiglu, gate_up, weight, at::Tensor(), residual,
                                          at::Tensor());
#else
  return false;
#endif
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& residual,
                  bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && linear_kernel_takes(x, weight, bias, residual))
    return detail::decode_linear_cuda(cuda::LinearInput::Plain, x, weight, bias, residual, at::Tensor(), 0.0);
#endif
  return add_residual(at::linear(x, weight, bias), residual);
}

at::Tensor rms_norm_linear(const at::Tensor& x, const at::Tensor& norm_weight, double eps, const at::Tensor& weight,
                           const at::Tensor& bias, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && linear_kernel_takes(x, weight, bias, at::Tensor(), norm_weight))
    return detail::decode_linear_cuda(cuda::LinearInput::RmsNorm, x, weight, bias, at::Tensor(), norm_weight, eps);
#endif
  return at::linear(rms_norm(x, norm_weight, eps, fused), weight, bias);
}

at::Tensor swiglu_linear(const at::Tensor& gate_up, const at::Tensor& weight, const at::Tensor& residual, bool fused) {
#if CONSA_WITH_CUDA_KERNELS
  if (fused && swiglu_linear_kernel_takes(gate_up, weight, residual))
    return detail::decode_linear_cuda(cuda::LinearInput::Swiglu, gate_up, weight, at::Tensor(), residual, at::Tensor(),
                                      0.0);
#endif
  const int64_t inner = gate_up.size(-1) / 2;
  const at::Tensor product = swiglu(gate_up.narrow(-1, 0, inner), gate_up.narrow(-1, inner, inner), fused);
  return add_residual(at::linear(product, weight), residual);
}

}  // namespace kernels
}  // namespace consa
