// One optimizer step of the training job (src/train/job.h): micro-batches of this rank's slice
// of the global batch, data-parallel gradient averaging, clipping and the update.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>

#include <map>

#include "consa/core/device.h"
#include "consa/core/error.h"
#include "consa/core/mix.h"
#include "consa/train/fused_adamw.h"
#include "job.h"

namespace consa::detail {

namespace {

// The squared gradient norm of `tensors` (which may live on different devices: weights on the
// GPU, gates on the CPU), on `device`. Reads nothing back.
at::Tensor squared_norm(const std::vector<at::Tensor>& tensors, at::Device device) {
  std::map<std::string, std::vector<at::Tensor>> grads_by_device;
  for (const auto& t : tensors)
    if (t.grad().defined()) grads_by_device[t.device().str()].push_back(t.grad());
  at::Tensor total_sq = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
  for (const auto& [where, grads] : grads_by_device)
    total_sq = total_sq + to_device_async(at::stack(at::_foreach_norm(grads, 2)).to(at::kFloat).pow(2).sum(), device);
  return total_sq;
}

// Multiplies every gradient of `tensors` by `coef` (a scalar on some device); a tensor elsewhere
// takes the scale through the host.
void scale_gradients(const std::vector<at::Tensor>& tensors, const at::Tensor& coef) {
  at::Tensor coef_on_host;
  at::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    if (!t.grad().defined()) continue;
    if (t.device() == coef.device()) {
      t.grad().mul_(coef);
    } else {
      if (!coef_on_host.defined()) coef_on_host = coef.cpu();
      t.grad().mul_(coef_on_host.to(t.device()));
    }
  }
}

at::Device main_device(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors)
    if (t.grad().defined() && !t.device().is_cpu()) return t.device();
  return at::kCPU;
}

// Global gradient-norm clipping over `replicated` tensors, which every rank holds whole, and
// this rank's slices of the sharded weights, if any (their squared norm is summed over ranks).
// The norm and the scale stay on the weights' device, so nothing is read back unless some
// gradients live elsewhere (stage 1's gates without overlapped updates), which then need the
// scale on the host.
void clip_global_grad_norm(const std::vector<at::Tensor>& replicated, double max_norm,
                           distributed::ShardedWeights* shards) {
  std::vector<at::Tensor> all = replicated;
  if (shards) all.insert(all.end(), shards->masters().begin(), shards->masters().end());
  const at::Device device = main_device(all);
  at::Tensor total_sq = squared_norm(replicated, device);
  if (shards) total_sq = total_sq + to_device_async(shards->squared_gradient_norm(), device);
  const at::Tensor coef = (max_norm / (total_sq.sqrt() + 1e-6)).clamp_max(1.0);
  scale_gradients(all, coef);
}

}  // namespace

double IntervalThroughput::tokens_per_s(int64_t step) {
  const auto now = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(now - last_).count();
  const double rate = static_cast<double>((step - last_step_) * tokens_per_step_) / std::max(seconds, 1e-9);
  last_step_ = step;
  last_ = now;
  return rate;
}

at::Tensor LateGateGradient::track(const at::Tensor& z, const at::Tensor& log_alpha, at::Device device) {
  // Each z_i depends on log_alpha_i alone, so one backward of ones gives the diagonal Jacobian.
  const at::Tensor dz_dlog_alpha = torch::autograd::grad({z}, {log_alpha}, {at::ones_like(z)})[0];
  at::Tensor leaf = to_device_async(z.detach(), device).requires_grad_(true);
  tracked_.push_back({leaf, to_device_async(dz_dlog_alpha, device)});
  return leaf;
}

at::Tensor LateGateGradient::finish_step(distributed::Communicator& comm, const at::Tensor& log_alpha) {
  at::Tensor sum;
  at::Device device = tracked_.empty() ? at::Device(at::kCPU) : tracked_.front().first.device();
  for (const auto& [z, dz_dlog_alpha] : tracked_) {
    if (!z.grad().defined()) continue;  // every gate saturated: no gradient reached z
    const at::Tensor term = z.grad() * dz_dlog_alpha;
    sum = sum.defined() ? sum + term : term;
  }
  tracked_.clear();
  if (comm.has_group()) {
    // Every rank takes part, whether or not a gradient reached its gates.
    if (!sum.defined()) sum = at::zeros(log_alpha.sizes(), at::TensorOptions().dtype(at::kFloat).device(device));
    comm.average(sum, "the gates' gradient");
  }
  at::Tensor previous = previous_.started() ? previous_.get() : at::Tensor();
  previous_ = sum.defined() ? compat::HostCopy(sum) : compat::HostCopy();
  return previous;
}

at::Generator& Job::gate_noise(int64_t global_step) {
  if (r_.distributed.gate_noise != "per_rank" || !comm_->has_group()) return generator_;
  step_generator_ = at::detail::createCPUGenerator(
      splitmix64(r_.train.seed ^ splitmix64(static_cast<uint64_t>(comm_->rank()) * 0x100000001ull + static_cast<uint64_t>(global_step))));
  return step_generator_;
}

void Job::setup_weight_sync() {
  if (buckets_ || !comm_->has_group()) return;
  const bool shard = r_.distributed.shard_optimizer;
  buckets_ = std::make_unique<distributed::GradientBuckets>(
      comm_, model_->parameters(), r_.distributed.bucket_mb << 20,
      shard ? distributed::GradientBuckets::Reduction::ReduceScatter : distributed::GradientBuckets::Reduction::AllReduce);
  if (shard) {
    sharded_ = std::make_unique<distributed::ShardedWeights>(comm_, *buckets_);
    master_weights_.clear();  // the shard's fp32 masters take their place
  }
}

std::vector<at::Tensor> Job::optimized_weights() {
  if (sharded_) return sharded_->masters();
  return master_weights_.empty() ? model_->parameters() : master_weights_;
}

void Job::grads_to_masters() {
  if (sharded_) {
    sharded_->take_gradients();
    return;
  }
  if (buckets_) {
    buckets_->write_gradients(optimized_weights());
    return;
  }
  if (master_weights_.empty()) return;
  auto params = model_->parameters();
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].grad().defined()) master_weights_[i].mutable_grad() = params[i].grad().to(at::kFloat);
}

void Job::masters_to_weights() {
  if (sharded_) {
    sharded_->gather_into_weights();
    return;
  }
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

void Job::clip_gradients(bool stage1, bool train_weights, bool late_gates) {
  const double max_norm = r_.optimizer.grad_clip;
  // Whole on every rank: the weights unless they are sharded, then the gates in a joint norm.
  std::vector<at::Tensor> replicated;
  if (train_weights && !sharded_) replicated = optimized_weights();
  distributed::ShardedWeights* shards = train_weights ? sharded_.get() : nullptr;
  if (late_gates) {
    // Weights on the device and gates on the host clip separately: a joint norm would bring
    // the scale back to the host.
    if (train_weights) clip_global_grad_norm(replicated, max_norm, shards);
    clip_global_grad_norm({gates_->log_alpha}, max_norm, nullptr);
  } else {
    if (stage1) replicated.push_back(gates_->log_alpha);
    clip_global_grad_norm(replicated, max_norm, shards);
  }
}

StepStats Job::step(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer, const BatchStream& data) {
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
  const int64_t micro = r_.data.batch_size, world = comm_->world_size();
  at::Generator& noise = gate_noise(global_step_);
  for (int64_t m = 0; m < accumulation; ++m) {
    // The global batch of a step is its world x accumulation micro-batches in one order, so the
    // data depends only on the seed and the global batch: micro-batch m of rank r is the
    // (m * world + r)-th of the step.
    Batch batch = data.sequences(next_sequence_ + (m * world + comm_->rank()) * micro, micro);
    at::Tensor tokens = to_device_async(batch.tokens, model_->device());
    if (late_gates) {
      const at::Tensor z = gates_->sample(noise);
      gates_->apply(model_, z.detach(), late_gate_gradient_.track(z, gates_->log_alpha, model_->device()));
    } else if (stage1) {
      gates_->apply(model_, gates_->sample(noise));
    }
    at::Tensor teacher_logits, teacher_hidden;
    if (r_.objective.needs_teacher()) {
      at::NoGradGuard no_grad;
      if (teacher_) {
        teacher_hidden = teacher_->hidden_states(tokens, batch.document_ids);
        teacher_logits = teacher_->logits(teacher_hidden);
      } else {
        DenseView dense(model_);
        teacher_hidden = model_->hidden_states(tokens, batch.document_ids);
        teacher_logits = model_->logits(teacher_hidden);
      }
    }
    if (buckets_ && train_weights && m + 1 == accumulation) buckets_->arm();
    at::Tensor hidden = model_->hidden_states(tokens, batch.document_ids);
    LossTerms terms = compute_objective(r_.objective, tokens, batch.ce_mask, hidden, model_->output_weight(),
                                        teacher_logits, teacher_hidden, model_->fused_kernels());
    (terms.total / static_cast<double>(accumulation)).backward();
    nonfinite_ = nonfinite_ + (~at::isfinite(terms.total.detach())).to(at::kFloat);
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
  next_sequence_ += sequences_per_step();
  ++global_step_;
  if (buckets_ && train_weights) buckets_->finish();
  if (stage1) constraint_->ascend_lambdas();
  if (late_gates) {
    at::Tensor& gate_grad = gates_->log_alpha.mutable_grad();
    const at::Tensor previous = late_gate_gradient_.finish_step(*comm_, gates_->log_alpha);
    if (!previous.defined())
      gate_grad = at::Tensor();  // no LM gradient yet: the gates hold still this step
    else
      gate_grad = gate_grad.defined() ? gate_grad + previous : previous;
  } else if (stage1 && comm_->has_group()) {
    // The LM part differs by rank, the constraint's is the same everywhere: the average is the
    // global batch's gradient.
    comm_->average(gates_->log_alpha.mutable_grad(), "the gates' gradient");
  }
  if (train_weights) grads_to_masters();
  if (r_.optimizer.grad_clip > 0) clip_gradients(stage1, train_weights, late_gates);
  optimizer.step();
  if (train_weights) masters_to_weights();
  if (stage1) gates_->clamp_log_alpha();
  return stats;
}

void Job::reduce_stats(StepStats& stats) {
  if (!comm_->has_group()) return;
  at::Tensor losses = at::stack({stats.ce, stats.kl, stats.mse}).to(at::kFloat).to(comm_->device());
  comm_->average(losses, "the step's losses");
  stats.ce = losses[0];
  stats.kl = losses[1];
  stats.mse = losses[2];
}

void Job::check_finite(int64_t global_step) {
  // Read at logging steps and before checkpoints only: the read waits for the device.
  double bad = nonfinite_.item<double>();
  if (comm_->has_group()) bad = comm_->sum(bad, "the NaN/Inf check");
  nonfinite_.zero_();
  const int64_t since = last_checked_step_;
  last_checked_step_ = global_step;
  CONSA_CHECK(bad == 0, dir_, ": the loss became NaN or Inf between steps ", since + 1, " and ", global_step,
              comm_->world_size() > 1 ? " (on some rank)" : "",
              "; stopped without writing a checkpoint (the last one is intact); lower the learning rates or check the data");
}

}  // namespace consa::detail
