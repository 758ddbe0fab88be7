// config.json parsing: supported variants map to the right hyper-parameters, unsupported
// options are refused with an error that lists what is supported.
#include <cmath>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/load/hf_config.h"
#include "consa/model/rope.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
using json = nlohmann::json;

namespace {

json llama_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0})");
}

}  // namespace

TEST_CASE("a plain Llama config maps onto ModelConfig", "[config]") {
  ModelConfig c = parse_hf_config(llama_config(), "cfg.json");
  CHECK(c.arch == Architecture::Llama);
  CHECK(c.head_dim == 16);
  CHECK(c.group_size() == 2);
  CHECK(!c.qkv_bias);
  CHECK(!c.qk_norm);
  CHECK(c.layer_window == std::vector<int64_t>{0, 0, 0});
  CHECK(c.rope.type == "default");
}

TEST_CASE("unsupported options are refused, naming the file and the supported values", "[config]") {
  json j = llama_config();
  SECTION("unknown architecture") {
    j["architectures"] = {"GPT2LMHeadModel"};
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"),
                      contains("cfg.json: unsupported architecture 'GPT2LMHeadModel'; supported: LlamaForCausalLM, "
                               "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"));
  }
  SECTION("quantization_config") {
    j["quantization_config"] = {{"quant_method", "gptq"}};
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"), contains("quantization_config is not supported"));
  }
  SECTION("partial rotary") {
    j["partial_rotary_factor"] = 0.5;
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"), contains("partial_rotary_factor 0.5 is not supported"));
  }
  SECTION("unknown rope type, old and new spelling") {
    j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"),
                      contains("unsupported rope type 'yarn'; supported: default, linear, llama3"));
    j.erase("rope_scaling");
    j["rope_parameters"] = {{"rope_type", "dynamic"}, {"rope_theta", 1e4}, {"factor", 2.0}};
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"), contains("cfg.json: rope_parameters: unsupported rope type 'dynamic'"));
  }
  SECTION("missing and ill-typed keys") {
    j.erase("hidden_size");
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"), contains("cfg.json: missing required key 'hidden_size'"));
    j["hidden_size"] = -3;
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"), contains("'hidden_size' must be a positive integer, got -3"));
  }
  SECTION("llama3 scaling without its parameters") {
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"), contains("rope type 'llama3' needs 'low_freq_factor'"));
  }
  SECTION("GQA heads that do not divide") {
    j["num_key_value_heads"] = 3;
    CHECK_THROWS_WITH(parse_hf_config(j, "cfg.json"), contains("must be a multiple of num_key_value_heads (3)"));
  }
  SECTION("a config file that does not exist or is not JSON") {
    const std::string dir = scratch_dir("cfg");
    CHECK_THROWS_WITH(read_hf_config(dir), contains(dir + "/config.json: not found"));
    write_text(dir + "/config.json", "{ nope");
    CHECK_THROWS_WITH(read_hf_config(dir), contains(dir + "/config.json: not valid JSON"));
  }
}

TEST_CASE("rope given as rope_theta + rope_scaling equals rope_parameters", "[config]") {
  json legacy = llama_config();
  legacy["rope_theta"] = 500000.0;
  legacy["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  json modern = llama_config();
  modern.erase("rope_theta");
  modern["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                               {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                               {"original_max_position_embeddings", 64}};
  ModelConfig a = parse_hf_config(legacy, "legacy"), b = parse_hf_config(modern, "modern");
  CHECK(a.rope.type == "llama3");
  CHECK(b.rope.type == "llama3");
  CHECK(rope_inv_freq(a.rope, 16).equal(rope_inv_freq(b.rope, 16)));
}

TEST_CASE("rope_parameters and rope_scaling together: rope_scaling wins, as in transformers 5", "[config]") {
  json both = llama_config();
  both.erase("rope_theta");
  both["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  both["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 4.0}};
  const ModelConfig c = parse_hf_config(both, "both");
  CHECK(c.rope.type == "linear");
  CHECK(c.rope.factor == 4.0);
  CHECK(c.rope.theta == 500000.0);  // no theta in rope_scaling: rope_parameters' (no top-level rope_theta)
  both["rope_theta"] = 10000.0;
  CHECK(parse_hf_config(both, "both").rope.theta == 10000.0);
  // A null rope_scaling beside rope_parameters (what consa and transformers 5 write) changes nothing.
  both["rope_scaling"] = nullptr;
  CHECK(parse_hf_config(both, "both").rope.type == "default");
  CHECK(parse_hf_config(both, "both").rope.theta == 500000.0);
}

TEST_CASE("llama3 inverse frequencies follow the closed form", "[config]") {
  RopeConfig rope;
  rope.type = "llama3";
  rope.theta = 500000.0;
  rope.factor = 8.0;
  rope.low_freq_factor = 1.0;
  rope.high_freq_factor = 4.0;
  rope.original_max_position_embeddings = 64;
  const int64_t dim = 32;
  at::Tensor got = rope_inv_freq(rope, dim);
  for (int64_t i = 0; i < dim / 2; ++i) {
    // Independent double-precision evaluation of Llama 3's schedule.
    const double base = 1.0 / std::pow(rope.theta, 2.0 * i / dim);
    const double wavelen = 2 * M_PI / base;
    const double low_wavelen = 64 / 1.0, high_wavelen = 64 / 4.0;
    double expected;
    if (wavelen < high_wavelen) expected = base;
    else if (wavelen > low_wavelen) expected = base / 8.0;
    else {
      const double smooth = (64 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1 - smooth) * base / 8.0 + smooth * base;
    }
    CHECK(got[i].item<double>() == Approx(expected).epsilon(1e-5));
  }
  rope.type = "linear";
  CHECK(rope_inv_freq(rope, dim)[3].item<double>() == Approx(1.0 / std::pow(5e5, 6.0 / 32) / 8.0).epsilon(1e-5));
}

TEST_CASE("sliding-window layers are read from each family's keys", "[config]") {
  json mistral = llama_config();
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["sliding_window"] = 4096;
  CHECK(parse_hf_config(mistral, "m").layer_window == std::vector<int64_t>{4096, 4096, 4096});

  json qwen2 = llama_config();
  qwen2["architectures"] = {"Qwen2ForCausalLM"};
  qwen2["sliding_window"] = 32;
  qwen2["max_window_layers"] = 1;
  CHECK(parse_hf_config(qwen2, "q").layer_window == std::vector<int64_t>{0, 0, 0});  // not enabled
  qwen2["use_sliding_window"] = true;
  ModelConfig q = parse_hf_config(qwen2, "q");
  CHECK(q.layer_window == std::vector<int64_t>{0, 32, 32});
  CHECK(q.qkv_bias);
  CHECK(!q.o_bias);

  json typed = qwen2;
  typed["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention"};
  CHECK(parse_hf_config(typed, "t").layer_window == std::vector<int64_t>{32, 0, 32});
  typed["layer_types"] = {"sliding_attention", "chunked_attention", "full_attention"};
  CHECK_THROWS_WITH(parse_hf_config(typed, "t"),
                    contains("layer_types[1] is 'chunked_attention'; supported: full_attention, sliding_attention"));
}

TEST_CASE("to_hf_config round-trips through the parser", "[config]") {
  json j = llama_config();
  j["architectures"] = {"Qwen3ForCausalLM"};
  j["head_dim"] = 24;
  j["tie_word_embeddings"] = true;
  j["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
  j["sliding_window"] = 8;
  ModelConfig a = parse_hf_config(j, "a");
  ModelConfig b = parse_hf_config(to_hf_config(a), "b");
  CHECK(b.arch == Architecture::Qwen3);
  CHECK(b.head_dim == 24);
  CHECK(b.qk_norm);
  CHECK(b.tie_word_embeddings);
  CHECK(b.layer_window == a.layer_window);
  CHECK(b.num_kv_heads == a.num_kv_heads);
  CHECK(b.rope.theta == a.rope.theta);
}

TEST_CASE("a hybrid consa entry with missing or mistyped members is refused naming them", "[config]") {
  json j = llama_config();
  j["architectures"] = {"ConsaHybridForCausalLM"};
  j["consa"] = json::parse(R"({"base_architecture": "LlamaForCausalLM", "granularity": "head", "window": 4,
                               "full_attention_kv_heads": [1, 2, 0], "full_attention_heads": [[0], [0, 3], []]})");
  CHECK(parse_hf_config(j, "h.json").hybrid_sinks == 0);
  // Found by fuzzing (tests/fuzz): a const operator[] of the missing key read past the map.
  json no_heads = j;
  no_heads["consa"].erase("full_attention_heads");
  CHECK_THROWS_WITH(parse_hf_config(no_heads, "h.json"), contains("h.json: consa.full_attention_heads must list"));
  json no_kv = j;
  no_kv["consa"].erase("full_attention_kv_heads");
  CHECK_THROWS_WITH(parse_hf_config(no_kv, "h.json"), contains("h.json: consa.full_attention_kv_heads must be a list"));
  j["consa"]["sinks"] = "2";
  CHECK_THROWS_WITH(parse_hf_config(j, "h.json"), contains("h.json: consa.sinks must be a non-negative integer, got \"2\""));
  j["consa"]["sinks"] = -1;
  CHECK_THROWS_WITH(parse_hf_config(j, "h.json"), contains("consa.sinks must be a non-negative integer, got -1"));
}
