// consa train RECIPE [key.sub=value ...] [--resume] [--stop-after N] [--nproc-per-node N]
// consa validate RECIPE [key.sub=value ...]
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>

#include "commands.h"
#include "consa/data/batches.h"
#include "consa/data/text_tasks.h"
#include "consa/tokenizer/tokenizer.h"
#include "consa/core/error.h"
#include "consa/data/token_sources.h"
#include "consa/distributed/local_launcher.h"
#include "consa/kernels/fused_ops.h"
#include "consa/load/hf_config.h"
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

// `recipe` with constraint.kv_budget solved for its SWA fraction, where the model's config.json
// is at hand (training solves it again once the model is loaded); `plan` gets the solution, and
// stays empty (units 0) without a budget, in dense mode, or without a config.
Recipe with_budget_resolved(const Recipe& recipe, const ModelConfig* config, KvBudgetPlan* plan) {
  Recipe resolved = recipe;
  if (recipe.constraint.kv_budget.defined() && recipe.train.mode != "dense" && config)
    *plan = resolve_kv_budget(resolved, *config);
  return resolved;
}

// The reach warning for the recipe's target, or for its budget's fraction once solved; nothing
// for a budget not yet solved.
void warn_about_reach(const Recipe& resolved, const KvBudgetPlan& plan) {
  if (resolved.constraint.kv_budget.defined() && resolved.train.mode != "dense" && plan.units == 0) return;
  const std::string reach = target_reach_warning(resolved, resolved.constraint.target, &plan);
  if (!reach.empty()) std::cerr << "consa: warning: " << reach << "\n";
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
  const char* rank = std::getenv("RANK");
  if (!rank || std::string(rank) == "0") {
    const bool have_config = std::filesystem::is_regular_file(std::filesystem::path(recipe.model.path) / "config.json");
    const std::optional<ModelConfig> config =
        have_config && recipe.constraint.kv_budget.defined() ? std::optional(read_hf_config(recipe.model.path)) : std::nullopt;
    KvBudgetPlan plan;
    warn_about_reach(with_budget_resolved(recipe, config ? &*config : nullptr, &plan), plan);
  }
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
  const bool windows = !recipe.gates.narrower_windows.empty();
  std::cout << (windows ? "expected bytes saved  " : "expected SWA fraction ") << outcome.s_hat << " (target "
            << outcome.target << (windows ? " of the savable KV bytes" : "") << ")\n"
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
  use_fused_kernels(parse_kernel_impl(recipe.model.kernels), at::Device(recipe.model.device),
                    recipe.source + ": model.kernels");
  // Open every data source, so that format errors show before a run; ids are checked against the
  // model's vocabulary when its config.json is at hand.
  const bool have_config = std::filesystem::is_regular_file(std::filesystem::path(recipe.model.path) / "config.json");
  const std::optional<ModelConfig> config = have_config ? std::optional(read_hf_config(recipe.model.path)) : std::nullopt;
  const int64_t vocab = config ? config->vocab_size : -1;
  std::string sources;
  // A KV budget becomes its SWA fraction once the model's shape is known.
  KvBudgetPlan plan;
  const Recipe resolved = with_budget_resolved(recipe, config ? &*config : nullptr, &plan);
  warn_about_reach(resolved, plan);
  if (recipe.constraint.kv_budget.defined() && recipe.train.mode != "dense") {
    const KvBudget& b = recipe.constraint.kv_budget;
    std::ostringstream line;
    if (plan.units > 0 && plan.local_unit_bytes.size() > 1)
      line << "# constraint.kv_budget: " << b.bytes << " bytes at " << b.context << " tokens = " << plan.target
           << " of the savable bytes over " << plan.units << " units (dense " << plan.dense_bytes
           << " bytes, all on the narrowest window " << plan.all_swa_bytes << ")\n";
    else if (plan.units > 0)
      line << "# constraint.kv_budget: " << b.bytes << " bytes at " << b.context << " tokens = SWA fraction "
           << plan.target << " of " << plan.units << " units (dense " << plan.dense_bytes << " bytes, all SWA "
           << plan.all_swa_bytes << ")\n";
    else
      line << "# constraint.kv_budget: checked against the model when it is at hand (no config.json at "
           << recipe.model.path << ")\n";
    sources += line.str();
  }
  for (size_t i = 0; i < recipe.data.shards.size(); ++i) {
    auto source = open_token_source(recipe.data.shards[i]);
    if (vocab > 0) source->check_vocabulary(vocab);
    sources += "# data.shards[" + std::to_string(i) + "]: " + source->describe() +
               (vocab > 0 ? ", ids within the vocabulary of " + std::to_string(vocab) : "") + "\n";
  }
  // One sample of every synthetic task at the recipe's length and distance, as training draws
  // them: a sequence too short for the window and the needles fails here, not at step 1.
  if (recipe.data.synthetic_ratio > 0 && vocab > 0) {
    const SyntheticOptions s = synthetic_options(recipe.data, vocab, distance_beyond(recipe.gates.swa, recipe.data.min_distance));
    for (SyntheticTask task : recipe.data.synthetic_tasks) make_synthetic_sample(task, s, 0);
    sources += std::string("# data.synthetic_tasks: a sample of each fits seq_len ") + std::to_string(s.seq_len) +
               (s.text ? " as text in " + s.text->tokenizer().source() + "'s tokens" : std::string()) + "\n";
  } else if (!recipe.data.tokenizer.empty()) {
    load_text_tasks(recipe.data.tokenizer, recipe.data.filler, "data.tokenizer");
  }
  std::cout << recipe_to_yaml(recipe) << sources << "# " << ra.path << ": ok\n";
  return 0;
}

}  // namespace consa::cli
