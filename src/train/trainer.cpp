#include "consa/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adamw.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>

#include "consa/core/atomic_file.h"
#include "consa/core/device.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/core/torch_compat.h"
#include "consa/load/pretrained.h"
#include "consa/train/fused_adamw.h"
#include "consa/train/progress.h"

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

namespace {

// Global gradient-norm clipping over tensors that may live on different devices (weights on the
// GPU, gates on the CPU). The norm and the scale stay on the weights' device, so nothing is read
// back unless some gradients live elsewhere (stage 1's gates without overlapped updates), which
// then need the scale on the host.
void clip_global_grad_norm(const std::vector<at::Tensor>& tensors, double max_norm) {
  std::map<std::string, std::vector<at::Tensor>> grads_by_device;
  at::Device main_device = at::kCPU;
  for (const auto& t : tensors) {
    if (!t.grad().defined()) continue;
    if (!t.device().is_cpu()) main_device = t.device();
    grads_by_device[t.device().str()].push_back(t.grad());
  }
  if (grads_by_device.empty()) return;
  at::Tensor total_sq = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(main_device));
  for (const auto& [device, grads] : grads_by_device)
    total_sq = total_sq + to_device_async(at::stack(at::_foreach_norm(grads, 2)).to(at::kFloat).pow(2).sum(), main_device);
  const at::Tensor coef = (max_norm / (total_sq.sqrt() + 1e-6)).clamp_max(1.0);
  at::Tensor coef_on_host;
  at::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    if (!t.grad().defined()) continue;
    if (t.device() == main_device) {
      t.grad().mul_(coef);
    } else {
      if (!coef_on_host.defined()) coef_on_host = coef.cpu();
      t.grad().mul_(coef_on_host.to(t.device()));
    }
  }
}

json tensor_to_json(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kDouble).cpu().contiguous();
  if (c.dim() == 1) return json(std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel()));
  json rows = json::array();
  for (int64_t i = 0; i < c.size(0); ++i) rows.push_back(tensor_to_json(c[i]));
  return rows;
}

// What one step leaves on the device until the next logging step reads it.
struct StepStats {
  int stage = 1;
  at::Tensor ce, kl, mse;      // means over the micro-batches
  double lr = 0;               // the weights' rate (0 when they are frozen)
  ConstraintTerms constraint;  // stage 1, last micro-batch
};

// Tokens per second between logging steps. Called right after a logging step's losses were read
// (which waited for the device), so each interval covers finished work.
class IntervalThroughput {
 public:
  IntervalThroughput(int64_t tokens_per_step, int64_t first_step)
      : tokens_per_step_(tokens_per_step), last_step_(first_step), last_(std::chrono::steady_clock::now()) {}
  double tokens_per_s(int64_t step) {
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - last_).count();
    const double rate = static_cast<double>((step - last_step_) * tokens_per_step_) / std::max(seconds, 1e-9);
    last_step_ = step;
    last_ = now;
    return rate;
  }

 private:
  int64_t tokens_per_step_, last_step_;
  std::chrono::steady_clock::time_point last_;
};

// Stage 1 without waiting for the device (train.overlap_gate_updates). The gates live and update
// on the host, since their sampled values decide which attention branches run. Their LM gradient
// arrives on the device as dL/dz; it is multiplied there by dz/dlog_alpha (taken on the host when
// z is sampled), summed over the step's micro-batches and copied back without waiting. The next
// step adds it to its own constraint gradient, by which time the copy has long finished: the
// gates follow their LM gradient one step late and the constraint's at once.
class LateGateGradient {
 public:
  // z [layers, units], just sampled from log_alpha: returns z's values on `device`, a leaf that
  // collects dL/dz for the mix (AttentionGatesImpl::apply's z_on_device).
  at::Tensor track(const at::Tensor& z, const at::Tensor& log_alpha, at::Device device) {
    // Each z_i depends on log_alpha_i alone, so one backward of ones gives the diagonal Jacobian.
    const at::Tensor dz_dlog_alpha = torch::autograd::grad({z}, {log_alpha}, {at::ones_like(z)})[0];
    at::Tensor leaf = to_device_async(z.detach(), device).requires_grad_(true);
    tracked_.push_back({leaf, to_device_async(dz_dlog_alpha, device)});
    return leaf;
  }

  // Ends a step's backward: starts copying its gradient to the host and returns the previous
  // step's (undefined before the first).
  at::Tensor finish_step() {
    at::Tensor sum;
    for (const auto& [z, dz_dlog_alpha] : tracked_) {
      if (!z.grad().defined()) continue;  // every gate saturated: no gradient reached z
      const at::Tensor term = z.grad() * dz_dlog_alpha;
      sum = sum.defined() ? sum + term : term;
    }
    tracked_.clear();
    at::Tensor previous = previous_.started() ? previous_.get() : at::Tensor();
    previous_ = sum.defined() ? compat::HostCopy(sum) : compat::HostCopy();
    return previous;
  }

  // The gradient waiting for the next step (checkpoints), and its restoration.
  at::Tensor pending() { return previous_.started() ? previous_.get() : at::Tensor(); }
  void restore(const at::Tensor& gradient) { previous_ = compat::HostCopy(gradient); }

 private:
  std::vector<std::pair<at::Tensor, at::Tensor>> tracked_;  // {z on the device, dz/dlog_alpha there}
  compat::HostCopy previous_;
};

class Job {
 public:
  // `model`: the model to train, already in memory (undefined: load recipe.model.path).
  Job(const Recipe& recipe, const TrainControl& control, CausalLM model = nullptr)
      : r_(as_stages(recipe)),
        original_(recipe),
        control_(control),
        dir_(recipe.output.dir),
        model_(std::move(model)),
        teacher_(nullptr),
        gates_(nullptr),
        constraint_(nullptr),
        generator_(at::detail::createCPUGenerator(recipe.train.seed)) {}

  TrainOutcome run();
  // The model, weights' precision and trainable flags set up for training (before stage 1).
  void prepare();
  // Stage 2's setting for a model whose assignment is already applied; returns its optimizer.
  std::unique_ptr<torch::optim::AdamW> begin_recovery();
  std::unique_ptr<torch::optim::AdamW> make_optimizer(bool stage1);
  // One optimizer step of stage 1 or 2. Waits for nothing on the device, except in stage 1
  // without train.overlap_gate_updates: the gates (on the host) then need their gradient and
  // the clip scale back at once.
  StepStats step(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer, BatchStream& data);
  BatchStream training_data() const { return BatchStream(r_.data, model_->config().vocab_size, min_distance(), Split::Train); }

 private:
  void load_models();
  // The learning-rate schedule's length of `stage` (dense pretraining runs as stage 2).
  int64_t stage_steps(int stage) const { return stage == 1 ? r_.train.steps : r_.recover.steps; }
  int64_t min_distance() const {
    return r_.data.min_distance > 0 ? r_.data.min_distance : r_.gates.swa.window + 1;
  }
  void set_weights_trainable(bool on);
  // What the optimizer updates: the parameters themselves in fp32, or fp32 master copies of
  // bf16 parameters, so that optimizer state and updates stay in fp32 (master_weights_).
  std::vector<at::Tensor> optimized_weights() { return master_weights_.empty() ? model_->parameters() : master_weights_; }
  void grads_to_masters();
  void masters_to_weights();
  // The metrics.jsonl record of a step (reads its losses back: logging steps only).
  json metrics_record(const StepStats& stats) const;
  double heldout_ce();
  void save_checkpoint(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer, const BatchStream& data);
  // Returns {stage, step_in_stage} of the checkpoint, restoring everything else.
  std::pair<int, int64_t> load_checkpoint(torch::optim::AdamW* stage1_optimizer, BatchStream& data);
  void write_gates_json(const TrainOutcome& outcome);
  bool weights_trained() const { return r_.train.mode == "full" || r_.recover.steps > 0; }
  std::string checkpoint_path() const { return (fs::path(dir_) / "checkpoint.pt").string(); }

  // Dense pretraining (train.mode: dense) runs as stage 2 alone: every unit on full attention,
  // weights training for train.steps at optimizer.lr; no gates, no constraint.
  static Recipe as_stages(Recipe r) {
    if (r.train.mode != "dense") return r;
    r.recover.steps = r.train.steps;
    r.recover.lr = r.optimizer.lr;
    r.train.steps = 0;
    r.constraint.target = 0;
    r.exporting.rule = BinarizeRule::Exact;
    return r;
  }
  bool dense() const { return r_.train.mode == "dense"; }

  Recipe r_;
  Recipe original_;  // as written, for recipe.yaml
  TrainControl control_;
  std::string dir_;
  CausalLM model_;
  CausalLM teacher_;  // separate frozen copy only when weights train and the objective distils
  AttentionGates gates_;
  SparsityConstraint constraint_;
  at::Generator generator_;
  std::vector<at::Tensor> master_weights_;  // fp32 copies when weights train in bf16, else empty
  LateGateGradient late_gate_gradient_;  // stage 1 with train.overlap_gate_updates
  std::unique_ptr<MetricsLog> log_;
  int64_t steps_this_process_ = 0;
  int64_t tokens_per_step_ = 0;
};

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
  constraint_ = SparsityConstraint(model_->num_layers(), r_.constraint);
}

void Job::grads_to_masters() {
  if (master_weights_.empty()) return;
  auto params = model_->parameters();
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].grad().defined()) master_weights_[i].mutable_grad() = params[i].grad().to(at::kFloat);
}

void Job::masters_to_weights() {
  if (master_weights_.empty()) return;
  at::NoGradGuard no_grad;
  auto params = model_->parameters();
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(master_weights_[i]);
}

void Job::set_weights_trainable(bool on) {
  for (auto& p : model_->parameters()) p.set_requires_grad(on);
}

std::unique_ptr<torch::optim::AdamW> Job::make_optimizer(bool stage1) {
  using torch::optim::AdamWOptions;
  using torch::optim::OptimizerParamGroup;
  auto options = [&](double lr, double decay) {
    auto o = std::make_unique<AdamWOptions>(lr);
    o->betas({r_.optimizer.beta1, r_.optimizer.beta2}).weight_decay(decay);
    return o;
  };
  std::vector<OptimizerParamGroup> groups;
  const bool train_weights = stage1 ? r_.train.mode == "full" : true;
  if (train_weights)
    groups.emplace_back(optimized_weights(), options(stage1 ? r_.optimizer.lr : r_.recover.lr, r_.optimizer.weight_decay));
  if (stage1) {
    groups.emplace_back(std::vector<at::Tensor>{gates_->log_alpha}, options(r_.optimizer.gate_lr, 0.0));
    groups.emplace_back(std::vector<at::Tensor>{constraint_->lambda1, constraint_->lambda2},
                        options(r_.optimizer.lambda_lr, 0.0));
  }
  return std::make_unique<FusedAdamW>(groups, AdamWOptions(r_.optimizer.lr));
}

StepStats Job::step(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer, BatchStream& data) {
  const bool stage1 = stage == 1;
  const bool late_gates = stage1 && r_.train.overlap_gate_updates;
  const bool train_weights = stage1 ? r_.train.mode == "full" : true;
  const double base_lr = stage1 ? r_.optimizer.lr : r_.recover.lr;
  const double lr = base_lr * lr_multiplier(r_.schedule.kind, r_.schedule.warmup_steps, step_in_stage, stage_steps(stage));
  // The schedule drives the weights' rate only. Gates and lambdas keep constant rates: decaying
  // them freezes the max-min game wherever it stands, often away from the target.
  if (train_weights) static_cast<torch::optim::AdamWOptions&>(optimizer.param_groups()[0].options()).lr(lr);

  optimizer.zero_grad();
  model_->zero_grad();
  StepStats stats;
  stats.stage = stage;
  stats.lr = train_weights ? lr : 0.0;
  const int64_t accumulation = r_.optimizer.accumulation;
  for (int64_t micro = 0; micro < accumulation; ++micro) {
    Batch batch = data.next();
    at::Tensor tokens = to_device_async(batch.tokens, model_->device());
    at::Tensor ce_mask = to_device_async(batch.ce_mask, model_->device());
    if (late_gates) {
      const at::Tensor z = gates_->sample(generator_);
      gates_->apply(model_, z.detach(), late_gate_gradient_.track(z, gates_->log_alpha, model_->device()));
    } else if (stage1) {
      gates_->apply(model_, gates_->sample(generator_));
    }
    at::Tensor teacher_logits, teacher_hidden;
    if (r_.objective.needs_teacher()) {
      at::NoGradGuard no_grad;
      if (teacher_) {
        teacher_hidden = teacher_->hidden_states(tokens);
        teacher_logits = teacher_->logits(teacher_hidden);
      } else {
        DenseView dense(model_);
        teacher_hidden = model_->hidden_states(tokens);
        teacher_logits = model_->logits(teacher_hidden);
      }
    }
    at::Tensor hidden = model_->hidden_states(tokens);
    LossTerms terms = compute_objective(r_.objective, tokens, ce_mask, model_->logits(hidden), hidden,
                                        teacher_logits, teacher_hidden);
    (terms.total / static_cast<double>(accumulation)).backward();
    if (stage1) {
      // The constraint lives with the gates on the host: its own backward, no device transfer.
      stats.constraint = constraint_->evaluate(*gates_, step_in_stage);
      (stats.constraint.penalty / static_cast<double>(accumulation)).backward();
    }
    const auto add = [&](at::Tensor& sum, const at::Tensor& term) {
      sum = sum.defined() ? sum + term / accumulation : term / accumulation;
    };
    add(stats.ce, terms.ce);
    add(stats.kl, terms.kl);
    add(stats.mse, terms.mse);
  }
  if (stage1) constraint_->ascend_lambdas();
  if (late_gates) {
    at::Tensor& gate_grad = gates_->log_alpha.mutable_grad();
    const at::Tensor previous = late_gate_gradient_.finish_step();
    if (!previous.defined())
      gate_grad = at::Tensor();  // no LM gradient yet: the gates hold still this step
    else
      gate_grad = gate_grad.defined() ? gate_grad + previous : previous;
  }
  if (train_weights) grads_to_masters();
  if (r_.optimizer.grad_clip > 0) {
    std::vector<at::Tensor> weights = train_weights ? optimized_weights() : std::vector<at::Tensor>{};
    if (late_gates) {
      // Weights on the device and gates on the host clip separately: a joint norm would
      // bring the scale back to the host.
      clip_global_grad_norm(weights, r_.optimizer.grad_clip);
      clip_global_grad_norm({gates_->log_alpha}, r_.optimizer.grad_clip);
    } else {
      if (stage1) weights.push_back(gates_->log_alpha);
      clip_global_grad_norm(weights, r_.optimizer.grad_clip);
    }
  }
  optimizer.step();
  if (train_weights) masters_to_weights();
  if (stage1) gates_->clamp_log_alpha();
  return stats;
}

json Job::metrics_record(const StepStats& stats) const {
  // Reading the losses waits for the device: done only at logging steps.
  json record = {{"stage", stats.stage},
                 {"ce", stats.ce.item<double>()},
                 {"kl", stats.kl.item<double>()},
                 {"mse", stats.mse.item<double>()},
                 {"lr", stats.lr}};
  if (stats.stage == 1) {
    record["s_hat"] = stats.constraint.s_hat.item<double>();
    record["target"] = stats.constraint.target;
    record["penalty"] = stats.constraint.penalty.item<double>();
    record["lambda1"] = tensor_to_json(constraint_->lambda1);
    record["lambda2"] = tensor_to_json(constraint_->lambda2);
    record["gate_lr"] = r_.optimizer.gate_lr;
  }
  return record;
}

double Job::heldout_ce() {
  if (r_.data.heldout_batches == 0) return -1;
  at::NoGradGuard no_grad;
  BatchStream heldout(r_.data, model_->config().vocab_size, min_distance(), Split::Heldout);
  double total = 0;
  for (int64_t i = 0; i < r_.data.heldout_batches; ++i) {
    Batch b = heldout.batch_at(i);
    at::Tensor tokens = b.tokens.to(model_->device());
    total += next_token_cross_entropy(model_->forward(tokens), tokens, b.ce_mask).item<double>();
  }
  return total / r_.data.heldout_batches;
}

void Job::save_checkpoint(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer, const BatchStream& data) {
  torch::serialize::OutputArchive archive;
  if (weights_trained()) {
    auto named = model_->named_parameters();
    for (size_t i = 0; i < named.size(); ++i)
      archive.write("weights/" + named[i].key(),
                    (master_weights_.empty() ? named[i].value() : master_weights_[i]).detach());
  }
  archive.write("gates/log_alpha", gates_->log_alpha.detach());
  archive.write("constraint/lambda1", constraint_->lambda1.detach());
  archive.write("constraint/lambda2", constraint_->lambda2.detach());
  archive.write("state/stage", at::tensor(int64_t{stage}));
  archive.write("state/step", at::tensor(step_in_stage));
  archive.write("state/data_cursor", at::tensor(data.cursor()));
  archive.write("state/rng", generator_.get_state());
  const at::Tensor late_gate_grad = late_gate_gradient_.pending();
  if (late_gate_grad.defined()) archive.write("state/late_gate_grad", late_gate_grad);
  torch::serialize::OutputArchive optimizer_archive;
  optimizer.save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);
  AtomicFileWriter out(checkpoint_path());
  archive.save_to(out.stream());
  out.commit();
}

std::pair<int, int64_t> Job::load_checkpoint(torch::optim::AdamW* stage1_optimizer, BatchStream& data) {
  const std::string path = checkpoint_path();
  CONSA_CHECK(fs::exists(path), path, ": no checkpoint to resume from (run without --resume to start fresh)");
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  auto read = [&](const std::string& key) {
    at::Tensor t;
    archive.read(key, t);
    return t;
  };
  at::NoGradGuard no_grad;
  if (weights_trained()) {
    auto named = model_->named_parameters();
    for (size_t i = 0; i < named.size(); ++i) {
      at::Tensor stored = read("weights/" + named[i].key());
      if (!master_weights_.empty()) master_weights_[i].copy_(stored);
      named[i].value().copy_(stored);
    }
  }
  at::Tensor log_alpha = read("gates/log_alpha");
  CONSA_CHECK(log_alpha.sizes() == gates_->log_alpha.sizes(), path, ": gates have shape ", log_alpha.sizes(),
              ", the recipe's gates.unit needs ", gates_->log_alpha.sizes());
  gates_->log_alpha.copy_(log_alpha);
  constraint_->lambda1.copy_(read("constraint/lambda1"));
  constraint_->lambda2.copy_(read("constraint/lambda2"));
  const int stage = static_cast<int>(read("state/stage").item<int64_t>());
  data.seek(read("state/data_cursor").item<int64_t>());
  generator_.set_state(read("state/rng"));
  at::Tensor late_gate_grad;
  if (archive.try_read("state/late_gate_grad", late_gate_grad)) late_gate_gradient_.restore(late_gate_grad);
  if (stage == 1 && stage1_optimizer) {
    torch::serialize::InputArchive optimizer_archive;
    archive.read("optimizer", optimizer_archive);
    stage1_optimizer->load(optimizer_archive);
  }
  return {stage, read("state/step").item<int64_t>()};
}

void Job::write_gates_json(const TrainOutcome& o) {
  json j = {{"unit", gate_unit_name(r_.gates.unit)},
            {"window", r_.gates.swa.window},
            {"sinks", r_.gates.swa.sinks},
            {"target", r_.constraint.target},
            {"scope", constraint_scope_name(r_.constraint.scope)},
            {"s_hat", o.s_hat},
            {"layer_s_hat", tensor_to_json(o.layer_s_hat)},
            {"keep_prob", tensor_to_json(o.keep_prob)},
            {"log_alpha", tensor_to_json(gates_->log_alpha)},
            {"heldout_ce", o.heldout_ce}};
  AtomicFileWriter out((fs::path(dir_) / "gates.json").string());
  out.stream() << j.dump(2) << "\n";
  out.commit();
}

void Job::prepare() {
  load_models();
  set_weights_trainable(r_.train.mode == "full");
  // bf16 weights train through fp32 master copies: AdamW's moments and updates stay in fp32
  // (a bf16 update of a small learning rate would round to nothing).
  if (weights_trained() && model_->dtype() != at::kFloat)
    for (const auto& p : model_->parameters())
      master_weights_.push_back(p.detach().to(at::kFloat).clone().requires_grad_(true));
  tokens_per_step_ = r_.data.batch_size * r_.data.seq_len * r_.optimizer.accumulation;
}

std::unique_ptr<torch::optim::AdamW> Job::begin_recovery() {
  set_weights_trainable(true);
  return make_optimizer(/*stage1=*/false);
}

TrainOutcome Job::run() {
  CONSA_CHECK(control_.resume || control_.overwrite || !fs::exists(checkpoint_path()), dir_,
              ": holds an earlier run (checkpoint.pt); pass --resume to continue it, --overwrite to replace it, "
              "or choose another output.dir");
  fs::create_directories(dir_);
  {
    AtomicFileWriter out((fs::path(dir_) / "recipe.yaml").string());
    out.stream() << recipe_to_yaml(original_);
    out.commit();
  }
  prepare();
  BatchStream data = training_data();
  auto optimizer = make_optimizer(/*stage1=*/true);

  int stage = 1;
  int64_t start = 0;
  if (control_.resume) {
    std::tie(stage, start) = load_checkpoint(optimizer.get(), data);
    std::cerr << "resuming " << checkpoint_path() << " at stage " << stage << " step " << start << "\n";
  }
  const int64_t total_steps = r_.train.steps + r_.recover.steps;
  log_ = std::make_unique<MetricsLog>((fs::path(dir_) / "metrics.jsonl").string(),
                                      control_.resume ? (stage == 1 ? start : r_.train.steps + start) : -1);
  TrainOutcome outcome;
  outcome.target = r_.constraint.target;

  auto should_stop = [&]() { return control_.stop_after >= 0 && steps_this_process_ >= control_.stop_after; };
  auto record = [&](json j, int64_t global_step) {
    j["step"] = global_step;
    log_->write(j);
  };
  // A logging step's metrics (reading them waits for the device), written to metrics.jsonl.
  auto log_step = [&](const StepStats& stats, IntervalThroughput& throughput, int64_t done, int64_t global_step) {
    json m = metrics_record(stats);
    m["tokens_per_s"] = throughput.tokens_per_s(done);
    record(m, global_step);
    return m;
  };

  if (stage == 1 && dense()) {
    stage = 2;
  } else if (stage == 1) {
    Progress progress("stage 1 (gates)", r_.train.steps, r_.train.log_every);
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
        record({{"stage", 1}, {"keep_prob", tensor_to_json(gates_->prob_nonzero())}}, done);
      progress.update(done, status);
      if (done % r_.train.checkpoint_every == 0 || done == r_.train.steps || should_stop())
        save_checkpoint(1, done, *optimizer, data);
      if (should_stop() && done < total_steps) {
        outcome.global_step = done;
        return outcome;
      }
    }
    ConstraintTerms final_terms = constraint_->evaluate(*gates_, r_.train.steps);
    std::ostringstream summary;
    summary << "s_hat " << final_terms.s_hat.item<double>() << " (target " << r_.constraint.target << ")";
    progress.finish(summary.str());
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
  if (!dense()) write_gates_json(outcome);

  // Binarize: assignment.json is the run's deliverable, and stage 2 trains under it.
  Assignment assignment =
      binarize(model_->config(), *gates_, r_.exporting.rule, r_.constraint.target, r_.constraint.scope);
  assignment.weights_checksum = weights_checksum(model_);
  assignment.save((fs::path(dir_) / "assignment.json").string(), r_.exporting.kv_context);
  outcome.achieved_sparsity = assignment.achieved_sparsity();

  if (r_.recover.steps > 0) {
    // Stage 2: the assignment is frozen; weights train.
    remove_gates(model_);
    assignment.apply(model_);
    auto recover_optimizer = begin_recovery();
    if (control_.resume && start > 0) {
      torch::serialize::InputArchive archive, optimizer_archive;
      archive.load_from(checkpoint_path());
      archive.read("optimizer", optimizer_archive);
      recover_optimizer->load(optimizer_archive);
    }
    Progress progress(dense() ? "dense" : "stage 2 (recover)", r_.recover.steps, r_.train.log_every);
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
      progress.update(done, status);
      if (done % r_.train.checkpoint_every == 0 || done == r_.recover.steps || should_stop())
        save_checkpoint(2, done, *recover_optimizer, data);
      if (should_stop() && done < r_.recover.steps) {
        outcome.global_step = r_.train.steps + done;
        return outcome;
      }
    }
    progress.finish("held-out ce " + std::to_string(heldout_ce()));
  }
  if (weights_trained()) {
    // The assignment names the weights it belongs to: the trained ones.
    remove_gates(model_);
    save_pretrained(model_, (fs::path(dir_) / "model").string());
    assignment.weights_checksum = weights_checksum(model_);
    assignment.save((fs::path(dir_) / "assignment.json").string(), r_.exporting.kv_context);
  }
  outcome.finished = true;
  outcome.global_step = total_steps;
  return outcome;
}

}  // namespace

LoadOptions model_load_options(const Recipe& r) {
  LoadOptions load;
  load.dtype = parse_dtype(r.model.dtype, r.source + ": model.dtype");
  CONSA_CHECK(r.model.device == "cpu" || at::hasCUDA(), r.source, ": model.device: ", r.model.device,
              " requested but no CUDA device is available");
  load.device = at::Device(r.model.device);
  load.attention = parse_attention_impl(r.model.attention);
  return load;
}

struct TrainStepper::State {
  State(const Recipe& recipe, CausalLM model, int stage)
      : job(recipe, TrainControl{}, std::move(model)), stage(stage) {}
  Job job;
  int stage;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::unique_ptr<BatchStream> data;
  int64_t steps_done = 0;
};

TrainStepper::TrainStepper(const Recipe& recipe, CausalLM model, int stage)
    : state_(std::make_unique<State>(recipe, std::move(model), stage)) {
  CONSA_CHECK(stage == 1 || stage == 2, "TrainStepper: stage must be 1 or 2, got ", stage);
  state_->job.prepare();
  state_->optimizer = stage == 1 ? state_->job.make_optimizer(/*stage1=*/true) : state_->job.begin_recovery();
  state_->data = std::make_unique<BatchStream>(state_->job.training_data());
}

TrainStepper::~TrainStepper() = default;

void TrainStepper::step() {
  state_->job.step(state_->stage, state_->steps_done++, *state_->optimizer, *state_->data);
}

TrainOutcome run_training(const Recipe& recipe, const TrainControl& control) {
  Job job(recipe, control);
  return job.run();
}

}  // namespace consa
