// consa bench decode: prefill and decode speed and KV-cache bytes of exported (scripted) hybrid
// models at several contexts and sparsities, on a random model of a real model's shape.
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cxxopts.hpp>
#include <iomanip>
#include <iostream>

#include "bench.h"
#include "commands.h"
#include "consa/core/atomic_file.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/export/torchscript_export.h"

namespace consa::cli {

int bench_decode(int argc, char** argv) {
  cxxopts::Options options("consa bench decode",
                           "Prefill and decode tokens/s and KV-cache bytes of the scripted hybrid model (as exported)\n"
                           "at each context and sparsity, on random weights of a given shape.");
  options.add_options()
      ("shape", "qwen3-0.6b, qwen3-1.7b, tiny", cxxopts::value<std::string>()->default_value("qwen3-0.6b"))
      ("contexts", "prompt lengths", cxxopts::value<std::string>()->default_value("4096,32768"))
      ("sparsity", "fractions of KV heads on SWA (the same in every layer)", cxxopts::value<std::string>()->default_value("0,0.5,0.75"))
      ("window", "sliding window W", cxxopts::value<int64_t>()->default_value("1024"))
      ("sinks", "attention sinks S", cxxopts::value<int64_t>()->default_value("0"))
      ("batch", "sequences decoded together", cxxopts::value<int64_t>()->default_value("1"))
      ("decode-steps", "timed decode steps", cxxopts::value<int64_t>()->default_value("32"))
      ("repeats", "prefill repetitions (median)", cxxopts::value<int64_t>()->default_value("3"))
      ("device", "cpu, cuda or cuda:N", cxxopts::value<std::string>()->default_value("cuda"))
      ("dtype", "float32, bfloat16, float16", cxxopts::value<std::string>()->default_value("bfloat16"))
      ("out", "write the results as JSON here", cxxopts::value<std::string>())
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const at::Device device = parse_device(args["device"].as<std::string>());
  const at::ScalarType dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
  const ModelConfig config = shape_config(args["shape"].as<std::string>());
  const AttentionSpan swa = AttentionSpan::sliding(args["window"].as<int64_t>(), args["sinks"].as<int64_t>());
  const int64_t batch = args["batch"].as<int64_t>(), steps = args["decode-steps"].as<int64_t>();
  const int64_t repeats = args["repeats"].as<int64_t>();
  CONSA_CHECK(batch > 0 && steps > 0 && repeats > 0, "--batch, --decode-steps and --repeats must be > 0");

  at::NoGradGuard no_grad;
  CausalLM model = random_model(config, device, dtype);
  const int64_t bytes_per_element = static_cast<int64_t>(c10::elementSize(dtype));
  std::cout << "shape " << args["shape"].as<std::string>() << " (" << with_commas(model->parameter_count())
            << " parameters), " << dtype_name(dtype) << " on " << device.str() << ", batch " << batch << ", window "
            << swa.window << ", sinks " << swa.sinks << "\n\n"
            << "sparsity  context  prefill tok/s  decode ms/step  decode tok/s  KV bytes        analytic        ratio\n";
  nlohmann::json results = nlohmann::json::array();
  for (double rho : parse_number_list(args["sparsity"].as<std::string>(), "--sparsity")) {
    const Assignment a = uniform_assignment(model, swa, rho);
    ScriptedLM scripted(build_scripted_model(model, a), a);
    {  // warm-up: first calls allocate and load kernels
      ScriptedLM::Cache warm = scripted.new_cache(batch, 260);
      scripted.extend(at::randint(0, config.vocab_size, {batch, 256}, at::TensorOptions().dtype(at::kLong).device(device)), warm, true);
      for (int i = 0; i < 3; ++i)
        scripted.extend(at::zeros({batch, 1}, at::TensorOptions().dtype(at::kLong).device(device)), warm, true);
      wait_for_device(device);
    }
    for (double context_value : parse_number_list(args["contexts"].as<std::string>(), "--contexts")) {
      const int64_t context = static_cast<int64_t>(context_value);
      const at::Tensor prompt =
          at::randint(0, config.vocab_size, {batch, context}, at::TensorOptions().dtype(at::kLong).device(device));
      std::vector<double> prefill_s, step_s;
      ScriptedLM::Cache cache = scripted.new_cache(batch, context + steps);
      for (int64_t r = 0; r < repeats; ++r) {
        cache = scripted.new_cache(batch, context + steps);
        wait_for_device(device);
        const auto start = Clock::now();
        scripted.extend(prompt, cache, true);
        wait_for_device(device);
        prefill_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      }
      at::Tensor token = at::zeros({batch, 1}, at::TensorOptions().dtype(at::kLong).device(device));
      for (int64_t s = 0; s < steps; ++s) {
        const auto start = Clock::now();
        at::Tensor logits = scripted.extend(token, cache, true);
        token = logits.argmax(-1);
        wait_for_device(device);
        step_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      }
      const int64_t measured = cache.kv_bytes();
      auto [fa, sw] = a.kv_cache_bytes(context + steps, bytes_per_element);
      const double analytic = static_cast<double>((fa + sw) * batch);
      const double prefill_tps = batch * context / median(prefill_s), step_ms = 1e3 * median(step_s);
      std::cout << std::fixed << std::setprecision(2) << std::setw(8) << rho << std::setw(9) << context
                << std::setprecision(0) << std::setw(15) << prefill_tps << std::setprecision(2) << std::setw(16)
                << step_ms << std::setprecision(1) << std::setw(14) << batch * 1e3 / step_ms << "  " << std::setw(14)
                << measured << "  " << std::setw(14) << static_cast<int64_t>(analytic) << std::setprecision(4)
                << std::setw(9) << measured / analytic << "\n"
                << std::flush;
      results.push_back({{"sparsity", rho}, {"context", context}, {"batch", batch}, {"prefill_tokens_per_s", prefill_tps},
                         {"prefill_seconds", prefill_s}, {"decode_ms_per_step", step_ms},
                         {"decode_tokens_per_s", batch * 1e3 / step_ms}, {"kv_bytes", measured},
                         {"kv_bytes_analytic", analytic}});
    }
  }
  if (args.count("out")) {
    const nlohmann::json report = {{"shape", args["shape"].as<std::string>()}, {"device", device.str()},
                                   {"dtype", dtype_name(dtype)}, {"window", swa.window}, {"sinks", swa.sinks},
                                   {"results", results}};
    write_file_atomically(args["out"].as<std::string>(), report.dump(2) + "\n");
  }
  return 0;
}

}  // namespace consa::cli
