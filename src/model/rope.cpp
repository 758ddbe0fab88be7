#include "consa/model/rope.h"

#include <cmath>

#include "consa/core/device.h"
#include "consa/kernels/fused_ops.h"

namespace consa {

at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim) {
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  // 1 / theta^(2i / d), built from an int64 arange as transformers does.
  at::Tensor exponents = at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                         static_cast<double>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(rope.theta, f32), exponents);
  if (rope.type == "linear") return inv_freq / rope.factor;
  if (rope.type != "llama3") return inv_freq;

  // Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band between
  // interpolated smoothly.
  const double old_len = static_cast<double>(rope.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / rope.low_freq_factor;
  const double high_freq_wavelen = old_len / rope.high_freq_factor;
  at::Tensor wavelen = 2.0 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
  at::Tensor smooth = (old_len / wavelen - rope.low_freq_factor) /
                      (rope.high_freq_factor - rope.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen);
  return at::where(medium, smoothed, scaled);
}

RopeTables rope_tables(const at::Tensor& inv_freq, int64_t offset, int64_t length,
                       at::ScalarType dtype, at::Device device) {
  at::Tensor positions =
      at::arange(offset, offset + length, at::TensorOptions().dtype(at::kLong).device(device)).to(at::kFloat);
  at::Tensor freqs = at::outer(positions, to_device_async(inv_freq, device));  // [L, D/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                  // [L, D]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& tables, bool fused) {
  return kernels::rope(x, tables.cos, tables.sin, fused);
}

}  // namespace consa
