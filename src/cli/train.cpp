// consa train RECIPE [key.sub=value ...] [--resume] [--stop-after N] [--nproc-per-node N]
// consa validate RECIPE [key.sub=value ...]
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "commands.h"
#include "consa/core/error.h"
#include "consa/distributed/local_launcher.h"
#include "consa/train/trainer.h"

namespace consa::cli {

namespace {

struct RecipeArgs {
  std::string path;
  std::vector<std::string> overrides;
};

// The options every recipe command takes: RECIPE [key.sub=value ...] and --help.
cxxopts::Options recipe_options(const char* command, const char* description) {
  cxxopts::Options options(std::string("consa ") + command, description);
  options.positional_help("RECIPE [key.sub=value ...]");
  options.add_options()("args", "recipe and overrides", cxxopts::value<std::vector<std::string>>())(
      "h,help", "show this help");
  options.parse_positional({"args"});
  return options;
}

RecipeArgs recipe_args(cxxopts::ParseResult& args, const char* command) {
  CONSA_CHECK(args.count("args"), "consa ", command, ": missing RECIPE (see consa ", command, " --help)");
  auto positional = args["args"].as<std::vector<std::string>>();
  RecipeArgs r{positional.front(), {positional.begin() + 1, positional.end()}};
  for (const auto& o : r.overrides)
    CONSA_CHECK(o.find('=') != std::string::npos, "consa ", command, ": '", o,
                "' is not an override; expected key.sub=value");
  return r;
}

}  // namespace

// `--nproc-per-node N` (or `=N`) among argv: N, and argv without it; 0 when absent.
int take_nproc_per_node(std::vector<std::string>& argv) {
  for (size_t i = 1; i < argv.size(); ++i) {
    std::string value;
    size_t count = 0;
    if (argv[i] == "--nproc-per-node" && i + 1 < argv.size()) {
      value = argv[i + 1];
      count = 2;
    } else if (argv[i].rfind("--nproc-per-node=", 0) == 0) {
      value = argv[i].substr(std::strlen("--nproc-per-node="));
      count = 1;
    } else {
      continue;
    }
    char* end = nullptr;
    const long n = std::strtol(value.c_str(), &end, 10);
    CONSA_CHECK(end != value.c_str() && *end == '\0' && n >= 1 && n <= 1024, "consa train: --nproc-per-node: expected a rank count of 1 or more, got '",
                value, "'");
    argv.erase(argv.begin() + static_cast<std::ptrdiff_t>(i), argv.begin() + static_cast<std::ptrdiff_t>(i + count));
    return static_cast<int>(n);
  }
  return 0;
}

int run_train(int argc, char** argv) {
  std::vector<std::string> all(argv, argv + argc);
  if (const int nproc = take_nproc_per_node(all); nproc > 0) {
    CONSA_CHECK(std::getenv("RANK") == nullptr, "consa train: --nproc-per-node: this process already runs under a launcher (RANK is set)");
    all.insert(all.begin(), "consa");  // argv[0] of the ranks; `train` follows
    return distributed::launch_local_ranks(nproc, all);
  }
  cxxopts::Options options = recipe_options("train", "Run a ConSA training recipe.");
  options.add_options()
      ("resume", "continue from OUTPUT_DIR/checkpoint.pt")
      ("overwrite", "replace an earlier run in OUTPUT_DIR")
      ("stop-after", "checkpoint and exit after N steps (pre-emptible jobs)", cxxopts::value<int64_t>()->default_value("-1"))
      ("nproc-per-node", "start N local ranks of a data-parallel job (as torchrun does; docs/distributed.md)", cxxopts::value<int>());
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  RecipeArgs ra = recipe_args(args, "train");
  Recipe recipe = load_recipe(ra.path, ra.overrides);
  TrainControl control;
  control.resume = args.count("resume") > 0;
  control.overwrite = args.count("overwrite") > 0;
  control.stop_after = args["stop-after"].as<int64_t>();
  TrainOutcome outcome = run_training(recipe, control);
  if (!outcome.main_process) return 0;  // rank 0 reports
  if (!outcome.finished) {
    std::cout << "stopped after step " << outcome.global_step << "; continue with --resume\n";
    return 0;
  }
  if (recipe.train.mode == "dense") {
    std::cout << "dense training done: weights in " << recipe.output.dir << "/model\n";
    return 0;
  }
  std::cout << "expected SWA fraction " << outcome.s_hat << " (target " << outcome.target << ")\n"
            << "per layer            ";
  for (int64_t l = 0; l < outcome.layer_s_hat.size(0); ++l) std::cout << " " << outcome.layer_s_hat[l].item<double>();
  std::cout << "\n";
  std::cout << "binarized             " << outcome.achieved_sparsity << " of units on SWA (export.rule "
            << binarize_rule_name(recipe.exporting.rule) << ", see assignment.json)\n";
  if (outcome.heldout_ce >= 0) std::cout << "held-out ce (gated)   " << outcome.heldout_ce << "\n";
  std::cout << "outputs in            " << recipe.output.dir << "\n";
  return 0;
}

int run_validate(int argc, char** argv) {
  cxxopts::Options options = recipe_options("validate", "Check a recipe without running it; prints it resolved.");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  RecipeArgs ra = recipe_args(args, "validate");
  Recipe recipe = load_recipe(ra.path, ra.overrides);
  std::cout << recipe_to_yaml(recipe) << "# " << ra.path << ": ok\n";
  return 0;
}

}  // namespace consa::cli
