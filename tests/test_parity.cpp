// Logits parity with Hugging Face transformers on the committed fixtures (one per supported
// architecture variant; scripts/make_parity_fixtures.py), fp32 on the CPU, tolerance 1e-4.
#include <ATen/core/grad_mode.h>

#include <filesystem>
#include <iostream>

#include "catch_compat.h"
#include "consa/load/pretrained.h"
#include "consa/load/safetensors.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
namespace fs = std::filesystem;

namespace {

const char* const kFixtures[] = {"llama_gqa", "llama3_tied_mha", "mistral_swa", "qwen2_bias", "qwen3_norm"};

struct Reference {
  at::Tensor input_ids, logits, dense_logits;
};

Reference reference(const std::string& dir) {
  SafetensorsFile f = SafetensorsFile::open(dir + "/reference.safetensors");
  return {f.tensor("input_ids"), f.tensor("logits"), f.tensor("dense_logits")};
}

at::Tensor consa_logits(const std::string& dir) {
  LoadOptions opts;
  opts.dtype = at::kFloat;
  opts.attention = AttentionImpl::Math;
  CausalLM model = load_pretrained(dir, opts);
  at::NoGradGuard no_grad;
  return model->forward(reference(dir).input_ids);
}

}  // namespace

TEST_CASE("fp32 logits match transformers for every fixture", "[parity]") {
  for (const char* name : kFixtures) {
    const std::string dir = fixture(name);
    const Reference ref = reference(dir);
    const double diff = max_abs_diff(consa_logits(dir), ref.logits);
    std::cout << "parity cpu fp32 " << name << ": max |logit - HF| = " << diff << "\n";
    INFO(name);
    CHECK(diff <= 1e-4);
  }
}

TEST_CASE("sliding-window layers matter, and full attention matches transformers too", "[parity]") {
  for (const char* name : {"mistral_swa", "qwen2_bias"}) {
    const std::string dir = fixture(name);
    const Reference ref = reference(dir);
    LoadOptions opts;
    opts.dtype = at::kFloat;
    CausalLM model = load_pretrained(dir, opts);
    at::NoGradGuard no_grad;
    at::Tensor windowed = model->forward(ref.input_ids);
    for (int64_t l = 0; l < model->num_layers(); ++l)
      for (auto& span : model->attention(l).group_spans) span = AttentionSpan::full();
    at::Tensor dense = model->forward(ref.input_ids);
    INFO(name);
    CHECK(max_abs_diff(windowed, ref.dense_logits) > 1.0);  // the fixture can tell the two apart
    CHECK(max_abs_diff(dense, ref.dense_logits) <= 1e-4);
  }
}

TEST_CASE("a legacy rope_theta + rope_scaling config gives the same logits", "[parity]") {
  const std::string src = fixture("llama3_tied_mha");
  const std::string dir = scratch_dir("legacy");
  for (const auto& entry : fs::directory_iterator(src)) fs::copy(entry.path(), dir / entry.path().filename());
  auto config = nlohmann::json::parse(read_text(src + "/config.json"));
  nlohmann::json rope = config["rope_parameters"];
  config.erase("rope_parameters");
  config["rope_theta"] = rope["rope_theta"];
  rope.erase("rope_theta");
  rope["type"] = rope["rope_type"];
  rope.erase("rope_type");
  config["rope_scaling"] = rope;
  write_text(dir + "/config.json", config.dump());
  CHECK(max_abs_diff(consa_logits(dir), reference(src).logits) <= 1e-4);
}
