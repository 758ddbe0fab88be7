// consa export RUN_DIR --format hf --out DIR
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "consa/core/error.h"
#include "consa/export/hf_export.h"
#include "consa/load/pretrained.h"
#include "consa/train/recipe.h"

namespace consa::cli {
namespace fs = std::filesystem;

int run_export(int argc, char** argv) {
  cxxopts::Options options("consa export", "Export a training run's model under its binarized assignment.");
  options.positional_help("RUN_DIR");
  options.add_options()
      ("run", "output.dir of a consa train run", cxxopts::value<std::string>())
      ("format", "hf (Hugging Face safetensors + config.json + assignment.json)", cxxopts::value<std::string>()->default_value("hf"))
      ("out", "directory to write", cxxopts::value<std::string>())
      ("h,help", "show this help");
  options.parse_positional({"run"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("run"), "consa export: missing RUN_DIR (see consa export --help)");
  CONSA_CHECK(args.count("out"), "consa export: --out DIR is required");
  const std::string format = args["format"].as<std::string>();
  CONSA_CHECK(format == "hf", "consa export: --format '", format, "' is not available; supported: hf");
  const fs::path run = args["run"].as<std::string>();
  const std::string assignment_path = (run / "assignment.json").string();
  CONSA_CHECK(fs::exists(assignment_path), assignment_path, ": not found (is ", run.string(),
              " the output.dir of a finished consa train run?)");
  Assignment assignment = Assignment::load(assignment_path);
  // Trained weights live in RUN_DIR/model; gates-only runs use the recipe's checkpoint.
  std::string model_dir = (run / "model").string();
  if (!fs::exists(model_dir)) model_dir = load_recipe((run / "recipe.yaml").string()).model.path;
  CausalLM model = load_pretrained(model_dir);
  const std::string checksum = weights_checksum(model);
  CONSA_CHECK(checksum == assignment.weights_checksum, assignment_path, ": learned on weights ",
              assignment.weights_checksum, " but ", model_dir, " holds ", checksum);
  const std::string out = args["out"].as<std::string>();
  export_hf(model, assignment, out);
  std::cout << "exported " << model_dir << " under " << assignment_path << " to " << out << " ("
            << gate_unit_name(assignment.unit) << " units, " << assignment.achieved_sparsity() << " on SWA)\n";
  return 0;
}

}  // namespace consa::cli
