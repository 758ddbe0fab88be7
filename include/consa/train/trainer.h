#pragma once
// The ConSA training job behind `consa train`:
//   stage 1 (mask learning): sample hard-concrete gates, mix FA and SWA per unit, minimise the
//     objective plus the Lagrangian constraint; weights frozen (mode gates) or trained (mode full);
//   stage 2 (recover, optional): binarize the gates (FA iff log_alpha > 0), freeze the
//     assignment and train the weights.
// Writes to recipe.output.dir: recipe.yaml (resolved), metrics.jsonl, checkpoint.pt (atomic,
// resumable), gates.json, assignment.json (binarized by export.rule), and model/ (Hugging Face
// format) when weights were trained. In a data-parallel job (docs/distributed.md) every rank
// trains on its slice of each global batch and rank 0 writes these files; a sharded optimizer
// adds each rank's optimizer_shards/ file.
#include <ATen/ATen.h>

#include <memory>

#include "consa/load/pretrained.h"
#include "consa/train/recipe.h"

namespace consa {

namespace distributed {
class Communicator;
}

struct TrainControl {
  bool resume = false;     // continue from output.dir/checkpoint.pt
  int64_t stop_after = -1;  // checkpoint and return after this many steps in this process (-1: run to the end)
  bool overwrite = false;   // start afresh even if output.dir holds an earlier run's checkpoint
  // The step whose sequences a fresh run starts at (a sweep's dense row starts where stage 2 of a
  // consa run does, after train.steps, so that both train on the same sequences, at any world
  // size). A resumed run continues its own.
  int64_t first_step = 0;
  // This process's place in a data-parallel job; unset: join the job the environment describes
  // (torchrun, srun, --nproc-per-node), or run alone when it describes none.
  std::shared_ptr<distributed::Communicator> comm;
};

struct TrainOutcome {
  bool finished = false;     // false when stopped by stop_after
  int64_t global_step = 0;   // steps done across both stages
  double s_hat = 0;          // expected SWA fraction at the end of stage 1
  double target = 0;
  at::Tensor layer_s_hat;    // [layers]
  at::Tensor keep_prob;      // [layers, units]
  double heldout_ce = -1;    // stage 1's deterministic gates on held-out data (-1: not measured)
  double achieved_sparsity = 0;  // SWA fraction of the binarized assignment
  bool main_process = true;      // rank 0 (which reports); false on the other ranks
};

// The Communicator of the job this process's environment describes (see
// consa/distributed/launch_env.h), for `recipe`'s backend, timeout and device; a job of its own
// when the environment describes none.
std::shared_ptr<distributed::Communicator> join_job(const Recipe& recipe);

TrainOutcome run_training(const Recipe& recipe, const TrainControl& control = {});

// The optimizer step of `consa train` on a model already in memory, without the job around it
// (no files, checkpoints or progress): what `consa bench train` times. Stage 1 samples and trains
// the recipe's gates (train.mode says whether weights train too); stage 2 trains the weights under
// whatever assignment `model` already has (Assignment::apply), or dense when it has none.
class TrainStepper {
 public:
  // `comm`: the data-parallel job the step belongs to (unset: a process of its own).
  TrainStepper(const Recipe& recipe, CausalLM model, int stage,
               std::shared_ptr<distributed::Communicator> comm = nullptr);
  ~TrainStepper();
  // One optimizer step on the recipe's next batch. Queues device work and returns without waiting
  // for the device, except in stage 1 with train.overlap_gate_updates false, whose host-side gates
  // then need their gradient and the clip scale back at once (two waits per step).
  void step();
  // Seconds the last step waited for its gradient collectives after backward (0 alone).
  double exposed_communication_seconds() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// How the recipe's model section loads the checkpoint (dtype, device, attention backend).
LoadOptions model_load_options(const Recipe& recipe);

// With constraint.kv_budget: checks it against the model and sets constraint.target to the SWA
// fraction that meets it (plan_kv_budget), returning the plan; without one, a plan of units 0.
KvBudgetPlan resolve_kv_budget(Recipe& recipe, const ModelConfig& config);

// Learning-rate multiplier at `step` of `total`: linear warm-up, then cosine/linear decay to 0,
// or constant.
double lr_multiplier(const std::string& kind, int64_t warmup_steps, int64_t step, int64_t total);

}  // namespace consa
