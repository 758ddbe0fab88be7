#include "consa/core/torch_compat.h"

#include "consa/core/error.h"

namespace consa::compat {

std::pair<at::Tensor, at::Tensor> flash_attention(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale,
                                                  int64_t window_left) {
#if CONSA_HAS_FLASH_ATTENTION
  const int64_t lq = q.size(1);
  const int64_t lk = k.size(1);
  auto result = at::_flash_attention_forward(q, k, v, {}, {}, lq, lk, /*dropout_p=*/0.0,
                                             /*is_causal=*/true, /*return_debug_mask=*/false,
                                             scale, window_left, /*window_size_right=*/0);
  return {std::get<0>(result), std::get<1>(result)};
#else
  (void)q, (void)k, (void)v, (void)scale, (void)window_left;
  fail("the flash attention backend needs LibTorch >= 2.4 with CUDA; this build uses LibTorch ",
       torch_version(), " (use --attention math)");
#endif
}

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace consa::compat
