#pragma once
// The decoder's elementwise chains as single operations: RMSNorm (with the residual add before
// it), SwiGLU's product and RoPE. Where consa is built with its CUDA kernels (src/kernels/cuda/)
// and the tensors are on a GPU, each runs as one kernel forward and one backward; everywhere
// else, and for inputs the kernels do not take, as the ATen ops of the math path. Both compute
// the same function: the kernels keep the math path's roundings to the model's dtype where it
// stores an intermediate, and accumulate in fp32 (docs/performance.md gives the tolerances).
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>

namespace consa {

// model.kernels: auto takes the fused kernels wherever they run (a CUDA build, a GPU model),
// aten always the math path, fused insists on the kernels.
enum class KernelImpl { Auto, Aten, Fused };
KernelImpl parse_kernel_impl(const std::string& name);
const char* kernel_impl_name(KernelImpl impl);

// Whether this build carries the CUDA kernels.
bool fused_kernels_built();

// Whether a model on `device` runs the fused kernels under `impl`. Fused where they cannot run
// is refused with an error naming `where` (the recipe key or flag).
bool use_fused_kernels(KernelImpl impl, const at::Device& device, const std::string& where);

namespace kernels {

// weight * round(x * rsqrt(mean(x^2) + eps)) over the last dimension, normalised in fp32.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, bool fused);

// {s, rms_norm(s)} with s = x + residual: a decoder layer's residual add and the norm after it.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                               const at::Tensor& weight, double eps, bool fused);

// silu(gate) * up.
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up, bool fused);

// x * cos + rotate_half(x) * sin for x [B, L, H, D] and tables cos, sin [L, D].
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool fused);

// The gated FA/SWA mix lerp(swa, full, z[h]) of heads [B, L, H, D] with gates z [H] (fp32, on
// the heads' device). The math path mixes with z rounded to the heads' dtype; the kernel mixes
// and returns dz in fp32.
at::Tensor gated_mix(const at::Tensor& full, const at::Tensor& swa, const at::Tensor& z, bool fused);

// Cross-entropy of logits [rows, vocab] against int64 targets [rows]: {log-sum-exp, the target's
// logit} per row, in fp32 (fp64 for fp64 logits). The kernel reads the logits once; the math path
// converts them to fp32 first.
std::pair<at::Tensor, at::Tensor> cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, bool fused);
// The gradient of sum_r coef[r] (lse[r] - logits[r, targets[r]]) with respect to the logits, in
// their dtype: coef (exp(logits - lse) - onehot(targets)) in fp32, rounded once. The kernel
// writes it over `logits`, which the caller hands over.
at::Tensor cross_entropy_logits_grad(at::Tensor logits, const at::Tensor& targets, const at::Tensor& lse,
                                     const at::Tensor& coef, bool fused);

// Attention of one query per sequence (a decode step): q [B, n G, 1, D] over a cache's keys and
// values k, v [B, n, T, D], with an fp32 bias (0 visible, -inf masked) [T] or [n, G, T];
// softmax(q k^T * scale + bias) v -> [B, n G, 1, D]. The math path rounds the scores and the
// probabilities to the dtype as the matmuls store them; the kernel (split-K flash-decoding, on
// CUDA for head_dim 64/128/256 and G <= 8) keeps them in fp32 and skips every split of keys
// that no query head of its group sees.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                            double scale, bool fused);
// Both slices of a hybrid layer in one call (one launch for the kernel): q [B, (n + n2) G, 1, D]
// over the full caches k, v [B, n, T, D] with `bias` for its first n G heads and over the ring
// k2, v2 [B, n2, R, D] with `bias2` for the rest; equals torch.cat of the two decode_attention
// calls along the heads.
at::Tensor hybrid_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& bias, const at::Tensor& k2, const at::Tensor& v2,
                                   const at::Tensor& bias2, double scale, bool fused);
// Whether decode_attention (or, with k2, v2, bias2, hybrid_decode_attention) with fused = true
// runs the kernel on these tensors.
bool decode_attention_kernel_takes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& bias, const at::Tensor& k2 = {}, const at::Tensor& v2 = {},
                                   const at::Tensor& bias2 = {});

// A decode step (one token per sequence) from its QKV projection qkv [B, 1, (H + 2 kv) D] to
// attention's query: q and k normalised by q_norm / k_norm (undefined: no norm) and rotated by
// cos/sin [1, D]; k and v of the first full_k.size(1) KV heads written into full_k/full_v
// [B, *, capacity, D] at `position`, the others into ring_k/ring_v [B, *, ring, D] at `slot`
// (int64 [1] each); returns q [B, H, 1, D]. The kernel does all of it in one launch.
at::Tensor decode_qkv(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm, double eps,
                      const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position, const at::Tensor& slot,
                      const at::Tensor& full_k, const at::Tensor& full_v, const at::Tensor& ring_k,
                      const at::Tensor& ring_v, bool fused);
bool decode_qkv_kernel_takes(const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm,
                             const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& position,
                             const at::Tensor& slot, const at::Tensor& full_k, const at::Tensor& full_v,
                             const at::Tensor& ring_k, const at::Tensor& ring_v);

// A decode step's projections: linear(x', weight, bias), then + residual, where x' is x (linear),
// rms_norm(x, norm_weight, eps) (rms_norm_linear) or silu(gate) * up of x = [gate, up] along the
// last dimension (swiglu_linear). bias and residual may be undefined. The kernel (CUDA, at most 4
// rows of x, the input features whole 16-byte packs) reads each weight once and does x' and the
// add on the way, rounding where the math path stores except for the normalised x (kept in fp32);
// elsewhere the math path composes rms_norm or swiglu, at::linear and the add.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& residual,
                  bool fused);
at::Tensor rms_norm_linear(const at::Tensor& x, const at::Tensor& norm_weight, double eps, const at::Tensor& weight,
                           const at::Tensor& bias, bool fused);
at::Tensor swiglu_linear(const at::Tensor& gate_up, const at::Tensor& weight, const at::Tensor& residual, bool fused);
// Whether each of them with fused = true runs the kernel (norm_weight defined: rms_norm_linear).
bool linear_kernel_takes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& residual, const at::Tensor& norm_weight = {});
bool swiglu_linear_kernel_takes(const at::Tensor& gate_up, const at::Tensor& weight, const at::Tensor& residual);

}  // namespace kernels
}  // namespace consa
