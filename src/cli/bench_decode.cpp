// consa bench decode: prefill and decode speed and KV-cache bytes of exported (scripted) hybrid
// models at several batches, contexts and sparsities, on a random model of a real model's shape.
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include "bench.h"
#include "commands.h"
#include "consa/core/atomic_file.h"
#include "consa/core/byte_size.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/core/torch_compat.h"
#include "consa/export/torchscript_export.h"

namespace consa::cli {
namespace {

struct DecodeSettings {
  at::Device device = at::kCPU;
  int64_t steps = 32, repeats = 3;
  bool graphs = true;     // also decode through a CUDA graph of decode_step, where supported
  int64_t query_block = 0;  // prefill's queries per attention block (0: query_block_for(batch))
  int64_t prefill_chunk = 0;  // prefill in extend calls of this many positions (0: the whole context in one)
  std::string trace_dir;  // when set: a Chrome trace of kTracedSteps more decode steps per row
};

constexpr int64_t kTracedSteps = 8;

// With --memory-budget: positions per prefill call (all sequences), and query rows per attention
// block (all sequences): 2048 rows of fp32 scores over 32K keys are 4.3 GB at Qwen3-0.6B's 16 heads.
constexpr int64_t kBudgetPrefillTokens = 65536;
constexpr int64_t kBudgetScoreRows = 2048;

// The most sequences of `capacity` positions whose KV cache fits in `budget` beside the weights.
int64_t sequences_within(int64_t budget, int64_t weight_bytes, int64_t kv_bytes_per_sequence) {
  return budget > weight_bytes ? (budget - weight_bytes) / kv_bytes_per_sequence : 0;
}

// Prefill attends in blocks of queries, materialising fp32 scores of [batch, heads, block, keys]:
// the export's 1024 up to batch 8, then fewer per block so that the scores stay within what
// batch 8 needs (17 GB for Qwen3-0.6B at 32K keys).
int64_t query_block_for(int64_t batch) { return batch <= 8 ? 1024 : std::max<int64_t>(64, 8192 / batch); }

// Median seconds of `steps` one-token steps, each waited for, greedy (argmax) tokens.
template <typename Step>
double median_step_seconds(int64_t steps, at::Tensor& token, at::Device device, Step&& step) {
  std::vector<double> seconds;
  for (int64_t s = 0; s < steps; ++s) {
    const auto start = Clock::now();
    token = step(token).argmax(-1);
    wait_for_device(device);
    seconds.push_back(seconds_since(start));
  }
  return median(seconds);
}

// First calls allocate and load kernels: a short prefill and a few steps before anything is timed.
void warm_up(ScriptedLM& scripted, at::Device device, int64_t batch, int64_t vocab) {
  const auto ids = at::TensorOptions().dtype(at::kLong).device(device);
  ScriptedLM::Cache warm = scripted.new_cache(batch, 260);
  scripted.extend(at::randint(0, vocab, {batch, 256}, ids), warm, true);
  for (int i = 0; i < 3; ++i) scripted.extend(at::zeros({batch, 1}, ids), warm, true);
  wait_for_device(device);
}

// One row: prefill `context` tokens (median of repeats), then eager decode steps through extend,
// then (with graphs) as many through a CUDA graph, in the same cache.
nlohmann::json measure(ScriptedLM& scripted, const std::string& kernels, double rho, const DecodeSettings& s,
                       int64_t batch, int64_t context, int64_t vocab) {
  const Assignment& a = scripted.assignment();
  const bool graphs = s.graphs && GraphedDecoder::supported(scripted);
  const auto ids = at::TensorOptions().dtype(at::kLong).device(s.device);
  const at::Tensor prompt = at::randint(0, vocab, {batch, context}, ids);
  const int64_t capacity =
      context + s.steps * (graphs ? 2 : 1) + (s.trace_dir.empty() ? 0 : kTracedSteps);
  std::vector<double> prefill_s;
  std::optional<ScriptedLM::Cache> cache;
  for (int64_t r = 0; r < s.repeats; ++r) {
    cache.reset();  // the last repeat's cache is the one decoded into
    cache = scripted.new_cache(batch, capacity);
    wait_for_device(s.device);
    const auto start = Clock::now();
    const int64_t chunk = s.prefill_chunk > 0 ? s.prefill_chunk : context;
    for (int64_t begin = 0; begin < context; begin += chunk)
      scripted.extend(prompt.slice(1, begin, std::min(context, begin + chunk)), *cache, true);
    wait_for_device(s.device);
    prefill_s.push_back(seconds_since(start));
  }
  at::Tensor token = at::zeros({batch, 1}, ids);
  const double eager_s =
      median_step_seconds(s.steps, token, s.device, [&](const at::Tensor& t) { return scripted.extend(t, *cache, true); });
  nlohmann::json row = {{"kernels", kernels}, {"sparsity", rho}, {"batch", batch}, {"context", context},
                        {"query_block", scripted.module().attr("query_block").toInt()},
                        {"prefill_chunk", s.prefill_chunk > 0 ? std::min(s.prefill_chunk, context) : context},
                        {"prefill_tokens_per_s", batch * context / median(prefill_s)},
                        {"prefill_seconds", prefill_s}, {"decode_eager_ms_per_step", 1e3 * eager_s}};
  double decode_s = eager_s;
  std::optional<GraphedDecoder> graphed;
  if (graphs) {
    graphed.emplace(scripted, *cache);
    decode_s = median_step_seconds(s.steps, token, s.device, [&](const at::Tensor& t) { return graphed->step(t); });
    row["decode_graph_ms_per_step"] = 1e3 * decode_s;
  }
  row["decode_path"] = graphs ? "cuda_graph" : "extend";
  row["decode_ms_per_step"] = 1e3 * decode_s;
  row["decode_tokens_per_s"] = batch / decode_s;
  if (!s.trace_dir.empty()) {
    // The steps the figure above times: graph replays where there is a graph, so the trace shows
    // the gaps between its kernels as well as the kernels.
    compat::start_trace();
    for (int64_t i = 0; i < kTracedSteps; ++i)
      token = (graphed ? graphed->step(token) : scripted.extend(token, *cache, true)).argmax(-1);
    wait_for_device(s.device);
    std::ostringstream name;
    name << s.trace_dir << "/decode_" << kernels << "_b" << batch << "_rho" << rho << "_" << context << ".json";
    compat::stop_trace(name.str());
  }
  const int64_t bytes_per_element = static_cast<int64_t>(c10::elementSize(scripted.dtype()));
  auto [fa, sw] = a.kv_cache_bytes(capacity, bytes_per_element);
  row["kv_bytes"] = cache->kv_bytes();
  row["kv_bytes_analytic"] = static_cast<double>((fa + sw) * batch);
  return row;
}

void print_row(const nlohmann::json& r) {
  const double kv = r["kv_bytes"].get<double>(), analytic = r["kv_bytes_analytic"].get<double>();
  std::cout << std::setw(7) << r["kernels"].get<std::string>() << std::fixed << std::setw(6) << r["batch"].get<int64_t>() << std::setprecision(2) << std::setw(6) << r["sparsity"].get<double>()
            << std::setw(9) << r["context"].get<int64_t>() << std::setprecision(0) << std::setw(15)
            << r["prefill_tokens_per_s"].get<double>() << std::setprecision(2) << std::setw(11)
            << r["decode_eager_ms_per_step"].get<double>() << std::setw(11);
  if (r.contains("decode_graph_ms_per_step")) std::cout << r["decode_graph_ms_per_step"].get<double>();
  else std::cout << "-";
  std::cout << std::setprecision(1) << std::setw(14) << r["decode_tokens_per_s"].get<double>() << "  " << std::setw(14)
            << static_cast<int64_t>(kv) << "  " << std::setw(14) << static_cast<int64_t>(analytic)
            << std::setprecision(4) << std::setw(9) << kv / analytic << "\n"
            << std::flush;
}

}  // namespace

int bench_decode(int argc, char** argv) {
  cxxopts::Options options("consa bench decode",
                           "Prefill and decode tokens/s and KV-cache bytes of the scripted hybrid model (as exported)\n"
                           "at each batch, context and sparsity, on random weights of a given shape.");
  options.add_options()
      ("shape", "qwen3-0.6b, qwen3-1.7b, tiny", cxxopts::value<std::string>()->default_value("qwen3-0.6b"))
      ("contexts", "prompt lengths", cxxopts::value<std::string>()->default_value("4096,32768"))
      ("sparsity", "fractions of KV heads on SWA (the same in every layer)", cxxopts::value<std::string>()->default_value("0,0.5,0.75"))
      ("window", "sliding window W", cxxopts::value<int64_t>()->default_value("1024"))
      ("sinks", "attention sinks S", cxxopts::value<int64_t>()->default_value("0"))
      ("batch", "sequences decoded together (a list runs each)", cxxopts::value<std::string>()->default_value("1"))
      ("decode-steps", "timed decode steps per path", cxxopts::value<int64_t>()->default_value("32"))
      ("repeats", "prefill repetitions (median)", cxxopts::value<int64_t>()->default_value("3"))
      ("query-block", "prefill's queries per attention block (0: 1024 up to batch 8, then 8192 / batch)", cxxopts::value<int64_t>()->default_value("0"))
      ("kernels", "the export's operators, a list: aten (portable) and/or fused (consa's operators, --kernels fused of consa export)", cxxopts::value<std::string>()->default_value("aten"))
      ("graphs", "also decode through a CUDA graph of decode_step (CUDA only)", cxxopts::value<bool>()->default_value("true"))
      ("device", "cpu, cuda or cuda:N", cxxopts::value<std::string>()->default_value("cuda"))
      ("dtype", "float32, bfloat16, float16", cxxopts::value<std::string>()->default_value("bfloat16"))
      ("prefill-chunk", "prefill in extend calls of this many positions (0: the whole context, or with --memory-budget as many as keep batch x chunk <= 64K)", cxxopts::value<int64_t>()->default_value("0"))
      ("memory-budget", "serve at a fixed memory budget (e.g. 100GiB): per sparsity and context, decode the most sequences whose weights plus KV cache fit, instead of --batch", cxxopts::value<std::string>())
      ("trace", "write a Chrome trace (CUDA kernels and operators) of 8 more decode steps per row (through the CUDA graph where there is one) into this folder", cxxopts::value<std::string>())
      ("out", "write the results as JSON here", cxxopts::value<std::string>())
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  DecodeSettings s;
  s.device = parse_device(args["device"].as<std::string>());
  const at::ScalarType dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
  const ModelConfig config = shape_config(args["shape"].as<std::string>());
  const AttentionSpan swa = AttentionSpan::sliding(args["window"].as<int64_t>(), args["sinks"].as<int64_t>());
  s.steps = args["decode-steps"].as<int64_t>();
  s.prefill_chunk = args["prefill-chunk"].as<int64_t>();
  s.repeats = args["repeats"].as<int64_t>();
  s.graphs = args["graphs"].as<bool>();
  s.query_block = args["query-block"].as<int64_t>();
  if (args.count("trace")) s.trace_dir = args["trace"].as<std::string>();
  std::vector<int64_t> batches;
  for (double b : parse_number_list(args["batch"].as<std::string>(), "--batch")) batches.push_back(static_cast<int64_t>(b));
  CONSA_CHECK(s.steps > 0 && s.repeats > 0, "--decode-steps and --repeats must be > 0");
  CONSA_CHECK(s.prefill_chunk >= 0, "--prefill-chunk must be >= 0 (0: chosen by batch)");
  CONSA_CHECK(s.query_block >= 0, "--query-block must be >= 0 (0: chosen by batch)");
  CONSA_CHECK(std::all_of(batches.begin(), batches.end(), [](int64_t b) { return b > 0; }), "--batch: sizes must be > 0");
  const std::vector<std::string> kernel_choices = parse_name_list(args["kernels"].as<std::string>());
  for (const std::string& name : kernel_choices)
    CONSA_CHECK(name == "aten" || name == "fused", "--kernels: '", name, "' is not a choice; expected aten, fused or both (aten,fused)");

  const int64_t budget = args.count("memory-budget") ? parse_byte_size(args["memory-budget"].as<std::string>(), "--memory-budget") : 0;
  CONSA_CHECK(budget == 0 || args["batch"].has_default(), "--memory-budget chooses the batch: leave out --batch");

  at::NoGradGuard no_grad;
  CausalLM model = random_model(config, s.device, dtype);
  std::cout << "shape " << args["shape"].as<std::string>() << " (" << with_commas(model->parameter_count())
            << " parameters), " << dtype_name(dtype) << " on " << s.device.str() << ", window " << swa.window
            << ", sinks " << swa.sinks << "; decode ms/step eager (extend) and, where supported, through a CUDA graph\n\n"
            << "kernels batch   rho  context  prefill tok/s      eager      graph  decode tok/s  KV bytes        analytic        ratio\n";
  nlohmann::json results = nlohmann::json::array();
  for (double rho : parse_number_list(args["sparsity"].as<std::string>(), "--sparsity")) {
    const Assignment a = uniform_assignment(model, swa, rho);
    for (const std::string& kernels : kernel_choices) {
      TorchScriptOptions export_options;
      export_options.fused_kernels = kernels == "fused";
      ScriptedLM scripted(build_scripted_model(model, a, export_options), a);
      if (budget > 0) {
        // Serving at a fixed memory budget: the batch follows from what the KV cache of one
        // sequence costs at each context (weights plus KV cache; activations are not counted).
        const int64_t element = static_cast<int64_t>(c10::elementSize(dtype));
        const int64_t weight_bytes = model->parameter_count() * element;
        for (double context_value : parse_number_list(args["contexts"].as<std::string>(), "--contexts")) {
          const int64_t context = static_cast<int64_t>(context_value);
          const int64_t capacity = context + s.steps * (s.graphs && GraphedDecoder::supported(scripted) ? 2 : 1);
          const auto [fa, sw] = a.kv_cache_bytes(capacity, element);
          const int64_t batch = sequences_within(budget, weight_bytes, fa + sw);
          CONSA_CHECK(batch > 0, "--memory-budget ", args["memory-budget"].as<std::string>(), ": the weights (", weight_bytes,
                      " bytes) and one sequence's KV cache at ", context, " tokens (", fa + sw, " bytes) do not fit");
          // The budget already holds most of the device: prefill in chunks of positions and in
          // small query blocks, so that activations and scores stay a few GB beside the cache.
          scripted.module().setattr("query_block", s.query_block > 0 ? s.query_block : std::max<int64_t>(16, kBudgetScoreRows / batch));
          DecodeSettings chunked = s;
          chunked.prefill_chunk = s.prefill_chunk > 0 ? s.prefill_chunk : std::max<int64_t>(256, kBudgetPrefillTokens / batch);
          warm_up(scripted, s.device, std::min<int64_t>(batch, 8), config.vocab_size);
          nlohmann::json row = measure(scripted, kernels, rho, chunked, batch, context, config.vocab_size);
          row["memory_budget_bytes"] = budget;
          row["weight_bytes"] = weight_bytes;
          row["kv_bytes_per_sequence"] = fa + sw;
          row["decode_tokens_per_s_per_kv_gib"] =
              row["decode_tokens_per_s"].get<double>() / (static_cast<double>((fa + sw) * batch) / (1 << 30));
          print_row(row);
          results.push_back(row);
        }
        continue;
      }
      for (int64_t batch : batches) {
        scripted.module().setattr("query_block", s.query_block > 0 ? s.query_block : query_block_for(batch));
        warm_up(scripted, s.device, batch, config.vocab_size);
        for (double context : parse_number_list(args["contexts"].as<std::string>(), "--contexts")) {
          nlohmann::json row = measure(scripted, kernels, rho, s, batch, static_cast<int64_t>(context), config.vocab_size);
          print_row(row);
          results.push_back(row);
        }
      }
    }
  }
  if (args.count("out")) {
    const nlohmann::json report = {{"shape", args["shape"].as<std::string>()}, {"device", s.device.str()},
                                   {"dtype", dtype_name(dtype)}, {"window", swa.window}, {"sinks", swa.sinks},
                                   {"layers", config.num_layers}, {"kv_heads", config.num_kv_heads},
                                   {"head_dim", config.head_dim}, {"results", results}};
    write_file_atomically(args["out"].as<std::string>(), report.dump(2) + "\n");
  }
  return 0;
}

}  // namespace consa::cli
