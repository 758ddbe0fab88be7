#pragma once
// Sharded optimizer state (ZeRO-1, Megatron's distributed optimizer) on top of GradientBuckets
// in reduce-scatter mode. Rank r keeps fp32 master copies of slice r of every bucket, and only
// those: the optimizer (any torch::optim optimizer, consa's FusedAdamW) updates the masters with
// the averaged gradient slices, so its moments are sharded too; the updated slices are then
// all-gathered, in the weights' dtype, into every rank's weights. AdamW is elementwise, so the
// sharded update equals the unsharded one; gradient clipping needs the norm over all shards
// (squared_gradient_norm).
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "consa/distributed/gradient_buckets.h"

namespace torch::serialize {
class InputArchive;
class OutputArchive;
}  // namespace torch::serialize

namespace consa::distributed {

class ShardedWeights {
 public:
  ShardedWeights(std::shared_ptr<Communicator> comm, const GradientBuckets& buckets);

  // One fp32 leaf tensor per bucket, this rank's slice: what the optimizer updates.
  const std::vector<at::Tensor>& masters() const { return masters_; }
  // After GradientBuckets::finish(): each master's gradient is its bucket's averaged slice.
  void take_gradients();
  // The sum over every rank's slices of the squared gradient (a device scalar, the same on
  // every rank).
  at::Tensor squared_gradient_norm();
  // Every rank's updated slices into every rank's weights.
  void gather_into_weights();

  // This rank's masters in a checkpoint (the optimizer state is saved beside them), and back.
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive, const std::string& source);

 private:
  std::shared_ptr<Communicator> comm_;
  const GradientBuckets& buckets_;
  std::vector<at::Tensor> masters_;
};

}  // namespace consa::distributed
