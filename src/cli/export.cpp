// consa export RUN_DIR|MODEL_DIR --format hf|torchscript --out PATH
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "consa/core/atomic_file.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/export/hf_export.h"
#include "consa/export/torchscript_export.h"
#include "consa/load/pretrained.h"

namespace consa::cli {
namespace fs = std::filesystem;

int run_export(int argc, char** argv) {
  cxxopts::Options options("consa export",
                           "Export a model under a binarized FA/SWA assignment: a training run's, a given\n"
                           "assignment.json applied to a checkpoint, or a checkpoint's own layout.");
  options.positional_help("RUN_DIR|MODEL_DIR");
  options.add_options()
      ("source", "output.dir of a consa train run, or a Hugging Face checkpoint directory", cxxopts::value<std::string>())
      ("format", "hf (safetensors + config.json + assignment.json) or torchscript (one pruned .ts file)",
       cxxopts::value<std::string>()->default_value("hf"))
      ("out", "directory (hf) or file (torchscript) to write", cxxopts::value<std::string>())
      ("assignment", "assignment.json to apply instead of the source's own", cxxopts::value<std::string>())
      ("dtype", "weights dtype of the export: float32, bfloat16, float16 (default: as stored)", cxxopts::value<std::string>())
      ("query-block", "torchscript: queries per attention block in prefill", cxxopts::value<int64_t>()->default_value("1024"))
      ("kernels", "torchscript: aten (portable: aten operators only, loads in LibTorch 1.13+ and Python) or fused "
                  "(consa's RMSNorm, RoPE and decode-attention operators: fewer kernels per decode step; Python "
                  "loads libconsa_ops.so with torch.ops.load_library first)",
       cxxopts::value<std::string>()->default_value("aten"))
      ("overwrite", "replace an existing --out")
      ("h,help", "show this help");
  options.parse_positional({"source"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("source"), "consa export: missing RUN_DIR or MODEL_DIR (see consa export --help)");
  CONSA_CHECK(args.count("out"), "consa export: --out is required");
  const std::string format = args["format"].as<std::string>();
  CONSA_CHECK(format == "hf" || format == "torchscript", "consa export: --format '", format,
              "' is not available; supported: hf, torchscript");
  const std::string kernels = args["kernels"].as<std::string>();
  CONSA_CHECK(kernels == "aten" || kernels == "fused", "consa export: --kernels '", kernels,
              "' is not available; supported: aten, fused");
  CONSA_CHECK(format == "torchscript" || args["kernels"].has_default(),
              "consa export: --kernels applies to --format torchscript only");
  const std::string out = args["out"].as<std::string>();
  check_output_path(out, args.count("overwrite") > 0, "--out");
  const ModelSource source =
      resolve_model_source(args["source"].as<std::string>(), args.count("assignment") ? args["assignment"].as<std::string>() : "");

  LoadOptions load;
  if (args.count("dtype")) load.dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
  CausalLM model = load_pretrained(source.model_dir, load);
  const Assignment assignment = source_assignment(source, model, args.count("dtype") > 0);
  if (format == "hf") {
    ModelCardSource card;
    card.model = source.model_dir;
    card.weights_checksum = assignment.weights_checksum.empty() ? weights_checksum(model) : assignment.weights_checksum;
    if (!source.recipe_path.empty()) card.recipe_yaml = read_text_file(source.recipe_path);
    export_hf(model, assignment, out, card);
  } else {
    TorchScriptOptions ts;
    ts.query_block = args["query-block"].as<int64_t>();
    ts.fused_kernels = kernels == "fused";
    export_torchscript(model, assignment, out, ts);
  }
  std::cout << "exported " << source.model_dir << " ("
            << (source.assignment_path.empty() ? "its own attention layout" : "under " + source.assignment_path)
            << ") to " << out << " as " << format << ": " << gate_unit_name(assignment.unit) << " units, "
            << assignment.achieved_sparsity() << " on SWA, window " << assignment.swa.window << ", sinks "
            << assignment.swa.sinks << (format == "torchscript" ? ", kernels " + kernels : std::string()) << "\n";
  return 0;
}

}  // namespace consa::cli
