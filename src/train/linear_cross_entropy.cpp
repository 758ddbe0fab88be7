#include "consa/train/linear_cross_entropy.h"

#include <torch/csrc/autograd/custom_function.h>

#include "consa/core/dtype.h"
#include "consa/core/device.h"
#include "consa/core/error.h"
#include "consa/kernels/fused_ops.h"

namespace consa {

namespace {

// Logits are reduced in fp32, or in fp64 for fp64 inputs (accumulation_dtype).
// h [N, H] and targets [N] are the scored positions' hidden states and next tokens; scale [N] is
// mask / count, so the loss is sum(scale * nll).
struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& weight,
                            const at::Tensor& targets, const at::Tensor& scale, int64_t rows, bool fused) {
    const int64_t n = h.size(0);
    at::Tensor lse = at::empty({n}, h.options().dtype(accumulation_dtype(h.scalar_type())));
    at::Tensor loss = at::zeros({}, h.options().dtype(accumulation_dtype(h.scalar_type())));
    for (int64_t r = 0; r < n; r += rows) {
      const int64_t k = std::min(rows, n - r);
      const at::Tensor logits = at::matmul(h.narrow(0, r, k), weight.t());
      const auto [chunk_lse, target] = kernels::cross_entropy_rows(logits, targets.narrow(0, r, k), fused);
      lse.narrow(0, r, k).copy_(chunk_lse);
      loss.add_(((chunk_lse - target) * scale.narrow(0, r, k)).sum());
    }
    ctx->save_for_backward({h, weight, targets, scale, lse});
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["weight_grad"] = weight.requires_grad();
    ctx->saved_data["fused"] = fused;
    return loss;
  }

  // d loss / d logits = scale * (softmax - onehot(target)), one chunk at a time.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_output) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &h = saved[0], &weight = saved[1], &targets = saved[2], &scale = saved[3], &lse = saved[4];
    const int64_t rows = ctx->saved_data["rows"].toInt(), n = h.size(0);
    const bool weight_grad = ctx->saved_data["weight_grad"].toBool(), fused = ctx->saved_data["fused"].toBool();
    const at::Tensor g = grad_output[0].to(accumulation_dtype(h.scalar_type()));
    at::Tensor grad_h = at::empty_like(h);
    // Accumulated over chunks in fp32 (a bf16 sum of many chunks would lose their small terms).
    at::Tensor grad_w = weight_grad ? at::zeros(weight.sizes(), weight.options().dtype(accumulation_dtype(h.scalar_type()))) : at::Tensor();
    for (int64_t r = 0; r < n; r += rows) {
      const int64_t k = std::min(rows, n - r);
      const at::Tensor hc = h.narrow(0, r, k);
      const at::Tensor d_logits =
          kernels::cross_entropy_logits_grad(at::matmul(hc, weight.t()), targets.narrow(0, r, k), lse.narrow(0, r, k),
                                             scale.narrow(0, r, k) * g, fused)
              .to(h.scalar_type());
      grad_h.narrow(0, r, k).copy_(at::matmul(d_logits, weight));
      if (weight_grad) grad_w.add_(at::matmul(d_logits.t(), hc).to(accumulation_dtype(h.scalar_type())));
    }
    return {grad_h, weight_grad ? grad_w.to(weight.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& tokens,
                                const at::Tensor& mask, int64_t chunk_bytes, bool fused) {
  CONSA_CHECK(hidden.dim() == 3 && weight.dim() == 2 && hidden.size(2) == weight.size(1),
              "linear_cross_entropy: hidden ", hidden.sizes(), " does not match the output weight ", weight.sizes());
  CONSA_CHECK(tokens.dim() == 2 && tokens.size(0) == hidden.size(0) && tokens.size(1) == hidden.size(1) &&
                  mask.dim() == 2 && mask.size(0) == tokens.size(0) && mask.size(1) == tokens.size(1) - 1,
              "linear_cross_entropy: tokens ", tokens.sizes(), " and mask ", mask.sizes(), " do not match hidden ",
              hidden.sizes());
  const int64_t b = hidden.size(0), len = hidden.size(1);
  at::Tensor h = hidden.narrow(1, 0, len - 1).reshape({b * (len - 1), hidden.size(2)});
  at::Tensor targets = tokens.narrow(1, 1, len - 1).reshape({-1});
  at::Tensor m = mask.to(accumulation_dtype(h.scalar_type())).reshape({-1});
  if (m.device().is_cpu()) {
    // A mask on the host says which positions count without reading the device: only those are
    // projected (retrieval data scores a few answer tokens of thousands).
    const at::Tensor scored = at::nonzero(m).squeeze(1);
    const at::Tensor on_device = to_device_async(scored, hidden.device());
    h = h.index_select(0, on_device);
    targets = targets.index_select(0, targets.device().is_cpu() ? scored : on_device);
    m = m.index_select(0, scored) / m.sum().clamp_min(1.0);
  } else {
    m = m / m.sum().clamp_min(1.0);
  }
  targets = to_device_async(targets, hidden.device());
  m = to_device_async(m, hidden.device());
  if (chunk_bytes <= 0) {  // whole logits of the scored positions, through autograd
    const at::Tensor log_probs = at::log_softmax(at::matmul(h, weight.t()), -1, accumulation_dtype(h.scalar_type()));
    return -(log_probs.gather(1, targets.unsqueeze(1)).squeeze(1) * m).sum();
  }
  const int64_t rows = std::max<int64_t>(1, chunk_bytes / (4 * weight.size(0)));
  return LinearCrossEntropy::apply(h, weight, targets, m, rows, fused);
}

}  // namespace consa
