// consa/kernels/fused_ops.h. On the CPU ([model]): the math path of each fused operation
// against its closed form in fp64, and where `fused` is refused. On a GPU ([cuda]): every CUDA
// kernel against the math path in fp32 and against an fp64 reference in bf16, forward and
// backward, and a whole Qwen3-shaped model with the kernels against the model without them; the
// cross-entropy kernels and chunked linear cross-entropy with them against fp64 and the math path.
// The decode step's kernels are in test_decode_kernels.cpp.
#include <ATen/ATen.h>

#include <cmath>
#include <iostream>
#include <map>
#include <tuple>
#include <sstream>

#include "catch_compat.h"
#include "consa/attention/attention.h"
#include "consa/kernels/fused_ops.h"
#include "consa/model/decoder.h"
#include "consa/train/linear_cross_entropy.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

auto f64 = at::TensorOptions().dtype(at::kDouble);

}  // namespace

TEST_CASE("fused operations' math path equals each formula in fp64", "[model]") {
  at::manual_seed(3);
  const int64_t rows = 7, dim = 16;
  const double eps = 1e-6;
  at::Tensor x = at::randn({rows, dim}, f64), r = at::randn({rows, dim}, f64), w = at::randn({dim}, f64);
  at::Tensor norm = kernels::rms_norm(x, w, eps, /*fused=*/false);
  auto [sum, summed_norm] = kernels::add_rms_norm(x, r, w, eps, /*fused=*/true);  // no kernels on the CPU
  auto xa = x.accessor<double, 2>(), ra = r.accessor<double, 2>();
  auto wa = w.accessor<double, 1>();
  double norm_err = 0, sum_err = 0, summed_err = 0;
  for (int64_t i = 0; i < rows; ++i) {
    double ss = 0, ss_sum = 0;
    for (int64_t j = 0; j < dim; ++j) ss += xa[i][j] * xa[i][j], ss_sum += (xa[i][j] + ra[i][j]) * (xa[i][j] + ra[i][j]);
    for (int64_t j = 0; j < dim; ++j) {
      norm_err = std::max(norm_err, std::abs(norm[i][j].item<double>() - wa[j] * xa[i][j] / std::sqrt(ss / dim + eps)));
      sum_err = std::max(sum_err, std::abs(sum[i][j].item<double>() - (xa[i][j] + ra[i][j])));
      const double want = wa[j] * (xa[i][j] + ra[i][j]) / std::sqrt(ss_sum / dim + eps);
      summed_err = std::max(summed_err, std::abs(summed_norm[i][j].item<double>() - want));
    }
  }
  // RMSNorm normalises in fp32 whatever the input's dtype, as transformers does.
  CHECK(norm_err < 1e-6);
  CHECK(sum_err < 1e-12);
  CHECK(summed_err < 1e-6);

  at::Tensor g = at::randn({5, 9}, f64), u = at::randn({5, 9}, f64);
  at::Tensor want = g / (1 + at::exp(-g)) * u;
  CHECK(max_abs_diff(kernels::swiglu(g, u, false), want) < 1e-12);

  // RoPE: pairs (i, i + D/2) rotated by the angle of their position and frequency.
  const int64_t b = 2, l = 5, h = 3, d = 8, half = d / 2;
  at::Tensor q = at::randn({b, l, h, d}, f64);
  at::Tensor cos = at::empty({l, d}, f64), sin = at::empty({l, d}, f64);
  for (int64_t p = 0; p < l; ++p)
    for (int64_t i = 0; i < d; ++i) {
      const double angle = (p + 11) * std::pow(10000.0, -2.0 * (i % half) / d);
      cos[p][i] = std::cos(angle), sin[p][i] = std::sin(angle);
    }
  at::Tensor rotated = kernels::rope(q, cos, sin, false);
  double rope_err = 0;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t p = 0; p < l; ++p)
      for (int64_t hi = 0; hi < h; ++hi)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = (p + 11) * std::pow(10000.0, -2.0 * i / d);
          const double x1 = q[bi][p][hi][i].item<double>(), x2 = q[bi][p][hi][i + half].item<double>();
          rope_err = std::max(rope_err, std::abs(rotated[bi][p][hi][i].item<double>() -
                                                 (x1 * std::cos(angle) - x2 * std::sin(angle))));
          rope_err = std::max(rope_err, std::abs(rotated[bi][p][hi][i + half].item<double>() -
                                                 (x2 * std::cos(angle) + x1 * std::sin(angle))));
        }
  CHECK(rope_err < 1e-12);
}

TEST_CASE("cross-entropy's math path equals the log-sum-exp and softmax gradient element by element", "[model]") {
  at::manual_seed(8);
  const int64_t rows = 5, vocab = 11;
  const at::Tensor logits = at::randn({rows, vocab}, f64) * 3;
  const at::Tensor targets = at::randint(0, vocab, {rows}, at::kLong), coef = at::randn({rows}, f64);
  const auto [lse, target_logit] = kernels::cross_entropy_rows(logits, targets, /*fused=*/true);  // no kernel here
  const at::Tensor grad = kernels::cross_entropy_logits_grad(logits.clone(), targets, lse, coef, true);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(logits[r][j].item<double>());
    CHECK(lse[r].item<double>() == Approx(std::log(sum)).epsilon(1e-12));
    const int64_t t = targets[r].item<int64_t>();
    CHECK(target_logit[r].item<double>() == logits[r][t].item<double>());
    for (int64_t j = 0; j < vocab; ++j) {
      const double want = coef[r].item<double>() * (std::exp(logits[r][j].item<double>()) / sum - (j == t ? 1.0 : 0.0));
      CHECK(grad[r][j].item<double>() == Approx(want).margin(1e-12));
    }
  }
}

TEST_CASE("model.kernels: fused is refused where the kernels cannot run; auto falls back", "[model]") {
  CHECK_FALSE(use_fused_kernels(KernelImpl::Auto, at::kCPU, "model.kernels"));
  CHECK_FALSE(use_fused_kernels(KernelImpl::Aten, at::Device("cuda:0"), "model.kernels"));
  CHECK_THROWS_WITH(use_fused_kernels(KernelImpl::Fused, at::kCPU, "r.yaml: model.kernels"),
                    contains("r.yaml: model.kernels: fused"));
  CHECK(use_fused_kernels(KernelImpl::Auto, at::Device("cuda:0"), "model.kernels") == fused_kernels_built());
  CHECK_THROWS_WITH(parse_kernel_impl("triton"), contains("'triton'; supported: auto, aten, fused"));
  CHECK(parse_kernel_impl(kernel_impl_name(KernelImpl::Fused)) == KernelImpl::Fused);
}

namespace {

struct OpResult {
  std::vector<at::Tensor> outputs, grads;  // outputs, then the inputs' gradients
};

// Runs op on copies of `inputs` in `dtype` (all requiring gradients but the last `frozen`),
// back-propagates sum(output_i * weight_i) and returns the outputs and gradients.
template <typename Op>
OpResult run_op(Op op, const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& weights,
                at::ScalarType dtype, size_t frozen = 0) {
  std::vector<at::Tensor> xs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    xs.push_back(inputs[i].to(dtype).detach());
    if (i + frozen < inputs.size()) xs.back().requires_grad_(true);
  }
  std::vector<at::Tensor> outs = op(xs);
  at::Tensor loss = at::zeros({}, weights[0].options().dtype(at::kDouble));
  for (size_t i = 0; i < outs.size(); ++i) loss = loss + (outs[i].to(at::kDouble) * weights[i]).sum();
  loss.backward();
  OpResult r;
  for (auto& o : outs) r.outputs.push_back(o.detach());
  for (size_t i = 0; i + frozen < xs.size(); ++i) r.grads.push_back(xs[i].grad());
  return r;
}

// The fused op against the math path: in fp32 within `fp32_tol`; in bf16 against the math path
// in fp64 on the same rounded inputs, within `bf16_tol`, and no worse than 1.5x the math path's
// own bf16 error (plus 1e-3 for ties at tiny errors).
template <typename Op>
void compare_op(const char* name, Op op, const std::vector<at::Tensor>& inputs, size_t outputs, double fp32_tol,
                double bf16_tol, size_t frozen = 0) {
  auto fused = [&](const std::vector<at::Tensor>& xs) { return op(xs, true); };
  auto math = [&](const std::vector<at::Tensor>& xs) { return op(xs, false); };
  std::vector<at::Tensor> rounded, weights;
  for (const auto& x : inputs) rounded.push_back(x.to(at::kBFloat16).to(at::kFloat));
  const std::vector<at::Tensor> probe = math(rounded);
  for (size_t i = 0; i < outputs; ++i) weights.push_back(at::randn(probe[i].sizes(), probe[i].options().dtype(at::kDouble)));

  const OpResult f32 = run_op(fused, rounded, weights, at::kFloat, frozen);
  const OpResult m32 = run_op(math, rounded, weights, at::kFloat, frozen);
  const OpResult f16 = run_op(fused, rounded, weights, at::kBFloat16, frozen);
  const OpResult m16 = run_op(math, rounded, weights, at::kBFloat16, frozen);
  const OpResult ref = run_op(math, rounded, weights, at::kDouble, frozen);
  auto all = [](const OpResult& r) {
    std::vector<at::Tensor> v = r.outputs;
    v.insert(v.end(), r.grads.begin(), r.grads.end());
    return v;
  };
  const auto a32 = all(f32), b32 = all(m32), a16 = all(f16), b16 = all(m16), want = all(ref);
  for (size_t i = 0; i < want.size(); ++i) {
    const std::string what = std::string(name) + (i < outputs ? " output " + std::to_string(i)
                                                              : " gradient " + std::to_string(i - outputs));
    const double e32 = peak_rel_err(a32[i], b32[i]), e16 = peak_rel_err(a16[i], want[i]), m = peak_rel_err(b16[i], want[i]);
    std::cout << "cuda kernels: " << what << ": fp32 vs math " << e32 << ", bf16 vs fp64 " << e16
              << " (math path " << m << ")\n";
    INFO(what);
    CHECK(e32 <= fp32_tol);
    CHECK(e16 <= bf16_tol);
    CHECK(e16 <= 1.5 * m + 1e-3);
  }
}

auto cuda_f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);

}  // namespace

TEST_CASE("CUDA RMSNorm, residual add + RMSNorm, SwiGLU and RoPE kernels match the math path", "[cuda]") {
  REQUIRE(fused_kernels_built());
  at::manual_seed(11);
  const double eps = 1e-6;
  // Hidden-size rows, q/k-norm rows (head_dim 128), and a row count no block size divides.
  for (auto [rows, dim] : std::vector<std::pair<int64_t, int64_t>>{{4096, 1024}, {3001, 128}, {517, 2048}, {64, 64}}) {
    const std::string shape = std::to_string(rows) + "x" + std::to_string(dim);
    compare_op(("rms_norm " + shape).c_str(),
               [&](const std::vector<at::Tensor>& t, bool fused) {
                 return std::vector<at::Tensor>{kernels::rms_norm(t[0], t[1], eps, fused)};
               },
               {at::randn({rows, dim}, cuda_f32) * 3, at::randn({dim}, cuda_f32)}, 1, 2e-5, 1e-2);
    compare_op(("add_rms_norm " + shape).c_str(),
               [&](const std::vector<at::Tensor>& t, bool fused) {
                 auto [s, y] = kernels::add_rms_norm(t[0], t[1], t[2], eps, fused);
                 return std::vector<at::Tensor>{s, y};
               },
               {at::randn({rows, dim}, cuda_f32), at::randn({rows, dim}, cuda_f32) * 4, at::randn({dim}, cuda_f32)}, 2,
               2e-5, 1e-2);
  }
  // A ragged tail (not a multiple of 8 elements) and a large even size.
  for (int64_t n : {int64_t{1000003}, int64_t{1} << 22}) {
    compare_op(("swiglu " + std::to_string(n)).c_str(),
               [&](const std::vector<at::Tensor>& t, bool fused) {
                 return std::vector<at::Tensor>{kernels::swiglu(t[0], t[1], fused)};
               },
               {at::randn({n}, cuda_f32) * 3, at::randn({n}, cuda_f32)}, 1, 2e-6, 1e-2);
  }
  // q and k of a GQA layer at offset positions: cos/sin as rope_tables builds them.
  for (int64_t heads : {16, 8}) {
    const int64_t b = 2, l = 333, d = 128;
    at::Tensor angles = at::arange(100, 100 + l, cuda_f32).unsqueeze(1) *
                        at::pow(10000.0, -at::arange(0, d / 2, cuda_f32) * 2.0 / d).unsqueeze(0);
    at::Tensor emb = at::cat({angles, angles}, -1);
    compare_op(("rope " + std::to_string(heads) + " heads").c_str(),
               [&](const std::vector<at::Tensor>& t, bool fused) {
                 return std::vector<at::Tensor>{kernels::rope(t[0], t[1], t[2], fused)};
               },
               {at::randn({b, l, heads, d}, cuda_f32), emb.cos(), emb.sin()}, 1, 2e-6, 1e-2, /*frozen=*/2);
  }
}

TEST_CASE("a Qwen3-shaped model with the CUDA kernels computes what it does without them", "[cuda]") {
  REQUIRE(fused_kernels_built());
  ModelConfig c = tiny_config(3, 8, 4, 64, 211);
  c.hidden_size = 256;
  c.intermediate_size = 344;  // 43 packs of 8: SwiGLU's tail path is not needed, but the shape is odd
  c.arch = Architecture::Qwen3;
  c.qk_norm = true;
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
    init_random_weights(model, 0.05, 5);
    model->to(at::kCUDA, dtype);
    at::manual_seed(2);
    const at::Tensor ids = at::randint(0, c.vocab_size, {2, 96}, at::TensorOptions().dtype(at::kLong));
    auto run = [&](bool fused, bool checkpointing) {
      model->set_fused_kernels(fused);
      model->set_gradient_checkpointing(checkpointing);
      model->zero_grad();
      for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
      at::Tensor logits = model->forward(ids);
      logits.to(at::kFloat).logsumexp(-1).mean().backward();
      std::vector<at::Tensor> grads{logits.detach().to(at::kFloat)};
      for (auto& p : model->parameters()) grads.push_back(p.grad().to(at::kFloat));
      return grads;
    };
    const auto plain = run(false, false), fused = run(true, false), fused_ckpt = run(true, true);
    REQUIRE(model->fused_kernels());
    double logits_err = peak_rel_err(fused[0], plain[0]), grad_err = 0, ckpt_err = 0;
    for (size_t i = 1; i < plain.size(); ++i) grad_err = std::max(grad_err, peak_rel_err(fused[i], plain[i]));
    for (size_t i = 0; i < plain.size(); ++i) ckpt_err = std::max(ckpt_err, peak_rel_err(fused_ckpt[i], fused[i]));
    std::cout << "cuda kernels: whole model " << c10::toString(dtype) << ": logits " << logits_err
              << ", worst parameter gradient " << grad_err << ", checkpointed vs not " << ckpt_err << "\n";
    const bool bf16 = dtype == at::kBFloat16;
    CHECK(logits_err <= (bf16 ? 2e-2 : 1e-5));
    CHECK(grad_err <= (bf16 ? 5e-2 : 1e-4));
    CHECK(ckpt_err <= (bf16 ? 1e-2 : 1e-5));  // the recompute runs the same kernels

    // Gated: every head mixes FA with SWA(16) by its own weight; the weights' gradients too.
    std::vector<at::Tensor> gates;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      at::Tensor z = at::rand({c.num_heads}, at::TensorOptions().dtype(at::kFloat)) * 0.8 + 0.1;
      gates.push_back(z.to(at::kCUDA).requires_grad_(true));
      model->attention(l).set_gate_weights(gates.back(), z);
      model->attention(l).swa_span = AttentionSpan::sliding(16);
    }
    auto run_gated = [&](bool fused) {
      model->set_fused_kernels(fused);
      model->set_gradient_checkpointing(false);
      for (auto& z : gates) z.mutable_grad() = at::Tensor();
      at::Tensor logits = model->forward(ids);
      logits.to(at::kFloat).logsumexp(-1).mean().backward();
      std::vector<at::Tensor> out{logits.detach().to(at::kFloat)};
      for (auto& z : gates) out.push_back(z.grad().clone());
      return out;
    };
    const auto gated_plain = run_gated(false), gated_fused = run_gated(true);
    double gate_grad_err = 0;
    for (size_t i = 1; i < gated_plain.size(); ++i) gate_grad_err = std::max(gate_grad_err, peak_rel_err(gated_fused[i], gated_plain[i]));
    const double gated_logits_err = peak_rel_err(gated_fused[0], gated_plain[0]);
    std::cout << "cuda kernels: gated model " << c10::toString(dtype) << ": logits " << gated_logits_err
              << ", worst gate gradient " << gate_grad_err << "\n";
    CHECK(gated_logits_err <= (bf16 ? 2e-2 : 1e-5));
    CHECK(gate_grad_err <= (bf16 ? 5e-2 : 1e-4));
  }
}

TEST_CASE("CUDA gated-mix kernel matches lerp, exact at saturated gates, gate gradients in fp32", "[cuda]") {
  REQUIRE(fused_kernels_built());
  at::manual_seed(4);
  const int64_t b = 2, l = 300, h = 16, d = 128;
  at::Tensor full = at::randn({b, l, h, d}, cuda_f32).to(at::kBFloat16).to(at::kFloat);
  at::Tensor swa = at::randn({b, l, h, d}, cuda_f32).to(at::kBFloat16).to(at::kFloat);
  at::Tensor z = at::rand({h}, cuda_f32);
  z[0] = 0.0f, z[1] = 1.0f;
  const at::Tensor w = at::randn({b, l, h, d}, cuda_f32.dtype(at::kDouble));
  auto run = [&](at::ScalarType dtype, bool fused) {
    // detach: .to() of a tensor already in dtype returns the tensor itself, which must stay a leaf
    at::Tensor f = full.to(dtype).detach().requires_grad_(true), s = swa.to(dtype).detach().requires_grad_(true);
    at::Tensor zz = z.to(dtype == at::kDouble ? at::kDouble : at::kFloat).detach().requires_grad_(true);
    at::Tensor out = kernels::gated_mix(f, s, zz, fused);
    (out.to(at::kDouble) * w).sum().backward();
    return std::vector<at::Tensor>{out.detach(), f.grad(), s.grad(), zz.grad()};
  };
  const auto want = run(at::kDouble, false);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const auto got = run(dtype, true);
    const bool bf16 = dtype == at::kBFloat16;
    const char* names[] = {"output", "full gradient", "swa gradient", "gate gradient"};
    for (size_t i = 0; i < want.size(); ++i) {
      const double e = peak_rel_err(got[i], want[i]);
      std::cout << "cuda kernels: gated_mix " << c10::toString(dtype) << " " << names[i] << " vs fp64 " << e << "\n";
      INFO(names[i]);
      CHECK(e <= (bf16 ? 1e-2 : 1e-6));
    }
    CHECK(got[3].scalar_type() == at::kFloat);
    // Saturated gates give one branch exactly, as lerp does.
    CHECK(at::equal(got[0].select(2, 0), swa.to(dtype).select(2, 0)));
    CHECK(at::equal(got[0].select(2, 1), full.to(dtype).select(2, 1)));
  }
}

TEST_CASE("CUDA cross-entropy kernels match the math path and fp64, and chunked linear CE with them", "[cuda]") {
  REQUIRE(fused_kernels_built());
  at::manual_seed(21);
  const auto cuda_long = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
  // Qwen's vocabulary (151,936: no block size divides its packs evenly) and a small one.
  for (auto [rows, vocab] : std::vector<std::pair<int64_t, int64_t>>{{300, 151936}, {1000, 4096}}) {
    const at::Tensor logits = at::randn({rows, vocab}, cuda_f32) * 4;
    const at::Tensor targets = at::randint(0, vocab, {rows}, cuda_long);
    const at::Tensor coef = at::rand({rows}, cuda_f32) - 0.3;
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      const at::Tensor x = logits.to(dtype);
      const at::Tensor x64 = x.to(at::kDouble);
      const at::Tensor lse_ref = at::logsumexp(x64, -1);
      const at::Tensor grad_ref =
          (at::softmax(x64, -1) - at::one_hot(targets, vocab).to(at::kDouble)) * coef.to(at::kDouble).unsqueeze(1);
      const auto [lse, target_logit] = kernels::cross_entropy_rows(x, targets, true);
      const auto [math_lse, math_target_logit] = kernels::cross_entropy_rows(x, targets, false);
      const at::Tensor grad = kernels::cross_entropy_logits_grad(x.clone(), targets, lse, coef, true);
      const at::Tensor math_grad = kernels::cross_entropy_logits_grad(x.clone(), targets, math_lse, coef, false);
      const double lse_err = peak_rel_err(lse, lse_ref), grad_err = peak_rel_err(grad, grad_ref),
                   math_grad_err = peak_rel_err(math_grad, grad_ref);
      std::cout << "cuda cross_entropy " << rows << "x" << vocab << " " << c10::toString(dtype) << ": lse " << lse_err
                << " (math " << peak_rel_err(math_lse, lse_ref) << "), grad " << grad_err << " (math " << math_grad_err
                << ")\n";
      CHECK(lse_err < 1e-6);
      CHECK(max_abs_diff(target_logit, math_target_logit) == 0);  // the same element, read as fp32
      CHECK(grad.scalar_type() == dtype);
      if (dtype == at::kFloat) {
        CHECK(grad_err < 1e-5);
      } else {
        CHECK(grad_err <= std::max(1.05 * math_grad_err, 1e-3));
      }
    }
  }
  // Chunked linear cross-entropy on a bf16 Qwen3-0.6B head: the kernels against the math path.
  const int64_t b = 2, l = 600, hidden = 1024, vocab = 151936;
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const at::Tensor h0 = (at::randn({b, l, hidden}, cuda_f32)).to(at::kBFloat16);
  const at::Tensor w0 = (at::randn({vocab, hidden}, cuda_f32) * 0.02).to(at::kBFloat16);
  const at::Tensor tokens = at::randint(0, vocab, {b, l}, cuda_long);
  const at::Tensor mask = (at::rand({b, l - 1}, cuda_f32) > 0.2).to(at::kFloat);
  auto run = [&](bool fused) {
    at::Tensor h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    at::Tensor loss = linear_cross_entropy(h, w, tokens, mask, int64_t{1} << 28, fused);
    loss.backward();
    return std::make_tuple(loss.item<double>(), h.grad(), w.grad());
  };
  const auto [loss_k, dh_k, dw_k] = run(true);
  const auto [loss_m, dh_m, dw_m] = run(false);
  std::cout << "cuda linear_cross_entropy bf16 " << b << "x" << l << "x" << vocab << ": loss " << loss_k << " vs "
            << loss_m << ", dh " << peak_rel_err(dh_k, dh_m) << ", dw " << peak_rel_err(dw_k, dw_m) << "\n";
  CHECK(loss_k == Approx(loss_m).epsilon(1e-6));
  CHECK(peak_rel_err(dh_k, dh_m) < 1e-2);
  CHECK(peak_rel_err(dw_k, dw_m) < 1e-2);
  (void)bf16;
}
