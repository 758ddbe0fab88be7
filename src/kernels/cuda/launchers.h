#pragma once
// Host entry points of consa's CUDA kernels (the .cu files beside this one), on raw device
// pointers and without any LibTorch or CUDA header, so that the kernels compile with nvcc alone
// and their callers (fused_cuda.cpp) with the host compiler alone. Every tensor is contiguous and
// of one element type; `stream` is a cudaStream_t. Launch errors are returned as CUDA's message
// (nullptr on success).
#include <cstdint>

namespace consa::kernels::cuda {

enum class ElementType { Float32, Float16, BFloat16 };

// RMSNorm over the last dimension of x [rows, dim], as the math path rounds it:
//   s = residual ? round(x + residual) : x;  n = round(s * rsqrt(mean(s^2) + eps));  y = round(w * n)
// Writes y, s (only when residual is given) and rstd [rows] (fp32, for the backward).
// dim must be a multiple of 16 bytes' worth of elements.
const char* rms_norm_forward(ElementType type, const void* x, const void* residual, const void* weight, void* y,
                             void* sum, float* rstd, int64_t rows, int64_t dim, float eps, void* stream);

// The number of row blocks rms_norm_backward splits the rows into; weight_grad_partial holds one
// fp32 row of dim per block, which the caller sums.
int64_t rms_norm_backward_blocks(ElementType type, int64_t rows, int64_t dim);

// From dy (and sum_grad, the gradient reaching s directly, or null): input_grad = ds and the
// per-block partial sums of the weight's gradient. `input` is s as the forward normalised it.
const char* rms_norm_backward(ElementType type, const void* dy, const void* sum_grad, const void* input,
                              const float* rstd, const void* weight, void* input_grad, float* weight_grad_partial,
                              int64_t rows, int64_t dim, void* stream);

// SwiGLU's product y = round(round(silu(gate)) * up) over n elements, and its backward.
const char* swiglu_forward(ElementType type, const void* gate, const void* up, void* y, int64_t n, void* stream);
const char* swiglu_backward(ElementType type, const void* dy, const void* gate, const void* up, void* gate_grad,
                            void* up_grad, int64_t n, void* stream);

// Rotary embedding of x [batch, length, heads, dim] with tables cos/sin [length, dim]:
//   out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1],
// computed in fp32 and rounded once. `transpose` applies the adjoint map instead (the backward:
// dx = dy * cos + rotate_half^T(dy * sin)). dim / 2 must be a multiple of 16 bytes' worth of
// elements.
const char* rope(ElementType type, const void* x, const void* cos, const void* sin, void* out, int64_t batch,
                 int64_t length, int64_t heads, int64_t dim, bool transpose, void* stream);

// The gated FA/SWA mix out = lerp(swa, full, z[h]) over full/swa [positions, heads, dim] with
// fp32 gates z [heads], and its backward: full_grad = dy z, swa_grad = dy (1 - z), and per block
// of gated_mix_backward_blocks(positions) one fp32 row [heads] of dz = sum dy (full - swa),
// which the caller sums. dim must be a multiple of 16 bytes' worth of elements.
const char* gated_mix_forward(ElementType type, const void* full, const void* swa, const float* z, void* out,
                              int64_t positions, int64_t heads, int64_t dim, void* stream);
int64_t gated_mix_backward_blocks(int64_t positions);
const char* gated_mix_backward(ElementType type, const void* dy, const void* full, const void* swa, const float* z,
                               void* full_grad, void* swa_grad, float* z_grad_partial, int64_t positions,
                               int64_t heads, int64_t dim, void* stream);

// Cross-entropy over logits [rows, vocab], read once and reduced in fp32: lse[r] = log sum_j
// exp(logits[r, j]) and target_logit[r] = logits[r, targets[r]]. The backward overwrites the
// logits with the gradient of sum_r coef[r] (lse[r] - logits[r, targets[r]]):
// round(coef[r] * (exp(logits - lse[r]) - onehot(targets[r]))). vocab must be a multiple of 16
// bytes' worth of elements.
const char* cross_entropy_forward(ElementType type, const void* logits, const int64_t* targets, float* lse,
                                  float* target_logit, int64_t rows, int64_t vocab, void* stream);
const char* cross_entropy_backward(ElementType type, void* logits, const int64_t* targets, const float* lse,
                                   const float* coef, int64_t rows, int64_t vocab, void* stream);

// Decode attention: one query per sequence over one or two KV sources (a layer's full caches and
// its rings), each keys and values [batch, kv_heads, keys, head_dim] with an fp32 additive bias
// (0 or -inf) per key: bias_stride 0 shares one row [keys] among the source's query heads,
// bias_stride = keys gives each query head h * group + g of the source its own row. q [batch,
// (n0 + n1) group, head_dim] holds the query heads of source 0's KV heads, then source 1's (n1 = 0:
// one source). scores = q.k * scale + bias, softmax and the weighted values in fp32, out like q,
// rounded once. The keys are cut into splits (plan_decode_splits) whose partial results
// o_part [rows, splits, head_dim] and lse_part [rows, splits] (fp32, rows = batch (n0 + n1) group;
// unused with one split) are merged by a second kernel. A query that sees no key gets zeros.
constexpr int64_t kDecodeMaxGroup = 8;
struct DecodeSource {
  const void *k, *v;
  const float* bias;
  int64_t bias_stride, kv_heads, keys;
  int64_t splits;  // of each KV head's keys, at most DecodeAttentionArgs::splits
};
struct DecodeAttentionArgs {
  const void* q;
  DecodeSource sources[2];
  void* out;
  float *o_part, *lse_part;
  int64_t batch, group, head_dim, splits;  // splits: the most of either source (the grid's)
  float scale;
};
// Whether the kernel takes this head_dim (64, 128 or 256 within 32 packs) and group (<= 8).
bool decode_attention_takes(ElementType type, int64_t head_dim, int64_t group);
// Sets each source's splits and args.splits for this GPU from the sources' kv_heads and keys,
// args.batch, group and head_dim.
void plan_decode_splits(ElementType type, DecodeAttentionArgs& args);
const char* decode_attention(ElementType type, const DecodeAttentionArgs& args, void* stream);

// A decode step's projection output qkv [batch, 1, (heads + 2 kv_heads) head_dim] to attention's
// inputs: q and k RMS-normalised by q_norm / k_norm [head_dim] (null: no norm) and rotated by
// cos/sin [1, head_dim]; k and v of the first full_heads KV heads written into full_k/full_v
// [batch, full_heads, capacity, head_dim] at *position, the rest into ring_k/ring_v
// [batch, kv_heads - full_heads, ring, head_dim] at *slot (both int64 on the device); q into
// q_out [batch, heads, 1, head_dim]. head_dim 64, 128 or 256.
struct DecodeQkvArgs {
  const void *qkv, *q_norm, *k_norm, *cos, *sin;
  float eps;
  const int64_t *position, *slot;
  void *full_k, *full_v, *ring_k, *ring_v, *q_out;
  int64_t batch, heads, kv_heads, full_heads, head_dim, capacity, ring;
};
bool decode_qkv_takes(int64_t head_dim);
const char* decode_qkv(ElementType type, const DecodeQkvArgs& args, void* stream);

// A linear layer over few rows (a decode step's projections, where a GEMM's tiles would stream
// the weights at a fraction of bandwidth): out [rows, out_features] = x' W^T for W
// [out_features, in_features], rounded once, + bias, then + residual (rounded again, as the math
// path adds the residual to the stored product). x' is x [rows, in_features] itself, its RMSNorm
// (norm_weight [in_features], eps; kept in fp32, where the math path rounds the normalised x and
// its product with the weight) or SwiGLU's product of its halves, x [rows, 2 in_features] =
// [gate, up] (rounded as swiglu_forward rounds it). bias, residual: null for none. in_features
// must be whole 16-byte packs; rows at most kDecodeLinearMaxRows (beyond a few rows a GEMM's
// tensor cores win: the FMAs per weight grow with the rows).
enum class LinearInput { Plain, RmsNorm, Swiglu };
constexpr int64_t kDecodeLinearMaxRows = 4;
struct DecodeLinearArgs {
  LinearInput input;
  const void *x, *weight, *bias, *residual, *norm_weight;
  void* out;
  int64_t rows, in_features, out_features;
  float eps;
};
bool decode_linear_takes(ElementType type, int64_t rows, int64_t in_features);
const char* decode_linear(ElementType type, const DecodeLinearArgs& args, void* stream);

}  // namespace consa::kernels::cuda
