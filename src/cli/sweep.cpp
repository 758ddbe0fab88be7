// consa sweep RECIPE --targets ... --methods ... --out DIR
#include <cxxopts.hpp>
#include <iostream>

#include "commands.h"
#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "consa/eval/sweep.h"

namespace consa::cli {

int run_sweep(int argc, char** argv) {
  cxxopts::Options options("consa sweep",
                           "Run every (method, target) pair on a recipe's model and tabulate quality against\n"
                           "sparsity. Finished pairs (their eval.json exists) are skipped on a rerun.");
  options.positional_help("RECIPE.yaml [key.sub=value ...]");
  options.add_options()
      ("recipe", "the recipe: model, gates (unit, window, sinks), constraint scope, data", cxxopts::value<std::string>())
      ("overrides", "recipe overrides", cxxopts::value<std::vector<std::string>>())
      ("targets", "SWA fractions", cxxopts::value<std::string>()->default_value("0.25,0.5,0.75,0.875"))
      ("methods", "consa, uniform, random, attention-span, duo", cxxopts::value<std::string>()->default_value("consa,uniform,random,attention-span,duo"))
      ("out", "sweep directory (default: the recipe's output.dir + _sweep)", cxxopts::value<std::string>())
      ("duo-steps", "duo: optimisation steps", cxxopts::value<int64_t>()->default_value("200"))
      ("duo-l1", "duo: weight of sum(alpha)", cxxopts::value<double>()->default_value("0.05"))
      ("seed", "random: the draw; duo: sample order", cxxopts::value<uint64_t>()->default_value("0"))
      ("offset", "uniform: index of the first full-attention unit", cxxopts::value<int64_t>()->default_value("0"))
      ("h,help", "show this help");
  // Evaluation flags, shared with consa eval.
  add_eval_options(options);
  options.parse_positional({"recipe", "overrides"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("recipe"), "consa sweep: missing RECIPE (see consa sweep --help)");
  std::vector<std::string> overrides;
  if (args.count("overrides")) overrides = args["overrides"].as<std::vector<std::string>>();
  const Recipe recipe = load_recipe(args["recipe"].as<std::string>(), overrides);
  SweepOptions o;
  o.targets = parse_number_list(args["targets"].as<std::string>(), "--targets");
  o.methods = parse_name_list(args["methods"].as<std::string>());
  o.out_dir = args.count("out") ? args["out"].as<std::string>() : recipe.output.dir + "_sweep";
  o.eval = eval_options(args, &recipe);
  o.baseline.duo_steps = args["duo-steps"].as<int64_t>();
  o.baseline.duo_l1 = args["duo-l1"].as<double>();
  o.baseline.seed = args["seed"].as<uint64_t>();
  o.baseline.offset = args["offset"].as<int64_t>();
  const SweepSummary s = run_sweep(recipe, o, std::cout);
  std::cout << "\n" << read_text_file(o.out_dir + "/sweep.md") << "\nsweep: " << s.ran << " run, " << s.skipped
            << " done earlier; tables in " << o.out_dir << "/sweep.csv and sweep.md; plots: python3 "
            << "scripts/plot_sweep.py " << o.out_dir << "\n";
  return 0;
}

}  // namespace consa::cli
