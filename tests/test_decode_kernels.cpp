// The decode step's operations (consa/kernels/fused_ops.h): decode attention, the QKV kernel and
// the projections over few rows. On the CPU ([model]): each math path against its formula in
// fp64. On a GPU ([cuda]): each kernel against softmax attention key by key or the math path in
// fp64, on bf16-rounded inputs, in fp32 and bf16, and no worse than the math path in bf16.
#include <ATen/ATen.h>

#include <cmath>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "catch_compat.h"
#include "consa/kernels/fused_ops.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

auto f64 = at::TensorOptions().dtype(at::kDouble);
auto cuda_f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);

}  // namespace

namespace {

// softmax(q.k * scale + bias) v for every query head, key by key in fp64. q [B, n G, 1, D],
// k/v [B, n, T, D], bias [T] or [n, G, T].
at::Tensor decode_attention_brute_force(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& bias, double scale) {
  const at::Tensor qd = q.to(at::kDouble).cpu(), kd = k.to(at::kDouble).cpu(), vd = v.to(at::kDouble).cpu();
  const int64_t batch = k.size(0), n = k.size(1), keys = k.size(2), dim = k.size(3), group = q.size(1) / n;
  const at::Tensor bd = bias.to(at::kDouble).cpu().reshape({-1, keys});  // one row, or n G rows
  at::Tensor out = at::zeros(q.sizes(), f64);
  auto qa = qd.accessor<double, 4>(), ka = kd.accessor<double, 4>(), va = vd.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  auto ba = bd.accessor<double, 2>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < n; ++h)
      for (int64_t g = 0; g < group; ++g) {
        std::vector<double> s(keys);
        double top = -INFINITY;
        for (int64_t t = 0; t < keys; ++t) {
          double dot = 0;
          for (int64_t d = 0; d < dim; ++d) dot += qa[b][h * group + g][0][d] * ka[b][h][t][d];
          s[t] = dot * scale + ba[bd.size(0) == 1 ? 0 : h * group + g][t];
          top = std::max(top, s[t]);
        }
        double total = 0;
        for (double& e : s) total += (e = std::exp(e - top));
        for (int64_t t = 0; t < keys; ++t)
          for (int64_t d = 0; d < dim; ++d) oa[b][h * group + g][0][d] += s[t] / total * va[b][h][t][d];
      }
  return out;
}

// A bias of 0 where a key is visible and -inf elsewhere, each row seeing at least its first key.
at::Tensor random_visibility_bias(at::IntArrayRef shape, double visible, const at::TensorOptions& options) {
  at::Tensor seen = at::rand(shape, options.dtype(at::kFloat)) < visible;
  seen.select(-1, 0).fill_(true);
  return at::zeros(shape, options.dtype(at::kFloat)).masked_fill(seen.logical_not(), -INFINITY);
}

}  // namespace

TEST_CASE("decode attention's math path equals softmax attention key by key in fp64", "[model]") {
  at::manual_seed(5);
  const int64_t b = 2, n = 2, g = 3, t = 11, d = 8;
  const double scale = 1 / std::sqrt(8.0);
  at::Tensor q = at::randn({b, n * g, 1, d}, f64), k = at::randn({b, n, t, d}, f64), v = at::randn({b, n, t, d}, f64);
  for (at::Tensor bias : {random_visibility_bias({t}, 0.6, f64), random_visibility_bias({n, g, t}, 0.5, f64)}) {
    const at::Tensor got = kernels::decode_attention(q, k, v, bias.to(at::kDouble), scale, /*fused=*/true);
    CHECK(max_abs_diff(got, decode_attention_brute_force(q, k, v, bias, scale)) < 1e-12);
  }
  CHECK_FALSE(kernels::decode_attention_kernel_takes(q, k, v, at::zeros({t})));  // no kernel on the CPU
}

TEST_CASE("decode projections' math path equals x' W^T + bias + residual element by element in fp64", "[model]") {
  at::manual_seed(6);
  const int64_t rows = 3, in = 5, out = 4;
  const double eps = 1e-6;
  const at::Tensor x = at::randn({rows, 1, 2 * in}, f64), w = at::randn({out, in}, f64), b = at::randn({out}, f64);
  const at::Tensor r = at::randn({rows, 1, out}, f64), g = at::randn({in}, f64);
  const at::Tensor plain = x.narrow(-1, 0, in).contiguous();
  const at::Tensor got_plain = kernels::linear(plain, w, b, r, /*fused=*/true);  // no kernel on the CPU
  const at::Tensor got_norm = kernels::rms_norm_linear(plain, g, eps, w, b, true);
  const at::Tensor got_swiglu = kernels::swiglu_linear(x, w, r, true);
  double err = 0, norm_err = 0;
  for (int64_t m = 0; m < rows; ++m) {
    double squares = 0;
    for (int64_t k = 0; k < in; ++k) squares += std::pow(x[m][0][k].item<double>(), 2);
    const double rstd = 1 / std::sqrt(squares / in + eps);
    for (int64_t n = 0; n < out; ++n) {
      double dot = 0, normed = 0, gated = 0;
      for (int64_t k = 0; k < in; ++k) {
        const double xk = x[m][0][k].item<double>(), up = x[m][0][in + k].item<double>(), wk = w[n][k].item<double>();
        dot += xk * wk;
        normed += g[k].item<double>() * xk * rstd * wk;
        gated += xk / (1 + std::exp(-xk)) * up * wk;  // silu(gate) * up, gate first
      }
      const double bias = b[n].item<double>(), residual = r[m][0][n].item<double>();
      err = std::max({err, std::abs(got_plain[m][0][n].item<double>() - (dot + bias + residual)),
                      std::abs(got_swiglu[m][0][n].item<double>() - (gated + residual))});
      norm_err = std::max(norm_err, std::abs(got_norm[m][0][n].item<double>() - (normed + bias)));
    }
  }
  CHECK(err < 1e-12);
  CHECK(norm_err < 1e-6);  // RMSNorm normalises in fp32 whatever the input's dtype
  CHECK_FALSE(kernels::linear_kernel_takes(plain, w, b, r));
  CHECK(kernels::linear(plain, w, at::Tensor(), at::Tensor(), true).sizes() == at::IntArrayRef({rows, 1, out}));
}

TEST_CASE("CUDA decode-attention kernel matches softmax attention over full caches and rings", "[cuda]") {
  REQUIRE(fused_kernels_built());
  at::manual_seed(13);
  struct Shape {
    int64_t batch, kv_heads, group, keys, dim;
    const char* bias;  // shared: one row; heads: a row per query head; prefix: only the first 700 keys seen
  };
  // A 32K cache at batch 1 (many splits), GQA groups up to 8, head_dim 64/128/256, one key,
  // per-head rows (per-head assignments), and a cache mostly past the position (whole splits
  // masked, whose keys the kernel must skip).
  const std::vector<Shape> shapes = {{1, 8, 2, 32773, 128, "shared"}, {2, 4, 4, 1000, 128, "heads"},
                                     {3, 2, 8, 77, 64, "heads"},      {1, 3, 1, 4097, 256, "shared"},
                                     {2, 2, 3, 1, 128, "shared"},     {8, 2, 2, 1024, 128, "heads"},
                                     {1, 8, 2, 32773, 128, "prefix"}, {4, 1, 7, 5000, 64, "shared"}};
  for (const Shape& s : shapes) {
    const double scale = 1 / std::sqrt(static_cast<double>(s.dim));
    at::Tensor q = at::randn({s.batch, s.kv_heads * s.group, 1, s.dim}, cuda_f32);
    at::Tensor k = at::randn({s.batch, s.kv_heads, s.keys, s.dim}, cuda_f32) * 2;  // sharp softmaxes too
    at::Tensor v = at::randn({s.batch, s.kv_heads, s.keys, s.dim}, cuda_f32);
    at::Tensor bias;
    if (std::string(s.bias) == "heads") bias = random_visibility_bias({s.kv_heads, s.group, s.keys}, 0.7, cuda_f32);
    else bias = random_visibility_bias({s.keys}, 0.9, cuda_f32);
    if (std::string(s.bias) == "prefix") bias.slice(0, 700).fill_(-INFINITY);
    std::vector<at::Tensor> rounded;  // inputs as bf16 holds them, so every dtype sees the same values
    for (const at::Tensor& x : {q, k, v}) rounded.push_back(x.to(at::kBFloat16).to(at::kFloat));
    const at::Tensor want = decode_attention_brute_force(rounded[0].to(at::kDouble), rounded[1], rounded[2], bias, scale);
    auto run = [&](at::ScalarType type, bool fused) {
      const at::Tensor qt = rounded[0].to(type), kt = rounded[1].to(type), vt = rounded[2].to(type);
      // A key of head_dim 256 in fp32 is 64 packs, more than a warp: the math path takes it.
      const bool takes = !(type == at::kFloat && s.dim == 256);
      if (fused) REQUIRE(kernels::decode_attention_kernel_takes(qt, kt, vt, bias) == takes);
      return kernels::decode_attention(qt, kt, vt, bias, scale, fused);
    };
    const double e32 = peak_rel_err(run(at::kFloat, true).cpu(), want), m32 = peak_rel_err(run(at::kFloat, false).cpu(), want);
    const double e16 = peak_rel_err(run(at::kBFloat16, true).cpu(), want), m16 = peak_rel_err(run(at::kBFloat16, false).cpu(), want);
    std::ostringstream what;
    what << "decode_attention B" << s.batch << " n" << s.kv_heads << " G" << s.group << " T" << s.keys << " D" << s.dim
         << " " << s.bias << ": fp32 " << e32 << " (math " << m32 << "), bf16 " << e16 << " (math " << m16 << ")";
    std::cout << "cuda kernels: " << what.str() << "\n";
    INFO(what.str());
    CHECK(e32 <= 1e-5);
    CHECK(e16 <= 1e-2);
    CHECK(e16 <= 1.5 * m16 + 1e-3);  // fp32 scores: never worse than the math path's bf16 roundings
  }
}

TEST_CASE("CUDA decode attention over a layer's full caches and rings in one launch matches both apart", "[cuda]") {
  REQUIRE(fused_kernels_built());
  at::manual_seed(19);
  // Full caches of 32K (2 KV heads), rings of 6 KV heads, per-head rows on the full side. Each
  // source is split on its own: a ring of 1024 into fewer splits than the full caches, one of 100
  // into one (its rows written directly, the full caches' merged).
  const int64_t batch = 2, full = 2, ring_heads = 6, group = 2, keys = 32773, dim = 128;
  const double scale = 1 / std::sqrt(static_cast<double>(dim));
  for (const int64_t ring : {1024, 100}) {
    std::vector<at::Tensor> inputs = {at::randn({batch, (full + ring_heads) * group, 1, dim}, cuda_f32),
                                      at::randn({batch, full, keys, dim}, cuda_f32) * 2,
                                      at::randn({batch, full, keys, dim}, cuda_f32),
                                      at::randn({batch, ring_heads, ring, dim}, cuda_f32) * 2,
                                      at::randn({batch, ring_heads, ring, dim}, cuda_f32)};
    for (at::Tensor& x : inputs) x = x.to(at::kBFloat16).to(at::kFloat);
    const at::Tensor bias = random_visibility_bias({full, group, keys}, 0.8, cuda_f32);
    const at::Tensor ring_bias = random_visibility_bias({ring}, 0.9, cuda_f32);
    const int64_t split = full * group;
    const at::Tensor q64 = inputs[0].to(at::kDouble);
    const at::Tensor want =
        at::cat({decode_attention_brute_force(q64.narrow(1, 0, split), inputs[1], inputs[2], bias, scale),
                 decode_attention_brute_force(q64.narrow(1, split, ring_heads * group), inputs[3], inputs[4],
                                              ring_bias, scale)},
                1);
    for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
      std::vector<at::Tensor> t;
      for (const at::Tensor& x : inputs) t.push_back(x.to(type));
      REQUIRE(kernels::decode_attention_kernel_takes(t[0], t[1], t[2], bias, t[3], t[4], ring_bias));
      const double fused = peak_rel_err(
          kernels::hybrid_decode_attention(t[0], t[1], t[2], bias, t[3], t[4], ring_bias, scale, true).cpu(), want);
      const double math = peak_rel_err(
          kernels::hybrid_decode_attention(t[0], t[1], t[2], bias, t[3], t[4], ring_bias, scale, false).cpu(), want);
      std::cout << "cuda kernels: hybrid decode_attention ring " << ring << " " << c10::toString(type) << ": "
                << fused << " (math " << math << ")\n";
      CHECK(fused <= (type == at::kFloat ? 1e-5 : 1e-2));
      CHECK(fused <= 1.5 * math + 1e-5);
    }
  }
}

TEST_CASE("CUDA decode-step QKV kernel: norms, RoPE and cache writes match the math path", "[cuda]") {
  REQUIRE(fused_kernels_built());
  at::manual_seed(17);
  // heads, KV heads, of which full, head_dim, q/k norms
  for (auto [heads, kv, full, dim, norms] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>{
           {16, 8, 2, 128, true}, {16, 8, 8, 128, false}, {8, 4, 0, 64, true}, {4, 2, 1, 256, true}}) {
    const int64_t batch = 3, capacity = 40, ring = 9, position = 37, slot = 5;
    const double eps = 1e-6;
    at::Tensor qkv = at::randn({batch, 1, (heads + 2 * kv) * dim}, cuda_f32) * 2;
    at::Tensor q_norm = norms ? at::randn({dim}, cuda_f32) : at::Tensor();
    at::Tensor k_norm = norms ? at::randn({dim}, cuda_f32) : at::Tensor();
    at::Tensor angles = at::full({1, dim / 2}, static_cast<double>(position), cuda_f32) *
                        at::pow(10000.0, -at::arange(0, dim / 2, cuda_f32) * 2.0 / dim).unsqueeze(0);
    at::Tensor emb = at::cat({angles, angles}, -1);
    const auto ids = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
    const at::Tensor pos = at::full({1}, position, ids), slots = at::full({1}, slot, ids);
    std::map<std::string, double> errors;
    std::vector<at::Tensor> want;  // q and the four caches in fp64 (the math path on fp64 inputs)
    for (at::ScalarType type : {at::kDouble, at::kFloat, at::kBFloat16})
      for (bool fused : {false, true}) {
        if (type == at::kDouble && fused) continue;
        auto cast = [&](const at::Tensor& t) { return t.defined() ? t.to(at::kBFloat16).to(type) : t; };
        std::vector<at::Tensor> caches;
        for (int64_t slots_of : {capacity, capacity, ring, ring})
          caches.push_back(at::zeros({batch, slots_of == capacity ? full : kv - full, slots_of, dim}, cuda_f32.dtype(type)));
        const at::Tensor q = kernels::decode_qkv(cast(qkv), cast(q_norm), cast(k_norm), eps, cast(emb.cos()),
                                                 cast(emb.sin()), pos, slots, caches[0], caches[1], caches[2], caches[3],
                                                 fused);
        if (fused && type == at::kFloat)
          REQUIRE(kernels::decode_qkv_kernel_takes(cast(qkv), cast(q_norm), cast(k_norm), cast(emb.cos()),
                                                   cast(emb.sin()), pos, slots, caches[0], caches[1], caches[2],
                                                   caches[3]));
        std::vector<at::Tensor> got = {q, caches[0], caches[1], caches[2], caches[3]};
        if (type == at::kDouble) {
          want = got;
          continue;
        }
        double worst = 0;
        for (size_t i = 0; i < got.size(); ++i)
          if (want[i].numel() > 0) worst = std::max(worst, peak_rel_err(got[i].cpu(), want[i].cpu()));
        errors[std::string(type == at::kFloat ? "fp32" : "bf16") + (fused ? " kernel" : " math")] = worst;
      }
    std::cout << "cuda kernels: decode_qkv H" << heads << " kv" << kv << " full" << full << " D" << dim << " norms " << norms
              << ": fp32 kernel " << errors["fp32 kernel"] << " (math " << errors["fp32 math"] << "), bf16 kernel "
              << errors["bf16 kernel"] << " (math " << errors["bf16 math"] << ")\n";
    CHECK(errors["fp32 kernel"] <= 1e-5);
    CHECK(errors["bf16 kernel"] <= 1e-2);
    CHECK(errors["bf16 kernel"] <= 1.5 * errors["bf16 math"] + 1e-3);
  }
}

TEST_CASE("CUDA decode projections: plain, RMSNorm and SwiGLU inputs, bias and residual, match fp64", "[cuda]") {
  REQUIRE(fused_kernels_built());
  at::manual_seed(23);
  const double eps = 1e-6;
  // rows, in, out: a decode step's shapes at batch 1 to 4 (Qwen3-0.6B's o_proj, down, QKV, head),
  // a ragged row count, fewer input features than a warp's packs, and output features that do not
  // fill a warp's four.
  for (auto [rows, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 2048, 1024}, {4, 3072, 1024}, {3, 1024, 4096}, {1, 1024, 151936}, {3, 64, 20001}, {2, 1024, 600}}) {
    for (const char* input : {"plain", "rms_norm", "swiglu"}) {
      const std::string mode = input;
      const bool swiglu = mode == "swiglu", norm = mode == "rms_norm";
      std::vector<at::Tensor> inputs = {at::randn({rows, 1, swiglu ? 2 * in : in}, cuda_f32) * 2,
                                        at::randn({out, in}, cuda_f32) / std::sqrt(static_cast<double>(in)),
                                        swiglu ? at::Tensor() : at::randn({out}, cuda_f32),
                                        norm ? at::Tensor() : at::randn({rows, 1, out}, cuda_f32),
                                        norm ? at::randn({in}, cuda_f32) : at::Tensor()};
      for (at::Tensor& t : inputs)
        if (t.defined()) t = t.to(at::kBFloat16).to(at::kFloat);  // every dtype sees the same values
      auto run = [&](at::ScalarType type, bool fused) {
        std::vector<at::Tensor> t;
        for (const at::Tensor& i : inputs) t.push_back(i.defined() ? i.to(type) : i);
        if (fused && type != at::kDouble)
          REQUIRE((swiglu ? kernels::swiglu_linear_kernel_takes(t[0], t[1], t[3])
                          : kernels::linear_kernel_takes(t[0], t[1], t[2], t[3], t[4])));
        if (swiglu) return kernels::swiglu_linear(t[0], t[1], t[3], fused);
        if (norm) return kernels::rms_norm_linear(t[0], t[4], eps, t[1], t[2], fused);
        return kernels::linear(t[0], t[1], t[2], t[3], fused);
      };
      const at::Tensor want = run(at::kDouble, false);
      const double e32 = peak_rel_err(run(at::kFloat, true), want), m32 = peak_rel_err(run(at::kFloat, false), want);
      const double e16 = peak_rel_err(run(at::kBFloat16, true), want);
      const double m16 = peak_rel_err(run(at::kBFloat16, false), want);
      std::ostringstream what;
      what << "decode linear " << mode << " rows " << rows << " in " << in << " out " << out << ": fp32 " << e32
           << " (math " << m32 << "), bf16 " << e16 << " (math " << m16 << ")";
      std::cout << "cuda kernels: " << what.str() << "\n";
      INFO(what.str());
      CHECK(e32 <= 1e-5);
      CHECK(e16 <= 1e-2);
      CHECK(e16 <= 1.5 * m16 + 1e-3);
    }
  }
  // Five rows are past the kernel: the math path takes them.
  const at::Tensor x = at::randn({5, 1, 64}, cuda_f32), w = at::randn({32, 64}, cuda_f32);
  CHECK_FALSE(kernels::linear_kernel_takes(x, w, at::Tensor(), at::Tensor()));
  CHECK(max_abs_diff(kernels::linear(x, w, at::Tensor(), x.narrow(-1, 0, 32).contiguous(), true),
                     x.narrow(-1, 0, 32) + at::linear(x, w)) == 0);
}
