#pragma once
// consa's fused operations as TorchScript operators in the namespace `consa`, which exports
// made with `--kernels fused` call (torch.ops.consa.*):
//   rms_norm(Tensor x, Tensor weight, float eps) -> Tensor
//   add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor sum, Tensor normed)
//   rope(Tensor x, Tensor cos, Tensor sin) -> Tensor            x [B, T, H, D], tables [T, D]
//   decode_attention(Tensor q, Tensor k, Tensor v, Tensor bias, float scale) -> Tensor
//   hybrid_decode_attention(Tensor q, Tensor k, Tensor v, Tensor bias, Tensor k2, Tensor v2,
//                           Tensor bias2, float scale) -> Tensor     (full caches and rings at once)
//   swiglu(Tensor gate, Tensor up) -> Tensor
//   decode_qkv(Tensor qkv, Tensor? q_norm, Tensor? k_norm, float eps, Tensor cos, Tensor sin,
//              Tensor position, Tensor slot, Tensor(a!) full_k, Tensor(b!) full_v,
//              Tensor(c!) ring_k, Tensor(d!) ring_v) -> Tensor     (the caches written in place)
//   linear(Tensor x, Tensor weight, Tensor? bias, Tensor? residual) -> Tensor
//   rms_norm_linear(Tensor x, Tensor norm_weight, float eps, Tensor weight, Tensor? bias) -> Tensor
//   swiglu_linear(Tensor gate_up, Tensor weight, Tensor? residual) -> Tensor
// Each runs consa's CUDA kernel where this build has them and the tensors are on a GPU, and its
// math path elsewhere (consa/kernels/fused_ops.h); they are inference operators (no autograd
// of their own). The same registration is built as libconsa_ops.so, which Python loads with
// torch.ops.load_library before torch.jit.load.
namespace consa::kernels {

// The name Python loads (beside the consa binary in a build folder).
constexpr const char* kTorchOpsLibrary = "libconsa_ops.so";

// Registers the operators in this process, once (static libraries drop an object file nothing
// refers to: whatever compiles or loads TorchScript calling them calls this first).
void register_torch_ops();

}  // namespace consa::kernels
