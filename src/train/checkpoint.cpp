// Checkpoints of the training job (src/train/job.h), its metrics records and gates.json.
//
// checkpoint.pt, written by rank 0, holds the weights, gates, lambdas, data position, RNG and,
// unless the optimizer is sharded, the optimizer state. A sharded optimizer's state is saved by
// every rank, before checkpoint.pt, to optimizer_shards/step<N>-rank<r>-of-<W>.pt (its fp32
// masters and AdamW moments); checkpoint.pt then names step N, the world size and the bucket size
// (the shards' layout), so a checkpoint counts only once every shard and checkpoint.pt are
// complete. Older shards are
// removed after checkpoint.pt is replaced.
#include <map>
#include <sstream>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "job.h"

namespace consa::detail {
namespace fs = std::filesystem;
using json = nlohmann::json;

void open_archive(torch::serialize::InputArchive& archive, const std::string& path) {
  CONSA_CHECK(!fs::is_directory(path), path, ": is a directory; expected a checkpoint file written by consa train");
  try {
    archive.load_from(path);
  } catch (const c10::Error&) {
    fail(path, ": not a checkpoint written by consa train (not a complete LibTorch archive: truncated, or another format)");
  }
}

json tensor_to_json(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kDouble).cpu().contiguous();
  if (c.dim() == 1) return json(std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel()));
  json rows = json::array();
  for (int64_t i = 0; i < c.size(0); ++i) rows.push_back(tensor_to_json(c[i]));
  return rows;
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
    if (kv_plan_.units > 0) {
      record["expected_kv_bytes"] = kv_plan_.expected_bytes(stats.constraint.s_hat.item<double>());
      record["kv_budget_bytes"] = r_.constraint.kv_budget.bytes;
    }
  }
  return record;
}

std::string Job::shard_dir() const { return (fs::path(dir_) / "optimizer_shards").string(); }

std::string Job::shard_path(int64_t step, int64_t rank, int64_t world) const {
  return (fs::path(shard_dir()) /
          ("step" + std::to_string(step) + "-rank" + std::to_string(rank) + "-of-" + std::to_string(world) + ".pt"))
      .string();
}

void Job::save_checkpoint(int stage, int64_t step_in_stage, torch::optim::AdamW& optimizer) {
  check_finite(global_step_);  // a checkpoint never holds weights after a NaN loss
  const int64_t world = comm_->world_size(), rank = comm_->rank();
  if (sharded_) {
    torch::serialize::OutputArchive shard, optimizer_archive;
    sharded_->save(shard);
    optimizer.save(optimizer_archive);
    shard.write("optimizer", optimizer_archive);
    shard.write("state/global_step", at::tensor(global_step_));
    shard.write("state/world_size", at::tensor(world));
    std::error_code ignored;
    fs::create_directories(shard_dir(), ignored);
    AtomicFileWriter out(shard_path(global_step_, rank, world));
    shard.save_to(out.stream());
    out.commit();
    comm_->barrier("writing the optimizer shards");
  }
  if (comm_->is_main()) {
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
    archive.write("state/global_step", at::tensor(global_step_));
    archive.write("state/data_sequence", at::tensor(next_sequence_));
    archive.write("state/rng", generator_.get_state());
    archive.write("distributed/world_size", at::tensor(world));
    archive.write("distributed/global_batch", at::tensor(r_.data.batch_size * r_.optimizer.accumulation * world));
    archive.write("distributed/sharded_optimizer", at::tensor(int64_t{sharded_ ? 1 : 0}));
    archive.write("distributed/bucket_mb", at::tensor(r_.distributed.bucket_mb));  // the shards' layout
    std::string fingerprint;
    for (const auto& [key, value] : resume_fingerprint(original_)) fingerprint += key + "=" + value + "\n";
    archive.write("recipe/fingerprint", c10::IValue(fingerprint));
    const at::Tensor late_gate_grad = late_gate_gradient_.pending();
    if (late_gate_grad.defined()) archive.write("state/late_gate_grad", late_gate_grad);
    if (!sharded_) {
      torch::serialize::OutputArchive optimizer_archive;
      optimizer.save(optimizer_archive);
      archive.write("optimizer", optimizer_archive);
    }
    AtomicFileWriter out(checkpoint_path());
    archive.save_to(out.stream());
    out.commit();
  }
  comm_->barrier("writing the checkpoint");
  if (sharded_) {
    // checkpoint.pt names this step now: older shards of this rank are no longer needed.
    const std::string keep = fs::path(shard_path(global_step_, rank, world)).filename().string();
    const std::string suffix = "-rank" + std::to_string(rank) + "-of-";
    std::error_code ignored;
    for (const auto& entry : fs::directory_iterator(shard_dir(), ignored)) {
      const std::string name = entry.path().filename().string();
      if (name != keep && name.find(suffix) != std::string::npos) fs::remove(entry.path(), ignored);
    }
  }
}

void Job::load_optimizer(torch::optim::AdamW& optimizer, torch::serialize::InputArchive& checkpoint) {
  torch::serialize::InputArchive optimizer_archive;
  if (!sharded_) {
    checkpoint.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);
    return;
  }
  const std::string path = shard_path(global_step_, comm_->rank(), comm_->world_size());
  CONSA_CHECK(fs::exists(path), checkpoint_path(), ": names the optimizer shards of step ", global_step_, ", but ", path,
              " is missing (every rank's shard must be on a file system this rank reads)");
  torch::serialize::InputArchive shard;
  open_archive(shard, path);
  at::Tensor step, world;
  shard.read("state/global_step", step);
  shard.read("state/world_size", world);
  CONSA_CHECK(step.item<int64_t>() == global_step_ && world.item<int64_t>() == comm_->world_size(), path,
              ": holds step ", step.item<int64_t>(), " of a ", world.item<int64_t>(), "-rank job, checkpoint.pt step ",
              global_step_, " of ", comm_->world_size());
  sharded_->load(shard, path);
  shard.read("optimizer", optimizer_archive);
  optimizer.load(optimizer_archive);
  sharded_->gather_into_weights();
}

std::pair<int, int64_t> Job::load_checkpoint(torch::optim::AdamW* stage1_optimizer) {
  const std::string path = checkpoint_path();
  CONSA_CHECK(fs::exists(path), path, ": no checkpoint to resume from (run without --resume to start fresh)");
  torch::serialize::InputArchive archive;
  open_archive(archive, path);
  auto read = [&](const std::string& key) {
    at::Tensor t;
    CONSA_CHECK(archive.try_read(key, t), path, ": no '", key, "' in this checkpoint; expected one written by consa train");
    return t;
  };
  auto read_or = [&](const std::string& key, int64_t fallback) {
    at::Tensor t;
    return archive.try_read(key, t) ? t.item<int64_t>() : fallback;
  };
  // The recipe's keys that change the math must be those the checkpoint was written with.
  c10::IValue stored_fingerprint;
  if (archive.try_read("recipe/fingerprint", stored_fingerprint)) {
    std::map<std::string, std::string> stored;
    std::istringstream lines(stored_fingerprint.toStringRef());
    for (std::string line; std::getline(lines, line);)
      if (const size_t eq = line.find('='); eq != std::string::npos) stored[line.substr(0, eq)] = line.substr(eq + 1);
    const auto now = resume_fingerprint(original_);
    std::string changed;
    for (const auto& [key, value] : now) {
      const auto it = stored.find(key);
      const std::string before = it == stored.end() ? "(unset)" : it->second;
      if (before != value) changed += (changed.empty() ? "" : ", ") + key + " " + before + " -> " + value;
    }
    std::string free_keys;
    for (const char* const* k = kResumeFreeKeys; *k; ++k) free_keys += (free_keys.empty() ? "" : ", ") + std::string(*k);
    CONSA_CHECK(changed.empty(), path, ": the recipe changed since this checkpoint (", changed,
                "); resuming would mix two runs. Only these keys may change on --resume: ", free_keys,
                ". Start afresh with --overwrite or another output.dir");
  }
  // The data order depends on the global batch alone, so a job of another world size resumes
  // exactly when its global batch is the same, unless optimizer state is split by rank.
  const int64_t world = comm_->world_size();
  const int64_t stored_world = read_or("distributed/world_size", 1);
  const int64_t global_batch = r_.data.batch_size * r_.optimizer.accumulation * world;
  const int64_t stored_batch = read_or("distributed/global_batch", global_batch);
  const bool stored_sharded = read_or("distributed/sharded_optimizer", 0) != 0;
  const int stage = static_cast<int>(read("state/stage").item<int64_t>());
  const bool shards = will_shard(stage);
  CONSA_CHECK(stored_batch == global_batch, path, ": written by a job of world size ", stored_world, " with a global batch of ",
              stored_batch, " sequences; this job (world size ", world, ") has ", global_batch,
              " (world x data.batch_size x optimizer.accumulation): resuming would change the data order");
  CONSA_CHECK(!stored_sharded || (stored_world == world && shards), path, ": its optimizer state is sharded over ",
              stored_world, " ranks; this job has world size ", world,
              shards ? "" : " and no sharded optimizer", ": resume with ", stored_world, " ranks");
  // Shards are slices of the gradient buckets, so their layout follows the bucket size.
  const int64_t stored_bucket_mb = read_or("distributed/bucket_mb", r_.distributed.bucket_mb);
  CONSA_CHECK(!stored_sharded || stored_bucket_mb == r_.distributed.bucket_mb, path,
              ": its optimizer shards follow distributed.bucket_mb ", stored_bucket_mb, "; this job has ",
              r_.distributed.bucket_mb, ": resume with distributed.bucket_mb=", stored_bucket_mb);
  CONSA_CHECK(stored_sharded || !shards, path,
              ": written without a sharded optimizer; resume with distributed.shard_optimizer=false");
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
              ", the recipe's gates.unit and gates.windows need ", gates_->log_alpha.sizes());
  gates_->log_alpha.copy_(log_alpha);
  constraint_->lambda1.copy_(read("constraint/lambda1"));
  constraint_->lambda2.copy_(read("constraint/lambda2"));
  const int64_t step_in_stage = read("state/step").item<int64_t>();
  // Checkpoints from before data parallelism count micro-batches of data.batch_size.
  next_sequence_ = read_or("state/data_sequence", read_or("state/data_cursor", 0) * r_.data.batch_size);
  global_step_ = read_or("state/global_step", stage == 1 ? step_in_stage : r_.train.steps + step_in_stage);
  last_checked_step_ = global_step_;
  generator_.set_state(read("state/rng"));
  at::Tensor late_gate_grad;
  if (archive.try_read("state/late_gate_grad", late_gate_grad)) late_gate_gradient_.restore(late_gate_grad);
  if (stage == 1 && stage1_optimizer) load_optimizer(*stage1_optimizer, archive);
  return {stage, step_in_stage};
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
            {"log_alpha", tensor_to_json(gates_->level(gates_->log_alpha, 0))},
            {"heldout_ce", o.heldout_ce}};
  if (gates_->levels() > 1) {
    // Level k >= 1 chooses windows[k - 1] against the narrower ones.
    json window_log_alpha = json::array();
    for (int64_t k = 1; k < gates_->levels(); ++k)
      window_log_alpha.push_back(tensor_to_json(gates_->level(gates_->log_alpha, k)));
    j["windows"] = r_.gates.windows();
    j["window_log_alpha"] = window_log_alpha;
  }
  if (kv_plan_.units > 0) {
    j["kv_budget"] = {{"bytes", r_.constraint.kv_budget.bytes},
                      {"context", r_.constraint.kv_budget.context},
                      {"element_bytes", r_.constraint.kv_budget.element_bytes},
                      {"expected_bytes", kv_plan_.expected_bytes(o.s_hat)}};
  }
  AtomicFileWriter out((fs::path(dir_) / "gates.json").string());
  out.stream() << j.dump(2) << "\n";
  out.commit();
}

}  // namespace consa::detail
