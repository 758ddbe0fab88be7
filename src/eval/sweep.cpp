#include "consa/eval/sweep.h"

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <map>
#include <sstream>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "consa/gate/kv_budget.h"
#include "consa/load/hf_config.h"
#include "consa/load/pretrained.h"
#include "consa/train/trainer.h"

namespace consa {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string target_label(double target) {
  std::ostringstream s;
  s << target;
  return s.str();
}

// Evaluates `model` under `layout` and writes eval.json (the run's "finished" mark).
void evaluate_run(CausalLM& model, const Assignment& layout, const SweepOptions& o, const std::string& dir,
                  const SweepRun& run, double seconds) {
  layout.apply(model);
  EvalReport report = evaluate(model_logits(model), layout, model->config().vocab_size, o.eval);
  report.model = dir;
  json j = report.to_json();
  j["method"] = run.method;
  // A budget's run: the fraction it came to (of units, or of the savable bytes with several windows).
  j["target"] = run.kv_budget > 0 ? layout.target : run.target;
  j["kv_budget"] = run.kv_budget;
  j["allocation_seconds"] = seconds;
  write_file_atomically((fs::path(dir) / "eval.json").string(), j.dump(2) + "\n");
}

}  // namespace

std::string sweep_run_label(const SweepRun& run) {
  return run.kv_budget > 0 ? std::to_string(run.kv_budget) + " bytes" : target_label(run.target);
}

std::string sweep_run_dir(const std::string& out_dir, const std::string& method, double target) {
  return (fs::path(out_dir) / (method + "_t" + target_label(target))).string();
}

std::string sweep_run_dir(const std::string& out_dir, const SweepRun& run) {
  if (run.kv_budget > 0) return (fs::path(out_dir) / (run.method + "_b" + std::to_string(run.kv_budget))).string();
  return sweep_run_dir(out_dir, run.method, run.target);
}

std::vector<SweepRun> sweep_runs(const Recipe& recipe, const SweepOptions& o) {
  std::vector<SweepRun> runs;
  const bool budgets = !o.kv_budgets.empty();
  CONSA_CHECK(!budgets || recipe.constraint.kv_budget.defined(), recipe.source,
              ": sweep --kv-budgets needs constraint.kv_budget in the recipe (its context and element_bytes say "
              "what the bytes are for)");
  CONSA_CHECK(budgets || !recipe.constraint.kv_budget.defined(), recipe.source,
              ": constraint.kv_budget is set: sweep --kv-budgets B1,B2,... at its context, or remove it to sweep "
              "--targets");
  for (double t : o.targets) CONSA_CHECK(t >= 0 && t <= 1, "sweep: target ", t, " is outside [0, 1]");
  for (int64_t b : o.kv_budgets) CONSA_CHECK(b > 0, "sweep: KV budget ", b, " must be > 0 bytes");
  for (const std::string& method : o.methods) {
    if (method == "dense") {
      CONSA_CHECK(recipe.recover.steps > 0, recipe.source,
                  ": sweep method dense trains the dense model for recover.steps, which is 0; set recover.steps "
                  "(the recovery that consa runs get)");
      runs.push_back({method, 0.0});
      continue;
    }
    if (method != "consa") {
      const BaselineMethod baseline = parse_baseline_method(method);  // refuse unknown names before any work
      CONSA_CHECK(recipe.gates.narrower_windows.empty() || baseline == BaselineMethod::Uniform ||
                      baseline == BaselineMethod::Random,
                  recipe.source, ": sweep method ", method, " scores one window; with gates.windows sweep consa, "
                  "dense, uniform and random");
    }
    if (budgets) {
      for (int64_t bytes : o.kv_budgets) runs.push_back({method, 0.0, bytes});
    } else {
      for (double target : o.targets) runs.push_back({method, target});
    }
  }
  return runs;
}

SweepSummary run_sweep(const Recipe& recipe, const SweepOptions& o, std::ostream& log) {
  CONSA_CHECK(!o.out_dir.empty(), "sweep: an output directory is required");
  const std::vector<SweepRun> runs = sweep_runs(recipe, o);
  // Every budget must be reachable on this model before the first run starts.
  if (!o.kv_budgets.empty()) {
    const ModelConfig config = read_hf_config(recipe.model.path);
    for (int64_t bytes : o.kv_budgets) {
      KvBudget budget = recipe.constraint.kv_budget;
      budget.bytes = bytes;
      plan_kv_budget(config, recipe.gates, budget, "sweep --kv-budgets " + std::to_string(bytes));
    }
  }
  fs::create_directories(o.out_dir);
  SweepSummary summary;
  std::unique_ptr<CausalLM> base;  // the recipe's model, loaded once for the baselines
  for (const SweepRun& run : runs) {
    const std::string& method = run.method;
    const std::string dir = sweep_run_dir(o.out_dir, run);
    const std::string at = sweep_run_label(run);
    if (fs::exists(fs::path(dir) / "eval.json")) {
      log << "sweep: " << method << " at " << at << ": done earlier (" << dir << "/eval.json)\n";
      ++summary.skipped;
      continue;
    }
    log << "sweep: " << method << " at " << at << " -> " << dir << "\n";
    fs::create_directories(dir);
    const auto start = std::chrono::steady_clock::now();
    if (method == "consa" || method == "dense") {
      Recipe r = recipe;
      r.constraint.target = run.target;
      if (run.kv_budget > 0) r.constraint.kv_budget.bytes = run.kv_budget;
      r.output.dir = dir;
      TrainControl control;
      if (method == "dense") {  // the recovery's steps, learning rate and sequences, on the dense model
        r.constraint.kv_budget = {};  // no gates: nothing to constrain
        r.train.mode = "dense";
        r.train.steps = recipe.recover.steps;
        r.optimizer.lr = recipe.recover.lr;
        control.first_step = recipe.train.steps;
      }
      control.resume = fs::exists(fs::path(dir) / "checkpoint.pt");
      run_training(r, control);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const std::string model_dir = fs::exists(fs::path(dir) / "model") ? dir + "/model" : recipe.model.path;
      CausalLM model = load_pretrained(model_dir, model_load_options(recipe));
      evaluate_run(model, Assignment::load(dir + "/assignment.json"), o, dir, run, seconds);
    } else {
      if (!base) base = std::make_unique<CausalLM>(load_pretrained(recipe.model.path, model_load_options(recipe)));
      BaselineOptions b = o.baseline;
      b.unit = recipe.gates.unit;
      b.swa = recipe.gates.swa;
      b.scope = recipe.constraint.scope;
      b.target = run.target;
      b.data = recipe.data;
      if (run.kv_budget > 0) {
        b.kv_budget = recipe.constraint.kv_budget;
        b.kv_budget.bytes = run.kv_budget;
        b.narrower_windows = recipe.gates.narrower_windows;
      }
      Assignment a = make_baseline(parse_baseline_method(method), *base, b);
      a.save(dir + "/assignment.json", recipe.exporting.kv_context);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      evaluate_run(*base, a, o, dir, run, seconds);
    }
    ++summary.ran;
  }
  write_sweep_tables(recipe, o);
  return summary;
}

void write_sweep_tables(const Recipe& recipe, const SweepOptions& o) {
  std::vector<json> rows;
  for (const SweepRun& run : sweep_runs(recipe, o)) {
    const fs::path file = fs::path(sweep_run_dir(o.out_dir, run)) / "eval.json";
    if (fs::exists(file)) rows.push_back(json::parse(read_text_file(file.string())));
  }
  // Columns: accuracy per (task, length) and overall per length; KV bytes at each length.
  std::vector<std::string> task_length_keys;
  std::vector<int64_t> lengths;
  for (const json& r : rows)
    for (const json& c : r["retrieval"]) {
      const std::string key = c["task"].get<std::string>() + "_" + std::to_string(c["length"].get<int64_t>());
      if (std::find(task_length_keys.begin(), task_length_keys.end(), key) == task_length_keys.end())
        task_length_keys.push_back(key);
      const int64_t len = c["length"].get<int64_t>();
      if (std::find(lengths.begin(), lengths.end(), len) == lengths.end()) lengths.push_back(len);
    }
  auto accuracy = [](const json& r, const std::function<bool(const json&)>& pick) {
    double correct = 0, total = 0;
    for (const json& c : r["retrieval"])
      if (pick(c)) correct += c["correct"].get<double>(), total += c["total"].get<double>();
    return total > 0 ? correct / total : 0.0;
  };
  auto kv = [](const json& r, int64_t len, const char* field) -> int64_t {
    for (const json& k : r["kv_cache"])
      if (k["context"] == len) return k[field].get<int64_t>();
    return 0;
  };

  std::ostringstream csv;
  csv << "method,target,achieved_sparsity,perplexity,retrieval_accuracy";
  for (const auto& k : task_length_keys) csv << ",acc_" << k;
  for (int64_t len : lengths) csv << ",acc_" << len;
  for (int64_t len : lengths) csv << ",kv_bytes_" << len << ",dense_kv_bytes_" << len;
  csv << ",kv_budget,allocation_seconds,run_dir\n";
  for (const json& r : rows) {
    csv << r["method"].get<std::string>() << "," << r["target"] << "," << r["achieved_sparsity"] << ","
        << (r["perplexity"].is_null() ? "" : r["perplexity"].dump()) << "," << r["retrieval_accuracy"];
    for (const auto& k : task_length_keys)
      csv << "," << accuracy(r, [&](const json& c) {
        return c["task"].get<std::string>() + "_" + std::to_string(c["length"].get<int64_t>()) == k;
      });
    for (int64_t len : lengths) csv << "," << accuracy(r, [&](const json& c) { return c["length"] == len; });
    for (int64_t len : lengths) csv << "," << kv(r, len, "bytes") << "," << kv(r, len, "dense_bytes");
    csv << "," << r.value("kv_budget", int64_t{0}) << "," << r["allocation_seconds"] << ","
        << r["model"].get<std::string>() << "\n";
  }
  write_file_atomically((fs::path(o.out_dir) / "sweep.csv").string(), csv.str());

  std::ostringstream md;
  const bool budgets = !o.kv_budgets.empty();
  md << "| method |" << (budgets ? " KV budget |" : "") << " target | achieved | perplexity |";
  for (int64_t len : lengths) md << " retrieval @" << len << " |";
  const int64_t kv_len = lengths.empty() ? 0 : lengths.back();
  md << " KV @" << kv_len << " (of dense) | time (s) |\n| --- |" << (budgets ? " --- |" : "") << " --- | --- | --- |";
  for (size_t i = 0; i < lengths.size(); ++i) md << " --- |";
  md << " --- | --- |\n";
  md << std::fixed;
  for (const json& r : rows) {
    md << "| " << r["method"].get<std::string>() << " | ";
    if (budgets) {
      const int64_t b = r.value("kv_budget", int64_t{0});
      md << (b > 0 ? std::to_string(b) + " B" : std::string("-")) << " | ";
    }
    md << std::setprecision(3) << r["target"].get<double>() << " | "
       << r["achieved_sparsity"].get<double>() << " | "
       << (r["perplexity"].is_null() ? std::string("-") : [&] {
            std::ostringstream s;
            s << std::fixed << std::setprecision(3) << r["perplexity"].get<double>();
            return s.str();
          }())
       << " |";
    for (int64_t len : lengths)
      md << " " << std::setprecision(2) << accuracy(r, [&](const json& c) { return c["length"] == len; }) << " |";
    const double bytes = static_cast<double>(kv(r, kv_len, "bytes")), dense = static_cast<double>(kv(r, kv_len, "dense_bytes"));
    md << " " << std::setprecision(2) << bytes / (1024.0 * 1024.0) << " MiB (" << std::setprecision(0)
       << (dense > 0 ? 100.0 * bytes / dense : 0.0) << "%) | " << std::setprecision(1)
       << r["allocation_seconds"].get<double>() << " |\n";
  }
  write_file_atomically((fs::path(o.out_dir) / "sweep.md").string(), md.str());
}

}  // namespace consa
