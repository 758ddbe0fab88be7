#pragma once
// Rotary position embedding, half-split (rotate_half) convention, with the default, linear and
// llama3 frequency schedules of Hugging Face transformers.
#include <ATen/ATen.h>

#include "consa/model/config.h"

namespace consa {

// Inverse frequencies [head_dim / 2] in fp32 on the CPU, after the configured scaling.
at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

// cos/sin tables [L, head_dim] for positions offset .. offset + L - 1, computed in fp32 and cast
// to `dtype` (as transformers does).
struct RopeTables {
  at::Tensor cos, sin;
};
RopeTables rope_tables(const at::Tensor& inv_freq, int64_t offset, int64_t length,
                       at::ScalarType dtype, at::Device device);

// x [B, L, H, D] rotated by tables [L, D]; `fused`: in one CUDA kernel where it runs
// (consa/kernels/fused_ops.h).
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& tables, bool fused = false);

}  // namespace consa
