#include "consa/distributed/communicator.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "consa/core/error.h"
#include "consa/core/torch_compat_c10d.h"

namespace consa::distributed {

namespace {
constexpr const char* kFailureKey = "failure";
}

struct Communicator::State {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::CollectiveGroup> group;
};

Communicator::~Communicator() = default;

std::shared_ptr<Communicator> Communicator::connect(const LaunchEnv& env, const std::string& backend,
                                                    double timeout_s, at::Device model_device) {
  auto comm = std::make_shared<Communicator>();
  if (!env.distributed()) return comm;
  std::string chosen = backend;
  if (chosen == "auto") chosen = model_device.is_cuda() ? "nccl" : "gloo";
  CONSA_CHECK(chosen == "nccl" || chosen == "gloo", "distributed.backend: '", backend,
              "' is not allowed; allowed: auto, nccl, gloo");
  CONSA_CHECK(chosen != "nccl" || model_device.is_cuda(), "distributed.backend: nccl needs model.device cuda, got ",
              model_device.str());
  CONSA_CHECK(chosen != "gloo" || model_device.is_cpu(), "distributed.backend: gloo runs CPU models here; use nccl for ",
              model_device.str());
  comm->rank_ = env.rank;
  comm->world_size_ = env.world_size;
  comm->backend_ = chosen;
  comm->device_ = model_device;
  comm->timeout_ = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  auto state = std::make_shared<State>();
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  try {
    auto tcp = compat::tcp_store(env.master_addr, static_cast<int>(env.master_port), env.hosts_store(),
                                 env.agent_store ? 0 : static_cast<int>(env.world_size), comm->timeout_);
    // torchrun's agent store also holds its own keys: ours live under a prefix.
    state->store = c10::make_intrusive<c10d::PrefixStore>("consa", tcp);
  } catch (const std::exception&) {
    fail("rank ", env.rank, ": cannot reach the job's store at ", where, " (MASTER_ADDR:MASTER_PORT) within distributed.timeout_s (",
         timeout_s, " s)", env.hosts_store() ? "; is the port already in use?" : "; did rank 0 start?");
  }
  try {
    if (chosen == "nccl") {
      compat::set_cuda_device(static_cast<int>(model_device.index()));
      state->group = compat::nccl_group(state->store, static_cast<int>(env.rank), static_cast<int>(env.world_size),
                                        comm->timeout_);
    } else {
      state->group = compat::gloo_group(state->store, static_cast<int>(env.rank), static_cast<int>(env.world_size),
                                        env.master_addr, comm->timeout_);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception&) {
    fail("rank ", env.rank, ": the ", chosen, " process group of ", env.world_size, " ranks did not form within distributed.timeout_s (",
         timeout_s, " s); every rank must start with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
  }
  comm->state_ = state;
  comm->barrier("start-up");
  return comm;
}

std::string Communicator::failure_context() const {
  if (!state_) return "";
  try {
    if (state_->store->check({kFailureKey})) {
      const std::vector<uint8_t> note = state_->store->get(kFailureKey);
      return std::string(note.begin(), note.end());
    }
  } catch (const std::exception&) {
    // The store's host (rank 0) may be the one that stopped.
  }
  return "";
}

void Communicator::collective_failed(const std::string& what) const {
  const std::string peer = failure_context();
  if (!peer.empty()) fail("rank ", rank_, ": ", what, " stopped because ", peer);
  std::string cause;
  try {
    throw;
  } catch (const std::exception& e) {
    cause = e.what();
    cause = cause.substr(0, std::min(cause.find('\n'), size_t{200}));
  } catch (...) {
  }
  fail("rank ", rank_, ": ", what, " failed: a peer rank stopped or did not answer within distributed.timeout_s (",
       timeout_.count() / 1000.0, " s)", cause.empty() ? "" : "; the backend said: " + cause);
}

void Communicator::report_failure(const std::string& message) const {
  if (!state_) return;
  try {
    const std::string note = "rank " + std::to_string(rank_) + " failed: " + message;
    state_->store->set(kFailureKey, std::vector<uint8_t>(note.begin(), note.end()));
  } catch (const std::exception&) {
  }
}

Communicator::Pending Communicator::started(std::shared_ptr<void> work, const std::string& what) const {
  Pending p;
  p.work_ = std::move(work);
  p.owner_ = this;
  p.what_ = what;
  return p;
}

namespace {
std::shared_ptr<void> hold(c10::intrusive_ptr<c10d::Work> work) {
  return std::make_shared<c10::intrusive_ptr<c10d::Work>>(std::move(work));
}
c10d::Work& work_of(const std::shared_ptr<void>& held) {
  return **static_cast<c10::intrusive_ptr<c10d::Work>*>(held.get());
}
}  // namespace

void Communicator::Pending::wait() {
  if (!work_) return;
  std::shared_ptr<void> work = std::move(work_);
  try {
    // NCCL: a wait without a time limit only orders the current stream after the collective (the
    // process group's watchdog enforces distributed.timeout_s); with one it would block the host
    // and drain the device's queue. Gloo works on the host anyway.
    if (owner_->backend_ == "nccl")
      work_of(work).wait();
    else
      work_of(work).wait(owner_->timeout_);
  } catch (const std::exception&) {
    owner_->collective_failed(what_);
  }
}

Communicator::Pending Communicator::guarded(const std::string& what, const std::function<Pending()>& launch) {
  try {
    return launch();
  } catch (const Error&) {
    throw;
  } catch (const std::exception&) {
    collective_failed(what);
  }
}

Communicator::Pending Communicator::all_reduce_sum(at::Tensor& tensor, const std::string& what) {
  if (!state_) return {};
  const std::string name = "all-reduce of " + what;
  return guarded(name, [&]() {
    std::vector<at::Tensor> tensors{tensor};
    return started(hold(state_->group->allreduce(tensors)), name);
  });
}

Communicator::Pending Communicator::reduce_scatter_sum(at::Tensor& shard, at::Tensor& full, const std::string& what) {
  CONSA_CHECK(full.numel() == shard.numel() * world_size_, "reduce-scatter of ", what, ": ", full.numel(),
              " elements do not split into ", world_size_, " shards of ", shard.numel());
  if (!state_) {
    shard.copy_(full);
    return {};
  }
  const std::string name = "reduce-scatter of " + what;
  return guarded(name, [&]() -> Pending {
    if (backend_ == "nccl") return started(hold(state_->group->_reduce_scatter_base(shard, full)), name);
    // Gloo: the whole sum, then this rank's slice.
    std::vector<at::Tensor> tensors{full};
    state_->group->allreduce(tensors)->wait(timeout_);
    shard.copy_(full.narrow(0, rank_ * shard.numel(), shard.numel()));
    return {};
  });
}

Communicator::Pending Communicator::all_gather(at::Tensor& full, at::Tensor& shard, const std::string& what) {
  CONSA_CHECK(full.numel() == shard.numel() * world_size_, "all-gather of ", what, ": ", full.numel(),
              " elements are not ", world_size_, " shards of ", shard.numel());
  if (!state_) {
    full.copy_(shard);
    return {};
  }
  const std::string name = "all-gather of " + what;
  return guarded(name, [&]() -> Pending {
    if (backend_ == "nccl") return started(hold(state_->group->_allgather_base(full, shard)), name);
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int64_t r = 0; r < world_size_; ++r) outputs[0].push_back(full.narrow(0, r * shard.numel(), shard.numel()));
    std::vector<at::Tensor> inputs{shard};
    state_->group->allgather(outputs, inputs)->wait(timeout_);
    return {};
  });
}

void Communicator::barrier(const std::string& what) {
  if (!state_) return;
  // A one-element all-reduce: a barrier that every backend implements the same way.
  at::Tensor token = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(device_));
  all_reduce_sum(token, what).wait();
  if (device_.is_cuda()) (void)token.item<float>();  // the host waits for the device too
}

double Communicator::sum(double value, const std::string& what) {
  if (!state_) return value;
  at::Tensor t = at::full({1}, value, at::TensorOptions().dtype(at::kDouble).device(device_));
  all_reduce_sum(t, what).wait();
  return t.item<double>();
}

void Communicator::average(at::Tensor& tensor, const std::string& what) {
  if (!state_) return;
  at::Tensor on_device = tensor.device() == device_ ? tensor : tensor.to(device_);
  all_reduce_sum(on_device, what).wait();
  on_device.div_(static_cast<double>(world_size_));
  if (!on_device.is_same(tensor)) tensor.copy_(on_device);
}

}  // namespace consa::distributed
