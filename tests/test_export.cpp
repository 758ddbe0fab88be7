// Binarization rules, assignment.json and its KV-cache accounting.
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <iomanip>
#include <sstream>
#include <filesystem>
#include <functional>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/export/assignment.h"
#include "consa/export/hf_export.h"
#include "consa/export/hybrid_layout.h"
#include "consa/export/torchscript_export.h"
#include "consa/load/hf_config.h"
#include "consa/load/pretrained.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

AttentionGates gates_with_scores(const ModelConfig& c, GateUnit unit, const at::Tensor& scores) {
  GateOptions o;
  o.unit = unit;
  o.swa = AttentionSpan::sliding(8, 2);
  AttentionGates g(c, o);
  at::NoGradGuard no_grad;
  g->log_alpha.copy_(scores);
  return g;
}

int64_t count_swa(const Assignment& a) {
  int64_t n = 0;
  for (const auto& l : a.full) n += std::count(l.begin(), l.end(), false);
  return n;
}

}  // namespace

TEST_CASE("the exact rule meets every target exactly, on the lowest scores", "[export]") {
  ModelConfig c = tiny_config(6, 8, 4, 4);
  at::manual_seed(2);
  AttentionGates g = gates_with_scores(c, GateUnit::KvHead, at::randn({6, 4}) * 3);
  for (double t : {0.0, 0.25, 0.5, 0.75, 0.875, 1.0}) {
    Assignment global = binarize(c, *g, BinarizeRule::Exact, t, ConstraintScope::Global);
    INFO("target " << t);
    CHECK(count_swa(global) == std::llround(t * 24));
    CHECK(global.achieved_sparsity() == Approx(std::llround(t * 24) / 24.0));
    double max_swa = -1e9, min_full = 1e9;
    for (int64_t l = 0; l < 6; ++l)
      for (int64_t u = 0; u < 4; ++u) {
        const double s = g->log_alpha[l][u].item<double>();
        if (global.full[l][u]) min_full = std::min(min_full, s);
        else max_swa = std::max(max_swa, s);
      }
    CHECK(max_swa <= min_full);
    Assignment per_layer = binarize(c, *g, BinarizeRule::Exact, t, ConstraintScope::PerLayer);
    for (const auto& layer : per_layer.full) CHECK(std::count(layer.begin(), layer.end(), false) == std::llround(t * 4));
  }
}

TEST_CASE("the threshold rule keeps full attention iff log_alpha > 0", "[export]") {
  ModelConfig c = tiny_config(2, 4, 2, 4);
  AttentionGates g = gates_with_scores(c, GateUnit::Head, at::tensor({0.5f, -0.1f, 0.0f, 3.0f, -2.f, -3.f, 1.f, 0.01f}).reshape({2, 4}));
  Assignment a = binarize(c, *g, BinarizeRule::Threshold, 0.5, ConstraintScope::Global);
  CHECK(a.full[0] == std::vector<bool>{true, false, false, true});
  CHECK(a.full[1] == std::vector<bool>{false, false, true, true});
  // Head units: KV head g needs a full cache if any of its query heads keeps FA.
  CHECK(a.kv_head_full(0, 0));
  CHECK(a.kv_head_full(0, 1));
  CHECK(!a.kv_head_full(1, 0));
  CHECK(a.kv_head_full(1, 1));
}

TEST_CASE("KV-cache bytes equal (1 - rho) L + rho (W + S) positions per KV head", "[export]") {
  ModelConfig c = tiny_config(4, 8, 4, 16);
  at::manual_seed(5);
  AttentionGates g = gates_with_scores(c, GateUnit::KvHead, at::randn({4, 4}));
  for (double rho : {0.25, 0.5, 0.75}) {
    Assignment a = binarize(c, *g, BinarizeRule::Exact, rho, ConstraintScope::Global);
    const int64_t units = 16, context = 4096, bytes = 2;
    const double per_position = 2.0 * 16 * bytes;  // K and V, head_dim 16, bf16
    const double expected_total = units * per_position * ((1 - rho) * context + rho * (8 + 2));
    auto [fa, sw] = a.kv_cache_bytes(context, bytes);
    CHECK(static_cast<double>(fa + sw) == Approx(expected_total));
    CHECK(static_cast<double>(fa) == Approx(units * (1 - rho) * context * per_position));
    // A context shorter than the window costs the same for FA and SWA heads.
    auto [fa_short, sw_short] = a.kv_cache_bytes(6, bytes);
    CHECK(static_cast<double>(fa_short + sw_short) == Approx(units * 6 * per_position));
  }
}

TEST_CASE("assignment.json round-trips and malformed files are refused", "[export]") {
  ModelConfig c = tiny_config(2, 4, 2, 8);
  AttentionGates g = gates_with_scores(c, GateUnit::KvHead, at::tensor({1.f, -1.f, -2.f, 2.f}).reshape({2, 2}));
  Assignment a = binarize(c, *g, BinarizeRule::Exact, 0.5, ConstraintScope::PerLayer);
  a.weights_checksum = "fnv1a64:0123456789abcdef";
  const std::string dir = scratch_dir("assign");
  a.save(dir + "/a.json", 1024);
  Assignment b = Assignment::load(dir + "/a.json");
  CHECK(b.full == a.full);
  CHECK(b.scores == a.scores);
  CHECK(b.swa == a.swa);
  CHECK(b.unit == a.unit);
  CHECK(b.weights_checksum == a.weights_checksum);
  auto j = nlohmann::json::parse(read_text(dir + "/a.json"));
  CHECK(j["kv_cache"]["full_attention_bytes"] == 2 * 1024 * 2 * 8 * 2);  // 2 FA KV heads
  CHECK(j["achieved_sparsity"] == 0.5);

  j["version"] = 9;
  write_text(dir + "/v.json", j.dump());
  CHECK_THROWS_WITH(Assignment::load(dir + "/v.json"), contains("schema version 9, this consa reads versions 1 and 2"));
  j["version"] = 1;
  j["layers"][1]["units"] = {"full"};
  write_text(dir + "/u.json", j.dump());
  CHECK_THROWS_WITH(Assignment::load(dir + "/u.json"), contains("each layer needs 2 units for kv_head granularity"));
  write_text(dir + "/x.json", "{\"hello\": 1}");
  CHECK_THROWS_WITH(Assignment::load(dir + "/x.json"), contains("not a consa assignment"));
}

TEST_CASE("assignment.json with impossible values is refused naming the file and the key", "[export]") {
  ModelConfig c = tiny_config(2, 4, 2, 8);
  AttentionGates g = gates_with_scores(c, GateUnit::KvHead, at::tensor({1.f, -1.f, -2.f, 2.f}).reshape({2, 2}));
  const nlohmann::json valid = binarize(c, *g, BinarizeRule::Exact, 0.5, ConstraintScope::Global).to_json(64, 2);
  const std::string dir = scratch_dir("assign_bad");
  auto load_edited = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = valid;
    edit(j);
    write_text(dir + "/a.json", j.dump());
    return Assignment::load(dir + "/a.json");
  };
  // Each of these escaped as a raw nlohmann error, named no file, or divided by zero or overflowed later.
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["version"] = "1"; }), contains("a.json: assignment schema version \"1\""));
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["schema"] = 7; }), contains("a.json: not a consa assignment"));
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["rule"] = "hxact"; }), contains("a.json: rule: unknown binarization rule 'hxact'"));
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["granularity"] = "row"; }), contains("a.json: granularity: unknown gate unit"));
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["model"]["num_kv_heads"] = 0; }), contains("a multiple of model.num_kv_heads (0)"));
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["model"]["num_heads"] = 1e20; }),
                    contains("a.json: model.num_heads must be an integer, got 1e+20"));
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["window"] = 0; }), contains("a.json: window must be > 0 and sinks >= 0"));
  CHECK_THROWS_WITH(load_edited([](auto& j) { j["layers"][0]["scores"] = {1.0}; }), contains("has 2 units and 1 scores"));
  const Assignment huge = load_edited([](auto& j) { j["model"]["head_dim"] = int64_t{1} << 61; });
  std::ostringstream out;
  CHECK_THROWS_WITH(print_assignment(out, huge, "h.json", 4096), contains("h.json: assignment: the KV cache of 2 layers"));
  CHECK_THROWS_WITH(huge.dense_kv_cache_bytes(4096, 2), contains("more bytes than int64 counts"));
}

TEST_CASE("applying an assignment equals the per-group spans and the 0/1 gates", "[export]") {
  ModelConfig c = tiny_config(2, 4, 2, 8);
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, 3);
  at::Tensor ids = at::randint(0, 50, {1, 20}, at::TensorOptions().dtype(at::kLong));
  AttentionGates g = gates_with_scores(c, GateUnit::KvHead, at::tensor({1.f, -1.f, -2.f, 2.f}).reshape({2, 2}));
  Assignment a = binarize(c, *g, BinarizeRule::Threshold, 0.5, ConstraintScope::Global);
  at::NoGradGuard no_grad;
  a.apply(model);
  CHECK(model->attention(0).group_spans[1] == AttentionSpan::sliding(8, 2));
  CHECK(model->attention(1).group_spans[1].is_full());
  at::Tensor by_spans = model->forward(ids);
  g->apply(model, (g->log_alpha > 0).to(at::kFloat));  // the gated path with hard 0/1 gates
  CHECK(max_abs_diff(model->forward(ids), by_spans) < 1e-5);
  CausalLM other(tiny_config(3, 4, 2, 8), at::TensorOptions());
  CHECK_THROWS_WITH(a.apply(other), contains("made for 2 layers x 4/2 heads x 8 but the model has 3 x 4/2 x 8"));
  // Exports check first: a layer too many or too few is refused, not read past the end.
  const std::string dir = consa_test::scratch_dir("export-misfit");
  CHECK_THROWS_WITH(export_hf(other, a, dir + "/hf", ModelCardSource{}), contains("but the model has 3"));
  CHECK_THROWS_WITH(export_torchscript(other, a, dir + "/m.ts", TorchScriptOptions{}), contains("but the model has 3"));
  CHECK_FALSE(std::filesystem::exists(dir + "/hf"));
}

TEST_CASE("permuting heads together with their spans leaves the model's output unchanged", "[export]") {
  ModelConfig c = tiny_config(2, 6, 3, 8);
  c.qkv_bias = true;
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, 11);
  {
    at::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(0.05 * at::randn(p.sizes()));  // non-zero biases
  }
  model->attention(0).group_spans = {AttentionSpan::sliding(3), AttentionSpan::full(), AttentionSpan::sliding(5, 1)};
  at::Tensor ids = at::randint(0, 50, {2, 15}, at::TensorOptions().dtype(at::kLong));
  at::NoGradGuard no_grad;
  at::Tensor before = model->forward(ids);
  at::Tensor q_before = model->attention(0).q_proj->weight.clone();
  at::Tensor o_before = model->attention(0).o_proj->weight.clone();
  // Groups 2, 0, 1, and the two query heads of group 0 swapped.
  LayerHeadLayout forward_order{{2, 0, 1}, {4, 5, 1, 0, 2, 3}, 0, {}};
  permute_attention_heads(model, 0, forward_order);
  CHECK(max_abs_diff(model->attention(0).q_proj->weight, q_before) > 0.0);
  CHECK(model->attention(0).group_spans[1] == AttentionSpan::sliding(3));
  CHECK(max_abs_diff(model->forward(ids), before) < 1e-5);
  LayerHeadLayout inverse{{1, 2, 0}, {3, 2, 4, 5, 0, 1}, 0, {}};
  permute_attention_heads(model, 0, inverse);
  CHECK(max_abs_diff(model->attention(0).q_proj->weight, q_before) == 0.0);
  CHECK(max_abs_diff(model->attention(0).o_proj->weight, o_before) == 0.0);
  CHECK(model->attention(0).group_spans[0] == AttentionSpan::sliding(3));
}

TEST_CASE("Hugging Face exports reload with the same logits", "[export]") {
  ModelConfig c = tiny_config(3, 4, 2, 8);
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, 12);
  at::Tensor ids = at::randint(0, 50, {1, 24}, at::TensorOptions().dtype(at::kLong));
  for (GateUnit unit : {GateUnit::KvHead, GateUnit::Layer, GateUnit::Head}) {
    const int64_t units = unit == GateUnit::Layer ? 1 : unit == GateUnit::KvHead ? 2 : 4;
    AttentionGates g = gates_with_scores(c, unit, at::randn({3, units}));
    Assignment a = binarize(c, *g, BinarizeRule::Exact, 0.5, ConstraintScope::Global);
    if (unit == GateUnit::Layer) a.swa = AttentionSpan::sliding(8);  // transformers has no sinks
    const std::string dir = scratch_dir("hf-export");
    export_hf(model, a, dir + "/m");
    CausalLM reloaded = load_pretrained(dir + "/m");
    at::NoGradGuard no_grad;
    CausalLM reference(c, at::TensorOptions().dtype(at::kFloat));
    for (auto& item : reference->named_parameters()) item.value().copy_(model->named_parameters()[item.key()]);
    a.apply(reference);
    INFO(gate_unit_name(unit));
    CHECK(max_abs_diff(reloaded->forward(ids), reference->forward(ids)) < 1e-5);
    CHECK(max_abs_diff(reloaded->forward(ids), model->forward(ids)) > 1e-3);  // the assignment matters
    Assignment stored = Assignment::load(dir + "/m/assignment.json");
    CHECK(stored.achieved_sparsity() == a.achieved_sparsity());
    CHECK(stored.weights_checksum == weights_checksum(reloaded));
    auto config = nlohmann::json::parse(read_text(dir + "/m/config.json"));
    if (unit == GateUnit::Layer) {
      CHECK(config.contains("layer_types"));
      CHECK(config["sliding_window"] == 8);
    } else if (unit == GateUnit::Head) {
      CHECK(config["consa"]["granularity"] == "head");
      for (int64_t l = 0; l < 3; ++l) {  // reloaded per-head gates match the stored assignment
        const at::Tensor z = reloaded->attention(l).fa_weight;
        for (int64_t h = 0; h < 4; ++h) CHECK((z[h].item<float>() == 1.0f) == stored.full[l][h]);
      }
      CHECK(declared_assignment(reloaded, "reloaded").full == stored.full);
    } else {
      CHECK(config["consa"]["granularity"] == "kv_head");
      for (int64_t l = 0; l < 3; ++l) {  // full-attention groups first
        const auto& spans = reloaded->attention(l).group_spans;
        CHECK((spans[0].is_full() || !spans[1].is_full()));
        CHECK(static_cast<int64_t>(spans[0].is_full()) + spans[1].is_full() == config["consa"]["full_attention_kv_heads"][l]);
      }
    }
  }
}

TEST_CASE("Hugging Face exports of several windows reload with each unit's own window", "[export][windows]") {
  const ModelConfig c = qwen_like_config();
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, 13);
  at::Tensor ids = at::randint(0, c.vocab_size, {1, 30}, at::TensorOptions().dtype(at::kLong));
  for (GateUnit unit : {GateUnit::Layer, GateUnit::KvHead, GateUnit::Head})
    for (int64_t sinks : {0, 2}) {
      const Assignment a = random_window_assignment(model, unit, {8, 4}, sinks, 11);
      REQUIRE(a.multi_window());
      const std::string dir = scratch_dir("hf-windows") + "/m";
      export_hf(model, a, dir);
      INFO(gate_unit_name(unit) << " sinks " << sinks);
      const auto config = nlohmann::json::parse(read_text(dir + "/config.json"));
      CHECK(config["architectures"][0] == kHybridArchitecture);  // no stock class holds two windows
      const auto& h = config["consa"];
      CHECK(h["windows"] == nlohmann::json({8, 4}));
      CHECK(h["window"] == 8);
      CHECK(h["granularity"] == (unit == GateUnit::Head ? "head" : "kv_head"));
      CHECK(h.contains("head_windows") == (unit == GateUnit::Head));
      for (int64_t l = 0; l < c.num_layers; ++l) {
        // Full-cache groups first, then the windows widest first; the summary count agrees.
        const auto kv = h["kv_head_windows"][l].get<std::vector<int64_t>>();
        const int64_t full = std::count(kv.begin(), kv.end(), 0);
        CHECK(h["full_attention_kv_heads"][l] == full);
        CHECK(std::all_of(kv.begin(), kv.begin() + full, [](int64_t w) { return w == 0; }));
        CHECK(std::is_sorted(kv.begin() + full, kv.end(), std::greater<int64_t>()));
      }
      CausalLM reloaded = load_pretrained(dir);
      CausalLM reference(c, at::TensorOptions().dtype(at::kFloat));
      {
        at::NoGradGuard no_grad;
        for (auto& item : reference->named_parameters()) item.value().copy_(model->named_parameters()[item.key()]);
      }
      a.apply(reference);
      at::NoGradGuard no_grad;
      CHECK(max_abs_diff(reloaded->forward(ids), reference->forward(ids)) < 1e-5);
      Assignment widest = a;  // every SWA unit at the widest window: other logits
      widest.windows.clear();
      widest.apply(reference);
      CHECK(max_abs_diff(reloaded->forward(ids), reference->forward(ids)) > 1e-3);
      // The layout the checkpoint declares is the assignment's, in stored order.
      const Assignment declared = declared_assignment(reloaded, dir);
      CHECK(declared.local_windows() == std::vector<int64_t>{8, 4});
      CHECK(declared.kv_cache_bytes(300, 4) == a.kv_cache_bytes(300, 4));
      CHECK(declared.achieved_sparsity() == a.achieved_sparsity());
      // consa reads what it wrote as the same model, and refuses a layout that contradicts itself.
      CHECK(read_hf_config(dir + "/config.json").hybrid_kv_windows == reloaded->config().hybrid_kv_windows);
      auto refused = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& expected) {
        nlohmann::json bad = config;
        edit(bad["consa"]);
        write_text(dir + "/bad.json", bad.dump());
        CHECK_THROWS_WITH(read_hf_config(dir + "/bad.json"), contains(dir + "/bad.json: " + expected));
      };
      refused([](nlohmann::json& x) { x["windows"] = {8, 4, 2}; }, "consa.windows is [8, 4, 2], but");
      refused([](nlohmann::json& x) { x.erase("kv_head_windows"); },
              "a consa layout of several windows needs windows and kv_head_windows");
      refused([](nlohmann::json& x) { x["window"] = 4; }, "consa.window is 4, but the widest window in use is 8");
      refused([&](nlohmann::json& x) { x["kv_head_windows"][1] = {4, 0, 8}; },
              "consa.kv_head_windows[1] must list the full-cache groups (0) first, then windows widest first");
    }
}

namespace {

// A tiny model of `arch` with its family's own attention features.
ModelConfig family_config(Architecture arch) {
  ModelConfig c = tiny_config(3, 4, 2, 8);
  c.arch = arch;
  c.qkv_bias = arch == Architecture::Qwen2;
  c.qk_norm = arch == Architecture::Qwen3;
  return c;
}

// An assignment of `c` with the given per-layer unit flags.
Assignment assignment_of(const ModelConfig& c, GateUnit unit, std::vector<std::vector<bool>> full, int64_t sinks) {
  Assignment a = Assignment::for_model(c);
  a.unit = unit;
  a.swa = AttentionSpan::sliding(6, sinks);
  a.full = full;
  for (const auto& layer : full) a.scores.push_back(std::vector<double>(layer.size(), 0.0));
  return a;
}

bool stock_class(const std::string& name) {
  for (const char* stock : {"LlamaForCausalLM", "MistralForCausalLM", "MinistralForCausalLM", "Qwen2ForCausalLM",
                            "Qwen3ForCausalLM"})
    if (name == stock) return true;
  return false;
}

}  // namespace

TEST_CASE("no Hugging Face export declares a stock class that would run its layout as dense", "[export]") {
  const std::vector<std::pair<Architecture, std::string>> families = {
      {Architecture::Llama, "llama"}, {Architecture::Mistral, "mistral"},
      {Architecture::Qwen2, "qwen2"}, {Architecture::Qwen3, "qwen3"}};
  at::Tensor ids = at::randint(0, 50, {1, 20}, at::TensorOptions().dtype(at::kLong));
  for (const auto& [arch, family] : families) {
    ModelConfig c = family_config(arch);
    CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
    init_random_weights(model, 0.3, 5);
    struct Case {
      std::string name;
      GateUnit unit;
      std::vector<std::vector<bool>> full;
      int64_t sinks;
      bool per_layer;  // expressible by transformers' layer_types
    };
    const std::vector<Case> cases = {
        {"kv_head mixed", GateUnit::KvHead, {{true, false}, {false, false}, {true, true}}, 0, false},
        {"head mixed", GateUnit::Head, {{true, false, true, true}, {false, false, false, false}, {true, true, true, true}}, 0, false},
        {"kv_head by whole layers", GateUnit::KvHead, {{true, true}, {false, false}, {true, true}}, 0, true},
        {"head by whole layers", GateUnit::Head, {{false, false, false, false}, {true, true, true, true}, {false, false, false, false}}, 0, true},
        {"layer", GateUnit::Layer, {{false}, {true}, {false}}, 0, true},
        {"layer with sinks", GateUnit::Layer, {{false}, {true}, {false}}, 2, false},
        {"kv_head by whole layers with sinks", GateUnit::KvHead, {{true, true}, {false, false}, {true, true}}, 2, false},
        {"every layer sliding", GateUnit::Layer, {{false}, {false}, {false}}, 0, true},
    };
    for (const auto& k : cases) {
      INFO(family << ": " << k.name);
      Assignment a = assignment_of(c, k.unit, k.full, k.sinks);
      CHECK(expressible_per_layer(a) == k.per_layer);
      const std::string dir = scratch_dir("hf-class") + "/m";
      export_hf(model, a, dir);
      auto config = nlohmann::json::parse(read_text(dir + "/config.json"));
      const std::string declared = config["architectures"][0];
      if (!k.per_layer) {
        CHECK_FALSE(stock_class(declared));
        CHECK(declared == kHybridArchitecture);
        CHECK(config["model_type"] == kHybridModelType);
        CHECK(config["consa"]["base_model_type"] == family);
        CHECK(config["consa"]["window"] == 6);
        CHECK(config["consa"]["sinks"] == k.sinks);
      } else {
        CHECK(stock_class(declared));
        CHECK_FALSE(config.contains("consa"));
        CHECK(config["sliding_window"] == 6);
        std::vector<std::string> types;
        for (const auto& layer : k.full) types.push_back(layer[0] ? "full_attention" : "sliding_attention");
        const bool all_sliding = std::all_of(k.full.begin(), k.full.end(), [](const auto& l) { return !l[0]; });
        // Mistral's one window covers every layer; with layer_types transformers 5 loads Ministral.
        if (declared == "MistralForCausalLM")
          CHECK_FALSE(config.contains("layer_types"));
        else
          CHECK(config["layer_types"] == nlohmann::json(types));
        if (arch == Architecture::Qwen2 || arch == Architecture::Qwen3) {
          CHECK(declared == (arch == Architecture::Qwen2 ? "Qwen2ForCausalLM" : "Qwen3ForCausalLM"));
          CHECK(config["use_sliding_window"] == true);
        } else {
          CHECK(declared == (all_sliding ? "MistralForCausalLM" : "MinistralForCausalLM"));
        }
      }
      // The model card states the layout, the class's loading line and the KV figures.
      const std::string card = read_text(dir + "/README.md");
      CHECK_THAT(card, contains("| granularity | " + std::string(gate_unit_name(k.unit)) + " |"));
      CHECK_THAT(card, contains("| window, sinks | 6, " + std::to_string(k.sinks) + " |"));
      CHECK_THAT(card, contains("| declared class | `" + declared + "` |"));
      CHECK((card.find("trust_remote_code=True") != std::string::npos) == !k.per_layer);
      {
        // Closed form at 4096 tokens: full KV groups keep every position, sliding ones W + S.
        int64_t positions = 0;
        const Assignment stored = Assignment::load(dir + "/assignment.json");
        for (int64_t l = 0; l < 3; ++l)
          for (int64_t g = 0; g < 2; ++g) positions += stored.kv_head_full(l, g) ? 4096 : 6 + k.sinks;
        std::ostringstream share;
        share << std::fixed << std::setprecision(1) << 100.0 * positions / (3 * 2 * 4096.0) << "% |";
        CHECK_THAT(card, contains("| 4096 | "));
        CHECK_THAT(card, contains(share.str()));
        std::string map;
        for (int64_t l = 0; l < 3; ++l) {
          map += "  " + std::to_string(l) + "  ";
          for (bool f : stored.full[l]) map += f ? 'F' : 'S';
          map += "\n";
        }
        CHECK_THAT(card, contains(map));
      }
      // consa itself reloads every class as the hybrid it describes.
      CausalLM reloaded = load_pretrained(dir);
      CausalLM reference(c, at::TensorOptions().dtype(at::kFloat));
      at::NoGradGuard no_grad;
      for (auto& item : reference->named_parameters()) item.value().copy_(model->named_parameters()[item.key()]);
      a.apply(reference);
      CHECK(max_abs_diff(reloaded->forward(ids), reference->forward(ids)) < 1e-5);
    }
  }
}

TEST_CASE("exports of consa's class carry its remote code, exports of stock classes none", "[export]") {
  namespace fs = std::filesystem;
  const std::string sources = std::string(CONSA_SOURCE_DIR) + "/src/export/hf_remote/";
  const std::vector<std::string> files = {"configuration_consa.py", "modeling_consa.py"};
  const nlohmann::json auto_map = {{"AutoConfig", "configuration_consa.ConsaHybridConfig"},
                                   {"AutoModelForCausalLM", "modeling_consa.ConsaHybridForCausalLM"}};
  ModelConfig c = family_config(Architecture::Qwen3);
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.3, 7);
  const std::string dir = scratch_dir("hf-remote") + "/m";
  auto check_stock = [&](const std::string& what) {
    INFO(what);
    auto config = nlohmann::json::parse(read_text(dir + "/config.json"));
    CHECK(config["architectures"][0] != kHybridArchitecture);
    CHECK_FALSE(config.contains("auto_map"));
    for (const auto& f : files) CHECK_FALSE(fs::exists(dir + "/" + f));
  };
  export_hf(model, assignment_of(c, GateUnit::Layer, {{false}, {true}, {false}}, 0), dir);
  check_stock("whole layers");
  const std::vector<std::pair<std::string, Assignment>> hybrids = {
      {"kv_head", assignment_of(c, GateUnit::KvHead, {{true, false}, {false, false}, {true, true}}, 0)},
      {"head with sinks", assignment_of(c, GateUnit::Head, {{true, false, false, true}, {false, false, false, false},
                                                           {true, true, true, true}}, 2)},
      {"layer with sinks", assignment_of(c, GateUnit::Layer, {{false}, {true}, {false}}, 2)}};
  for (const auto& [what, a] : hybrids) {
    INFO(what);
    export_hf(model, a, dir);  // over the previous export
    auto config = nlohmann::json::parse(read_text(dir + "/config.json"));
    CHECK(config["architectures"][0] == kHybridArchitecture);
    CHECK(config["auto_map"] == auto_map);
    for (const auto& f : files) {
      REQUIRE(fs::exists(dir + "/" + f));
      CHECK(read_text(dir + "/" + f) == read_text(sources + f));  // byte for byte
    }
    // consa's own loader ignores the code and auto_map.
    CHECK(load_pretrained(dir)->config().hybrid_kv_windows == read_hf_config(dir).hybrid_kv_windows);
  }
  // A re-export under a stock class drops the code it no longer needs.
  export_hf(model, assignment_of(c, GateUnit::KvHead, {{true, true}, {false, false}, {true, true}}, 0), dir);
  check_stock("kv_head by whole layers, over a hybrid export");
}

TEST_CASE("a Llama with attention biases and sliding layers declares consa's class", "[export]") {
  ModelConfig c = family_config(Architecture::Llama);
  c.qkv_bias = c.o_bias = true;
  c.layer_window = {0, 6, 0};
  CHECK(hf_class(c).architecture == kHybridArchitecture);
  auto j = to_hf_config(c);
  CHECK(j["consa"]["base_architecture"] == "LlamaForCausalLM");
  ModelConfig back = parse_hf_config(j, "config.json");
  CHECK(back.arch == Architecture::Llama);
  CHECK(back.layer_window == c.layer_window);
  CHECK(back.o_bias);
  c.layer_window = {0, 0, 0};
  CHECK(hf_class(c).architecture == "LlamaForCausalLM");  // dense stays stock
}
