#pragma once
// The training job behind run_training and TrainStepper (consa/train/trainer.h), shared by the
// files that implement it:
//   trainer.cpp     - the job's course: load, stage 1, binarize, stage 2, outputs;
//   train_step.cpp  - one optimizer step, data-parallel gradient averaging, clipping;
//   checkpoint.cpp  - checkpoints (with per-rank optimizer shards), metrics records, gates.json.
#include <ATen/ATen.h>
#include <torch/optim/adamw.h>
#include <torch/serialize/input-archive.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "consa/core/torch_compat.h"
#include "consa/distributed/communicator.h"
#include "consa/distributed/gradient_buckets.h"
#include "consa/distributed/sharded_weights.h"
#include "consa/train/progress.h"
#include "consa/train/trainer.h"

namespace consa::detail {

// archive.load_from(path), refusing a file that is not a LibTorch archive (a truncated or foreign
// checkpoint.pt) with a line naming it instead of the zip reader's message.
void open_archive(torch::serialize::InputArchive& archive, const std::string& path);

// What one step leaves on the device until the next logging step reads it.
struct StepStats {
  int stage = 1;
  at::Tensor ce, kl, mse;      // means over the micro-batches (this rank's until reduce_stats)
  double lr = 0;               // the weights' rate (0 when they are frozen)
  ConstraintTerms constraint;  // stage 1, last micro-batch
};

// Tokens per second between logging steps. Called right after a logging step's losses were read
// (which waited for the device), so each interval covers finished work.
class IntervalThroughput {
 public:
  IntervalThroughput(int64_t tokens_per_step, int64_t first_step)
      : tokens_per_step_(tokens_per_step), last_step_(first_step), last_(std::chrono::steady_clock::now()) {}
  double tokens_per_s(int64_t step);

 private:
  int64_t tokens_per_step_, last_step_;
  std::chrono::steady_clock::time_point last_;
};

// Stage 1 without waiting for the device (train.overlap_gate_updates). The gates live and update
// on the host, since their sampled values decide which attention branches run. Their LM gradient
// arrives on the device as dL/dz; it is multiplied there by dz/dlog_alpha (taken on the host when
// z is sampled), summed over the step's micro-batches (and averaged over ranks) and copied back
// without waiting. The next step adds it to its own constraint gradient, by which time the copy
// has long finished: the gates follow their LM gradient one step late and the constraint's at once.
class LateGateGradient {
 public:
  // z [layers, levels x units], just sampled from log_alpha: returns z's values on `device`, a leaf that
  // collects dL/dz for the mix (AttentionGatesImpl::apply's z_on_device).
  at::Tensor track(const at::Tensor& z, const at::Tensor& log_alpha, at::Device device);
  // Ends a step's backward: averages its gradient over ranks, starts copying it to the host and
  // returns the previous step's (undefined before the first).
  at::Tensor finish_step(distributed::Communicator& comm, const at::Tensor& log_alpha);
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
  // `comm`: this process's place in a data-parallel job (a job of its own by default).
  Job(const Recipe& recipe, const TrainControl& control, CausalLM model = nullptr,
      std::shared_ptr<distributed::Communicator> comm = nullptr);

  TrainOutcome run();
  // The model, weights' precision and trainable flags set up for training (before stage 1).
  void prepare();
  // Stage 2's setting for a model whose assignment is already applied; returns its optimizer.
  std::unique_ptr<torch::optim::AdamW> begin_recovery();
  std::unique_ptr<torch::optim::AdamW> make_optimizer(bool stage1);
  // One optimizer step of stage 1 or 2. Waits for nothing on the device, except in stage 1
  // without train.overlap_gate_updates (the gates on the host then need their gradient and the
  // clip scale back at once) and for the collectives of a multi-rank job.
  StepStats step(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer, const BatchStream& data);
  BatchStream training_data() const;
  // Seconds the last step waited for gradient collectives after its backward.
  double exposed_communication_seconds() const { return buckets_ ? buckets_->exposed_seconds() : 0.0; }

 private:
  void load_models();
  // The learning-rate schedule's length of `stage` (dense pretraining runs as stage 2).
  int64_t stage_steps(int stage) const { return stage == 1 ? r_.train.steps : r_.recover.steps; }
  // Training sequences one optimizer step takes, over all ranks.
  int64_t sequences_per_step() const { return r_.data.batch_size * r_.optimizer.accumulation * comm_->world_size(); }
  int64_t min_distance() const {
    return r_.data.min_distance > 0 ? r_.data.min_distance : r_.gates.swa.window + 1;
  }
  void set_weights_trainable(bool on);
  // Data parallelism for trainable weights: gradient buckets, and the sharded optimizer state
  // when distributed.shard_optimizer. Only in a job with a process group.
  void setup_weight_sync();
  bool sharded() const { return static_cast<bool>(sharded_); }
  // Whether `stage` trains through a sharded optimizer (weights train, several ranks' worth of
  // state, distributed.shard_optimizer).
  bool will_shard(int stage) const {
    return comm_->has_group() && r_.distributed.shard_optimizer && (stage == 2 || r_.train.mode == "full");
  }
  // What the optimizer updates: the parameters themselves in fp32, fp32 master copies of bf16
  // parameters (master_weights_), or this rank's shard of fp32 masters (sharded optimizer).
  std::vector<at::Tensor> optimized_weights();
  void grads_to_masters();
  void masters_to_weights();
  void clip_gradients(bool stage1, bool train_weights, bool late_gates);
  // Every rank's step statistics averaged (logging steps; a collective on every rank).
  void reduce_stats(StepStats& stats);
  // Stops every rank together when a loss since the last check was NaN or Inf.
  void check_finite(int64_t global_step);
  // The metrics.jsonl record of a step (reads its losses back: logging steps only).
  nlohmann::json metrics_record(const StepStats& stats) const;
  double heldout_ce();
  void save_checkpoint(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer);
  // Returns {stage, step_in_stage} of the checkpoint, restoring everything else.
  std::pair<int, int64_t> load_checkpoint(torch::optim::AdamW* stage1_optimizer);
  void load_optimizer(torch::optim::AdamW& optimizer, torch::serialize::InputArchive& checkpoint);
  void write_gates_json(const TrainOutcome& outcome);
  bool weights_trained() const { return r_.train.mode == "full" || r_.recover.steps > 0; }
  std::string checkpoint_path() const { return (std::filesystem::path(dir_) / "checkpoint.pt").string(); }
  std::string shard_dir() const;
  std::string shard_path(int64_t step, int64_t rank, int64_t world) const;
  // This step's hard-concrete draw source: the run's generator, or with
  // distributed.gate_noise per_rank one derived from (seed, rank, step), which needs no state.
  at::Generator& gate_noise(int64_t global_step);

  // Dense pretraining (train.mode: dense) runs as stage 2 alone: every unit on full attention,
  // weights training for train.steps at optimizer.lr; no gates, no constraint.
  static Recipe as_stages(Recipe r);
  bool dense() const { return r_.train.mode == "dense"; }

  Recipe r_;
  Recipe original_;  // as written, for recipe.yaml
  TrainControl control_;
  std::string dir_;
  CausalLM model_;
  CausalLM teacher_;  // separate frozen copy only when weights train and the objective distils
  AttentionGates gates_;
  SparsityConstraint constraint_;
  KvBudgetPlan kv_plan_;  // constraint.kv_budget against this model (units 0: no budget)
  at::Generator generator_;
  at::Generator step_generator_;  // per_rank gate noise
  std::shared_ptr<distributed::Communicator> comm_;
  std::unique_ptr<distributed::GradientBuckets> buckets_;
  std::unique_ptr<distributed::ShardedWeights> sharded_;
  std::vector<at::Tensor> master_weights_;  // fp32 copies when weights train in bf16 (unsharded), else empty
  LateGateGradient late_gate_gradient_;  // stage 1 with train.overlap_gate_updates
  std::unique_ptr<MetricsLog> log_;  // rank 0 only
  std::unique_ptr<BatchStream> heldout_;  // opened on first use: sources scanned, tokenizer read once
  int64_t next_sequence_ = 0;        // the first training sequence of the next step (all ranks)
  int64_t global_step_ = 0;          // steps done across both stages
  at::Tensor nonfinite_;             // count of non-finite losses since the last check
  int64_t last_checked_step_ = 0;
  int64_t steps_this_process_ = 0;
  int64_t tokens_per_step_ = 0;
};

nlohmann::json tensor_to_json(const at::Tensor& t);

}  // namespace consa::detail
