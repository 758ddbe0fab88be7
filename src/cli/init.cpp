// consa init: a randomly initialised decoder of a given shape, written as a Hugging Face
// checkpoint (for pretraining with train.mode: dense, or for tests and benchmarks).
#include <ATen/core/grad_mode.h>

#include <unistd.h>

#include <cmath>
#include <iostream>

#include "commands.h"
#include "consa/core/error.h"
#include "consa/load/hf_config.h"
#include "consa/load/pretrained.h"

namespace consa::cli {

int run_init(int argc, char** argv) {
  cxxopts::Options options("consa init", "Write a randomly initialised model of a given shape as a Hugging Face checkpoint.");
  options.add_options()
      ("out", "checkpoint directory to write", cxxopts::value<std::string>())
      ("arch", "llama, mistral, qwen2, qwen3", cxxopts::value<std::string>()->default_value("qwen3"))
      ("vocab", "vocabulary size", cxxopts::value<int64_t>()->default_value("256"))
      ("hidden", "hidden size", cxxopts::value<int64_t>()->default_value("128"))
      ("intermediate", "MLP size", cxxopts::value<int64_t>()->default_value("352"))
      ("layers", "decoder layers", cxxopts::value<int64_t>()->default_value("4"))
      ("heads", "query heads", cxxopts::value<int64_t>()->default_value("8"))
      ("kv-heads", "key/value heads", cxxopts::value<int64_t>()->default_value("2"))
      ("head-dim", "head dimension (default: hidden / heads)", cxxopts::value<int64_t>())
      ("rope-theta", "RoPE base", cxxopts::value<double>()->default_value("10000"))
      ("max-positions", "max_position_embeddings", cxxopts::value<int64_t>()->default_value("4096"))
      ("tie-embeddings", "share the input embedding with the output head")
      ("std", "initialisation standard deviation", cxxopts::value<double>()->default_value("0.02"))
      ("seed", "initialisation seed", cxxopts::value<uint64_t>()->default_value("0"))
      ("overwrite", "replace an existing --out")
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("out"), "consa init: --out DIR is required");
  check_output_path(args["out"].as<std::string>(), args.count("overwrite") > 0, "--out");
  const std::string arch = args["arch"].as<std::string>();
  const std::map<std::string, Architecture> archs = {{"llama", Architecture::Llama}, {"mistral", Architecture::Mistral},
                                                     {"qwen2", Architecture::Qwen2}, {"qwen3", Architecture::Qwen3}};
  CONSA_CHECK(archs.count(arch), "--arch '", arch, "' is not supported; supported: llama, mistral, qwen2, qwen3");
  ModelConfig c;
  c.arch = archs.at(arch);
  c.vocab_size = args["vocab"].as<int64_t>();
  c.hidden_size = args["hidden"].as<int64_t>();
  c.intermediate_size = args["intermediate"].as<int64_t>();
  c.num_layers = args["layers"].as<int64_t>();
  c.num_heads = args["heads"].as<int64_t>();
  c.num_kv_heads = args["kv-heads"].as<int64_t>();
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"--vocab", c.vocab_size}, {"--hidden", c.hidden_size},
                                    {"--intermediate", c.intermediate_size}, {"--layers", c.num_layers},
                                    {"--heads", c.num_heads}, {"--kv-heads", c.num_kv_heads}})
    CONSA_CHECK(value > 0, name, " must be > 0, got ", value);
  c.head_dim = args.count("head-dim") ? args["head-dim"].as<int64_t>() : c.hidden_size / c.num_heads;
  c.qkv_bias = c.arch == Architecture::Qwen2;
  c.qk_norm = c.arch == Architecture::Qwen3;
  c.rope.theta = args["rope-theta"].as<double>();
  c.max_position_embeddings = args["max-positions"].as<int64_t>();
  c.tie_word_embeddings = args.count("tie-embeddings") > 0;
  c.layer_window.assign(c.num_layers, 0);
  const double std_dev = args["std"].as<double>();
  CONSA_CHECK(c.head_dim > 0, "--head-dim must be > 0, got ", c.head_dim);
  CONSA_CHECK(c.max_position_embeddings > 0, "--max-positions must be > 0, got ", c.max_position_embeddings);
  CONSA_CHECK(std::isfinite(c.rope.theta) && c.rope.theta > 0, "--rope-theta must be > 0, got ", c.rope.theta);
  CONSA_CHECK(std::isfinite(std_dev) && std_dev >= 0, "--std must be >= 0, got ", std_dev);
  // The checkpoint must be one its own loader takes: its config.json is read back, as
  // load_pretrained will, before the model is made or anything is written.
  try {
    parse_hf_config(to_hf_config(c), "config.json");
  } catch (const Error& e) {
    fail("consa init: these flags describe a model that consa cannot load (", e.what(), ")");
  }
  {  // refused before allocating, not by the allocator mid-way (the meta model holds no data)
    CausalLM shapes{nullptr};
    try {
      shapes = CausalLM(c, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
    } catch (const std::exception&) {  // sizes whose products overflow 64 bits
      fail("consa init: these flags describe a tensor of more elements than 64 bits can count");
    }
    const double bytes = 4.0 * static_cast<double>(shapes->parameter_count());
    const double ram = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
    CONSA_CHECK(bytes <= ram / 2, "consa init: a float32 model of this shape needs ", bytes, " bytes, more than half of this machine's ",
                ram, " bytes of memory");
  }
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, std_dev, args["seed"].as<uint64_t>());
  const std::string dir = args["out"].as<std::string>();
  save_pretrained(model, dir);
  print_model_summary(std::cout, model, dir);
  return 0;
}

}  // namespace consa::cli
