// Model construction, save/load round trips, per-KV-group attention spans, and refusal of
// checkpoints whose tensors do not match their config.
#include <ATen/core/grad_mode.h>

#include <filesystem>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/load/hf_config.h"
#include "consa/load/pretrained.h"
#include "consa/load/safetensors.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
namespace fs = std::filesystem;

namespace {

ModelConfig small_config(Architecture arch = Architecture::Llama) {
  ModelConfig c = tiny_config(2, 4, 2, 8);
  c.arch = arch;
  c.qkv_bias = arch == Architecture::Qwen2;
  c.qk_norm = arch == Architecture::Qwen3;
  return c;
}

CausalLM random_model(const ModelConfig& c, uint64_t seed = 0) {
  CausalLM m(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(m, 0.3, seed);
  return m;
}

at::Tensor ids() { return at::tensor({3, 14, 15, 9, 26, 5, 35, 8, 9, 7}, at::kLong).unsqueeze(0); }

}  // namespace

TEST_CASE("parameters carry Hugging Face names", "[model]") {
  CausalLM m = random_model(small_config(Architecture::Qwen3));
  std::vector<std::string> names;
  for (const auto& p : m->named_parameters()) names.push_back(p.key());
  auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  CHECK(has("model.embed_tokens.weight"));
  CHECK(has("model.layers.1.self_attn.q_norm.weight"));
  CHECK(has("model.layers.0.mlp.down_proj.weight"));
  CHECK(has("model.norm.weight"));
  CHECK(has("lm_head.weight"));
  CHECK(!has("model.layers.0.self_attn.q_proj.bias"));
  // 2 layers x (4 attn linears + 3 mlp + 2 norms + 2 qk norms) + embed + norm + lm_head
  CHECK(names.size() == 2 * 11 + 3);
}

TEST_CASE("save_pretrained then load_pretrained reproduces the model exactly", "[model]") {
  for (Architecture arch : {Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3}) {
    ModelConfig c = small_config(arch);
    c.tie_word_embeddings = arch == Architecture::Qwen2;
    c.layer_window = {0, 4};
    CausalLM m = random_model(c, 5);
    const std::string dir = scratch_dir("save");
    save_pretrained(m, dir, /*max_shard_bytes=*/20000);  // forces shards
    CHECK(fs::exists(dir + "/model.safetensors.index.json"));
    CausalLM back = load_pretrained(dir);
    at::NoGradGuard no_grad;
    CHECK(back->attention(1).group_spans[0] == AttentionSpan::sliding(4));
    CHECK(max_abs_diff(m->forward(ids()), back->forward(ids())) == 0.0);
  }
}

TEST_CASE("each KV group computes under its own span", "[model]") {
  CausalLM m = random_model(small_config(), 9);
  SelfAttentionImpl& attn = m->attention(0);
  at::NoGradGuard no_grad;
  at::Tensor x = at::randn({1, 12, 32});
  RopeTables rope = rope_tables(rope_inv_freq(m->config().rope, 8), 0, 12, at::kFloat, at::kCPU);
  ProjectedQKV qkv = attn.project(x, rope);

  attn.group_spans = {AttentionSpan::full(), AttentionSpan::full()};
  at::Tensor all_full = attn.attend(qkv);
  attn.group_spans = {AttentionSpan::sliding(3), AttentionSpan::sliding(3)};
  at::Tensor all_swa = attn.attend(qkv);
  attn.group_spans = {AttentionSpan::sliding(3), AttentionSpan::full()};
  at::Tensor mixed = attn.attend(qkv);

  // Query heads 0-1 belong to KV group 0, heads 2-3 to group 1.
  CHECK(max_abs_diff(mixed.narrow(2, 0, 2), all_swa.narrow(2, 0, 2)) == 0.0);
  CHECK(max_abs_diff(mixed.narrow(2, 2, 2), all_full.narrow(2, 2, 2)) == 0.0);
  CHECK(max_abs_diff(all_full, all_swa) > 1e-3);  // the window really changes the output
}

TEST_CASE("checkpoints that do not match their config are refused", "[model]") {
  ModelConfig c = small_config();
  CausalLM m = random_model(c);
  const std::string dir = scratch_dir("bad-ckpt");
  save_pretrained(m, dir);
  NamedTensors tensors;
  for (const auto& p : m->named_parameters()) tensors.emplace_back(p.key(), p.value());

  SECTION("missing tensor") {
    NamedTensors fewer;
    for (const auto& t : tensors)
      if (t.first != "model.norm.weight") fewer.push_back(t);
    write_checkpoint_tensors(dir, fewer);
    CHECK_THROWS_WITH(load_pretrained(dir), contains(dir) && contains("missing tensor 'model.norm.weight'"));
  }
  SECTION("unexpected shape") {
    for (auto& t : tensors)
      if (t.first == "model.layers.1.mlp.up_proj.weight") t.second = at::zeros({40, 32});
    write_checkpoint_tensors(dir, tensors);
    CHECK_THROWS_WITH(load_pretrained(dir),
                      contains(dir + "/model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has shape "
                               "[40, 32], expected [48, 32]"));
  }
  SECTION("tensors the config does not use") {
    tensors.emplace_back("model.layers.0.mlp.up_proj.bias", at::zeros({48}));
    write_checkpoint_tensors(dir, tensors);
    CHECK_THROWS_WITH(load_pretrained(dir), contains("does not use: model.layers.0.mlp.up_proj.bias"));
  }
  SECTION("harmless extras transformers also ignores") {
    tensors.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", at::zeros({4}));
    write_checkpoint_tensors(dir, tensors);
    CHECK_NOTHROW(load_pretrained(dir));
  }
}

TEST_CASE("weights load in a requested dtype", "[model]") {
  CausalLM m = random_model(small_config());
  const std::string dir = scratch_dir("dtype");
  save_pretrained(m, dir);
  LoadOptions opts;
  opts.dtype = at::kBFloat16;
  CausalLM bf = load_pretrained(dir, opts);
  CHECK(bf->dtype() == at::kBFloat16);
  at::NoGradGuard no_grad;
  at::Tensor ref = m->forward(ids());
  // bf16 keeps ~3 significant digits; the logits stay close to fp32 but not equal.
  const double diff = max_abs_diff(bf->forward(ids()), ref);
  CHECK(diff > 0.0);
  CHECK(diff < 0.05 * ref.abs().max().item<double>() + 0.05);
}

TEST_CASE("packed documents compute what each document computes alone", "[model]") {
  ModelConfig c = qwen_like_config();
  CausalLM m(c, at::TensorOptions().dtype(at::kDouble));
  init_random_weights(m, 0.3, 4);
  // Documents of 6, 1 and 9 tokens in row 0, one of 16 in row 1.
  const std::vector<std::vector<int64_t>> lengths = {{6, 1, 9}, {16}};
  at::manual_seed(2);
  const at::Tensor tokens = at::randint(0, c.vocab_size, {2, 16}, at::kLong);
  std::vector<int64_t> ids;
  for (const auto& row : lengths)
    for (int64_t d = 0; d < static_cast<int64_t>(row.size()); ++d) ids.insert(ids.end(), row[d], d);
  const at::Tensor documents = at::tensor(ids, at::kLong).view({2, 16});
  auto separately = [&] {
    at::Tensor out = at::empty({2, 16, c.vocab_size}, at::kDouble);
    for (int64_t r = 0; r < 2; ++r) {
      int64_t start = 0;
      for (int64_t n : lengths[r]) {
        out[r].narrow(0, start, n).copy_(m->forward(tokens[r].narrow(0, start, n).unsqueeze(0))[0]);
        start += n;
      }
    }
    return out;
  };
  const AttentionSpan swa = AttentionSpan::sliding(3, 2);  // sinks: each document's own first two
  SECTION("per-KV-group spans") { random_assignment(m, GateUnit::KvHead, swa, 5).apply(m); }
  SECTION("gated mix of full and sliding attention") {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      m->attention(l).set_gate_weights(at::rand({c.num_heads}, at::kFloat));
      m->attention(l).swa_span = swa;
    }
  }
  at::NoGradGuard no_grad;
  const at::Tensor want = separately();
  // RoPE's tables are fp32, so one distance at other positions rounds differently (~1e-7).
  CHECK(max_abs_diff(m->forward(tokens, documents), want) < 1e-5);
  CHECK(max_abs_diff(m->forward(tokens), want) > 1e-3);  // without the mask, documents see each other
}

TEST_CASE("packed documents train the same with and without gradient checkpointing", "[model]") {
  ModelConfig c = qwen_like_config();
  CausalLM m(c, at::TensorOptions().dtype(at::kDouble));
  init_random_weights(m, 0.3, 4);
  random_assignment(m, GateUnit::KvHead, AttentionSpan::sliding(3, 1), 6).apply(m);
  at::manual_seed(3);
  const at::Tensor tokens = at::randint(0, c.vocab_size, {1, 12}, at::kLong);
  const at::Tensor documents = at::tensor({0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1}, at::kLong).view({1, 12});
  auto gradients = [&](bool checkpoint) {
    m->zero_grad();
    m->set_gradient_checkpointing(checkpoint);
    m->forward(tokens, documents).pow(2).mean().backward();
    std::vector<at::Tensor> g;
    for (const auto& p : m->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  const auto plain = gradients(false), checkpointed = gradients(true);
  double diff = 0;
  for (size_t i = 0; i < plain.size(); ++i) diff = std::max(diff, max_abs_diff(plain[i], checkpointed[i]));
  CHECK(diff < 1e-12);
  // The mask reaches backward: without it the gradients differ.
  m->zero_grad();
  m->set_gradient_checkpointing(true);
  m->forward(tokens).pow(2).mean().backward();
  CHECK(max_abs_diff(m->parameters()[0].grad(), plain[0]) > 1e-9);
}
