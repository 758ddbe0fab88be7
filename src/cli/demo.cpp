// consa demo: the built-in default job. Creates a small Llama-family model, writes it as a
// Hugging Face checkpoint, loads it back through the same path users' checkpoints take, checks
// the round trip and decodes a few greedy tokens.
#include <ATen/core/grad_mode.h>

#include <cxxopts.hpp>
#include <iostream>

#include "commands.h"
#include "consa/core/error.h"
#include "consa/load/pretrained.h"

namespace consa::cli {

namespace {

ModelConfig demo_config() {
  ModelConfig c;
  c.arch = Architecture::Llama;
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.intermediate_size = 352;
  c.num_layers = 4;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 2048;
  c.layer_window.assign(c.num_layers, 0);
  return c;
}

}  // namespace

int run_demo(int argc, char** argv) {
  cxxopts::Options options("consa demo", "Create a small model, save it, reload it and decode.");
  options.add_options()
      ("out", "where to write the model", cxxopts::value<std::string>()->default_value("runs/demo/model"))
      ("tokens", "greedy tokens to decode", cxxopts::value<int64_t>()->default_value("8"))
      ("seed", "initialisation seed", cxxopts::value<uint64_t>()->default_value("0"))
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const std::string dir = args["out"].as<std::string>();
  const int64_t tokens = args["tokens"].as<int64_t>();
  CONSA_CHECK(tokens >= 0, "--tokens must be >= 0, got ", tokens);

  CausalLM created(demo_config(), at::TensorOptions().dtype(at::kFloat));
  init_random_weights(created, 0.1, args["seed"].as<uint64_t>());
  save_pretrained(created, dir);
  std::cout << "wrote a random " << architecture_name(created->config().arch) << " checkpoint to "
            << dir << "\n\n";

  CausalLM model = load_pretrained(dir);
  print_model_summary(std::cout, model, dir);

  const std::vector<int64_t> prompt = {1, 17, 42, 7, 99};
  at::NoGradGuard no_grad;
  at::Tensor ids = at::tensor(prompt, at::kLong).unsqueeze(0);
  const double drift = (created->forward(ids) - model->forward(ids)).abs().max().item<double>();
  std::cout << "\nreload check  max |logit(created) - logit(reloaded)| = " << drift << "\n";
  CONSA_CHECK(drift == 0.0, dir, ": reloaded model differs from the one written (", drift, ")");

  std::cout << "prompt ids    ";
  for (int64_t id : prompt) std::cout << id << " ";
  std::cout << "\ngreedy ids    ";
  for (int64_t id : greedy_continue(model, prompt, tokens)) std::cout << id << " ";
  std::cout << "\n";
  return 0;
}

}  // namespace consa::cli
