// consa eval SOURCE: quality and KV cost of a model under an attention layout.
// consa assign METHOD MODEL_DIR: a baseline allocator's assignment.json.
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <sstream>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "consa/data/text_tasks.h"
#include "consa/core/atomic_file.h"
#include "consa/core/byte_size.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/eval/baselines.h"
#include "consa/gate/attention_gates.h"
#include "consa/eval/evaluate.h"
#include "consa/export/torchscript_export.h"
#include "consa/load/pretrained.h"
#include "consa/train/recipe.h"
#include "consa/train/trainer.h"

namespace consa::cli {
namespace fs = std::filesystem;

void add_eval_options(cxxopts::Options& options) {
  options.add_options("evaluation")
      ("tasks", "retrieval tasks: passkey, multi_key_needle, associative_recall", cxxopts::value<std::string>()->default_value("passkey,multi_key_needle"))
      ("lengths", "context lengths", cxxopts::value<std::string>()->default_value("256,512"))
      ("depths", "key depths in [0, 1]", cxxopts::value<std::string>()->default_value("0.1,0.5,0.9"))
      ("samples", "samples per (task, length, depth)", cxxopts::value<int64_t>()->default_value("8"))
      ("first-id", "synthetic token layout's first id (default: the recipe's, else 0)", cxxopts::value<int64_t>())
      ("tokenizer", "retrieval tasks as text in this tokenizer.json's tokens (default: the recipe's data.tokenizer)",
       cxxopts::value<std::string>())
      ("value-digits", "digits per value (default: the recipe's, else 5)", cxxopts::value<int64_t>())
      ("min-distance", "key-to-query distance (default: window + sinks + 1)", cxxopts::value<int64_t>()->default_value("0"))
      ("data", "consa token shards or Megatron datasets (PREFIX) for held-out perplexity, comma-separated "
               "(default: a run's recipe data; raw token files through --recipe)", cxxopts::value<std::string>())
      ("seq-len", "perplexity window length with --data", cxxopts::value<int64_t>()->default_value("512"))
      ("heldout-batches", "perplexity batches", cxxopts::value<int64_t>()->default_value("4"))
      ("document-mask", "perplexity of each document of --data alone, as data.document_mask trains");
}

// Evaluation settings from the flags, with defaults taken from `recipe` when there is one.
EvalOptions eval_options(const cxxopts::ParseResult& args, const Recipe* recipe) {
  EvalOptions o;
  o.tasks.clear();
  for (const auto& name : parse_name_list(args["tasks"].as<std::string>())) o.tasks.push_back(parse_synthetic_task(name));
  o.lengths.clear();
  for (double v : parse_number_list(args["lengths"].as<std::string>(), "--lengths")) {
    CONSA_CHECK(v > 0 && v == std::floor(v), "--lengths: ", v, " is not a positive whole number");
    o.lengths.push_back(static_cast<int64_t>(v));
  }
  o.depths = parse_number_list(args["depths"].as<std::string>(), "--depths");
  for (double d : o.depths) CONSA_CHECK(d >= 0 && d <= 1, "--depths: ", d, " is outside [0, 1]");
  o.samples = args["samples"].as<int64_t>();
  CONSA_CHECK(o.samples > 0, "--samples must be > 0");
  o.min_distance = args["min-distance"].as<int64_t>();
  if (recipe) {
    // The recipe's retrieval setting: keys beyond its window, as in its training data.
    if (o.min_distance == 0)
      o.min_distance = recipe->data.min_distance > 0 ? recipe->data.min_distance : recipe->gates.swa.window + 1;
    o.value_digits = recipe->data.value_digits;
    o.num_needles = recipe->data.num_needles;
    o.perplexity_data = recipe->data;
  }
  // Text tasks through the model's tokenizer: --tokenizer, else the recipe's data.tokenizer.
  const std::string tokenizer = args.count("tokenizer") ? args["tokenizer"].as<std::string>()
                                : recipe ? recipe->data.tokenizer : std::string();
  if (!tokenizer.empty())
    o.text = load_text_tasks(tokenizer, recipe && !args.count("tokenizer") ? recipe->data.filler : std::string(),
                             args.count("tokenizer") ? "--tokenizer" : "data.tokenizer");
  if (args.count("first-id")) o.first_id = args["first-id"].as<int64_t>();
  if (args.count("value-digits")) o.value_digits = args["value-digits"].as<int64_t>();
  CONSA_CHECK(args.count("data") || !args.count("document-mask"),
              "--document-mask: applies to --data (a recipe's perplexity data takes its data.document_mask)");
  if (args.count("data")) {
    DataOptions d;
    for (const auto& path : parse_name_list(args["data"].as<std::string>())) d.shards.emplace_back(path);
    d.synthetic_ratio = 0;
    d.seq_len = args["seq-len"].as<int64_t>();
    d.batch_size = 4;
    d.heldout_batches = args["heldout-batches"].as<int64_t>();
    d.document_mask = args.count("document-mask") > 0;
    o.perplexity_data = d;
  }
  return o;
}

namespace {

// gates.json's logits into `gates`: log_alpha [layers][units] (level 0) and, with several windows,
// window_log_alpha [levels - 1][layers][units], for the windows the recipe names. The gates hold
// each layer's levels side by side.
void load_gate_logits(const std::string& path, AttentionGatesImpl& gates, const GateOptions& options) {
  const auto j = nlohmann::json::parse(read_text_file(path), nullptr, false);
  CONSA_CHECK(j.is_object() && j.contains("log_alpha"), path, ": no log_alpha (is the run's stage 1 finished?)");
  std::vector<std::vector<std::vector<double>>> levels;
  try {
    levels.push_back(j.at("log_alpha").get<std::vector<std::vector<double>>>());
    if (gates.levels() > 1) {
      CONSA_CHECK(j.contains("window_log_alpha") && j.contains("windows"), path,
                  ": no window_log_alpha and windows; the recipe's gates.windows need them");
      const std::vector<int64_t> want = options.windows();
      const auto have = j.at("windows").get<std::vector<int64_t>>();
      CONSA_CHECK(have == want, path, ": gates for windows ", join_integers(have), ", the recipe names ",
                  join_integers(want));
      for (const auto& level : j.at("window_log_alpha")) levels.push_back(level.get<std::vector<std::vector<double>>>());
    }
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": malformed gate logits: ", e.what());
  }
  const int64_t layers = gates.num_layers(), units = gates.units_per_layer();
  CONSA_CHECK(static_cast<int64_t>(levels.size()) == gates.levels(), path, ": ", levels.size(),
              " gate levels, the recipe's gates need ", gates.levels());
  std::vector<double> flat;
  for (int64_t l = 0; l < layers; ++l)
    for (const auto& level : levels) {
      CONSA_CHECK(static_cast<int64_t>(level.size()) == layers && static_cast<int64_t>(level[l].size()) == units, path,
                  ": gate logits must be ", layers, " layers x ", units, " units per level, as the recipe's gates are");
      flat.insert(flat.end(), level[l].begin(), level[l].end());
    }
  at::NoGradGuard no_grad;
  gates.log_alpha.copy_(at::tensor(flat, at::kDouble).to(at::kFloat).view(gates.log_alpha.sizes()));
}

}  // namespace

int run_eval(int argc, char** argv) {
  cxxopts::Options options("consa eval",
                           "Evaluate a dense checkpoint, a training run (its binarized assignment), a Hugging Face\n"
                           "or TorchScript export, or an assignment applied to a checkpoint: held-out perplexity,\n"
                           "retrieval accuracy over lengths x depths, KV-cache bytes per sequence.");
  options.positional_help("RUN_DIR|MODEL_DIR|MODEL.ts");
  options.add_options()
      ("source", "what to evaluate", cxxopts::value<std::string>())
      ("assignment", "assignment.json to apply to the checkpoint", cxxopts::value<std::string>())
      ("soft-gates", "RUN_DIR: evaluate stage 1's gates as trained (deterministic z in [0, 1], gates.json) "
                     "instead of the binarized assignment")
      ("recipe", "take perplexity data, synthetic settings and model.device/dtype/attention from this recipe "
                 "(default: a RUN_DIR's own)", cxxopts::value<std::string>())
      ("out", "write the report as JSON here", cxxopts::value<std::string>())
      ("device", "cpu, cuda or cuda:N (default: the recipe's model.device, else cpu)", cxxopts::value<std::string>())
      ("dtype", "compute dtype for checkpoints: float32, bfloat16, float16 (default: the recipe's model.dtype, "
                "else as stored)", cxxopts::value<std::string>())
      ("h,help", "show this help");
  add_eval_options(options);
  options.parse_positional({"source"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("source"), "consa eval: missing RUN_DIR, MODEL_DIR or MODEL.ts (see consa eval --help)");
  const std::string path = args["source"].as<std::string>();
  // The model runs where and as the recipe says (model.device, dtype, attention kernels), unless
  // --device or --dtype say otherwise; the line printed names what was used.
  const bool device_flag = args.count("device") > 0, dtype_flag = args.count("dtype") > 0;
  auto load_settings = [&](const Recipe* recipe, std::string* from) {
    LoadOptions load;
    *from = "defaults";
    if (recipe) {
      Recipe r = *recipe;
      if (device_flag) r.model.device = "cpu";  // replaced below; a CUDA recipe may be evaluated elsewhere
      load = model_load_options(r);
      *from = r.source;
    }
    if (device_flag) load.device = parse_device(args["device"].as<std::string>());
    if (dtype_flag) load.dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
    if (device_flag || dtype_flag) *from = recipe ? "flags over " + *from : "flags";
    return load;
  };
  // An unwritable --out fails now, not after the whole evaluation (an existing report is replaced).
  if (args.count("out")) check_output_path(args["out"].as<std::string>(), true, "--out");
  at::NoGradGuard no_grad;

  EvalReport report;
  if (fs::is_regular_file(path)) {  // a TorchScript export
    CONSA_CHECK(!args.count("assignment"), "--assignment applies to checkpoints; ", path, " has its own");
    CONSA_CHECK(!dtype_flag, "--dtype applies to checkpoints; ", path, " is a TorchScript export with a fixed dtype");
    std::unique_ptr<Recipe> recipe;
    if (args.count("recipe")) recipe = std::make_unique<Recipe>(load_recipe(args["recipe"].as<std::string>()));
    std::string from;
    const at::Device device = load_settings(recipe.get(), &from).device;
    ScriptedLM scripted = ScriptedLM::load(path, device);
    std::cerr << "model on " << device.str() << " in " << dtype_name(scripted.dtype()) << " (" << from
              << (recipe ? "; a TorchScript export keeps its stored dtype" : "") << ")\n";
    report = evaluate([&](const at::Tensor& ids) { return scripted.forward(ids.to(device)); }, scripted.assignment(),
                      scripted.vocab_size(), eval_options(args, recipe.get()));
  } else {
    const ModelSource source =
        resolve_model_source(path, args.count("assignment") ? args["assignment"].as<std::string>() : "");
    std::unique_ptr<Recipe> recipe;
    const std::string recipe_path = args.count("recipe") ? args["recipe"].as<std::string>() : source.recipe_path;
    if (!recipe_path.empty()) recipe = std::make_unique<Recipe>(load_recipe(recipe_path));
    std::string from;
    const LoadOptions load = load_settings(recipe.get(), &from);
    CausalLM model = load_pretrained(source.model_dir, load);
    std::cerr << "model on " << load.device.str() << " in " << dtype_name(model->dtype()) << " (" << from << ")\n";
    Assignment layout = source_assignment(source, model, load.dtype.has_value());
    layout.apply(model);
    if (args.count("soft-gates")) {
      // The gated model of stage 1: each unit mixes FA and SWA with its deterministic gate.
      CONSA_CHECK(!source.recipe_path.empty(), "--soft-gates needs a RUN_DIR (its gates.json and recipe)");
      const std::string gates_path = (fs::path(path) / "gates.json").string();
      AttentionGates gates(model->config(), recipe->gates);
      load_gate_logits(gates_path, *gates, recipe->gates);
      gates->apply(model, gates->deterministic());
      layout.method = "consa (soft gates)";
    }
    report = evaluate(model_logits(model), layout, model->config().vocab_size, eval_options(args, recipe.get()));
  }
  report.model = path;
  report.print(std::cout);
  if (args.count("out")) write_file_atomically(args["out"].as<std::string>(), report.to_json().dump(2) + "\n");
  return 0;
}

namespace {
// "1024,128": distinct windows >= 1, returned widest first.
std::vector<int64_t> parse_window_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> windows;
  for (const std::string& item : parse_name_list(text)) {
    size_t used = 0;
    long long w = 0;
    try {
      w = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CONSA_CHECK(used > 0 && used == item.size() && w >= 1, flag, ": '", item,
                "' is not a window; expected integers >= 1 separated by commas, like 1024,128");
    CONSA_CHECK(std::find(windows.begin(), windows.end(), w) == windows.end(), flag, ": window ", w, " is listed twice");
    windows.push_back(w);
  }
  CONSA_CHECK(windows.size() >= 2, flag, ": expected at least two windows, like 1024,128 (one window: --window)");
  std::sort(windows.rbegin(), windows.rend());
  return windows;
}
}  // namespace

int run_assign(int argc, char** argv) {
  cxxopts::Options options("consa assign",
                           "Write a baseline allocator's FA/SWA assignment.json for a checkpoint, at any target\n"
                           "and granularity: uniform, random, attention-span, duo.");
  options.positional_help("METHOD MODEL_DIR");
  options.add_options()
      ("method", "uniform | random | attention-span | duo", cxxopts::value<std::string>())
      ("model", "Hugging Face checkpoint directory", cxxopts::value<std::string>())
      ("recipe", "take unit, window, sinks, target, scope and calibration data from this recipe", cxxopts::value<std::string>())
      ("target", "fraction of units on SWA", cxxopts::value<double>())
      ("unit", "layer | kv_head | head", cxxopts::value<std::string>())
      ("window", "sliding window W", cxxopts::value<int64_t>())
      ("windows", "several windows, e.g. 1024,128 (uniform and random; needs a KV budget): each unit takes full "
                  "attention or one of them", cxxopts::value<std::string>())
      ("kv-budget", "KV-cache bytes per sequence instead of --target, e.g. 512MiB (with --kv-context)",
       cxxopts::value<std::string>())
      ("kv-context", "tokens per sequence the --kv-budget is for", cxxopts::value<int64_t>())
      ("kv-element-bytes", "bytes per cached element for --kv-budget (2: bf16 / fp16)", cxxopts::value<int64_t>())
      ("sinks", "attention sinks S", cxxopts::value<int64_t>())
      ("scope", "global | per_layer (per_layer: the same SWA share in every layer)", cxxopts::value<std::string>())
      ("offset", "uniform: index of the first full-attention unit", cxxopts::value<int64_t>()->default_value("0"))
      ("seed", "random: the draw; duo: sample order", cxxopts::value<uint64_t>()->default_value("0"))
      ("steps", "duo: optimisation steps", cxxopts::value<int64_t>()->default_value("200"))
      ("duo-l1", "duo: weight of sum(alpha)", cxxopts::value<double>()->default_value("0.05"))
      ("device", "cpu, cuda or cuda:N (default: the recipe's model.device, else cpu)", cxxopts::value<std::string>())
      ("dtype", "float32, bfloat16, float16 (default: the recipe's model.dtype, else the stored one)", cxxopts::value<std::string>())
      ("out", "assignment.json to write", cxxopts::value<std::string>())
      ("h,help", "show this help");
  options.parse_positional({"method", "model"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("method") && args.count("model"), "consa assign: expected METHOD MODEL_DIR (see consa assign --help)");
  CONSA_CHECK(args.count("out"), "consa assign: --out FILE is required");
  const BaselineMethod method = parse_baseline_method(args["method"].as<std::string>());
  BaselineOptions o;
  check_output_path(args["out"].as<std::string>(), true, "--out");  // before any work
  // The model runs where and as the recipe says (device, dtype, attention kernels), unless
  // --device or --dtype say otherwise; the line printed below names what was used.
  LoadOptions load;
  std::string load_from = "defaults";
  if (args.count("recipe")) {
    const Recipe recipe = load_recipe(args["recipe"].as<std::string>());
    load = model_load_options(recipe);
    load_from = "the recipe";
    o.unit = recipe.gates.unit;
    o.swa = recipe.gates.swa;
    o.target = recipe.constraint.target;
    o.kv_budget = recipe.constraint.kv_budget;
    o.scope = recipe.constraint.scope;
    o.data = recipe.data;
    o.narrower_windows = recipe.gates.narrower_windows;
  }
  CONSA_CHECK(!(args.count("window") && args.count("windows")), "consa assign: give --window W or --windows W1,W2, not both");
  CONSA_CHECK(!(args.count("target") && args.count("kv-budget")), "consa assign: give --target or --kv-budget, not both");
  if (args.count("target")) o.target = args["target"].as<double>(), o.kv_budget = {};  // the flag over the recipe
  if (args.count("kv-budget")) {
    CONSA_CHECK(args.count("kv-context"), "consa assign: --kv-budget needs --kv-context (tokens per sequence)");
    o.kv_budget.bytes = parse_byte_size(args["kv-budget"].as<std::string>(), "--kv-budget");
    CONSA_CHECK(o.kv_budget.bytes > 0, "consa assign: --kv-budget must be > 0");
  }
  if (args.count("kv-context")) {
    CONSA_CHECK(o.kv_budget.defined(), "consa assign: --kv-context applies to a KV budget (--kv-budget)");
    o.kv_budget.context = args["kv-context"].as<int64_t>();
    CONSA_CHECK(o.kv_budget.context > 0, "consa assign: --kv-context must be > 0, got ", o.kv_budget.context);
  }
  if (args.count("kv-element-bytes")) {
    CONSA_CHECK(o.kv_budget.defined(), "consa assign: --kv-element-bytes applies to a KV budget (--kv-budget)");
    o.kv_budget.element_bytes = args["kv-element-bytes"].as<int64_t>();
    CONSA_CHECK(o.kv_budget.element_bytes >= 1 && o.kv_budget.element_bytes <= 8,
                "consa assign: --kv-element-bytes must be in [1, 8], got ", o.kv_budget.element_bytes);
  }
  if (args.count("unit")) o.unit = parse_gate_unit(args["unit"].as<std::string>());
  if (args.count("window")) o.swa.window = args["window"].as<int64_t>(), o.narrower_windows.clear();
  if (args.count("windows")) {
    const std::vector<int64_t> windows = parse_window_list(args["windows"].as<std::string>(), "--windows");
    o.swa.window = windows.front();
    o.narrower_windows.assign(windows.begin() + 1, windows.end());
  }
  CONSA_CHECK(o.narrower_windows.empty() || method == BaselineMethod::Uniform || method == BaselineMethod::Random,
              "consa assign: ", baseline_method_name(method), " scores one window; with several windows (",
              args.count("windows") ? "--windows" : "the recipe's gates.windows", ") use uniform or random, or pass "
              "--window W");
  CONSA_CHECK(o.narrower_windows.empty() || o.kv_budget.defined(),
              "consa assign: several windows need --kv-budget BYTES --kv-context N (a fraction of units does not "
              "say which windows they take)");
  if (args.count("sinks")) o.swa.sinks = args["sinks"].as<int64_t>();
  if (args.count("scope")) o.scope = parse_constraint_scope(args["scope"].as<std::string>());
  CONSA_CHECK(o.swa.window > 0 && o.swa.sinks >= 0, "consa assign: --window must be > 0 and --sinks >= 0");
  CONSA_CHECK(o.target >= 0 && o.target <= 1, "consa assign: --target must be in [0, 1], got ", o.target);
  o.offset = args["offset"].as<int64_t>();
  o.seed = args["seed"].as<uint64_t>();
  o.duo_steps = args["steps"].as<int64_t>();
  o.duo_l1 = args["duo-l1"].as<double>();
  if (args.count("device")) load.device = parse_device(args["device"].as<std::string>());
  if (args.count("dtype")) load.dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
  CausalLM model = load_pretrained(args["model"].as<std::string>(), load);
  std::cerr << "model on " << load.device.str() << " in " << dtype_name(model->dtype()) << " ("
            << (args.count("device") || args.count("dtype") ? "flags over " + load_from : load_from) << ")\n";
  Assignment a = make_baseline(method, model, o, [&](int64_t step, double loss, double mean_alpha) {
    if (step % 50 == 0 || step == o.duo_steps)
      std::cerr << "duo step " << step << "/" << o.duo_steps << "  distill " << loss << "  mean alpha " << mean_alpha << "\n";
  });
  const std::string out = args["out"].as<std::string>();
  a.save(out);
  print_assignment(std::cout, a, out, 4096);
  return 0;
}

}  // namespace consa::cli
