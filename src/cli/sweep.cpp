// consa sweep RECIPE --targets ...|--kv-budgets ... --methods ... --out DIR [--devices cuda:0,cuda:1,...]
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>

#include "commands.h"
#include "consa/core/atomic_file.h"
#include "consa/core/byte_size.h"
#include "consa/core/error.h"
#include "consa/core/executable.h"
#include "consa/eval/sweep.h"
#include "process.h"

namespace consa::cli {

namespace {

// `argv` without the options in `drop` (as `--name value` or `--name=value`).
std::vector<std::string> without_options(const std::vector<std::string>& argv, const std::vector<std::string>& drop) {
  std::vector<std::string> out;
  for (size_t i = 0; i < argv.size(); ++i) {
    bool dropped = false;
    for (const auto& name : drop) {
      if (argv[i] == "--" + name) {
        ++i;  // and its value
        dropped = true;
      } else if (argv[i].rfind("--" + name + "=", 0) == 0) {
        dropped = true;
      }
    }
    if (!dropped) out.push_back(argv[i]);
  }
  return out;
}

// --devices: the pairs not done yet run side by side, one per device, each as `consa sweep` of
// that one pair with model.device set (its output in the pair's folder, sweep.log); then the
// tables are written from every pair's eval.json, as a sequential sweep writes them.
int sweep_on_devices(const std::vector<std::string>& argv, const Recipe& recipe, const SweepOptions& o,
                     const std::vector<std::string>& devices) {
  for (const auto& d : devices) parse_device(d);  // refuse a bad name before starting anything
  CONSA_CHECK(!devices.empty(), "consa sweep: --devices: expected a list such as cuda:0,cuda:1");
  const std::vector<SweepRun> runs = sweep_runs(recipe, o);
  std::vector<SweepRun> pending;
  for (const SweepRun& run : runs) {
    const std::string dir = sweep_run_dir(o.out_dir, run);
    if (std::filesystem::exists(std::filesystem::path(dir) / "eval.json"))
      std::cout << "sweep: " << run.method << " at " << sweep_run_label(run) << ": done earlier (" << dir << "/eval.json)\n";
    else
      pending.push_back(run);
  }
  std::filesystem::create_directories(o.out_dir);
  const std::vector<std::string> base =
      without_options(argv, {"devices", "methods", "targets", "kv-budgets", "out"});
  std::map<pid_t, std::pair<size_t, std::string>> running;  // pid -> {pair, device}
  std::vector<std::string> free_devices(devices.rbegin(), devices.rend());
  size_t next = 0;
  int failures = 0;
  while (next < pending.size() || !running.empty()) {
    while (next < pending.size() && !free_devices.empty()) {
      const SweepRun& p = pending[next];
      const std::string device = free_devices.back();
      free_devices.pop_back();
      const std::string dir = sweep_run_dir(o.out_dir, p);
      std::filesystem::create_directories(dir);
      std::vector<std::string> child = {running_executable()};  // then base: "sweep" and its arguments
      child.insert(child.end(), base.begin(), base.end());
      std::ostringstream target;
      target << p.target;
      // The pair alone: its method at its target, or at its budget (dense: at the sweep's first).
      const std::string budget = std::to_string(p.kv_budget > 0 ? p.kv_budget : o.kv_budgets.empty() ? 0 : o.kv_budgets[0]);
      for (const std::string& extra : std::vector<std::string>{"model.device=" + device, "--methods", p.method,
                                                               o.kv_budgets.empty() ? "--targets" : "--kv-budgets",
                                                               o.kv_budgets.empty() ? target.str() : budget,
                                                               "--out", o.out_dir})
        child.push_back(extra);
      std::cout << "sweep: " << p.method << " at " << sweep_run_label(p) << " on " << device << " -> " << dir << " (log: " << dir
                << "/sweep.log)\n" << std::flush;
      running[spawn_logged(child, dir + "/sweep.log")] = {next, device};
      ++next;
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, 0);
    if (done < 0) break;
    auto it = running.find(done);
    if (it == running.end()) continue;
    const SweepRun& p = pending[it->second.first];
    free_devices.push_back(it->second.second);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ++failures;
      std::cerr << "consa: error: sweep: " << p.method << " at " << sweep_run_label(p) << " on " << it->second.second
                << " failed; see " << sweep_run_dir(o.out_dir, p) << "/sweep.log\n";
    }
    running.erase(it);
  }
  write_sweep_tables(recipe, o);
  std::cout << "\n" << read_text_file(o.out_dir + "/sweep.md") << "\nsweep: " << pending.size() - failures
            << " run on " << devices.size() << " devices, " << runs.size() - pending.size()
            << " done earlier; tables in " << o.out_dir << "/sweep.csv and sweep.md\n";
  return failures == 0 ? 0 : 1;
}

}  // namespace

int run_sweep(int argc, char** argv) {
  cxxopts::Options options("consa sweep",
                           "Run every (method, target) pair on a recipe's model and tabulate quality against\n"
                           "sparsity. Finished pairs (their eval.json exists) are skipped on a rerun.");
  options.positional_help("RECIPE.yaml [key.sub=value ...]");
  options.add_options()
      ("recipe", "the recipe: model, gates (unit, window, sinks), constraint scope, data", cxxopts::value<std::string>())
      ("overrides", "recipe overrides", cxxopts::value<std::vector<std::string>>())
      ("targets", "SWA fractions", cxxopts::value<std::string>()->default_value("0.25,0.5,0.75,0.875"))
      ("kv-budgets", "KV-cache bytes per sequence instead of --targets, e.g. 96MiB,64MiB,32MiB, at the recipe's "
                     "constraint.kv_budget context (a recipe with gates.windows sweeps these)",
       cxxopts::value<std::string>())
      ("methods", "consa, dense, uniform, random, attention-span, duo (default: all but dense, and dense too when the "
                  "recipe has recover.steps: the dense model trained for the same steps)",
       cxxopts::value<std::string>()->default_value("consa,uniform,random,attention-span,duo"))
      ("out", "sweep directory (default: the recipe's output.dir + _sweep)", cxxopts::value<std::string>())
      ("duo-steps", "duo: optimisation steps", cxxopts::value<int64_t>()->default_value("200"))
      ("duo-l1", "duo: weight of sum(alpha)", cxxopts::value<double>()->default_value("0.05"))
      ("seed", "random: the draw; duo: sample order", cxxopts::value<uint64_t>()->default_value("0"))
      ("offset", "uniform: index of the first full-attention unit", cxxopts::value<int64_t>()->default_value("0"))
      ("devices", "run pairs side by side, one per device (e.g. cuda:0,cuda:1; cpu,cpu for CPU cores)", cxxopts::value<std::string>())
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
  CONSA_CHECK(!(args.count("kv-budgets") && args.count("targets")),
              "consa sweep: give --targets or --kv-budgets, not both");
  o.targets = parse_number_list(args["targets"].as<std::string>(), "--targets");
  if (args.count("kv-budgets")) {
    o.targets.clear();
    for (const std::string& item : parse_name_list(args["kv-budgets"].as<std::string>()))
      o.kv_budgets.push_back(parse_byte_size(item, "--kv-budgets"));
    CONSA_CHECK(!o.kv_budgets.empty(), "consa sweep: --kv-budgets: expected a list such as 96MiB,64MiB");
  }
  o.methods = parse_name_list(args["methods"].as<std::string>());
  if (args["methods"].has_default() && recipe.recover.steps > 0) o.methods.insert(o.methods.begin() + 1, "dense");
  // Only consa's gates train towards the targets.
  if (std::find(o.methods.begin(), o.methods.end(), "consa") != o.methods.end() && o.kv_budgets.empty())
    for (double t : o.targets) {
      const std::string reach = target_reach_warning(recipe, t);
      if (!reach.empty()) std::cerr << "consa: warning: --targets: " << reach << "\n";
    }
  o.out_dir = args.count("out") ? args["out"].as<std::string>() : recipe.output.dir + "_sweep";
  o.eval = eval_options(args, &recipe);
  o.baseline.duo_steps = args["duo-steps"].as<int64_t>();
  o.baseline.duo_l1 = args["duo-l1"].as<double>();
  o.baseline.seed = args["seed"].as<uint64_t>();
  o.baseline.offset = args["offset"].as<int64_t>();
  if (args.count("devices"))
    return sweep_on_devices(std::vector<std::string>(argv, argv + argc), recipe, o,
                            parse_name_list(args["devices"].as<std::string>()));
  const SweepSummary s = run_sweep(recipe, o, std::cout);
  std::cout << "\n" << read_text_file(o.out_dir + "/sweep.md") << "\nsweep: " << s.ran << " run, " << s.skipped
            << " done earlier; tables in " << o.out_dir << "/sweep.csv and sweep.md; plots: python3 "
            << "scripts/plot_sweep.py " << o.out_dir << "\n";
  return 0;
}

}  // namespace consa::cli
