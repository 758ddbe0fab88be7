// consa inspect MODEL_DIR [--prompt-ids 1,2,3] | consa inspect ASSIGNMENT.json
#include <ATen/core/grad_mode.h>

#include <filesystem>
#include <iostream>

#include "commands.h"
#include "consa/tokenizer/tokenizer.h"
#include "consa/core/atomic_file.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/export/assignment.h"
#include "consa/load/pretrained.h"

namespace consa::cli {

int run_inspect(int argc, char** argv) {
  cxxopts::Options options("consa inspect", "Summarise a Hugging Face checkpoint directory.");
  options.positional_help("MODEL_DIR | ASSIGNMENT.json");
  options.add_options()
      ("model", "checkpoint directory (config.json + safetensors)", cxxopts::value<std::string>())
      ("prompt-ids", "comma-separated token ids; prints the most likely next tokens", cxxopts::value<std::string>())
      ("top", "how many next tokens to print", cxxopts::value<int64_t>()->default_value("5"))
      ("dtype", "compute dtype: float32, bfloat16, float16 (default: as stored)", cxxopts::value<std::string>())
      ("device", "cpu, cuda or cuda:N", cxxopts::value<std::string>()->default_value("cpu"))
      ("attention", "attention backend: auto, math, flash", cxxopts::value<std::string>()->default_value("auto"))
      ("logits-out", "with --prompt-ids: write every position's logits, float32 [len, vocab] raw", cxxopts::value<std::string>())
      ("kv-context", "context length for an assignment's KV-cache figures", cxxopts::value<int64_t>()->default_value("4096"))
      ("h,help", "show this help");
  options.parse_positional({"model"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("model"), "consa inspect: missing MODEL_DIR (see consa inspect --help)");

  // An unwritable --logits-out fails now, not after the model ran (an existing file is replaced).
  if (args.count("logits-out")) {
    const std::string logits_path = args["logits-out"].as<std::string>();
    CONSA_CHECK(!std::filesystem::is_directory(logits_path), "--logits-out ", logits_path, ": is a directory; expected a file path");
    check_output_path(logits_path, true, "--logits-out");
  }
  LoadOptions load;
  load.device = parse_device(args["device"].as<std::string>());
  load.attention = parse_attention_impl(args["attention"].as<std::string>());
  if (args.count("dtype")) load.dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
  const std::string dir = args["model"].as<std::string>();
  if (ends_with(dir, ".json")) {
    print_assignment(std::cout, Assignment::load(dir), dir, args["kv-context"].as<int64_t>());
    return 0;
  }
  CausalLM model = load_pretrained(dir, load);
  print_model_summary(std::cout, model, dir);
  if (args.count("prompt-ids")) {
    const int64_t top = args["top"].as<int64_t>();
    CONSA_CHECK(top > 0, "--top must be > 0, got ", top);
    const std::vector<int64_t> prompt = consa::parse_token_ids(args["prompt-ids"].as<std::string>(), "--prompt-ids");
    print_next_tokens(std::cout, model, prompt, top);
    if (args.count("logits-out")) {
      at::NoGradGuard no_grad;
      const at::Tensor logits = model->forward(at::tensor(prompt, at::kLong).unsqueeze(0))[0].to(at::kFloat).cpu().contiguous();
      AtomicFileWriter out(args["logits-out"].as<std::string>());
      out.write(logits.data_ptr(), static_cast<size_t>(logits.numel()) * sizeof(float));
      out.commit();
    }
  }
  return 0;
}

}  // namespace consa::cli
