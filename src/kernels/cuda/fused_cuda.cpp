#include "fused_cuda.h"

#include <ATen/ATen.h>
#include <algorithm>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <vector>

#include "consa/core/error.h"
#include "launchers.h"

namespace consa::kernels::detail {

namespace {

cuda::ElementType element_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return cuda::ElementType::Float32;
    case at::kHalf: return cuda::ElementType::Float16;
    case at::kBFloat16: return cuda::ElementType::BFloat16;
    default: fail("consa's CUDA kernels: unsupported element type ", c10::toString(type));
  }
}

void* current_stream(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

void check_launch(const char* error, const char* kernel) {
  CONSA_CHECK(error == nullptr, "CUDA kernel ", kernel, " failed: ", error);
}

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace

bool cuda_kernels_take(std::initializer_list<at::Tensor> tensors, int64_t dim, int64_t max_dim) {
  const at::Tensor& first = *tensors.begin();
  const at::ScalarType type = first.scalar_type();
  if (type != at::kFloat && type != at::kHalf && type != at::kBFloat16) return false;
  if (dim <= 0 || dim > max_dim || (dim * static_cast<int64_t>(first.element_size())) % 16 != 0) return false;
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) continue;
    if (!t.is_cuda() || t.device() != first.device() || t.scalar_type() != type || !t.is_contiguous() ||
        reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0)
      return false;
  }
  return true;
}

RmsNormOutputs rms_norm_forward_cuda(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                     double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  RmsNormOutputs out;
  out.y = at::empty(x.sizes(), x.options());
  if (residual.defined()) out.sum = at::empty(x.sizes(), x.options());
  out.rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  check_launch(cuda::rms_norm_forward(element_type(x.scalar_type()), x.data_ptr(), data_or_null(residual),
                                      weight.data_ptr(), out.y.data_ptr(), out.sum.defined() ? out.sum.data_ptr() : nullptr,
                                      out.rstd.data_ptr<float>(), rows, dim, static_cast<float>(eps), current_stream(x)),
               "rms_norm_forward");
  return out;
}

std::pair<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& dy, const at::Tensor& sum_grad,
                                                         const at::Tensor& input, const at::Tensor& rstd,
                                                         const at::Tensor& weight) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t dim = input.size(-1), rows = input.numel() / dim;
  const cuda::ElementType type = element_type(input.scalar_type());
  at::Tensor input_grad = at::empty(input.sizes(), input.options());
  at::Tensor partial = at::empty({cuda::rms_norm_backward_blocks(type, rows, dim), dim}, input.options().dtype(at::kFloat));
  check_launch(cuda::rms_norm_backward(type, dy.data_ptr(), data_or_null(sum_grad), input.data_ptr(),
                                       rstd.data_ptr<float>(), weight.data_ptr(), input_grad.data_ptr(),
                                       partial.data_ptr<float>(), rows, dim, current_stream(input)),
               "rms_norm_backward");
  return {input_grad, partial.sum(0).to(weight.scalar_type())};
}

at::Tensor swiglu_forward_cuda(const at::Tensor& gate, const at::Tensor& up) {
  const c10::cuda::CUDAGuard guard(gate.device());
  at::Tensor y = at::empty(gate.sizes(), gate.options());
  check_launch(cuda::swiglu_forward(element_type(gate.scalar_type()), gate.data_ptr(), up.data_ptr(), y.data_ptr(),
                                    gate.numel(), current_stream(gate)),
               "swiglu_forward");
  return y;
}

std::pair<at::Tensor, at::Tensor> swiglu_backward_cuda(const at::Tensor& dy, const at::Tensor& gate,
                                                       const at::Tensor& up) {
  const c10::cuda::CUDAGuard guard(gate.device());
  at::Tensor gate_grad = at::empty(gate.sizes(), gate.options());
  at::Tensor up_grad = at::empty(up.sizes(), up.options());
  check_launch(cuda::swiglu_backward(element_type(gate.scalar_type()), dy.data_ptr(), gate.data_ptr(), up.data_ptr(),
                                     gate_grad.data_ptr(), up_grad.data_ptr(), gate.numel(), current_stream(gate)),
               "swiglu_backward");
  return {gate_grad, up_grad};
}

bool cross_entropy_cuda_takes(const at::Tensor& logits, const at::Tensor& targets) {
  return logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0) &&
         targets.scalar_type() == at::kLong && targets.is_contiguous() && targets.device() == logits.device() &&
         logits.size(0) < (int64_t{1} << 31) && cuda_kernels_take({logits}, logits.size(1), int64_t{1} << 40);
}

std::pair<at::Tensor, at::Tensor> cross_entropy_forward_cuda(const at::Tensor& logits, const at::Tensor& targets) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t rows = logits.size(0);
  at::Tensor lse = at::empty({rows}, logits.options().dtype(at::kFloat));
  at::Tensor target_logit = at::empty({rows}, logits.options().dtype(at::kFloat));
  check_launch(cuda::cross_entropy_forward(element_type(logits.scalar_type()), logits.data_ptr(),
                                           targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
                                           target_logit.data_ptr<float>(), rows, logits.size(1), current_stream(logits)),
               "cross_entropy_forward");
  return {lse, target_logit};
}

void cross_entropy_backward_cuda_(at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                                  const at::Tensor& coef) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor l = lse.to(at::kFloat).contiguous(), c = coef.to(at::kFloat).contiguous();
  check_launch(cuda::cross_entropy_backward(element_type(logits.scalar_type()), logits.data_ptr(),
                                            targets.data_ptr<int64_t>(), l.data_ptr<float>(), c.data_ptr<float>(),
                                            logits.size(0), logits.size(1), current_stream(logits)),
               "cross_entropy_backward");
}

at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool transpose) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  check_launch(cuda::rope(element_type(x.scalar_type()), x.data_ptr(), cos.data_ptr(), sin.data_ptr(), out.data_ptr(),
                          x.size(0), x.size(1), x.size(2), x.size(3), transpose, current_stream(x)),
               "rope");
  return out;
}

at::Tensor gated_mix_forward_cuda(const at::Tensor& full, const at::Tensor& swa, const at::Tensor& z) {
  const c10::cuda::CUDAGuard guard(full.device());
  at::Tensor out = at::empty(full.sizes(), full.options());
  const int64_t heads = full.size(2), dim = full.size(3);
  check_launch(cuda::gated_mix_forward(element_type(full.scalar_type()), full.data_ptr(), swa.data_ptr(),
                                       z.data_ptr<float>(), out.data_ptr(), full.numel() / (heads * dim), heads, dim,
                                       current_stream(full)),
               "gated_mix_forward");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gated_mix_backward_cuda(const at::Tensor& dy, const at::Tensor& full,
                                                                       const at::Tensor& swa, const at::Tensor& z) {
  const c10::cuda::CUDAGuard guard(full.device());
  const int64_t heads = full.size(2), dim = full.size(3), positions = full.numel() / (heads * dim);
  at::Tensor full_grad = at::empty(full.sizes(), full.options());
  at::Tensor swa_grad = at::empty(swa.sizes(), swa.options());
  at::Tensor partial = at::empty({cuda::gated_mix_backward_blocks(positions), heads}, z.options());
  check_launch(cuda::gated_mix_backward(element_type(full.scalar_type()), dy.data_ptr(), full.data_ptr(),
                                        swa.data_ptr(), z.data_ptr<float>(), full_grad.data_ptr(), swa_grad.data_ptr(),
                                        partial.data_ptr<float>(), positions, heads, dim, current_stream(full)),
               "gated_mix_backward");
  return {full_grad, swa_grad, partial.sum(0)};
}

namespace {
// Whether k, v, bias make one source of `group` query heads per KV head for the kernel.
bool decode_source_takes(const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias, int64_t group) {
  if (k.dim() != 4 || k.sizes() != v.sizes() || k.size(1) == 0 || k.size(2) == 0) return false;
  const int64_t n = k.size(1), keys = k.size(2);
  const bool bias_shape = (bias.dim() == 1 && bias.size(0) == keys) ||
                          (bias.dim() == 3 && bias.size(0) == n && bias.size(1) == group && bias.size(2) == keys);
  return bias_shape && bias.scalar_type() == at::kFloat && bias.device() == k.device() &&
         cuda_kernels_take({k, v}, k.size(3), 256);
}

cuda::DecodeSource decode_source(const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias_rows) {
  return {k.data_ptr(), v.data_ptr(), bias_rows.data_ptr<float>(), bias_rows.dim() == 1 ? 0 : k.size(2), k.size(1),
          k.size(2)};
}
}  // namespace

bool decode_attention_cuda_takes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                                 const at::Tensor& k2, const at::Tensor& v2, const at::Tensor& bias2) {
  const int64_t kv_heads = k.dim() == 4 ? k.size(1) + (k2.defined() && k2.dim() == 4 ? k2.size(1) : 0) : 0;
  if (q.dim() != 4 || q.size(2) != 1 || kv_heads == 0 || q.size(1) % kv_heads != 0 || q.size(0) != k.size(0) ||
      q.size(3) != k.size(3))
    return false;
  const int64_t group = q.size(1) / kv_heads;
  const at::ScalarType type = k.scalar_type();
  if ((type != at::kFloat && type != at::kHalf && type != at::kBFloat16) ||
      !cuda::decode_attention_takes(element_type(type), k.size(3), group) || !decode_source_takes(k, v, bias, group))
    return false;
  if (k2.defined() && (!decode_source_takes(k2, v2, bias2, group) || k2.scalar_type() != type ||
                       k2.device() != k.device() || k2.size(0) != k.size(0) || k2.size(3) != k.size(3)))
    return false;
  return q.is_cuda() && q.device() == k.device() && q.scalar_type() == type;
}

at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                                 double scale, const at::Tensor& k2, const at::Tensor& v2, const at::Tensor& bias2) {
  const c10::cuda::CUDAGuard guard(k.device());
  const cuda::ElementType type = element_type(k.scalar_type());
  const at::Tensor query = q.contiguous(), rows = bias.contiguous(), rows2 = k2.defined() ? bias2.contiguous() : rows;
  cuda::DecodeAttentionArgs a{};
  a.q = query.data_ptr();
  a.sources[0] = decode_source(k, v, rows);
  if (k2.defined()) a.sources[1] = decode_source(k2, v2, rows2);
  const int64_t batch = k.size(0), heads = a.sources[0].kv_heads + a.sources[1].kv_heads, dim = k.size(3);
  at::Tensor out = at::empty(q.sizes(), k.options());
  a.out = out.data_ptr();
  a.batch = batch;
  a.group = q.size(1) / heads;
  a.head_dim = dim;
  a.scale = static_cast<float>(scale);
  cuda::plan_decode_splits(type, a);
  at::Tensor o_part, lse_part;
  if (a.splits > 1) {
    o_part = at::empty({batch * heads * a.group, a.splits, dim}, k.options().dtype(at::kFloat));
    lse_part = at::empty({batch * heads * a.group, a.splits}, k.options().dtype(at::kFloat));
    a.o_part = o_part.data_ptr<float>();
    a.lse_part = lse_part.data_ptr<float>();
  }
  check_launch(cuda::decode_attention(type, a, current_stream(k)), "decode_attention");
  return out;
}

namespace {
// The decode step's shapes: qkv [B, 1, (H + 2 kv) D], caches [B, kv heads of each, *, D].
struct QkvShape {
  int64_t batch, heads, kv_heads, full_heads, dim;
};
QkvShape qkv_shape(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& full_k, const at::Tensor& ring_k) {
  const int64_t dim = cos.size(-1), kv_heads = full_k.size(1) + ring_k.size(1);
  return {qkv.size(0), qkv.size(-1) / dim - 2 * kv_heads, kv_heads, full_k.size(1), dim};
}
}  // namespace

bool decode_qkv_cuda_takes(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm,
                           const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position,
                           const at::Tensor& slot, const at::Tensor& full_k, const at::Tensor& full_v,
                           const at::Tensor& ring_k, const at::Tensor& ring_v) {
  if (qkv.dim() != 3 || qkv.size(1) != 1 || cos.dim() != 2 || cos.size(0) != 1 || cos.sizes() != sin.sizes() ||
      full_k.dim() != 4 || ring_k.dim() != 4 || full_k.sizes() != full_v.sizes() || ring_k.sizes() != ring_v.sizes())
    return false;
  const QkvShape s = qkv_shape(qkv, cos, full_k, ring_k);
  if (!cuda::decode_qkv_takes(s.dim) || s.heads <= 0 || qkv.size(-1) != (s.heads + 2 * s.kv_heads) * s.dim ||
      full_k.size(0) != s.batch || ring_k.size(0) != s.batch || full_k.size(3) != s.dim || ring_k.size(3) != s.dim)
    return false;
  for (const at::Tensor& index : {position, slot})
    if (index.scalar_type() != at::kLong || index.numel() != 1 || index.device() != qkv.device()) return false;
  if ((q_norm.defined() && q_norm.numel() != s.dim) || (k_norm.defined() && k_norm.numel() != s.dim)) return false;
  return cuda_kernels_take({qkv, q_norm, k_norm, cos, sin, full_k, full_v, ring_k, ring_v}, s.dim, 256);
}

at::Tensor decode_qkv_cuda(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm, double eps,
                           const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position,
                           const at::Tensor& slot, const at::Tensor& full_k, const at::Tensor& full_v,
                           const at::Tensor& ring_k, const at::Tensor& ring_v) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  const QkvShape s = qkv_shape(qkv, cos, full_k, ring_k);
  at::Tensor q = at::empty({s.batch, s.heads, 1, s.dim}, qkv.options());
  cuda::DecodeQkvArgs a{};
  a.qkv = qkv.data_ptr();
  a.q_norm = data_or_null(q_norm);
  a.k_norm = data_or_null(k_norm);
  a.cos = cos.data_ptr();
  a.sin = sin.data_ptr();
  a.eps = static_cast<float>(eps);
  a.position = position.data_ptr<int64_t>();
  a.slot = slot.data_ptr<int64_t>();
  a.full_k = full_k.data_ptr();
  a.full_v = full_v.data_ptr();
  a.ring_k = ring_k.data_ptr();
  a.ring_v = ring_v.data_ptr();
  a.q_out = q.data_ptr();
  a.batch = s.batch;
  a.heads = s.heads;
  a.kv_heads = s.kv_heads;
  a.full_heads = s.full_heads;
  a.head_dim = s.dim;
  a.capacity = full_k.size(2);
  a.ring = ring_k.size(2);
  check_launch(cuda::decode_qkv(element_type(qkv.scalar_type()), a, current_stream(qkv)), "decode_qkv");
  return q;
}

namespace {
// The input features of x under `input` (SwiGLU: half of x's last dimension).
int64_t linear_in_features(cuda::LinearInput input, const at::Tensor& x) {
  return input == cuda::LinearInput::Swiglu ? x.size(-1) / 2 : x.size(-1);
}
}  // namespace

bool decode_linear_cuda_takes(cuda::LinearInput input, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& norm_weight) {
  if (x.dim() < 1 || x.numel() == 0 || weight.dim() != 2) return false;
  const int64_t in = linear_in_features(input, x), out = weight.size(0), rows = x.numel() / x.size(-1);
  if (weight.size(1) != in || out == 0 || (input == cuda::LinearInput::Swiglu && x.size(-1) != 2 * in)) return false;
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != out)) return false;
  if (residual.defined() && (residual.dim() != x.dim() || residual.numel() != rows * out || residual.size(-1) != out))
    return false;
  if ((input == cuda::LinearInput::RmsNorm) != norm_weight.defined() ||
      (norm_weight.defined() && (norm_weight.dim() != 1 || norm_weight.size(0) != in)))
    return false;
  const at::ScalarType type = x.scalar_type();
  return (type == at::kFloat || type == at::kHalf || type == at::kBFloat16) &&
         cuda::decode_linear_takes(element_type(type), rows, in) &&
         cuda_kernels_take({x, weight, bias, residual, norm_weight}, in, int64_t{1} << 20);
}

at::Tensor decode_linear_cuda(cuda::LinearInput input, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& norm_weight,
                              double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = weight.size(0);
  at::Tensor out = at::empty(shape, x.options());
  cuda::DecodeLinearArgs a{};
  a.input = input;
  a.x = x.data_ptr();
  a.weight = weight.data_ptr();
  a.bias = data_or_null(bias);
  a.residual = data_or_null(residual);
  a.norm_weight = data_or_null(norm_weight);
  a.out = out.data_ptr();
  a.rows = x.numel() / x.size(-1);
  a.in_features = linear_in_features(input, x);
  a.out_features = weight.size(0);
  a.eps = static_cast<float>(eps);
  check_launch(cuda::decode_linear(element_type(x.scalar_type()), a, current_stream(x)), "decode_linear");
  return out;
}

}  // namespace consa::kernels::detail
