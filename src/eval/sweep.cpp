#include "consa/eval/sweep.h"

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <map>
#include <sstream>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
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
                  const std::string& method, double target, double seconds) {
  layout.apply(model);
  EvalReport report = evaluate(model_logits(model), layout, model->config().vocab_size, o.eval);
  report.model = dir;
  json j = report.to_json();
  j["method"] = method;
  j["target"] = target;
  j["allocation_seconds"] = seconds;
  write_file_atomically((fs::path(dir) / "eval.json").string(), j.dump(2) + "\n");
}

}  // namespace

std::string sweep_run_dir(const std::string& out_dir, const std::string& method, double target) {
  return (fs::path(out_dir) / (method + "_t" + target_label(target))).string();
}

std::vector<SweepRun> sweep_runs(const Recipe& recipe, const SweepOptions& o) {
  std::vector<SweepRun> runs;
  CONSA_CHECK(recipe.gates.narrower_windows.empty(), recipe.source,
              ": gates.windows: consa sweep runs over target fractions with one window; train each budget with "
              "consa train");
  for (double t : o.targets) CONSA_CHECK(t >= 0 && t <= 1, "sweep: target ", t, " is outside [0, 1]");
  for (const std::string& method : o.methods) {
    if (method == "dense") {
      CONSA_CHECK(recipe.recover.steps > 0, recipe.source,
                  ": sweep method dense trains the dense model for recover.steps, which is 0; set recover.steps "
                  "(the recovery that consa runs get)");
      runs.push_back({method, 0.0});
      continue;
    }
    if (method != "consa") parse_baseline_method(method);  // refuse unknown names before any work
    for (double target : o.targets) runs.push_back({method, target});
  }
  return runs;
}

SweepSummary run_sweep(const Recipe& recipe, const SweepOptions& o, std::ostream& log) {
  CONSA_CHECK(!o.out_dir.empty(), "sweep: an output directory is required");
  const std::vector<SweepRun> runs = sweep_runs(recipe, o);
  fs::create_directories(o.out_dir);
  SweepSummary summary;
  std::unique_ptr<CausalLM> base;  // the recipe's model, loaded once for the baselines
  for (const auto& [method, target] : runs) {
    const std::string dir = sweep_run_dir(o.out_dir, method, target);
    if (fs::exists(fs::path(dir) / "eval.json")) {
      log << "sweep: " << method << " at " << target << ": done earlier (" << dir << "/eval.json)\n";
      ++summary.skipped;
      continue;
    }
    log << "sweep: " << method << " at " << target << " -> " << dir << "\n";
    fs::create_directories(dir);
    const auto start = std::chrono::steady_clock::now();
    if (method == "consa" || method == "dense") {
      Recipe r = recipe;
      r.constraint.target = target;
      r.output.dir = dir;
      TrainControl control;
      if (method == "dense") {  // the recovery's steps, learning rate and sequences, on the dense model
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
      evaluate_run(model, Assignment::load(dir + "/assignment.json"), o, dir, method, target, seconds);
    } else {
      if (!base) base = std::make_unique<CausalLM>(load_pretrained(recipe.model.path, model_load_options(recipe)));
      BaselineOptions b = o.baseline;
      b.unit = recipe.gates.unit;
      b.swa = recipe.gates.swa;
      b.scope = recipe.constraint.scope;
      b.target = target;
      b.data = recipe.data;
      Assignment a = make_baseline(parse_baseline_method(method), *base, b);
      a.save(dir + "/assignment.json", recipe.exporting.kv_context);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      evaluate_run(*base, a, o, dir, method, target, seconds);
    }
    ++summary.ran;
  }
  write_sweep_tables(recipe, o);
  return summary;
}

void write_sweep_tables(const Recipe& recipe, const SweepOptions& o) {
  std::vector<json> rows;
  for (const auto& [method, target] : sweep_runs(recipe, o)) {
    const fs::path file = fs::path(sweep_run_dir(o.out_dir, method, target)) / "eval.json";
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
  csv << ",allocation_seconds,run_dir\n";
  for (const json& r : rows) {
    csv << r["method"].get<std::string>() << "," << r["target"] << "," << r["achieved_sparsity"] << ","
        << (r["perplexity"].is_null() ? "" : r["perplexity"].dump()) << "," << r["retrieval_accuracy"];
    for (const auto& k : task_length_keys)
      csv << "," << accuracy(r, [&](const json& c) {
        return c["task"].get<std::string>() + "_" + std::to_string(c["length"].get<int64_t>()) == k;
      });
    for (int64_t len : lengths) csv << "," << accuracy(r, [&](const json& c) { return c["length"] == len; });
    for (int64_t len : lengths) csv << "," << kv(r, len, "bytes") << "," << kv(r, len, "dense_bytes");
    csv << "," << r["allocation_seconds"] << "," << r["model"].get<std::string>() << "\n";
  }
  write_file_atomically((fs::path(o.out_dir) / "sweep.csv").string(), csv.str());

  std::ostringstream md;
  md << "| method | target | achieved | perplexity |";
  for (int64_t len : lengths) md << " retrieval @" << len << " |";
  const int64_t kv_len = lengths.empty() ? 0 : lengths.back();
  md << " KV @" << kv_len << " (of dense) | time (s) |\n| --- | --- | --- | --- |";
  for (size_t i = 0; i < lengths.size(); ++i) md << " --- |";
  md << " --- | --- |\n";
  md << std::fixed;
  for (const json& r : rows) {
    md << "| " << r["method"].get<std::string>() << " | " << std::setprecision(3) << r["target"].get<double>() << " | "
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
