// The training job's course (src/train/job.h): load, stage 1, binarize, stage 2, outputs; and
// the public entry points of consa/train/trainer.h.
#include "consa/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize/input-archive.h>

#include <cmath>
#include <iostream>
#include <sstream>

#include "consa/core/atomic_file.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/distributed/launch_env.h"
#include "consa/load/pretrained.h"
#include "consa/train/linear_cross_entropy.h"
#include "job.h"

namespace consa {
namespace fs = std::filesystem;
using json = nlohmann::json;

double lr_multiplier(const std::string& kind, int64_t warmup_steps, int64_t step, int64_t total) {
  if (step < warmup_steps) return static_cast<double>(step + 1) / warmup_steps;
  if (kind == "constant" || total <= warmup_steps) return 1.0;
  const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total - warmup_steps);
  if (kind == "linear") return 1.0 - progress;
  return 0.5 * (1.0 + std::cos(M_PI * progress));  // cosine
}

namespace detail {

Job::Job(const Recipe& recipe, const TrainControl& control, CausalLM model,
         std::shared_ptr<distributed::Communicator> comm)
    : r_(as_stages(recipe)),
      original_(recipe),
      control_(control),
      dir_(recipe.output.dir),
      model_(std::move(model)),
      teacher_(nullptr),
      gates_(nullptr),
      constraint_(nullptr),
      generator_(at::detail::createCPUGenerator(recipe.train.seed)),
      comm_(comm ? std::move(comm) : std::make_shared<distributed::Communicator>()) {
  // One GPU per rank: the process group's device (cuda:LOCAL_RANK for model.device cuda).
  if (comm_->has_group() && comm_->device().is_cuda()) r_.model.device = comm_->device().str();
}

Recipe Job::as_stages(Recipe r) {
  if (r.train.mode != "dense") return r;
  r.recover.steps = r.train.steps;
  r.recover.lr = r.optimizer.lr;
  r.train.steps = 0;
  r.constraint.target = 0;
  r.constraint.kv_budget = {};
  r.gates.narrower_windows.clear();
  r.exporting.rule = BinarizeRule::Exact;
  return r;
}

BatchStream Job::training_data() const {
  return BatchStream(r_.data, model_->config().vocab_size, min_distance(), Split::Train);
}

void Job::load_models() {
  const bool preloaded = static_cast<bool>(model_);
  if (!preloaded) model_ = load_pretrained(r_.model.path, model_load_options(r_));
  model_->set_gradient_checkpointing(r_.train.gradient_checkpointing);
  if (r_.objective.needs_teacher() && weights_trained()) {
    CONSA_CHECK(!preloaded, r_.source, ": objective.kl/mse with trained weights needs the teacher loaded from model.path");
    teacher_ = load_pretrained(r_.model.path, model_load_options(r_));
    for (auto& p : teacher_->parameters()) p.set_requires_grad(false);
  }
  gates_ = AttentionGates(model_->config(), r_.gates);
  kv_plan_ = resolve_kv_budget(r_, model_->config());
  constraint_ = SparsityConstraint(model_->num_layers(), r_.constraint, kv_plan_);
}

void Job::prepare() {
  load_models();
  set_weights_trainable(r_.train.mode == "full");
  // bf16 weights train through fp32 master copies: AdamW's moments and updates stay in fp32
  // (a bf16 update of a small learning rate would round to nothing).
  if (weights_trained() && model_->dtype() != at::kFloat)
    for (const auto& p : model_->parameters())
      master_weights_.push_back(p.detach().to(at::kFloat).clone().requires_grad_(true));
  if (r_.train.mode == "full") setup_weight_sync();
  tokens_per_step_ = sequences_per_step() * r_.data.seq_len;
  nonfinite_ = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(model_->device()));
}

std::unique_ptr<torch::optim::AdamW> Job::begin_recovery() {
  set_weights_trainable(true);
  setup_weight_sync();
  return make_optimizer(/*stage1=*/false);
}

double Job::heldout_ce() {
  if (r_.data.heldout_batches == 0) return -1;
  at::NoGradGuard no_grad;
  if (!heldout_) heldout_ = std::make_unique<BatchStream>(r_.data, model_->config().vocab_size, min_distance(), Split::Heldout);
  // Each rank evaluates every world-th batch; the mean is over all of them.
  double total = 0;
  for (int64_t i = comm_->rank(); i < r_.data.heldout_batches; i += comm_->world_size()) {
    Batch b = heldout_->batch_at(i);
    at::Tensor tokens = b.tokens.to(model_->device());
    const at::Tensor hidden = model_->hidden_states(tokens, b.document_ids);
    total += linear_cross_entropy(hidden, model_->output_weight(), tokens, b.ce_mask, int64_t{1} << 30,
                                  model_->fused_kernels())
                 .item<double>();
  }
  return comm_->sum(total, "the held-out loss") / r_.data.heldout_batches;
}

TrainOutcome Job::run() {
  const bool main = comm_->is_main();
  CONSA_CHECK(control_.resume || control_.overwrite || !fs::exists(checkpoint_path()), dir_,
              ": holds an earlier run (checkpoint.pt); pass --resume to continue it, --overwrite to replace it, "
              "or choose another output.dir");
  // Everything that can refuse the job (models, data, the checkpoint to resume) runs before the
  // output directory is made or its recipe.yaml rewritten: a refused job changes nothing there.
  prepare();
  BatchStream data = training_data();
  auto optimizer = make_optimizer(/*stage1=*/true);

  int stage = 1;
  int64_t start = 0;
  if (control_.resume) {
    std::tie(stage, start) = load_checkpoint(optimizer.get());
    if (main) std::cerr << "resuming " << checkpoint_path() << " at stage " << stage << " step " << start << "\n";
  } else {
    next_sequence_ = control_.first_step * sequences_per_step();
  }
  // Every rank has checked the job before rank 0 writes into the directory.
  comm_->barrier("the output directory check");
  if (main) {
    fs::create_directories(dir_);
    // A run started afresh keeps no optimizer shards of the one it replaces.
    if (!control_.resume) fs::remove_all(shard_dir());
    AtomicFileWriter out((fs::path(dir_) / "recipe.yaml").string());
    out.stream() << recipe_to_yaml(original_);
    out.commit();
  }
  const int64_t total_steps = r_.train.steps + r_.recover.steps;
  if (main)
    log_ = std::make_unique<MetricsLog>((fs::path(dir_) / "metrics.jsonl").string(),
                                        control_.resume ? (stage == 1 ? start : r_.train.steps + start) : -1);
  TrainOutcome outcome;
  outcome.target = r_.constraint.target;

  auto should_stop = [&]() { return control_.stop_after >= 0 && steps_this_process_ >= control_.stop_after; };
  auto record = [&](json j, int64_t global_step) {
    if (!log_) return;
    j["step"] = global_step;
    log_->write(j);
  };
  // A logging step's metrics (reading them waits for the device), averaged over ranks and
  // written to metrics.jsonl by rank 0.
  auto log_step = [&](StepStats stats, IntervalThroughput& throughput, int64_t done, int64_t global_step) {
    reduce_stats(stats);
    check_finite(global_step);
    json m = metrics_record(stats);
    m["tokens_per_s"] = throughput.tokens_per_s(done);
    if (comm_->has_group()) m["world_size"] = comm_->world_size();
    record(m, global_step);
    return m;
  };
  // Progress on rank 0's terminal only.
  auto make_progress = [&](const std::string& label, int64_t steps) {
    return main ? std::make_unique<Progress>(label, steps, r_.train.log_every) : nullptr;
  };

  if (stage == 1 && dense()) {
    stage = 2;
  } else if (stage == 1) {
    auto progress = make_progress("stage 1 (gates)", r_.train.steps);
    IntervalThroughput throughput(tokens_per_step_, start);
    std::string status;  // the last logged losses
    for (int64_t s = start; s < r_.train.steps; ++s) {
      const StepStats stats = step(1, s, *optimizer, data);
      ++steps_this_process_;
      const int64_t done = s + 1;
      if (done % r_.train.log_every == 0 || done == r_.train.steps) {
        const json m = log_step(stats, throughput, done, done);
        std::ostringstream line;
        line << "ce " << m["ce"].get<double>() << " s_hat " << m["s_hat"].get<double>() << " t "
             << m["target"].get<double>();
        status = line.str();
      }
      if (done % r_.train.keep_prob_every == 0 || done == r_.train.steps)
        record({{"stage", 1}, {"keep_prob", detail::tensor_to_json(gates_->prob_nonzero())}}, done);
      if (progress) progress->update(done, status);
      if (done % r_.train.checkpoint_every == 0 || done == r_.train.steps || should_stop())
        save_checkpoint(1, done, *optimizer);
      if (should_stop() && done < total_steps) {
        outcome.global_step = done;
        return outcome;
      }
    }
    ConstraintTerms final_terms = constraint_->evaluate(*gates_, r_.train.steps);
    std::ostringstream summary;
    summary << "s_hat " << final_terms.s_hat.item<double>() << " (target " << r_.constraint.target << ")";
    if (kv_plan_.units > 0)
      summary << ", expected KV " << static_cast<int64_t>(kv_plan_.expected_bytes(final_terms.s_hat.item<double>()))
              << " bytes (budget " << r_.constraint.kv_budget.bytes << ")";
    if (progress) progress->finish(summary.str());
    stage = 2;
    start = 0;
  }

  // Stage 1's result: expected fraction, per-unit keep probabilities, held-out CE with
  // deterministic gates.
  ConstraintTerms final_terms = constraint_->evaluate(*gates_, r_.train.steps);
  outcome.s_hat = final_terms.s_hat.item<double>();
  outcome.layer_s_hat = final_terms.layer_s_hat.detach();
  outcome.keep_prob = gates_->prob_nonzero().detach();
  {
    at::NoGradGuard no_grad;
    gates_->apply(model_, gates_->deterministic());
  }
  outcome.heldout_ce = dense() ? -1 : heldout_ce();
  if (!dense() && main) write_gates_json(outcome);

  // Binarize: assignment.json is the run's deliverable, and stage 2 trains under it. Every rank
  // holds the same gates, so every rank binarizes alike.
  Assignment assignment =
      r_.constraint.kv_budget.defined() && r_.exporting.rule == BinarizeRule::Exact
          ? binarize_within_kv_budget(model_->config(), *gates_, r_.constraint.kv_budget, r_.constraint.scope)
          : binarize(model_->config(), *gates_, r_.exporting.rule, r_.constraint.target, r_.constraint.scope);
  assignment.kv_budget = r_.constraint.kv_budget;
  if (main) {
    assignment.weights_checksum = weights_checksum(model_);
    assignment.save((fs::path(dir_) / "assignment.json").string(), r_.exporting.kv_context);
  }
  outcome.achieved_sparsity = assignment.achieved_sparsity();

  if (r_.recover.steps > 0) {
    // Stage 2: the assignment is frozen; weights train.
    remove_gates(model_);
    assignment.apply(model_);
    auto recover_optimizer = begin_recovery();
    if (control_.resume && start > 0) {
      torch::serialize::InputArchive archive;
      open_archive(archive, checkpoint_path());
      load_optimizer(*recover_optimizer, archive);
    }
    auto progress = make_progress(dense() ? "dense" : "stage 2 (recover)", r_.recover.steps);
    IntervalThroughput throughput(tokens_per_step_, start);
    std::string status;
    for (int64_t s = start; s < r_.recover.steps; ++s) {
      const StepStats stats = step(2, s, *recover_optimizer, data);
      ++steps_this_process_;
      const int64_t done = s + 1;
      if (done % r_.train.log_every == 0 || done == r_.recover.steps) {
        const json m = log_step(stats, throughput, done, r_.train.steps + done);
        status = "ce " + std::to_string(m["ce"].get<double>());
      }
      if (progress) progress->update(done, status);
      if (done % r_.train.checkpoint_every == 0 || done == r_.recover.steps || should_stop())
        save_checkpoint(2, done, *recover_optimizer);
      if (should_stop() && done < r_.recover.steps) {
        outcome.global_step = r_.train.steps + done;
        return outcome;
      }
    }
    const double final_ce = heldout_ce();
    if (progress) progress->finish("held-out ce " + std::to_string(final_ce));
  }
  if (weights_trained() && main) {
    // The assignment names the weights it belongs to: the trained ones.
    remove_gates(model_);
    save_pretrained(model_, (fs::path(dir_) / "model").string());
    assignment.weights_checksum = weights_checksum(model_);
    assignment.save((fs::path(dir_) / "assignment.json").string(), r_.exporting.kv_context);
  }
  comm_->barrier("the end of training");
  outcome.finished = true;
  outcome.global_step = total_steps;
  return outcome;
}

}  // namespace detail

KvBudgetPlan resolve_kv_budget(Recipe& r, const ModelConfig& config) {
  if (!r.constraint.kv_budget.defined()) return {};
  const KvBudgetPlan plan =
      plan_kv_budget(config, r.gates, r.constraint.kv_budget, r.source + ": constraint.kv_budget");
  r.constraint.target = plan.target;
  return plan;
}

LoadOptions model_load_options(const Recipe& r) {
  LoadOptions load;
  load.dtype = parse_dtype(r.model.dtype, r.source + ": model.dtype");
  CONSA_CHECK(r.model.device == "cpu" || at::hasCUDA(), r.source, ": model.device: ", r.model.device,
              " requested but no CUDA device is available");
  load.device = at::Device(r.model.device);
  load.attention = parse_attention_impl(r.model.attention);
  load.kernels = parse_kernel_impl(r.model.kernels);
  load.kernels_key = r.source + ": model.kernels";
  return load;
}

std::shared_ptr<distributed::Communicator> join_job(const Recipe& recipe) {
  const distributed::LaunchEnv env = distributed::launch_env();
  if (!env.distributed()) return std::make_shared<distributed::Communicator>();
  std::string device = recipe.model.device;
  if (device == "cuda") {
    device = "cuda:" + std::to_string(env.local_rank);
  } else if (device != "cpu") {
    CONSA_CHECK(env.local_world_size == 1, recipe.source, ": model.device: ", device, " names one GPU, but this node runs ",
                env.local_world_size, " ranks; use 'cuda' (each rank takes cuda:LOCAL_RANK)");
  }
  CONSA_CHECK(device == "cpu" || at::hasCUDA(), recipe.source, ": model.device: ", device,
              " requested but no CUDA device is available");
  return distributed::Communicator::connect(env, recipe.distributed.backend, recipe.distributed.timeout_s,
                                            at::Device(device));
}

struct TrainStepper::State {
  State(const Recipe& recipe, CausalLM model, int stage, std::shared_ptr<distributed::Communicator> comm)
      : job(recipe, TrainControl{}, std::move(model), std::move(comm)), stage(stage) {}
  detail::Job job;
  int stage;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::unique_ptr<BatchStream> data;
  int64_t steps_done = 0;
};

TrainStepper::TrainStepper(const Recipe& recipe, CausalLM model, int stage,
                           std::shared_ptr<distributed::Communicator> comm)
    : state_(std::make_unique<State>(recipe, std::move(model), stage, std::move(comm))) {
  CONSA_CHECK(stage == 1 || stage == 2, "TrainStepper: stage must be 1 or 2, got ", stage);
  state_->job.prepare();
  state_->optimizer = stage == 1 ? state_->job.make_optimizer(/*stage1=*/true) : state_->job.begin_recovery();
  state_->data = std::make_unique<BatchStream>(state_->job.training_data());
}

TrainStepper::~TrainStepper() = default;

void TrainStepper::step() {
  state_->job.step(state_->stage, state_->steps_done++, *state_->optimizer, *state_->data);
}

double TrainStepper::exposed_communication_seconds() const { return state_->job.exposed_communication_seconds(); }

TrainOutcome run_training(const Recipe& recipe, const TrainControl& control) {
  std::shared_ptr<distributed::Communicator> comm = control.comm ? control.comm : join_job(recipe);
  detail::Job job(recipe, control, nullptr, comm);
  try {
    TrainOutcome outcome = job.run();
    outcome.main_process = comm->is_main();
    return outcome;
  } catch (const std::exception& e) {
    comm->report_failure(e.what());
    throw;
  }
}

}  // namespace consa
