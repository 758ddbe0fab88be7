#include "consa/kernels/torch_ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "consa/kernels/fused_ops.h"

namespace consa::kernels {
namespace {

// The kernels take contiguous tensors on a GPU; elsewhere the math path takes any strides.
bool on_kernels(const at::Tensor& x) { return fused_kernels_built() && x.is_cuda(); }
at::Tensor for_kernels(const at::Tensor& x) { return on_kernels(x) ? x.contiguous() : x; }

at::Tensor rms_norm_op(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return rms_norm(for_kernels(x), weight, eps, on_kernels(x));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_op(const at::Tensor& x, const at::Tensor& residual,
                                                   const at::Tensor& weight, double eps) {
  auto [sum, normed] = add_rms_norm(for_kernels(x), for_kernels(residual), weight, eps, on_kernels(x));
  return {sum, normed};
}

at::Tensor rope_op(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return rope(for_kernels(x), for_kernels(cos), for_kernels(sin), on_kernels(x));
}

at::Tensor decode_attention_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                               double scale) {
  return decode_attention(q, k, v, bias, scale, on_kernels(k));
}

at::Tensor hybrid_decode_attention_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& bias, const at::Tensor& k2, const at::Tensor& v2,
                                      const at::Tensor& bias2, double scale) {
  return hybrid_decode_attention(q, k, v, bias, k2, v2, bias2, scale, on_kernels(k));
}

at::Tensor swiglu_op(const at::Tensor& gate, const at::Tensor& up) {
  return swiglu(gate, up, on_kernels(gate));  // strided halves of a stacked projection: the math path
}

at::Tensor decode_qkv_op(const at::Tensor& qkv, const c10::optional<at::Tensor>& q_norm,
                         const c10::optional<at::Tensor>& k_norm, double eps, const at::Tensor& cos,
                         const at::Tensor& sin, const at::Tensor& position, const at::Tensor& slot,
                         const at::Tensor& full_k, const at::Tensor& full_v, const at::Tensor& ring_k,
                         const at::Tensor& ring_v) {
  return decode_qkv(qkv, q_norm.value_or(at::Tensor()), k_norm.value_or(at::Tensor()), eps, cos, sin, position, slot,
                    full_k, full_v, ring_k, ring_v, on_kernels(qkv));
}

at::Tensor linear_op(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const c10::optional<at::Tensor>& residual) {
  return linear(for_kernels(x), weight, bias.value_or(at::Tensor()), residual.value_or(at::Tensor()), on_kernels(x));
}

at::Tensor rms_norm_linear_op(const at::Tensor& x, const at::Tensor& norm_weight, double eps, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias) {
  return rms_norm_linear(for_kernels(x), norm_weight, eps, weight, bias.value_or(at::Tensor()), on_kernels(x));
}

at::Tensor swiglu_linear_op(const at::Tensor& gate_up, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& residual) {
  return swiglu_linear(for_kernels(gate_up), weight, residual.value_or(at::Tensor()), on_kernels(gate_up));
}

}  // namespace

// One registration for every backend (CompositeImplicitAutograd): each function picks the
// kernel or the math path itself.
TORCH_LIBRARY(consa, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", &rms_norm_op);
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)", &add_rms_norm_op);
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor", &rope_op);
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor bias, float scale) -> Tensor", &decode_attention_op);
  m.def("hybrid_decode_attention(Tensor q, Tensor k, Tensor v, Tensor bias, Tensor k2, Tensor v2, Tensor bias2, "
        "float scale) -> Tensor",
        &hybrid_decode_attention_op);
  m.def("swiglu(Tensor gate, Tensor up) -> Tensor", &swiglu_op);
  // The caches are written in place: the (a!) annotations keep TorchScript from reordering them.
  m.def("decode_qkv(Tensor qkv, Tensor? q_norm, Tensor? k_norm, float eps, Tensor cos, Tensor sin, Tensor position, "
        "Tensor slot, Tensor(a!) full_k, Tensor(b!) full_v, Tensor(c!) ring_k, Tensor(d!) ring_v) -> Tensor",
        &decode_qkv_op);
  // A decode step's projections with their input's norm or SwiGLU and the residual add.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias, Tensor? residual) -> Tensor", &linear_op);
  m.def("rms_norm_linear(Tensor x, Tensor norm_weight, float eps, Tensor weight, Tensor? bias) -> Tensor",
        &rms_norm_linear_op);
  m.def("swiglu_linear(Tensor gate_up, Tensor weight, Tensor? residual) -> Tensor", &swiglu_linear_op);
}

void register_torch_ops() {}  // linking this object file runs TORCH_LIBRARY's registration

}  // namespace consa::kernels
