#pragma once
// Data-parallel gradient averaging in buckets, the way PyTorch's DDP does it (LibTorch has no
// C++ DDP): the trainable tensors are laid end to end, last first (the order backward finishes
// them), in fp32 buckets of about `bucket_bytes`. During the backward of a step's last
// micro-batch a hook copies each tensor's finished gradient (this micro-batch's plus the earlier
// ones') into its bucket; a full bucket starts its collective while backward goes on. Buckets
// start strictly in bucket order on every rank, since collectives must match across ranks.
// Earlier micro-batches communicate nothing.
//
// Two reductions:
//   all-reduce      - every rank ends with the averaged gradient of every tensor;
//   reduce-scatter  - rank r ends with the averaged slice r of each bucket (sharded optimizer,
//                     consa/distributed/sharded_weights.h). Each bucket is padded to a multiple
//                     of the world size; slice r is [r * n / world, (r + 1) * n / world).
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "consa/distributed/communicator.h"

namespace consa::distributed {

class GradientBuckets {
 public:
  enum class Reduction { AllReduce, ReduceScatter };

  GradientBuckets(std::shared_ptr<Communicator> comm, std::vector<at::Tensor> tensors, int64_t bucket_bytes,
                  Reduction reduction);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // The next backward is the step's last micro-batch: its hooks fill and start the buckets.
  void arm();
  // After that backward: fills in tensors that got no gradient (the earlier micro-batches'
  // gradient, or zeros), starts the remaining buckets in order and waits for all of them.
  void finish();

  // All-reduce: writes the averaged gradient of tensor i into targets[i].grad() (targets[i] has
  // tensor i's shape: the tensor itself, or its fp32 master copy).
  void write_gradients(const std::vector<at::Tensor>& targets) const;

  struct Slot {
    int64_t tensor;  // index into the tensors given at construction
    int64_t offset;  // within the bucket
    int64_t numel;
  };
  struct Bucket {
    std::vector<Slot> slots;
    int64_t numel = 0;   // sum of the slots
    int64_t padded = 0;  // numel rounded up to a multiple of the world size
    at::Tensor flat;     // fp32 [padded] on the communicator's device
    at::Tensor shard;    // reduce-scatter: fp32 [padded / world], this rank's averaged slice
    int64_t filled = 0;  // slots whose gradient arrived this step
    bool launched = false;
    Communicator::Pending pending;
  };
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<at::Tensor>& tensors() const { return tensors_; }
  int64_t world_size() const { return comm_->world_size(); }
  int64_t rank() const { return comm_->rank(); }
  // Seconds the last finish() spent waiting for collectives: communication not hidden by backward.
  double exposed_seconds() const { return exposed_seconds_; }

 private:
  void on_gradient(int64_t tensor, const at::Tensor& grad);
  void fill(int64_t tensor, const at::Tensor& gradient);
  void launch_ready();
  void launch(Bucket& bucket, int64_t index);

  std::shared_ptr<Communicator> comm_;
  std::vector<at::Tensor> tensors_;
  Reduction reduction_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<int64_t, int64_t>> where_;  // tensor -> {bucket, slot}
  std::vector<bool> arrived_;
  std::vector<unsigned> hooks_;
  bool armed_ = false;
  size_t next_launch_ = 0;
  double exposed_seconds_ = 0;
};

}  // namespace consa::distributed
