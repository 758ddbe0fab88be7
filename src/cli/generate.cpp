// consa generate MODEL.ts|MODEL_DIR: decoding through the KV cache of a scripted hybrid model.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>

#include <unistd.h>

#include "commands.h"
#include "consa/data/text_tasks.h"
#include "consa/tokenizer/tokenizer.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/data/synthetic.h"
#include "consa/export/torchscript_export.h"
#include "consa/load/pretrained.h"
#include "process.h"

namespace consa::cli {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A TorchScript export, or a Hugging Face checkpoint scripted in memory under its own layout.
ScriptedLM open_model(const std::string& path, at::Device device, const cxxopts::ParseResult& args) {
  if (fs::is_directory(path)) {
    LoadOptions load;
    load.device = device;
    if (args.count("dtype")) load.dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
    CausalLM model = load_pretrained(path, load);
    Assignment assignment = declared_assignment(model, path);
    return ScriptedLM(build_scripted_model(model, assignment), assignment);
  }
  CONSA_CHECK(!args.count("dtype"), "--dtype applies to checkpoint directories; ", path,
              " is a TorchScript export with a fixed dtype");
  return ScriptedLM::load(path, device);
}

// Greedy when temperature is 0; otherwise samples from softmax(logits / T) restricted to the
// smallest set of tokens whose probability reaches top_p.
int64_t next_token(const at::Tensor& logits, double temperature, double top_p, at::Generator& gen) {
  at::Tensor l = logits.to(at::kFloat).cpu();
  if (temperature <= 0) return l.argmax().item<int64_t>();
  at::Tensor probs = at::softmax(l / temperature, -1);
  auto sorted = at::sort(probs, -1, /*descending=*/true);
  at::Tensor p = std::get<0>(sorted), idx = std::get<1>(sorted);
  at::Tensor before = at::cumsum(p, -1) - p;  // mass of the strictly more likely tokens
  p = p.masked_fill(before >= top_p, 0.0);
  const int64_t pick = at::multinomial(p / p.sum(), 1, false, gen).item<int64_t>();
  return idx[pick].item<int64_t>();
}

}  // namespace

int run_generate(int argc, char** argv) {
  cxxopts::Options options("consa generate",
                           "Generate text with an exported hybrid model through its sliding-window KV cache.");
  options.positional_help("MODEL.ts|MODEL_DIR");
  options.add_options()
      ("model", "a consa TorchScript export or a Hugging Face checkpoint directory", cxxopts::value<std::string>())
      ("prompt", "prompt text, tokenized with --tokenizer", cxxopts::value<std::string>())
      ("tokenizer", "tokenizer.json, tokenizer.model or a directory with one (default: MODEL_DIR's)", cxxopts::value<std::string>())
      ("prompt-ids", "prompt as token ids (1,2,3 or '1 2 3')", cxxopts::value<std::string>())
      ("synthetic", "prompt: a retrieval sample up to its answer (passkey, multi_key_needle, associative_recall); "
                    "prints the expected answer", cxxopts::value<std::string>())
      ("length", "--synthetic: sample length", cxxopts::value<int64_t>()->default_value("128"))
      ("value-digits", "--synthetic: digits per value", cxxopts::value<int64_t>()->default_value("4"))
      ("min-distance", "--synthetic: key-to-query distance", cxxopts::value<int64_t>()->default_value("40"))
      ("sample", "--synthetic: sample index", cxxopts::value<int64_t>()->default_value("0"))
      ("max-new-tokens", "tokens to generate", cxxopts::value<int64_t>()->default_value("32"))
      ("temperature", "0 = greedy; > 0 samples", cxxopts::value<double>()->default_value("0"))
      ("top-p", "nucleus sampling mass (with --temperature > 0)", cxxopts::value<double>()->default_value("1"))
      ("seed", "sampling seed", cxxopts::value<uint64_t>()->default_value("0"))
      ("eos", "stop after this token id", cxxopts::value<int64_t>())
      ("device", "cpu, cuda or cuda:N", cxxopts::value<std::string>()->default_value("cpu"))
      ("graphs", "on CUDA, decode through a CUDA graph of the model's decode_step", cxxopts::value<bool>()->default_value("true"))
      ("dtype", "compute dtype for a checkpoint directory: float32, bfloat16, float16", cxxopts::value<std::string>())
      ("h,help", "show this help");
  options.parse_positional({"model"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  CONSA_CHECK(args.count("model"), "consa generate: missing MODEL.ts or MODEL_DIR (see consa generate --help)");
  CONSA_CHECK(args.count("prompt") + args.count("prompt-ids") + args.count("synthetic") == 1,
              "consa generate: give exactly one of --prompt TEXT, --prompt-ids 1,2,3 and --synthetic TASK");
  const int64_t max_new = args["max-new-tokens"].as<int64_t>();
  const double temperature = args["temperature"].as<double>(), top_p = args["top-p"].as<double>();
  CONSA_CHECK(max_new >= 0, "--max-new-tokens must be >= 0, got ", max_new);
  CONSA_CHECK(temperature >= 0, "--temperature must be >= 0, got ", temperature);
  CONSA_CHECK(top_p > 0 && top_p <= 1, "--top-p must be in (0, 1], got ", top_p);
  const std::string model_path = args["model"].as<std::string>();

  // The model's own tokenizer (tokenizer.json or tokenizer.model beside its weights), unless given.
  std::string tokenizer;
  if (args.count("tokenizer")) tokenizer = consa::resolve_tokenizer_file(args["tokenizer"].as<std::string>());
  else if (fs::is_directory(model_path))
    for (const char* name : {"tokenizer.json", "tokenizer.model"})
      if (tokenizer.empty() && fs::is_regular_file(fs::path(model_path) / name)) tokenizer = (fs::path(model_path) / name).string();
  const std::string tokenizer_program = sibling_program("consa-tokenize");

  std::vector<int64_t> prompt;
  if (args.count("prompt")) {
    CONSA_CHECK(!tokenizer.empty(), "--prompt needs a --tokenizer (tokenizer.json, tokenizer.model or a model directory), "
                "or tokenize yourself and use --prompt-ids");
    std::string ids = run_and_capture({tokenizer_program, "--tokenizer", tokenizer, "--encode", args["prompt"].as<std::string>()});
    while (!ids.empty() && (ids.back() == '\n' || ids.back() == '\r')) ids.pop_back();
    prompt = consa::parse_token_ids(ids, "--prompt (tokenized)");
  } else if (args.count("prompt-ids")) {
    prompt = consa::parse_token_ids(args["prompt-ids"].as<std::string>(), "--prompt-ids");
  }

  at::NoGradGuard no_grad;
  const at::Device device = parse_device(args["device"].as<std::string>());
  ScriptedLM model = open_model(model_path, device, args);
  if (args.count("synthetic")) {
    SyntheticOptions s;
    s.seq_len = args["length"].as<int64_t>();
    s.vocab_size = model.vocab_size();
    s.value_digits = args["value-digits"].as<int64_t>();
    s.num_needles = 2;
    s.min_distance = args["min-distance"].as<int64_t>();
    s.seed = 424242;  // apart from training and evaluation streams
    // With a tokenizer.json the sample is text in its tokens (consa/data/text_tasks.h).
    const bool text = ends_with(tokenizer, ".json");
    if (text) s.text = load_text_tasks(tokenizer, "", "--tokenizer");
    const SyntheticSample sample =
        make_synthetic_sample(parse_synthetic_task(args["synthetic"].as<std::string>()), s, args["sample"].as<int64_t>());
    prompt.assign(sample.tokens.begin(), sample.tokens.begin() + sample.answer_start);
    std::cerr << "prompt " << prompt.size() << " tokens of " << args["synthetic"].as<std::string>()
              << "; the key sits at position " << sample.value_position << ", expected answer:";
    for (int64_t id : sample.answer) std::cerr << " " << id;
    if (text) std::cerr << " ('" << s.text->tokenizer().decode(sample.answer) << "')";
    std::cerr << "\n";
  }
  for (int64_t id : prompt)
    CONSA_CHECK(id < model.vocab_size(), "prompt: token id ", id, " is outside the vocabulary of ", model.vocab_size());
  const Assignment& a = model.assignment();
  std::cerr << "model  " << model_path << ": " << gate_unit_name(a.unit) << " units, " << std::fixed
            << std::setprecision(3) << a.achieved_sparsity() << " on SWA (window " << a.swa.window << ", sinks "
            << a.swa.sinks << "), " << dtype_name(model.dtype()) << " on " << model.device().str() << "\n";
  std::cerr.unsetf(std::ios::fixed);

  const int64_t capacity = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(max_new, 1);
  CONSA_CHECK(capacity < (int64_t{1} << 36), "--max-new-tokens ", max_new, ": ", capacity,
              " positions are more than any KV cache here can hold (at most 2^36)");
  if (model.device().is_cpu()) {  // refused before allocating, not by the allocator mid-way
    const auto [fa, sw] = a.kv_cache_bytes(capacity, static_cast<int64_t>(c10::elementSize(model.dtype())));
    const double ram = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
    CONSA_CHECK(static_cast<double>(fa + sw) <= ram / 2, "--max-new-tokens ", max_new, ": a KV cache of ", capacity,
                " positions needs ", fa + sw, " bytes, more than half of this machine's ", static_cast<int64_t>(ram),
                " bytes of memory");
  }
  ScriptedLM::Cache cache = model.new_cache(1, capacity);
  auto gen = at::detail::createCPUGenerator(args["seed"].as<uint64_t>());
  std::unique_ptr<FeedProcess> detokenizer;
  if (!tokenizer.empty())
    detokenizer = std::make_unique<FeedProcess>(std::vector<std::string>{tokenizer_program, "--tokenizer", tokenizer, "--decode-stream"});
  auto emit = [&](int64_t id) {
    if (detokenizer) {
      detokenizer->write_line(std::to_string(id));
    } else {
      std::cout << id << " " << std::flush;
    }
  };

  const auto prefill_start = Clock::now();
  at::Tensor logits = model.extend(at::tensor(prompt, at::kLong).unsqueeze(0).to(device), cache, true);
  int64_t token = next_token(logits[0][-1], temperature, top_p, gen);
  wait_for_device(device);
  const double prefill_s = seconds_since(prefill_start);
  // On CUDA each token can be one replay of a recorded graph instead of hundreds of operators
  // dispatched from the host (exports from before decode_step existed decode through extend).
  std::unique_ptr<GraphedDecoder> graphed;
  if (args["graphs"].as<bool>() && GraphedDecoder::supported(model) && max_new > 1)
    graphed = std::make_unique<GraphedDecoder>(model, cache);
  const auto decode_start = Clock::now();
  const bool has_eos = args.count("eos") > 0;
  const int64_t eos = has_eos ? args["eos"].as<int64_t>() : -1;
  int64_t generated = 0;
  while (generated < max_new) {
    emit(token);
    ++generated;
    if ((has_eos && token == eos) || generated == max_new) break;
    const at::Tensor input = at::full({1, 1}, token, at::TensorOptions().dtype(at::kLong).device(device));
    logits = graphed ? graphed->step(input) : model.extend(input, cache, true);
    token = next_token(logits[0][-1], temperature, top_p, gen);
  }
  wait_for_device(device);
  const double decode_s = seconds_since(decode_start);
  if (detokenizer) detokenizer->finish();
  std::cout << std::endl;

  const int64_t dense_bytes = a.dense_kv_cache_bytes(capacity, static_cast<int64_t>(c10::elementSize(model.dtype())));
  std::cerr << std::fixed << std::setprecision(1) << "prefill " << prompt.size() << " tokens in " << prefill_s * 1e3
            << " ms (" << prompt.size() / std::max(prefill_s, 1e-9) << " tokens/s); decode " << generated
            << " tokens in " << decode_s * 1e3 << " ms (" << std::max<int64_t>(generated - 1, 0) / std::max(decode_s, 1e-9)
            << " tokens/s" << (graphed ? ", through a CUDA graph" : "") << ")\n"
            << "KV cache " << with_commas(cache.kv_bytes()) << " bytes in use for " << capacity << " positions ("
            << with_commas(dense_bytes) << " with full attention everywhere)\n";
  return 0;
}

}  // namespace consa::cli
