#pragma once
// A sweep: every (method, target) pair on one recipe's model, each evaluated the same way, with
// the table a user picks a sparsity from. Or, over KV budgets (kv_budgets: bytes per sequence at
// the recipe's constraint.kv_budget context), every (method, budget) pair: consa trains to each
// budget and the baselines meet it; a recipe with gates.windows sweeps budgets only, with consa,
// uniform and random (attention-span and duo score one window). Method "dense" is one run, at
// target 0: the dense model trained for the recipe's recover.steps at recover.lr, so that every
// recovered hybrid sits beside the dense model trained on the same tokens. Each pair has its own
// folder, OUT/<method>_t<target> or OUT/<method>_b<bytes>, finished once its eval.json exists;
// an interrupted sweep resumes where it stopped (a consa training run from its checkpoint).
//   OUT/sweep.csv  one row per pair (plots: scripts/plot_sweep.py)
//   OUT/sweep.md   the same as a Markdown table
#include <ostream>
#include <string>
#include <vector>

#include "consa/eval/baselines.h"
#include "consa/eval/evaluate.h"
#include "consa/train/recipe.h"

namespace consa {

struct SweepOptions {
  std::vector<double> targets = {0.25, 0.5, 0.75, 0.875};
  std::vector<int64_t> kv_budgets;  // when given, instead of targets (bytes per sequence)
  std::vector<std::string> methods = {"consa", "uniform", "random", "attention-span", "duo"};
  std::string out_dir;
  EvalOptions eval;
  BaselineOptions baseline;  // offset, seed, duo settings (unit, window, target come from the recipe)
};

struct SweepRun {
  std::string method;
  double target = 0;
  int64_t kv_budget = 0;  // bytes; 0: a target sweep's run, or "dense"
};
// The runs of a sweep, in order: each method at each target (or budget), "dense" once at 0.
// Refuses an unknown method, a target outside [0, 1], a budget <= 0, "dense" without
// recover.steps, budgets without constraint.kv_budget in the recipe (it gives their context),
// targets with it, and a method that scores one window with gates.windows.
std::vector<SweepRun> sweep_runs(const Recipe& recipe, const SweepOptions& options);

struct SweepSummary {
  int64_t ran = 0, skipped = 0;
};

SweepSummary run_sweep(const Recipe& recipe, const SweepOptions& options, std::ostream& log);

// How a pair's place in the sweep prints: its target, or its budget ("65536 bytes").
std::string sweep_run_label(const SweepRun& run);

// The folder of one pair: "<out>/<method>_t<target>", or "<out>/<method>_b<bytes>" for a budget.
std::string sweep_run_dir(const std::string& out_dir, const std::string& method, double target);
std::string sweep_run_dir(const std::string& out_dir, const SweepRun& run);

// Rebuilds sweep.csv and sweep.md from the finished runs' eval.json files.
void write_sweep_tables(const Recipe& recipe, const SweepOptions& options);

}  // namespace consa
