#include "consa/distributed/sharded_weights.h"

#include <ATen/core/grad_mode.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "consa/core/error.h"

namespace consa::distributed {

ShardedWeights::ShardedWeights(std::shared_ptr<Communicator> comm, const GradientBuckets& buckets)
    : comm_(std::move(comm)), buckets_(buckets) {
  at::NoGradGuard no_grad;
  const auto& tensors = buckets_.tensors();
  for (const auto& b : buckets_.buckets()) {
    const int64_t shard = b.padded / buckets_.world_size(), begin = buckets_.rank() * shard;
    at::Tensor master = at::zeros({shard}, at::TensorOptions().dtype(at::kFloat).device(comm_->device()));
    // The slots overlapping [begin, begin + shard) of the bucket.
    for (const auto& s : b.slots) {
      const int64_t lo = std::max(begin, s.offset), hi = std::min(begin + shard, s.offset + s.numel);
      if (lo >= hi) continue;
      master.narrow(0, lo - begin, hi - lo).copy_(tensors[s.tensor].detach().reshape({-1}).narrow(0, lo - s.offset, hi - lo));
    }
    masters_.push_back(master.requires_grad_(true));
  }
}

void ShardedWeights::take_gradients() {
  // The averaged slice itself, not a copy: the next reduce-scatter overwrites it only after the
  // optimizer has used it.
  const auto& buckets = buckets_.buckets();
  for (size_t i = 0; i < masters_.size(); ++i) masters_[i].mutable_grad() = buckets[i].shard;
}

at::Tensor ShardedWeights::squared_gradient_norm() {
  at::Tensor total = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(comm_->device()));
  for (const auto& m : masters_) total += m.grad().pow(2).sum();
  comm_->all_reduce_sum(total, "the gradient norm").wait();
  return total.squeeze();
}

void ShardedWeights::gather_into_weights() {
  at::NoGradGuard no_grad;
  const auto& tensors = buckets_.tensors();
  const auto& buckets = buckets_.buckets();
  for (size_t i = 0; i < buckets.size(); ++i) {
    const auto& b = buckets[i];
    // Gathered in the weights' dtype (half the bytes for bf16), except over Gloo, which has no
    // bf16 collectives.
    const at::ScalarType dtype =
        comm_->backend() == "gloo" ? at::kFloat : tensors[b.slots.front().tensor].scalar_type();
    at::Tensor shard = masters_[i].detach().to(dtype);
    at::Tensor full = at::empty({b.padded}, shard.options());
    comm_->all_gather(full, shard, "weights (bucket " + std::to_string(i) + ")").wait();
    for (const auto& s : b.slots) {
      at::Tensor target = tensors[s.tensor];
      target.copy_(full.narrow(0, s.offset, s.numel).view(target.sizes()));
    }
  }
}

void ShardedWeights::save(torch::serialize::OutputArchive& archive) const {
  for (size_t i = 0; i < masters_.size(); ++i) archive.write("masters/" + std::to_string(i), masters_[i].detach());
}

void ShardedWeights::load(torch::serialize::InputArchive& archive, const std::string& source) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < masters_.size(); ++i) {
    at::Tensor stored;
    CONSA_CHECK(archive.try_read("masters/" + std::to_string(i), stored), source, ": has no master weights for bucket ", i);
    CONSA_CHECK(stored.sizes() == masters_[i].sizes(), source, ": bucket ", i, " holds ", stored.numel(),
                " master weights, this job's shard has ", masters_[i].numel());
    masters_[i].copy_(stored);
  }
}

}  // namespace consa::distributed
