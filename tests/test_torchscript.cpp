// The pruned TorchScript export: equal to the gated model under binarized gates, incremental
// decode through the ring-buffer cache equal to full recompute, KV bytes equal to the analytic
// count, transformers' logits on the parity fixtures, and a load in Python's torch.jit.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/export/assignment.h"
#include "consa/export/torchscript_export.h"
#include "consa/load/pretrained.h"
#include "consa/load/safetensors.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

CausalLM random_model(const ModelConfig& c, uint64_t seed) {
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.2, seed);
  at::NoGradGuard no_grad;
  // Its own generator: the same seed gives the same model whatever ran before.
  auto gen = at::detail::createCPUGenerator(seed + 1);
  for (auto& item : model->named_parameters())  // norms and biases away from 1 and 0
    if (item.key().find("norm") != std::string::npos || item.key().find("bias") != std::string::npos)
      item.value().add_(at::normal(0.0, 0.2, item.value().sizes(), gen));
  return model;
}

// The gated model with binarized gates: every query head mixes FA and SWA with z = 0 or 1.
at::Tensor gated_logits(CausalLM& model, const Assignment& a, const at::Tensor& ids) {
  const ModelConfig& c = model->config();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::vector<float> z;
    for (int64_t h = 0; h < c.num_heads; ++h) {
      const int64_t u = a.unit == GateUnit::Layer ? 0 : a.unit == GateUnit::KvHead ? h / c.group_size() : h;
      z.push_back(a.full[l][u] ? 1.0f : 0.0f);
    }
    model->attention(l).fa_weight = at::tensor(z);
    model->attention(l).swa_span = a.swa;
  }
  at::NoGradGuard no_grad;
  at::Tensor logits = model->forward(ids);
  for (int64_t l = 0; l < c.num_layers; ++l) model->attention(l).fa_weight = at::Tensor();
  return logits;
}

// Decoding `ids` [B, T] through the cache gives `reference`'s logits: one token at a time after a
// `prompt`-token prefix; uneven chunks, some longer than any window; and decode_step (fixed
// shapes, the position as a tensor, for CUDA graphs) after the prompt in a cache with `spare`
// positions to spare, whose unfilled positions must stay masked.
void check_cached_decoding(ScriptedLM& scripted, const at::Tensor& ids, const at::Tensor& reference, int64_t prompt,
                           int64_t spare) {
  const int64_t batch = ids.size(0), length = ids.size(1);
  ScriptedLM::Cache cache = scripted.new_cache(batch, length);
  std::vector<at::Tensor> steps = {scripted.extend(ids.narrow(1, 0, prompt), cache, false)};
  for (int64_t t = prompt; t < length; ++t) steps.push_back(scripted.extend(ids.narrow(1, t, 1), cache, false));
  CHECK(cache.length() == length);
  CHECK(max_abs_diff(at::cat(steps, 1), reference) <= 1e-5);
  ScriptedLM::Cache chunked = scripted.new_cache(batch, length);
  std::vector<at::Tensor> parts;
  for (int64_t t = 0, step = 1; t < length; t += step, step = step % 11 + 3)
    parts.push_back(scripted.extend(ids.narrow(1, t, std::min(step, length - t)), chunked, false));
  CHECK(max_abs_diff(at::cat(parts, 1), reference) <= 1e-5);
  ScriptedLM::Cache fixed = scripted.new_cache(batch, length + spare);
  std::vector<at::Tensor> fixed_steps = {scripted.extend(ids.narrow(1, 0, prompt), fixed, false)};
  for (int64_t t = prompt; t < length; ++t) fixed_steps.push_back(scripted.decode_step(ids.narrow(1, t, 1), fixed));
  CHECK(fixed.length() == length);
  CHECK(max_abs_diff(at::cat(fixed_steps, 1), reference) <= 1e-5);
}

// Python with a torch module: the system's python3 (Debian's python3-torch), or the first python3.
std::string python_with_torch() {
  for (const char* python : {"python3", "/usr/bin/python3"}) {
    const std::string probe = std::string(python) + " -c 'import torch' >/dev/null 2>&1";
    if (std::system(probe.c_str()) == 0) return python;
  }
  return "";
}

// Runs scripts/check_torchscript.py on `model` against the expected logits of `ids` [1, T];
// its exit status (0: within 1e-5), the script's output in the log on failure.
int python_check(const std::string& model, const at::Tensor& ids, const at::Tensor& expected, const std::string& flags) {
  const std::string dir = model.substr(0, model.rfind('/'));
  {
    std::ofstream ids_file(dir + "/ids.txt");
    for (int64_t t = 0; t < ids.size(1); ++t) ids_file << ids[0][t].item<int64_t>() << " ";
    std::ofstream logits_file(dir + "/logits.f32", std::ios::binary);
    at::Tensor flat = expected.contiguous();
    logits_file.write(static_cast<const char*>(flat.data_ptr()), flat.numel() * 4);
  }
  const std::string python = python_with_torch();
  REQUIRE_FALSE(python.empty());  // install Debian's python3-torch (scripts/install_deps.sh does)
  const std::string command = python + " " + CONSA_SOURCE_DIR + "/scripts/check_torchscript.py " + model + " " + dir +
                              "/ids.txt " + dir + "/logits.f32 " + flags + " > " + dir + "/python.log 2>&1";
  const int rc = std::system(command.c_str());
  UNSCOPED_INFO(read_text(dir + "/python.log"));
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace

TEST_CASE("TorchScript logits equal the gated model under binarized gates", "[torchscript]") {
  for (const ModelConfig& c : {tiny_config(3, 4, 2, 8), qwen_like_config()}) {
    CausalLM model = random_model(c, 21);
    at::Tensor ids = at::randint(0, c.vocab_size, {2, 40}, at::TensorOptions().dtype(at::kLong));
    for (GateUnit unit : {GateUnit::Layer, GateUnit::KvHead, GateUnit::Head})
      for (AttentionSpan swa : {AttentionSpan::sliding(6), AttentionSpan::sliding(5, 2)})
        for (int64_t block : {7, 1024}) {
          Assignment a = random_assignment(model, unit, swa, 5);
          TorchScriptOptions options;
          options.query_block = block;
          ScriptedLM scripted(build_scripted_model(model, a, options), a);
          at::NoGradGuard no_grad;
          const at::Tensor reference = gated_logits(model, a, ids);
          const double diff = max_abs_diff(scripted.forward(ids), reference);
          INFO(gate_unit_name(unit) << " window " << swa.window << " sinks " << swa.sinks << " block " << block
                                    << " qk_norm " << c.qk_norm << ": max diff " << diff << ", max |logit| "
                                    << reference.abs().max().item<double>());
          CHECK(diff <= 1e-5);
          CHECK(max_abs_diff(model->forward(ids), reference) > 1e-3);  // the assignment matters here
        }
  }
}

TEST_CASE("incremental decode through the ring-buffer cache equals full recompute", "[torchscript]") {
  ModelConfig c = qwen_like_config();
  CausalLM model = random_model(c, 22);
  const int64_t window = 6, length = 61;  // > 10 windows; not a multiple of 8, so the last steps attend to a cache end that is not 8-aligned
  at::Tensor ids = at::randint(0, c.vocab_size, {2, length}, at::TensorOptions().dtype(at::kLong));
  for (GateUnit unit : {GateUnit::KvHead, GateUnit::Head})
    for (int64_t sinks : {0, 3}) {
      Assignment a = random_assignment(model, unit, AttentionSpan::sliding(window, sinks), 9);
      TorchScriptOptions options;
      options.query_block = 4;
      ScriptedLM scripted(build_scripted_model(model, a, options), a);
      at::NoGradGuard no_grad;
      const at::Tensor reference = gated_logits(model, a, ids);
      INFO(gate_unit_name(unit) << " sinks " << sinks);
      check_cached_decoding(scripted, ids, reference, 5, 9);
      ScriptedLM::Cache fixed = scripted.new_cache(2, length + 9);
      CHECK_THROWS_WITH(scripted.decode_step(ids.narrow(1, 0, 2), fixed), contains("must be [batch, 1]"));
      CHECK_THROWS_WITH(GraphedDecoder(scripted, fixed), contains("CUDA graphs need a CUDA"));
      // last_only returns the final position's logits.
      ScriptedLM::Cache last = scripted.new_cache(2, length);
      CHECK(max_abs_diff(scripted.extend(ids, last, true), reference.narrow(1, length - 1, 1)) <= 1e-5);
      CHECK_THROWS_WITH(scripted.extend(ids.narrow(1, 0, 1), last, true), contains("exceed its capacity"));
    }
}

TEST_CASE("the cache holds exactly the analytic KV bytes", "[torchscript]") {
  ModelConfig c = tiny_config(4, 8, 4, 8);
  CausalLM model = random_model(c, 23);
  for (GateUnit unit : {GateUnit::Layer, GateUnit::KvHead, GateUnit::Head}) {
    Assignment a = random_assignment(model, unit, AttentionSpan::sliding(16, 4), 3);
    ScriptedLM scripted(build_scripted_model(model, a), a);
    for (int64_t capacity : {8, 20, 300}) {
      ScriptedLM::Cache cache = scripted.new_cache(1, capacity);
      auto [fa, swa] = a.kv_cache_bytes(capacity, 4);
      // Per KV head and layer: K and V, head_dim floats per position; capacity positions for a
      // full-cache head, min(capacity, window + sinks) for a sliding one.
      int64_t full_heads = 0;
      for (int64_t l = 0; l < 4; ++l)
        for (int64_t g = 0; g < 4; ++g) full_heads += a.kv_head_full(l, g);
      const int64_t expected = full_heads * capacity * 2 * 8 * 4 + (16 - full_heads) * std::min<int64_t>(capacity, 20) * 2 * 8 * 4;
      INFO(gate_unit_name(unit) << " capacity " << capacity);
      CHECK(cache.kv_bytes() == expected);
      CHECK(cache.kv_bytes() == fa + swa);
    }
  }
}

TEST_CASE("TorchScript exports of the parity fixtures match transformers' logits", "[torchscript]") {
  for (const char* name : {"llama_gqa", "llama3_tied_mha", "mistral_swa", "qwen2_bias", "qwen3_norm"}) {
    const std::string dir = fixture(name);
    LoadOptions opts;
    opts.dtype = at::kFloat;
    CausalLM model = load_pretrained(dir, opts);
    const std::string path = scratch_dir("ts-fixture") + "/model.ts";
    export_torchscript(model, declared_assignment(model, dir), path);
    ScriptedLM scripted = ScriptedLM::load(path, at::kCPU);
    SafetensorsFile ref = SafetensorsFile::open(dir + "/reference.safetensors");
    at::NoGradGuard no_grad;
    INFO(name);
    CHECK(max_abs_diff(scripted.forward(ref.tensor("input_ids")), ref.tensor("logits")) <= 1e-4);
    CHECK(scripted.assignment().weights_checksum == weights_checksum(model));
  }
}

TEST_CASE("a saved export reloads with its assignment and runs in Python's torch.jit", "[torchscript]") {
  CausalLM model = random_model(qwen_like_config(), 24);
  Assignment a = random_assignment(model, GateUnit::KvHead, AttentionSpan::sliding(6, 2), 4);
  const std::string dir = scratch_dir("ts-python");
  export_torchscript(model, a, dir + "/model.ts");
  ScriptedLM loaded = ScriptedLM::load(dir + "/model.ts", at::kCPU);
  CHECK(loaded.assignment().achieved_sparsity() == a.achieved_sparsity());
  CHECK(loaded.assignment().weights_checksum == a.weights_checksum);
  for (int64_t l = 0; l < 3; ++l) {  // stored order: full-attention groups first
    const auto& full = loaded.assignment().full[l];
    CHECK(std::is_sorted(full.begin(), full.end(), [](bool x, bool y) { return x > y; }));
  }
  at::Tensor ids = at::randint(0, 61, {1, 30}, at::TensorOptions().dtype(at::kLong));
  at::NoGradGuard no_grad;
  const at::Tensor reference = gated_logits(model, a, ids);
  CHECK(max_abs_diff(loaded.forward(ids), reference) <= 1e-5);

  // Python: forward and incremental decode, compared with the gated model's logits.
  CHECK(python_check(dir + "/model.ts", ids, reference, "") == 0);
}

TEST_CASE("exports with consa's fused operators compute what the portable export does", "[torchscript]") {
  for (const ModelConfig& c : {tiny_config(3, 4, 2, 8), qwen_like_config()}) {
    CausalLM model = random_model(c, 25);
    const int64_t length = 29;
    at::Tensor ids = at::randint(0, c.vocab_size, {2, length}, at::TensorOptions().dtype(at::kLong));
    for (GateUnit unit : {GateUnit::KvHead, GateUnit::Head})
      for (AttentionSpan swa : {AttentionSpan::sliding(6), AttentionSpan::sliding(5, 2)}) {
        Assignment a = random_assignment(model, unit, swa, 7);
        TorchScriptOptions options;
        options.query_block = 8;
        options.fused_kernels = true;
        ScriptedLM fused(build_scripted_model(model, a, options), a);
        options.fused_kernels = false;
        ScriptedLM portable(build_scripted_model(model, a, options), a);
        at::NoGradGuard no_grad;
        const at::Tensor reference = gated_logits(model, a, ids);
        INFO(gate_unit_name(unit) << " window " << swa.window << " sinks " << swa.sinks << " qk_norm " << c.qk_norm);
        CHECK(max_abs_diff(fused.forward(ids), reference) <= 1e-5);
        // decode_step after a prompt, in a cache with room to spare (masked positions).
        ScriptedLM::Cache cache = fused.new_cache(2, length + 4);
        std::vector<at::Tensor> steps = {fused.extend(ids.narrow(1, 0, 5), cache, false)};
        for (int64_t t = 5; t < length; ++t) steps.push_back(fused.decode_step(ids.narrow(1, t, 1), cache));
        CHECK(max_abs_diff(at::cat(steps, 1), reference) <= 1e-5);
        // The fused file calls consa's operators where the portable one calls aten's.
        auto code_of = [](ScriptedLM& m) {
          std::string text;
          for (const auto& method : m.module().attr("layer_0").toModule().get_methods())
            text += method.graph()->toString();
          return text;
        };
        const std::string fused_code = code_of(fused), portable_code = code_of(portable);
        for (const char* op : {"consa::rms_norm", "consa::rope", "consa::decode_attention", "consa::decode_qkv",
                               "consa::hybrid_decode_attention", "consa::linear", "consa::rms_norm_linear",
                               "consa::swiglu_linear"})
          CHECK(fused_code.find(op) != std::string::npos);
        CHECK(portable_code.find("consa::") == std::string::npos);
      }
  }
}

TEST_CASE("a fused-operator export saves, reloads in consa, and runs in Python with libconsa_ops.so", "[torchscript]") {
  CausalLM model = random_model(qwen_like_config(), 26);
  Assignment a = random_assignment(model, GateUnit::Head, AttentionSpan::sliding(6, 2), 8);
  const std::string dir = scratch_dir("ts-fused");
  TorchScriptOptions options;
  options.fused_kernels = true;
  export_torchscript(model, a, dir + "/model.ts", options);
  ScriptedLM loaded = ScriptedLM::load(dir + "/model.ts", at::kCPU);
  at::Tensor ids = at::randint(0, 61, {1, 30}, at::TensorOptions().dtype(at::kLong));
  at::NoGradGuard no_grad;
  const at::Tensor reference = gated_logits(model, a, ids);
  CHECK(max_abs_diff(loaded.forward(ids), reference) <= 1e-5);
  CHECK(python_check(dir + "/model.ts", ids, reference, std::string("--ops-library ") + CONSA_OPS_LIBRARY) == 0);
  // Without the library the script says what to pass instead of TorchScript's unknown-op error.
  CHECK(python_check(dir + "/model.ts", ids, reference, "") == 2);
  CHECK_THAT(read_text(dir + "/python.log"), contains("pass --ops-library"));
}

// The gated model of `seed` under the binarized assignment of several windows: every query head
// mixes full attention and the windows by nested gates at exactly 0 or 1, opening its unit's span.
at::Tensor applied_logits(const ModelConfig& c, uint64_t seed, const Assignment& a, const at::Tensor& ids) {
  CausalLM model = random_model(c, seed);
  std::vector<AttentionSpan> local;
  for (int64_t w : a.local_windows()) local.push_back(AttentionSpan::sliding(w, a.swa.sinks));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::vector<AttentionSpan> heads;
    for (int64_t h = 0; h < c.num_heads; ++h)
      heads.push_back(a.unit_span(l, a.unit == GateUnit::Layer ? 0 : a.unit == GateUnit::KvHead ? h / c.group_size() : h));
    model->attention(l).set_head_spans(heads, local, at::kCPU);
  }
  at::NoGradGuard no_grad;
  return model->forward(ids);
}

TEST_CASE("exports whose units use several windows equal the model under the assignment", "[torchscript][windows]") {
  const ModelConfig c = qwen_like_config();
  CausalLM model = random_model(c, 27);
  const int64_t length = 43;
  at::Tensor ids = at::randint(0, c.vocab_size, {2, length}, at::TensorOptions().dtype(at::kLong));
  for (GateUnit unit : {GateUnit::Layer, GateUnit::KvHead, GateUnit::Head})
    for (int64_t sinks : {0, 2})
      for (bool fused : {false, true}) {
        const Assignment a = random_window_assignment(model, unit, {8, 4}, sinks, 3);
        REQUIRE(a.local_windows() == std::vector<int64_t>{8, 4});
        TorchScriptOptions options;
        options.query_block = 5;
        options.fused_kernels = fused;
        ScriptedLM scripted(build_scripted_model(model, a, options), a);
        at::NoGradGuard no_grad;
        const at::Tensor reference = applied_logits(c, 27, a, ids);
        INFO(gate_unit_name(unit) << " sinks " << sinks << " fused " << fused);
        {  // the gated reference computes what the assignment's spans do
          CausalLM spans = random_model(c, 27);
          a.apply(spans);
          CHECK(max_abs_diff(spans->forward(ids), reference) <= 1e-5);
        }
        CHECK(max_abs_diff(scripted.forward(ids), reference) <= 1e-5);
        // Every unit at the widest window instead gives other logits: the narrower ones matter.
        Assignment widest = a;
        widest.windows.clear();
        CHECK(max_abs_diff(applied_logits(c, 27, widest, ids), reference) > 1e-3);
        check_cached_decoding(scripted, ids, reference, 3, 7);
        // The cache holds each group's own window: the analytic bytes, and less than one ring of
        // the widest window for every sliding group.
        for (int64_t capacity : {6, 30, 200}) {
          auto [fa, swa] = a.kv_cache_bytes(capacity, 4);
          CHECK(scripted.new_cache(1, capacity).kv_bytes() == fa + swa);
          auto [fa_wide, swa_wide] = widest.kv_cache_bytes(capacity, 4);
          if (capacity > 4 + sinks) CHECK(fa + swa < fa_wide + swa_wide);
        }
      }
}

TEST_CASE("a saved several-window export reloads and runs in Python's torch.jit", "[torchscript][windows]") {
  const ModelConfig c = qwen_like_config();
  CausalLM model = random_model(c, 28);
  const Assignment a = random_window_assignment(model, GateUnit::Head, {8, 3}, 1, 5);
  const std::string dir = scratch_dir("ts-windows");
  export_torchscript(model, a, dir + "/model.ts");
  ScriptedLM loaded = ScriptedLM::load(dir + "/model.ts", at::kCPU);
  CHECK(loaded.assignment().local_windows() == std::vector<int64_t>{8, 3});
  at::Tensor ids = at::randint(0, c.vocab_size, {1, 30}, at::TensorOptions().dtype(at::kLong));
  const at::Tensor reference = applied_logits(c, 28, a, ids);
  at::NoGradGuard no_grad;
  CHECK(max_abs_diff(loaded.forward(ids), reference) <= 1e-5);
  CHECK(python_check(dir + "/model.ts", ids, reference, "") == 0);
}

TEST_CASE("loading rejects files that are not consa TorchScript exports", "[torchscript]") {
  const std::string dir = scratch_dir("ts-bad");
  write_text(dir + "/junk.ts", "not a zip archive");
  CHECK_THROWS_WITH(ScriptedLM::load(dir + "/junk.ts", at::kCPU),
                    contains(dir + "/junk.ts: not a TorchScript file (not a zip archive)"));
  CHECK_THROWS_WITH(ScriptedLM::load(dir + "/missing.ts", at::kCPU), contains("no such TorchScript file"));
}
