#pragma once
// The one place that knows which LibTorch it is built against (Debian's 1.13 CPU build, or a
// CUDA LibTorch 2.x). Everything version-dependent is decided here and nowhere else.
#include <ATen/ATen.h>
#include <torch/version.h>

#define CONSA_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::_flash_attention_forward takes window_size_left/right from LibTorch 2.4 on.
#define CONSA_HAS_FLASH_ATTENTION CONSA_TORCH_AT_LEAST(2, 4)

namespace consa::compat {

// Runs flash attention over q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D] (GQA native) with a causal
// mask aligned bottom-right and `window_left` extra keys to the left (-1: unlimited).
// Returns {output [B, Lq, Hq, D], logsumexp [B, Hq, Lq]}. Throws on builds without it.
std::pair<at::Tensor, at::Tensor> flash_attention(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale,
                                                  int64_t window_left);

// Whether this build of LibTorch can run at::_flash_attention_forward at all.
constexpr bool flash_attention_compiled() { return CONSA_HAS_FLASH_ATTENTION; }

// Human-readable LibTorch version, e.g. "1.13.0".
std::string torch_version();

}  // namespace consa::compat
