// consa bench train: step time, tokens/s, model FLOP utilisation and peak memory of the
// training step `consa train` runs (TrainStepper), for dense, gated (stage 1) and hard-assignment
// (stage 2) training at several sequence lengths, on random weights of a real model's shape.
#include <ATen/core/grad_mode.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "bench.h"
#include "commands.h"
#include "consa/core/atomic_file.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/core/torch_compat.h"
#include "consa/data/token_shards.h"
#include "consa/distributed/communicator.h"
#include "consa/gate/attention_gates.h"
#include "consa/kernels/fused_ops.h"
#include "consa/train/trainer.h"

namespace consa::cli {

namespace {

// What is timed. Dense and hard train the weights only (stage 2); gated trains weights and gates
// together (stage 1, train.mode full); gates trains the gates with frozen weights (stage 1, the
// default train.mode).
enum class BenchMode { Dense, Gated, GatesOnly, Hard };

BenchMode parse_bench_mode(const std::string& name) {
  if (name == "dense") return BenchMode::Dense;
  if (name == "gated") return BenchMode::Gated;
  if (name == "gates") return BenchMode::GatesOnly;
  if (name == "hard") return BenchMode::Hard;
  fail("--modes: '", name, "' is not a mode; choose from dense, gated, gates, hard");
}

const char* bench_mode_name(BenchMode mode) {
  switch (mode) {
    case BenchMode::Dense: return "dense";
    case BenchMode::Gated: return "gated";
    case BenchMode::GatesOnly: return "gates";
    case BenchMode::Hard: return "hard";
  }
  return "?";
}

// Sum over the queries of one sequence of length L of the keys each sees: L(L+1)/2 under full
// causal attention, sum_i min(i + 1, W) under a window of W.
double visible_key_pairs(int64_t length, const AttentionSpan& span) {
  const double l = static_cast<double>(length);
  if (span.is_full() || span.window >= length) return l * (l + 1) / 2;
  const double w = static_cast<double>(span.window);
  return w * (w + 1) / 2 + (l - w) * w;
}

// Model FLOPs of one training step (forward + backward = 3x forward):
//   6 * N * tokens                                  (every parameter in one matmul per token)
// + 3 * 4 * head_dim * sum over layers, query heads and sequences of visible (query, key) pairs
//                                                   (QK^T and PV, 2 FLOPs per multiply-add).
// N counts the tied embedding once, as lm_head's matmul. Dense and gated steps count full
// attention everywhere (the dense model's FLOPs: the gated step's extra SWA branch is overhead);
// the hard step counts each KV group under its own span.
double step_flops(CausalLM& model, int64_t batch, int64_t length) {
  const ModelConfig& c = model->config();
  double attention_pairs = 0;
  const int64_t group = c.num_heads / c.num_kv_heads;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (const AttentionSpan& span : model->attention(l).group_spans)
      attention_pairs += group * visible_key_pairs(length, span);
  const double tokens = static_cast<double>(batch * length);
  return 6.0 * static_cast<double>(model->parameter_count()) * tokens +
         12.0 * static_cast<double>(c.head_dim) * attention_pairs * static_cast<double>(batch);
}

struct TrainBenchSettings {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kBFloat16;
  AttentionSpan swa;
  double sparsity = 0.75;  // hard: fraction of KV heads on SWA; gated: the constraint's target
  bool checkpointing = true;
  bool overlap_gate_updates = true;  // stage 1 (gated, gates): train.overlap_gate_updates
  int64_t warmup = 2, steps = 5, repeats = 3;
  std::string attention = "auto";
  std::string trace_dir;  // when set: a Chrome trace of one more step per configuration
  bool chunked_cross_entropy = false;  // objective.chunked_cross_entropy
  std::string corpus;  // random token shard: every position is a scored target, as in pretraining
};

// A shard of `tokens` uniform random ids below `vocab` in a fresh temporary folder; the caller
// removes the folder.
std::string write_random_corpus(int64_t tokens, int64_t vocab) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("consa-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  at::Tensor ids = at::randint(0, vocab, {tokens}, at::TensorOptions().dtype(at::kLong));
  const int64_t* p = ids.data_ptr<int64_t>();
  write_token_shard((dir / "random.tok").string(), std::vector<int64_t>(p, p + tokens));
  return (dir / "random.tok").string();
}

Recipe bench_recipe(const TrainBenchSettings& s, BenchMode mode, int64_t length, int64_t batch) {
  Recipe r;
  r.source = "consa bench train";
  r.model.dtype = dtype_name(s.dtype);
  r.model.device = s.device.str();
  r.model.attention = s.attention;
  r.gates.unit = GateUnit::KvHead;
  r.gates.swa = s.swa;
  r.constraint.target = s.sparsity;
  r.data.seq_len = length;
  r.data.batch_size = batch;
  r.data.heldout_batches = 0;
  r.data.synthetic_ratio = 0;
  r.data.shards = {TokenSourceSpec(s.corpus)};
  r.objective.chunked_cross_entropy = s.chunked_cross_entropy;
  r.schedule.kind = "constant";
  r.train.gradient_checkpointing = s.checkpointing;
  r.train.overlap_gate_updates = s.overlap_gate_updates;
  r.train.steps = r.recover.steps = s.warmup + s.steps * s.repeats;
  r.train.mode = mode == BenchMode::Dense ? "dense" : mode == BenchMode::GatesOnly ? "gates" : "full";
  return r;
}

// Where ranks other than 0 print: nowhere (a stream without a buffer discards everything).
std::ostream& null_stream() {
  static std::ostream sink(nullptr);
  return sink;
}

struct TrainBenchResult {
  double step_seconds = 0;  // median over repeats of the mean step time
  double exposed_comm_seconds = 0;  // per step: gradient collectives waited for after backward
  double single_rank_step_seconds = 0;  // several ranks: rank 0's step alone (median), else 0
  std::vector<double> repeat_step_seconds;
  double flops = 0;
  int64_t peak_bytes = -1;
};

TrainBenchResult time_training(CausalLM& model, const std::string& shape, const TrainBenchSettings& s,
                               BenchMode mode, int64_t length, int64_t batch,
                               const std::shared_ptr<distributed::Communicator>& comm) {
  // Every timed run starts from plain spans: all full attention, or the hard assignment.
  auto plain_spans = [&]() {
    remove_gates(model);
    uniform_assignment(model, s.swa, mode == BenchMode::Hard ? s.sparsity : 0.0).apply(model);
  };
  plain_spans();
  TrainBenchResult result;
  result.flops = step_flops(model, batch, length);
  const int stage = mode == BenchMode::Gated || mode == BenchMode::GatesOnly ? 1 : 2;
  if (comm->world_size() > 1) {
    // World size 1 in the same invocation, for the scaling efficiency: rank 0 alone, on the same
    // per-GPU batch, while the other ranks wait.
    if (comm->is_main()) {
      TrainStepper alone(bench_recipe(s, mode, length, batch), model, stage);
      for (int64_t i = 0; i < s.warmup; ++i) alone.step();
      std::vector<double> repeats;
      for (int64_t r = 0; r < s.repeats; ++r) {
        wait_for_device(s.device);
        const auto start = Clock::now();
        for (int64_t i = 0; i < s.steps; ++i) alone.step();
        wait_for_device(s.device);
        repeats.push_back(seconds_since(start) / static_cast<double>(s.steps));
      }
      result.single_rank_step_seconds = median(repeats);
    }
    comm->barrier("the single-rank reference step");
    plain_spans();
  }
  {
    TrainStepper stepper(bench_recipe(s, mode, length, batch), model, stage, comm);
    for (int64_t i = 0; i < s.warmup; ++i) stepper.step();
    wait_for_device(s.device);
    compat::reset_peak_device_memory(s.device);
    for (int64_t r = 0; r < s.repeats; ++r) {
      const auto start = Clock::now();
      double exposed = 0;
      for (int64_t i = 0; i < s.steps; ++i) {
        stepper.step();
        exposed += stepper.exposed_communication_seconds();
      }
      wait_for_device(s.device);
      result.repeat_step_seconds.push_back(seconds_since(start) / static_cast<double>(s.steps));
      result.exposed_comm_seconds += exposed / static_cast<double>(s.steps * s.repeats);
    }
    result.peak_bytes = compat::peak_device_memory(s.device);
    if (!s.trace_dir.empty()) {
      compat::start_trace();
      stepper.step();
      wait_for_device(s.device);
      compat::stop_trace(s.trace_dir + "/" + shape + "_" + std::to_string(length) + "_" +
                         bench_mode_name(mode) + (model->fused_kernels() ? "_fused" : "_aten") + ".json");
    }
  }
  remove_gates(model);
  for (auto& p : model->parameters()) {
    p.mutable_grad() = at::Tensor();
    p.set_requires_grad(false);
  }
  result.step_seconds = median(result.repeat_step_seconds);
  return result;
}

}  // namespace

int bench_train(int argc, char** argv) {
  cxxopts::Options options(
      "consa bench train",
      "Step time, tokens/s, MFU and peak memory of consa's training step on random weights:\n"
      "  dense  weights train, full attention everywhere\n"
      "  gated  stage 1 with train.mode full: gates and weights train, FA/SWA mixed per KV group\n"
      "  gates  stage 1 with train.mode gates: gates train, weights frozen\n"
      "  hard   stage 2: weights train under a fixed assignment, --sparsity of the KV heads on SWA\n"
      "MFU = (6 N tokens + 12 head_dim sum of visible query-key pairs) / step time / --peak-tflops.");
  options.add_options()
      ("shapes", "qwen3-0.6b, qwen3-1.7b, tiny", cxxopts::value<std::string>()->default_value("qwen3-0.6b,qwen3-1.7b"))
      ("seq-lens", "sequence lengths", cxxopts::value<std::string>()->default_value("2048,8192,16384"))
      ("modes", "dense, gated, gates, hard", cxxopts::value<std::string>()->default_value("dense,gated,hard"))
      ("tokens-per-step", "batch = max(1, this / sequence length)", cxxopts::value<int64_t>()->default_value("16384"))
      ("sparsity", "hard: fraction of KV heads on SWA; gated: the constraint target", cxxopts::value<double>()->default_value("0.75"))
      ("window", "sliding window W", cxxopts::value<int64_t>()->default_value("1024"))
      ("checkpointing", "per-layer gradient checkpointing (--checkpointing=false turns it off)", cxxopts::value<bool>()->default_value("true"))
      ("overlap-gate-updates", "stage 1: gates take their LM gradient one step late, so no step waits (--overlap-gate-updates=false: at once)", cxxopts::value<bool>()->default_value("true"))
      ("trace", "write a Chrome trace (CUDA kernels and operators) of one extra step per configuration into this folder", cxxopts::value<std::string>())
      ("attention", "auto, math, flash", cxxopts::value<std::string>()->default_value("auto"))
      ("kernels", "model.kernels: aten, fused or auto; a list (aten,fused) times each, side by side", cxxopts::value<std::string>()->default_value("auto"))
      ("cross-entropy", "chunked (objective.chunked_cross_entropy) or full (whole logits)", cxxopts::value<std::string>()->default_value("full"))
      ("warmup", "untimed steps first", cxxopts::value<int64_t>()->default_value("2"))
      ("steps", "steps per timed repeat", cxxopts::value<int64_t>()->default_value("5"))
      ("repeats", "timed repeats (median)", cxxopts::value<int64_t>()->default_value("3"))
      ("peak-tflops", "the device's peak dense bf16 TFLOP/s, for MFU (H200 SXM: 989)", cxxopts::value<double>()->default_value("989"))
      ("device", "cpu, cuda or cuda:N", cxxopts::value<std::string>()->default_value("cuda"))
      ("dtype", "bfloat16, float16, float32", cxxopts::value<std::string>()->default_value("bfloat16"))
      ("out", "write the results as JSON here", cxxopts::value<std::string>())
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  TrainBenchSettings s;
  s.device = parse_device(args["device"].as<std::string>());
  s.dtype = parse_dtype(args["dtype"].as<std::string>(), "--dtype");
  s.swa = AttentionSpan::sliding(args["window"].as<int64_t>());
  s.sparsity = args["sparsity"].as<double>();
  s.checkpointing = args["checkpointing"].as<bool>();
  s.overlap_gate_updates = args["overlap-gate-updates"].as<bool>();
  s.attention = args["attention"].as<std::string>();
  parse_attention_impl(s.attention);
  if (args.count("trace")) s.trace_dir = args["trace"].as<std::string>();
  const std::string cross_entropy = args["cross-entropy"].as<std::string>();
  CONSA_CHECK(cross_entropy == "chunked" || cross_entropy == "full", "--cross-entropy: expected chunked or full, got '",
              cross_entropy, "'");
  s.chunked_cross_entropy = cross_entropy == "chunked";
  s.warmup = args["warmup"].as<int64_t>();
  s.steps = args["steps"].as<int64_t>();
  s.repeats = args["repeats"].as<int64_t>();
  const int64_t tokens_per_step = args["tokens-per-step"].as<int64_t>();
  const double peak_flops = args["peak-tflops"].as<double>() * 1e12;
  CONSA_CHECK(s.swa.window > 0, "--window must be > 0, got ", s.swa.window);
  CONSA_CHECK(s.sparsity >= 0 && s.sparsity <= 1, "--sparsity must be in [0, 1], got ", s.sparsity);
  CONSA_CHECK(s.warmup >= 0 && s.steps > 0 && s.repeats > 0 && tokens_per_step > 0,
              "--warmup must be >= 0; --steps, --repeats and --tokens-per-step > 0");
  CONSA_CHECK(peak_flops > 0, "--peak-tflops must be > 0");
  std::vector<KernelImpl> kernel_choices;
  for (const std::string& k : parse_name_list(args["kernels"].as<std::string>())) {
    kernel_choices.push_back(parse_kernel_impl(k));
    use_fused_kernels(kernel_choices.back(), s.device, "--kernels");
  }
  std::vector<BenchMode> modes;
  for (const std::string& m : parse_name_list(args["modes"].as<std::string>())) modes.push_back(parse_bench_mode(m));
  // Under torchrun / srun / a launcher every rank times its own GPU's step, through the same
  // collectives as `consa train` (at world size 1 too); rank 0 reports.
  Recipe job = bench_recipe(s, BenchMode::Dense, 8, 1);
  const std::shared_ptr<distributed::Communicator> comm = join_job(job);
  if (comm->has_group()) s.device = comm->device();
  const int64_t world = comm->world_size();
  std::ostream& out = comm->is_main() ? std::cout : null_stream();

  out << dtype_name(s.dtype) << " on " << s.device.str();
  if (comm->has_group()) out << " (rank 0 of " << world << ", " << comm->backend() << ")";
  out << ", window " << s.swa.window << ", cross-entropy " << (s.chunked_cross_entropy ? "chunked" : "full")
      << ", random tokens (every position scored), sparsity "
            << s.sparsity << ", gradient checkpointing " << (s.checkpointing ? "on" : "off") << ", gate updates "
            << (s.overlap_gate_updates ? "overlapped" : "at once") << ", "
            << s.repeats << " x " << s.steps << " timed steps after " << s.warmup << "\n\n"
            << "shape        seq_len  batch  kernels  mode    step ms   tokens/s  TFLOP/s    MFU  peak GiB  vs dense  comm ms\n";
  nlohmann::json results = nlohmann::json::array();
  struct RemoveCorpus {
    std::string* path;
    ~RemoveCorpus() {
      // The shard, then its folder. Not remove_all(path, error_code): with the GPU machine's
      // libstdc++ that overload jumps to a null function.
      std::error_code ignored;
      if (path->empty()) return;
      std::filesystem::remove(*path, ignored);
      std::filesystem::remove(std::filesystem::path(*path).parent_path(), ignored);
    }
  } remove_corpus{&s.corpus};
  const std::vector<double> lengths = parse_number_list(args["seq-lens"].as<std::string>(), "--seq-lens");
  const int64_t longest = static_cast<int64_t>(*std::max_element(lengths.begin(), lengths.end()));
  for (const std::string& shape : parse_name_list(args["shapes"].as<std::string>())) {
    const ModelConfig config = shape_config(shape);
    s.corpus = write_random_corpus(8 * std::max(tokens_per_step, longest), config.vocab_size);
    CausalLM model = random_model(config, s.device, s.dtype);
    model->set_attention_backend(make_attention_backend(parse_attention_impl(s.attention)));
    for (auto& p : model->parameters()) p.set_requires_grad(false);
    for (double length_value : lengths) {
      const int64_t length = static_cast<int64_t>(length_value);
      const int64_t batch = std::max<int64_t>(1, tokens_per_step / length);
      for (KernelImpl kernels : kernel_choices) {
        model->set_fused_kernels(use_fused_kernels(kernels, s.device, "--kernels"));
        double dense_seconds = 0;
        for (BenchMode mode : modes) {
          const TrainBenchResult r = time_training(model, shape, s, mode, length, batch, comm);
          if (mode == BenchMode::Dense) dense_seconds = r.step_seconds;
          const double tokens_per_s = static_cast<double>(batch * length) / r.step_seconds;
          const double tflops = r.flops / r.step_seconds / 1e12;
          const double mfu = r.flops / r.step_seconds / peak_flops;
          std::ostringstream peak, ratio;
          if (r.peak_bytes >= 0) peak << std::fixed << std::setprecision(2) << static_cast<double>(r.peak_bytes) / (1 << 30);
          else peak << "-";
          if (dense_seconds > 0) ratio << std::fixed << std::setprecision(3) << r.step_seconds / dense_seconds;
          else ratio << "-";
          out << std::left << std::setw(13) << shape << std::right << std::setw(7) << length << std::setw(7)
                    << batch << "  " << std::left << std::setw(7) << kernel_impl_name(kernels) << "  " << std::setw(6)
                    << bench_mode_name(mode) << std::right << std::fixed
                    << std::setprecision(1) << std::setw(9) << 1e3 * r.step_seconds << std::setprecision(0)
                    << std::setw(11) << tokens_per_s << std::setprecision(1) << std::setw(9) << tflops
                    << std::setprecision(3) << std::setw(7) << mfu << std::setw(10) << peak.str()
                    << std::setw(10) << ratio.str() << std::setprecision(2) << std::setw(9)
                    << 1e3 * r.exposed_comm_seconds << "\n"
                    << std::flush;
          nlohmann::json row = {{"shape", shape}, {"seq_len", length}, {"batch", batch},
                                {"mode", bench_mode_name(mode)}, {"kernels", kernel_impl_name(kernels)},
                                {"fused_kernels", model->fused_kernels()}, {"step_ms", 1e3 * r.step_seconds},
                                {"repeat_step_ms", nlohmann::json::array()}, {"tokens_per_s", tokens_per_s},
                                {"model_flops_per_step", r.flops}, {"tflops", tflops}, {"mfu", mfu},
                                {"peak_bytes", r.peak_bytes}, {"world_size", world},
                                {"global_tokens_per_s", tokens_per_s * static_cast<double>(world)},
                                {"exposed_comm_ms", 1e3 * r.exposed_comm_seconds}};
          for (double t : r.repeat_step_seconds) row["repeat_step_ms"].push_back(1e3 * t);
          if (dense_seconds > 0) row["step_vs_dense"] = r.step_seconds / dense_seconds;
          if (r.single_rank_step_seconds > 0) {
            // Weak scaling: each rank keeps the per-GPU batch, so ideal is the single rank's step time.
            row["single_rank_step_ms"] = 1e3 * r.single_rank_step_seconds;
            row["scaling_efficiency"] = r.single_rank_step_seconds / r.step_seconds;
            out << "             world " << world << " vs 1 rank alone: " << std::setprecision(1) << 1e3 * r.single_rank_step_seconds
                << " ms alone, scaling efficiency " << std::setprecision(3) << r.single_rank_step_seconds / r.step_seconds
                << ", global tokens/s " << std::setprecision(0) << tokens_per_s * static_cast<double>(world) << "\n";
          }
          results.push_back(row);
        }
      }
    }
  }
  if (args.count("out") && comm->is_main()) {
    const nlohmann::json report = {{"device", s.device.str()}, {"dtype", dtype_name(s.dtype)},
                                   {"window", s.swa.window}, {"sparsity", s.sparsity},
                                   {"checkpointing", s.checkpointing}, {"attention", s.attention},
                                   {"overlap_gate_updates", s.overlap_gate_updates},
                                   {"cross_entropy", s.chunked_cross_entropy ? "chunked" : "full"},
                                   {"peak_tflops", peak_flops / 1e12}, {"tokens_per_step", tokens_per_step},
                                   {"results", results}};
    write_file_atomically(args["out"].as<std::string>(), report.dump(2) + "\n");
  }
  return 0;
}

}  // namespace consa::cli
