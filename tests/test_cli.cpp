// The consa command: the demo job runs, inspect prints the summary, and bad input gives one
// line on stderr and a non-zero exit.
#include <algorithm>

#include "catch_compat.h"
#include "helpers.h"

using namespace consa_test;

namespace {
size_t lines(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }
}  // namespace

TEST_CASE("consa demo writes, reloads and decodes a model", "[cli]") {
  std::string out, err;
  const std::string dir = scratch_dir("demo") + "/model";
  REQUIRE(run_consa("demo --out " + dir + " --tokens 4", &out, &err) == 0);
  CHECK_THAT(out, contains("max |logit(created) - logit(reloaded)| = 0"));
  CHECK_THAT(out, contains("architecture  LlamaForCausalLM"));
  CHECK_THAT(out, contains("greedy ids"));
}

TEST_CASE("consa inspect summarises a checkpoint and predicts next tokens", "[cli]") {
  std::string out, err;
  REQUIRE(run_consa("inspect " + fixture("qwen3_norm") + " --prompt-ids 1,2,3 --top 3", &out, &err) == 0);
  CHECK_THAT(out, contains("architecture  Qwen3ForCausalLM"));
  CHECK_THAT(out, contains("heads         4 query, 2 KV (2 per group), head_dim 24"));
  CHECK_THAT(out, contains("next tokens after 3 prompt tokens"));
  REQUIRE(run_consa("inspect " + fixture("mistral_swa"), &out, &err) == 0);
  CHECK_THAT(out, contains("attention     layers 0-1: swa(W=5)"));
}

TEST_CASE("bad input gives a one-line error and a non-zero exit", "[cli]") {
  std::string out, err;
  CHECK(run_consa("inspect /nonexistent/model", &out, &err) == 1);
  CHECK_THAT(err, contains("consa: error: /nonexistent/model: not a directory"));
  CHECK(lines(err) == 1);

  CHECK(run_consa("inspect " + fixture("llama_gqa") + " --prompt-ids 1,x,3", &out, &err) == 1);
  CHECK_THAT(err, contains("--prompt-ids: 'x' is not a token id"));
  CHECK(lines(err) == 1);

  CHECK(run_consa("inspect " + fixture("llama_gqa") + " --prompt-ids 1,500", &out, &err) == 1);
  CHECK_THAT(err, contains("token id 500 is outside the vocabulary of 96"));

  CHECK(run_consa("inspect " + fixture("llama_gqa") + " --device cuda:0 --dtype fp8", &out, &err) == 1);
  CHECK(lines(err) == 1);

  CHECK(run_consa("frobnicate", &out, &err) == 2);
  CHECK_THAT(err, contains("unknown command 'frobnicate'"));
}
