#pragma once
// Next-token cross-entropy straight from the final hidden states and the output projection, in
// chunks of positions, so the [positions, vocabulary] logits never exist at once: at 8K tokens and
// Qwen's 151,936-word vocabulary they would be 2.5 GB in bf16 and 5 GB in fp32 per sequence.
// Forward keeps each position's log-sum-exp; backward recomputes one chunk's logits at a time.
#include <ATen/ATen.h>

namespace consa {

// Masked mean of -log softmax(hidden[:, t] @ weight^T)[tokens[:, t + 1]] over t < L - 1, as
// next_token_cross_entropy computes it from full logits. hidden [B, L, H], weight [V, H], tokens
// [B, L], mask [B, L - 1] (1: scored). Logits are formed in the weights' dtype and reduced in fp32.
// Differentiable in hidden and weight. `chunk_bytes`: the fp32 logits one chunk may hold; 0 forms
// the scored positions' logits whole, through autograd (faster, more memory). A mask on the host
// selects the scored positions before any projection, without reading the device. `fused`: each
// chunk's reductions and gradient as consa's CUDA kernels where they run (kernels::cross_entropy_rows),
// which read and write the chunk's logits once in their own dtype instead of an fp32 copy.
at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& tokens,
                                const at::Tensor& mask, int64_t chunk_bytes = int64_t{1} << 30, bool fused = false);

}  // namespace consa
