// CUDA-only checks, registered with ctest only for CUDA LibTorch builds (tests/CMakeLists.txt):
// the flash backend against the math backend (forward and backward, full and sliding window),
// and the parity fixtures on the GPU in fp32 and bf16. Figures are printed for docs/parity.md.
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <iostream>
#include <map>
#include <tuple>

#include "catch_compat.h"
#include "consa/attention/attention.h"
#include "consa/export/assignment.h"
#include "consa/export/torchscript_export.h"
#include "consa/gate/attention_gates.h"
#include "consa/load/pretrained.h"
#include "consa/load/safetensors.h"
#include "consa/core/torch_compat.h"
#include "consa/train/trainer.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

struct Result {
  at::Tensor out, dq, dk, dv;
};

// Output and gradients of sum(attend(q, k, v) * weights), computed in `dtype`.
Result run(const AttentionBackend& backend, const at::Tensor& q, const at::Tensor& k,
           const at::Tensor& v, const at::Tensor& weights, const AttentionSpan& span,
           at::ScalarType dtype, const PackedDocuments& documents = {}) {
  at::Tensor qq = q.to(dtype).detach().requires_grad_(true);
  at::Tensor kk = k.to(dtype).detach().requires_grad_(true);
  at::Tensor vv = v.to(dtype).detach().requires_grad_(true);
  at::Tensor out = backend.attend(qq, kk, vv, span, 1.0 / 8.0, documents);
  (out.to(at::kFloat) * weights).sum().backward();
  return {out.detach(), qq.grad(), kk.grad(), vv.grad()};
}

// Max error relative to the reference's largest magnitude (at least 1, so all-zero references,
// such as dq for a window of 1, compare in absolute terms).
double rel_err(const at::Tensor& got, const at::Tensor& want) {
  return max_abs_diff(got, want) / std::max(1.0, want.abs().max().item<double>());
}

// Random q, k, v [B, L, H, D] on CUDA in fp32, rounded to bf16 first so every path sees the same
// values, and output weights w for the loss sum(out * w).
struct RandomAttentionInputs {
  at::Tensor q, k, v, w;
};
RandomAttentionInputs random_attention_inputs(int64_t b, int64_t l, int64_t hq, int64_t hkv, int64_t d,
                                              uint64_t seed) {
  at::manual_seed(seed);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  return {at::randn({b, l, hq, d}, f32).to(at::kBFloat16).to(at::kFloat) * 2,
          at::randn({b, l, hkv, d}, f32).to(at::kBFloat16).to(at::kFloat) * 2,
          at::randn({b, l, hkv, d}, f32).to(at::kBFloat16).to(at::kFloat), at::randn({b, l, hq, d}, f32)};
}

}  // namespace

TEST_CASE("flash attention matches math attention on CUDA, forward and backward", "[cuda]") {
  REQUIRE(at::hasCUDA());
  auto flash = make_attention_backend(AttentionImpl::Flash);
  auto math = make_attention_backend(AttentionImpl::Math);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  // A small head and the Qwen3 shape of the training benchmark (head_dim 128, 16/8 heads), where
  // SDPA's dispatcher may choose another kernel (cuDNN) for full spans.
  using Shape = std::array<int64_t, 5>;  // batch, length, query heads, KV heads, head_dim
  for (const auto& [b, l, hq, hkv, d] : {Shape{2, 1024, 8, 2, 64}, Shape{1, 2048, 16, 8, 128}}) {
    at::manual_seed(0);
    // Inputs rounded to bf16 first, so every path sees the same values.
    at::Tensor q = at::randn({b, l, hq, d}, f32).to(at::kBFloat16).to(at::kFloat) * 2;
    at::Tensor k = at::randn({b, l, hkv, d}, f32).to(at::kBFloat16).to(at::kFloat) * 2;
    at::Tensor v = at::randn({b, l, hkv, d}, f32).to(at::kBFloat16).to(at::kFloat);
    at::Tensor w = at::randn({b, l, hq, d}, f32);

    at::Tensor full_out;
    for (AttentionSpan span : {AttentionSpan::full(), AttentionSpan::sliding(128), AttentionSpan::sliding(1)}) {
      Result ref = run(*math, q, k, v, w, span, at::kFloat);
      Result fl = run(*flash, q, k, v, w, span, at::kBFloat16);
      Result mb = run(*math, q, k, v, w, span, at::kBFloat16);
      const double e_out = rel_err(fl.out, ref.out), e_dq = rel_err(fl.dq, ref.dq);
      const double e_dk = rel_err(fl.dk, ref.dk), e_dv = rel_err(fl.dv, ref.dv);
      std::cout << "cuda flash-bf16 vs math-fp32 (D=" << d << ", L=" << l << ") " << span.describe()
                << ": rel err out " << e_out << " dq " << e_dq << " dk " << e_dk << " dv " << e_dv
                << " | math-bf16 vs math-fp32: out " << rel_err(mb.out, ref.out) << " dq "
                << rel_err(mb.dq, ref.dq) << "\n";
      INFO(span.describe());
      // bf16 carries 8 bits of mantissa (relative step 2^-8 = 0.0039).
      CHECK(e_out < 1e-2);
      CHECK(e_dq < 2e-2);
      CHECK(e_dk < 2e-2);
      CHECK(e_dv < 2e-2);
      if (span.is_full()) full_out = ref.out;
      else CHECK(rel_err(ref.out, full_out) > 0.1);  // the window changes the result
    }
  }
}

TEST_CASE("packed documents: flash's varlen kernels match math attention's mask, forward and backward", "[cuda]") {
  REQUIRE(at::hasCUDA());
  auto flash = make_attention_backend(AttentionImpl::Flash);
  auto math = make_attention_backend(AttentionImpl::Math);
  const int64_t b = 2, l = 1024;
  const auto [q, k, v, w] = random_attention_inputs(b, l, 8, 2, 64, 5);
  // Row 0: documents of 300, 1, 500 and 223 tokens; row 1: one document.
  std::vector<int64_t> ids;
  for (const auto& [n, id] : std::vector<std::pair<int64_t, int64_t>>{{300, 0}, {1, 1}, {500, 2}, {223, 3}, {l, 0}})
    ids.insert(ids.end(), n, id);
  const PackedDocuments docs = PackedDocuments::from_ids(at::tensor(ids, at::kLong).view({b, l}), at::kCUDA);
  for (AttentionSpan span : {AttentionSpan::full(), AttentionSpan::sliding(128), AttentionSpan::sliding(128, 4)}) {
    Result ref = run(*math, q, k, v, w, span, at::kFloat, docs);
    Result fl = run(*flash, q, k, v, w, span, at::kBFloat16, docs);
    Result unmasked = run(*math, q, k, v, w, span, at::kFloat);
    std::cout << "cuda flash-bf16 packed documents vs math-fp32 " << span.describe() << ": rel err out "
              << rel_err(fl.out, ref.out) << " dq " << rel_err(fl.dq, ref.dq) << " dk " << rel_err(fl.dk, ref.dk)
              << " dv " << rel_err(fl.dv, ref.dv) << "\n";
    INFO(span.describe());
    // Sinks train through blocked math attention in bf16 (see the sinks test below): its tolerance.
    const double tol = span.sinks > 0 ? 5e-2 : 2e-2;
    CHECK(rel_err(fl.out, ref.out) < tol);
    CHECK(rel_err(fl.dq, ref.dq) < tol);
    CHECK(rel_err(fl.dk, ref.dk) < tol);
    CHECK(rel_err(fl.dv, ref.dv) < tol);
    CHECK(rel_err(unmasked.out, ref.out) > 0.05);  // the documents really are kept apart
  }
}

TEST_CASE("flash attention with sinks matches math attention (inference)", "[cuda]") {
  REQUIRE(at::hasCUDA());
  at::NoGradGuard no_grad;
  at::manual_seed(1);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  at::Tensor q = at::randn({1, 300, 4, 64}, f32).to(at::kBFloat16);
  at::Tensor k = at::randn({1, 300, 2, 64}, f32).to(at::kBFloat16);
  at::Tensor v = at::randn({1, 300, 2, 64}, f32).to(at::kBFloat16);
  const AttentionSpan span = AttentionSpan::sliding(32, 4);
  at::Tensor ref = make_attention_backend(AttentionImpl::Math)
                       ->attend(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), span, 0.125);
  at::Tensor got = make_attention_backend(AttentionImpl::Flash)->attend(q, k, v, span, 0.125);
  at::Tensor no_sinks = make_attention_backend(AttentionImpl::Flash)->attend(q, k, v, AttentionSpan::sliding(32), 0.125);
  std::cout << "cuda flash-bf16 sinks " << span.describe() << ": rel err out " << rel_err(got, ref) << "\n";
  CHECK(rel_err(got, ref) < 1e-2);
  CHECK(rel_err(no_sinks, ref) > 0.05);  // the sinks are really attended to
}

TEST_CASE("flash backend trains with sinks: blocked window attention matches math, forward and backward", "[cuda]") {
  REQUIRE(at::hasCUDA());
  auto flash = make_attention_backend(AttentionImpl::Flash);
  auto math = make_attention_backend(AttentionImpl::Math);
  const auto [q, k, v, w] = random_attention_inputs(1, 3000, 8, 4, 64, 2);
  const AttentionSpan span = AttentionSpan::sliding(512, 4);
  Result ref = run(*math, q, k, v, w, span, at::kFloat);
  Result fl = run(*flash, q, k, v, w, span, at::kBFloat16);
  Result mb = run(*math, q, k, v, w, span, at::kBFloat16);
  std::cout << "cuda flash-bf16 (blocked, training) vs math-fp32 " << span.describe() << ": rel err out "
            << rel_err(fl.out, ref.out) << " dq " << rel_err(fl.dq, ref.dq) << " dk " << rel_err(fl.dk, ref.dk)
            << " dv " << rel_err(fl.dv, ref.dv) << " | math-bf16 vs math-fp32: out " << rel_err(mb.out, ref.out)
            << " dq " << rel_err(mb.dq, ref.dq) << "\n";
  // The blocked path is math attention in blocks: bf16 scores and probabilities, fp32 softmax.
  // So its error is that of math attention in bf16 (2-3%, above flash's fp32-accumulated 0.3%),
  // and it must be no worse.
  for (auto [got, bf16, fp32] : {std::tuple{fl.out, mb.out, ref.out}, std::tuple{fl.dq, mb.dq, ref.dq},
                                 std::tuple{fl.dk, mb.dk, ref.dk}, std::tuple{fl.dv, mb.dv, ref.dv}}) {
    CHECK(rel_err(got, fp32) < 4e-2);
    CHECK(rel_err(got, fp32) <= 1.25 * rel_err(bf16, fp32) + 1e-3);
  }
}

TEST_CASE("parity fixtures on CUDA in fp32 and bf16", "[cuda]") {
  REQUIRE(at::hasCUDA());
  for (const char* name : {"llama_gqa", "llama3_tied_mha", "mistral_swa", "qwen2_bias", "qwen3_norm"}) {
    const std::string dir = fixture(name);
    SafetensorsFile ref = SafetensorsFile::open(dir + "/reference.safetensors");
    at::Tensor ids = ref.tensor("input_ids"), want = ref.tensor("logits");
    at::NoGradGuard no_grad;
    LoadOptions opts;
    opts.device = at::kCUDA;
    opts.dtype = at::kFloat;  // auto -> math (flash has no fp32)
    const double e32 = max_abs_diff(load_pretrained(dir, opts)->forward(ids), want);
    opts.dtype = at::kBFloat16;  // auto -> flash
    at::Tensor flash_logits = load_pretrained(dir, opts)->forward(ids);
    opts.attention = AttentionImpl::Math;
    at::Tensor math_logits = load_pretrained(dir, opts)->forward(ids);
    const double e_flash = max_abs_diff(flash_logits, want);
    const double mean_flash = (flash_logits.to(at::kFloat).cpu() - want).abs().mean().item<double>();
    const double e_math = max_abs_diff(math_logits, want);
    std::cout << "parity cuda " << name << ": fp32 max " << e32 << " | bf16 flash max " << e_flash
              << " mean " << mean_flash << " | bf16 math max " << e_math
              << " | max |logit| " << want.abs().max().item<double>() << "\n";
    INFO(name);
    CHECK(e32 <= 1e-4);
    // bf16 tolerance, relative to the largest logit (~9 here): rounding weights and activations
    // to 8-bit mantissas moves logits by ~0.5% on average and up to ~5% at worst.
    const double scale = want.abs().max().item<double>();
    CHECK(e_flash <= 0.075 * scale);
    CHECK(mean_flash <= 0.01 * scale);
    CHECK(e_math <= 0.075 * scale);
  }
}

TEST_CASE("gated attention on CUDA: z = 1 is dense, z = 0 is pure SWA, gradients reach the gates", "[cuda]") {
  REQUIRE(at::hasCUDA());
  LoadOptions opts;
  opts.device = at::kCUDA;
  opts.dtype = at::kBFloat16;  // flash for both branches
  CausalLM model = load_pretrained(fixture("qwen3_norm"), opts);
  SafetensorsFile ref = SafetensorsFile::open(fixture("qwen3_norm") + "/reference.safetensors");
  at::Tensor ids = ref.tensor("input_ids");
  GateOptions gate_opts;
  gate_opts.swa = AttentionSpan::sliding(4);
  AttentionGates gates(model->config(), gate_opts);
  at::Tensor dense, pure_swa;
  {
    at::NoGradGuard no_grad;
    dense = model->forward(ids);
    for (int64_t l = 0; l < model->num_layers(); ++l) model->attention(l).group_spans.assign(2, gate_opts.swa);
    pure_swa = model->forward(ids);
    gates->apply(model, at::ones({2, 2}));
    CHECK(max_abs_diff(model->forward(ids), dense) == 0.0);
    gates->apply(model, at::zeros({2, 2}));
    CHECK(max_abs_diff(model->forward(ids), pure_swa) == 0.0);
  }
  CHECK(max_abs_diff(dense, pure_swa) > 0.5);
  gates->apply(model, gates->sample());
  model->forward(ids).to(at::kFloat).pow(2).mean().backward();
  REQUIRE(gates->log_alpha.grad().defined());
  CHECK(gates->log_alpha.grad().abs().sum().item<double>() > 0.0);
}

TEST_CASE("dense, stage-1 and stage-2 training steps on CUDA never wait for the device", "[cuda]") {
  REQUIRE(at::hasCUDA());
  LoadOptions opts;
  opts.device = at::kCUDA;
  opts.dtype = at::kBFloat16;
  for (const char* mode : {"dense", "hard", "gated", "gates"}) {
    const std::string m = mode;
    const int stage = m == "gated" || m == "gates" ? 1 : 2;
    CausalLM model = load_pretrained(fixture("qwen3_norm"), opts);
    Recipe recipe;
    recipe.model.dtype = "bfloat16";
    recipe.model.device = "cuda";
    recipe.gates.swa = AttentionSpan::sliding(4);
    recipe.data.seq_len = 64;
    recipe.data.batch_size = 2;
    recipe.data.min_distance = 20;
    recipe.train.mode = m == "dense" ? "dense" : m == "gates" ? "gates" : "full";
    recipe.train.gradient_checkpointing = true;
    recipe.train.steps = recipe.recover.steps = 10;
    if (m == "hard") {
      Assignment a = Assignment::for_model(model->config());
      a.unit = GateUnit::KvHead;
      a.swa = recipe.gates.swa;
      a.full.assign(model->num_layers(), std::vector<bool>{true, false});
      a.apply(model);
    }
    TrainStepper stepper(recipe, model, stage);
    // The first steps allocate (pinned buffers, optimizer state); stage 1's second is the first
    // to receive a late gate gradient.
    for (int i = 0; i < 2; ++i) stepper.step();
    compat::set_device_sync_errors(true);
    std::string error;
    try {
      for (int i = 0; i < 3; ++i) stepper.step();
    } catch (const std::exception& e) {
      error = e.what();
    }
    compat::set_device_sync_errors(false);
    INFO(mode << ": " << error.substr(0, 400));
    CHECK(error.empty());
  }
}

TEST_CASE("FusedAdamW's multi-tensor CUDA kernel matches torch::optim::AdamW", "[cuda]") {
  REQUIRE(at::hasCUDA());
  const double difference = adamw_max_difference(at::Device("cuda"), 5);
  std::cout << "cuda fused adamw vs torch::optim::AdamW, 5 steps: max |difference| " << difference << "\n";
  CHECK(difference < 1e-5);
}

TEST_CASE("TorchScript exports run on CUDA: fixtures match transformers, decode matches recompute", "[cuda]") {
  for (const char* name : {"qwen2_bias", "mistral_swa"}) {
    const std::string dir = fixture(name);
    LoadOptions opts;
    opts.dtype = at::kFloat;
    opts.device = at::kCUDA;
    CausalLM model = load_pretrained(dir, opts);
    ScriptedLM scripted(build_scripted_model(model, declared_assignment(model, dir)), declared_assignment(model, dir));
    SafetensorsFile ref = SafetensorsFile::open(dir + "/reference.safetensors");
    const at::Tensor ids = ref.tensor("input_ids").to(at::kCUDA);
    at::NoGradGuard no_grad;
    const at::Tensor full = scripted.forward(ids).cpu();
    ScriptedLM::Cache cache = scripted.new_cache(ids.size(0), ids.size(1));
    std::vector<at::Tensor> steps;
    for (int64_t t = 0; t < ids.size(1); ++t) steps.push_back(scripted.extend(ids.narrow(1, t, 1), cache, false).cpu());
    const double vs_hf = max_abs_diff(full, ref.tensor("logits")), decode = max_abs_diff(at::cat(steps, 1), full);
    std::cout << "cuda torchscript fp32 " << name << ": max |logit - HF| = " << vs_hf
              << ", max |decode - forward| = " << decode << "\n";
    INFO(name);
    CHECK(vs_hf <= 1e-4);
    CHECK(decode <= 1e-4);
  }
}

TEST_CASE("decoding through a CUDA graph of decode_step equals recompute", "[cuda]") {
  ModelConfig c = qwen_like_config();
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.2, 22);
  model->to(at::kCUDA);
  const int64_t length = 45;
  at::Tensor ids = at::randint(0, c.vocab_size, {2, length}, at::TensorOptions().dtype(at::kLong)).to(at::kCUDA);
  for (int64_t sinks : {0, 3}) {
    Assignment a = random_assignment(model, GateUnit::KvHead, AttentionSpan::sliding(6, sinks), 9);
    ScriptedLM scripted(build_scripted_model(model, a), a);
    at::NoGradGuard no_grad;
    const at::Tensor reference = scripted.forward(ids).cpu();
    ScriptedLM::Cache cache = scripted.new_cache(2, length + 3);
    std::vector<at::Tensor> steps = {scripted.extend(ids.narrow(1, 0, 5), cache, false).cpu()};
    GraphedDecoder graphed(scripted, cache);
    for (int64_t t = 5; t < length; ++t) steps.push_back(graphed.step(ids.narrow(1, t, 1)).cpu());
    const double diff = max_abs_diff(at::cat(steps, 1), reference);
    std::cout << "cuda graphed decode, sinks " << sinks << ": max |logit - recompute| = " << diff << "\n";
    INFO("sinks " << sinks);
    CHECK(cache.length() == length);
    CHECK(diff <= 1e-4);
    CHECK(max_abs_diff(at::cat(steps, 1).narrow(1, 5, length - 5), reference.narrow(1, 0, length - 5)) > 1e-2);
  }
}

TEST_CASE("fused-operator exports on CUDA: graphed decode and prefill match the portable export", "[cuda]") {
  // Shapes the kernels take: head_dim 64, GQA groups of 2, Qwen3's q/k norms.
  ModelConfig c = tiny_config(3, 8, 4, 64, 211);
  c.hidden_size = 256;
  c.intermediate_size = 344;
  c.arch = Architecture::Qwen3;
  c.qk_norm = true;
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.2, 23);
  model->to(at::kCUDA);
  const int64_t length = 300;  // past the window: the rings wrap
  at::Tensor ids = at::randint(0, c.vocab_size, {2, length}, at::TensorOptions().dtype(at::kLong)).to(at::kCUDA);
  // One window, and several (one ring per window: the fused decode takes each ring's slice apart).
  for (const std::vector<int64_t>& windows : {std::vector<int64_t>{64}, std::vector<int64_t>{64, 16}})
  for (GateUnit unit : {GateUnit::KvHead, GateUnit::Head})
    for (int64_t sinks : {0, 4}) {
      Assignment a = windows.size() == 1 ? random_assignment(model, unit, AttentionSpan::sliding(64, sinks), 9)
                                         : random_window_assignment(model, unit, windows, sinks, 9);
      at::NoGradGuard no_grad;
      TorchScriptOptions options;
      ScriptedLM reference_model(build_scripted_model(model, a, options), a);
      const at::Tensor reference = reference_model.forward(ids).cpu();  // fp32, aten operators
      std::map<std::string, double> errors;
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16})
        for (bool fused : {false, true}) {
          CausalLM cast = model;
          if (dtype != at::kFloat) {
            cast = CausalLM(c, at::TensorOptions().dtype(at::kFloat));
            init_random_weights(cast, 0.2, 23);
            cast->to(at::kCUDA, dtype);
          }
          options.fused_kernels = fused;
          ScriptedLM scripted(build_scripted_model(cast, a, options), a);
          ScriptedLM::Cache cache = scripted.new_cache(2, length + 3);
          std::vector<at::Tensor> steps = {scripted.extend(ids.narrow(1, 0, 100), cache, false).to(at::kFloat).cpu()};
          GraphedDecoder graphed(scripted, cache);
          for (int64_t t = 100; t < length; ++t) steps.push_back(graphed.step(ids.narrow(1, t, 1)).to(at::kFloat).cpu());
          const double scale = reference.abs().max().item<double>();
          const std::string key = std::string(dtype == at::kFloat ? "fp32" : "bf16") + (fused ? " fused" : " aten");
          errors[key] = max_abs_diff(at::cat(steps, 1), reference) / scale;
          std::cout << "cuda torchscript " << gate_unit_name(unit) << " windows " << a.describe_windows() << " " << key
                    << ": max |logit - fp32 aten| / max |logit| = " << errors[key] << "\n";
        }
      INFO(gate_unit_name(unit) << " " << a.describe_windows());
      CHECK(errors["fp32 aten"] <= 1e-5);
      CHECK(errors["fp32 fused"] <= 1e-5);
      CHECK(errors["bf16 fused"] <= 1.5 * errors["bf16 aten"] + 1e-3);
    }
}
