#pragma once
// A ConSA training recipe: everything `consa train` does comes from one YAML file plus
// torchtune-style `key.sub=value` overrides. Every key is documented in docs/recipes.md with its
// default; unknown keys, wrong types and out-of-range values are errors naming the file, the key
// path and what is allowed.
#include <map>
#include <string>
#include <vector>

#include "consa/attention/attention.h"
#include "consa/data/batches.h"
#include "consa/gate/attention_gates.h"
#include "consa/export/assignment.h"
#include "consa/gate/sparsity_constraint.h"
#include "consa/train/objective.h"

namespace consa {

struct Recipe {
  std::string source;  // the file it came from

  struct Model {
    std::string path;               // Hugging Face checkpoint directory (required)
    std::string dtype = "float32";  // float32 | bfloat16 (weights; gates, lambdas stay fp32)
    std::string device = "cpu";     // cpu | cuda | cuda:N
    std::string attention = "auto";  // auto | math | flash
    std::string kernels = "auto";    // auto | aten | fused (consa/kernels/fused_ops.h)
  } model;

  GateOptions gates;          // unit, swa window/sinks, hard-concrete constants
  ConstraintOptions constraint;

  ObjectiveWeights objective;  // ce (on answer tokens for synthetic data), kl, mse

  DataOptions data;

  struct Optimizer {
    double lr = 1e-4;          // model weights (mode full, and stage 2)
    double gate_lr = 0.1;      // log_alpha
    double lambda_lr = 0.05;   // lambda1, lambda2 (gradient ascent)
    double weight_decay = 0.0;
    double beta1 = 0.9, beta2 = 0.95;
    double grad_clip = 1.0;    // max global norm (weights and gates each, with overlapped gate updates); 0 disables
    int64_t accumulation = 1;  // micro-batches per optimizer step
  } optimizer;

  struct Schedule {
    std::string kind = "cosine";  // cosine | linear | constant (weights' learning rate)
    int64_t warmup_steps = 0;
  } schedule;

  struct Train {
    std::string mode = "gates";  // gates (weights frozen) | full (weights train too)
    int64_t steps = 100;
    uint64_t seed = 0;
    bool gradient_checkpointing = false;
    // Stage 1: the gates take each step's LM gradient one step late, so that no step waits for
    // the device (docs/training.md); false: the current step's, with two waits per step.
    bool overlap_gate_updates = true;
    int64_t log_every = 10;
    int64_t keep_prob_every = 50;   // also log per-unit keep probabilities
    int64_t checkpoint_every = 100;
  } train;

  struct Recover {
    int64_t steps = 0;  // stage 2: binarized gates frozen, weights train; 0 skips it
    double lr = 1e-4;
  } recover;

  struct Export {
    BinarizeRule rule = BinarizeRule::Exact;  // how stage 1's gates become assignment.json
    int64_t kv_context = 4096;                // context length for the KV-cache figures in it
  } exporting;  // the recipe's `export` section

  struct Output {
    std::string dir = "runs/consa";
  } output;

  // Data parallelism across the ranks of a torchrun / srun / --nproc-per-node job
  // (docs/distributed.md); ignored by a process of its own.
  struct Distributed {
    std::string backend = "auto";  // auto (nccl for CUDA, gloo for CPU) | nccl | gloo
    double timeout_s = 600;        // how long a collective waits for the other ranks
    bool shard_optimizer = true;   // ZeRO-1 when weights train: fp32 masters and AdamW moments split over ranks
    std::string gate_noise = "shared";  // shared (every rank draws the same z) | per_rank
    int64_t bucket_mb = 25;        // gradient all-reduce bucket size
  } distributed;
};

// Reads and validates a recipe; `overrides` are "key.sub=value" strings applied first.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// The resolved recipe as YAML (every key, defaults filled in).
std::string recipe_to_yaml(const Recipe& recipe);

// What a checkpoint remembers of the recipe that wrote it: every resolved key as "section.key"
// -> value, except those that may change when a run resumes (kResumeFreeKeys). A resume whose
// fingerprint differs would mix two runs into one result, and is refused naming the keys.
std::map<std::string, std::string> resume_fingerprint(const Recipe& recipe);

// Empty, or a one-line warning that `target` (an expected SWA fraction) lies beyond what
// gates.log_alpha_clamp lets the gates reach in expectation, with the clamp that would reach it.
// Targets 0 and 1 are never reached in expectation; the exact binarization still meets them.
// With several windows, `target` is the budget's share of the savable bytes and `plan` its
// solution (plan_kv_budget), whose costs decide the reach; without a plan nothing is said.
std::string target_reach_warning(const Recipe& recipe, double target, const KvBudgetPlan* plan = nullptr);
// The keys that may change on --resume: more steps, logging and checkpoint intervals, where it
// runs (device, attention kernels, collectives' backend and timeout) and how it exports.
extern const char* const kResumeFreeKeys[];

}  // namespace consa
