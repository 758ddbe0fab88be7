#pragma once
// The ranks of a data-parallel job and the collectives between them, over c10d: a TCPStore
// (hosted by rank 0, or by torchrun's agent) and one process group, NCCL for CUDA models (one GPU
// per rank, cuda:LOCAL_RANK) or Gloo for CPU ones. A default-constructed Communicator is a job of
// its own: rank 0 of 1, every collective a no-op, so single-process runs are exactly unchanged.
//
// Every collective takes a `what` naming it; a failure or a peer that does not answer within
// distributed.timeout_s becomes one consa::Error naming this rank, the collective and, where the
// failing peer left one, its own message.
#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "consa/distributed/launch_env.h"

namespace consa::distributed {

class Communicator {
 public:
  Communicator() = default;
  ~Communicator();

  // Joins the job that `env` describes: `backend` is auto | nccl | gloo (auto: nccl for CUDA
  // models, gloo for CPU ones), `model_device` the recipe's device with its index resolved.
  static std::shared_ptr<Communicator> connect(const LaunchEnv& env, const std::string& backend,
                                               double timeout_s, at::Device model_device);

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  bool is_main() const { return rank_ == 0; }
  bool has_group() const { return static_cast<bool>(state_); }  // a process group, even of one rank
  const std::string& backend() const { return backend_; }
  at::Device device() const { return device_; }  // where collective tensors live
  std::chrono::milliseconds timeout() const { return timeout_; }

  // A collective under way; wait() blocks until it is done (on CUDA: until the current stream
  // is ordered after it, without waiting on the host).
  class Pending {
   public:
    Pending() = default;
    void wait();
    bool started() const { return static_cast<bool>(work_); }

   private:
    friend class Communicator;
    std::shared_ptr<void> work_;
    const Communicator* owner_ = nullptr;
    std::string what_;
  };

  // In-place sum over ranks of `tensor` (on device()).
  Pending all_reduce_sum(at::Tensor& tensor, const std::string& what);
  // `full` [world * n] summed over ranks, this rank's slice [rank * n, (rank + 1) * n) into
  // `shard` [n]. Gloo has no reduce-scatter in LibTorch 1.13: it all-reduces `full` instead.
  Pending reduce_scatter_sum(at::Tensor& shard, at::Tensor& full, const std::string& what);
  // Every rank's `shard` [n] into `full` [world * n], in rank order.
  Pending all_gather(at::Tensor& full, at::Tensor& shard, const std::string& what);
  void barrier(const std::string& what);

  // A blocking convenience for host values: the sum over ranks.
  double sum(double value, const std::string& what);
  // A host or device tensor averaged over ranks in place (copied through device() if needed).
  void average(at::Tensor& tensor, const std::string& what);

  // Leaves `message` in the store for the other ranks' error messages (best effort).
  void report_failure(const std::string& message) const;

 private:
  std::string failure_context() const;  // a peer's reported failure, if any
  Pending started(std::shared_ptr<void> work, const std::string& what) const;
  // Runs `launch` (which starts a collective, or runs it to the end), turning a backend's
  // exception into collective_failed(what).
  Pending guarded(const std::string& what, const std::function<Pending()>& launch);
  // Inside a catch block: the one-line error for the collective whose exception is in flight.
  [[noreturn]] void collective_failed(const std::string& what) const;

  struct State;
  std::shared_ptr<State> state_;
  int64_t rank_ = 0, world_size_ = 1;
  std::string backend_ = "none";
  at::Device device_ = at::kCPU;
  std::chrono::milliseconds timeout_{600000};
};

}  // namespace consa::distributed
