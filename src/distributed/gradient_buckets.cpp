#include "consa/distributed/gradient_buckets.h"

#include <ATen/core/grad_mode.h>

#include <chrono>

#include "consa/core/error.h"

namespace consa::distributed {

GradientBuckets::GradientBuckets(std::shared_ptr<Communicator> comm, std::vector<at::Tensor> tensors,
                                 int64_t bucket_bytes, Reduction reduction)
    : comm_(std::move(comm)), tensors_(std::move(tensors)), reduction_(reduction) {
  const int64_t world = comm_->world_size();
  const int64_t cap = std::max<int64_t>(1, bucket_bytes / 4);
  where_.resize(tensors_.size());
  arrived_.assign(tensors_.size(), false);
  for (int64_t i = static_cast<int64_t>(tensors_.size()) - 1; i >= 0; --i) {
    const int64_t n = tensors_[i].numel();
    if (buckets_.empty() || (buckets_.back().numel > 0 && buckets_.back().numel + n > cap)) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    where_[i] = {static_cast<int64_t>(buckets_.size()) - 1, static_cast<int64_t>(b.slots.size())};
    b.slots.push_back({i, b.numel, n});
    b.numel += n;
  }
  const auto options = at::TensorOptions().dtype(at::kFloat).device(comm_->device());
  for (Bucket& b : buckets_) {
    b.padded = (b.numel + world - 1) / world * world;
    b.flat = at::zeros({b.padded}, options);
    if (reduction_ == Reduction::ReduceScatter) b.shard = at::zeros({b.padded / world}, options);
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const int64_t index = static_cast<int64_t>(i);
    hooks_.push_back(tensors_[i].register_hook([this, index](const at::Tensor& grad) { on_gradient(index, grad); }));
  }
}

GradientBuckets::~GradientBuckets() {
  for (size_t i = 0; i < hooks_.size(); ++i) tensors_[i].remove_hook(hooks_[i]);
}

void GradientBuckets::arm() {
  armed_ = true;
  next_launch_ = 0;
  std::fill(arrived_.begin(), arrived_.end(), false);
  for (Bucket& b : buckets_) {
    b.filled = 0;
    b.launched = false;
  }
}

void GradientBuckets::fill(int64_t tensor, const at::Tensor& gradient) {
  const auto [bucket, slot] = where_[tensor];
  Bucket& b = buckets_[bucket];
  const Slot& s = b.slots[slot];
  at::NoGradGuard no_grad;
  at::Tensor view = b.flat.narrow(0, s.offset, s.numel);
  if (gradient.defined())
    view.copy_(gradient.reshape({-1}), /*non_blocking=*/true);
  else
    view.zero_();
  arrived_[tensor] = true;
  ++b.filled;
}

void GradientBuckets::on_gradient(int64_t tensor, const at::Tensor& grad) {
  if (!armed_ || arrived_[tensor]) return;
  // The hook runs before autograd adds `grad` into .grad: the finished gradient is their sum.
  const at::Tensor& earlier = tensors_[tensor].grad();
  fill(tensor, earlier.defined() ? earlier + grad : grad);
  launch_ready();
}

void GradientBuckets::launch(Bucket& b, int64_t index) {
  b.launched = true;
  const std::string what = "gradients (bucket " + std::to_string(index) + ")";
  if (reduction_ == Reduction::AllReduce)
    b.pending = comm_->all_reduce_sum(b.flat, what);
  else
    b.pending = comm_->reduce_scatter_sum(b.shard, b.flat, what);
}

void GradientBuckets::launch_ready() {
  while (next_launch_ < buckets_.size()) {
    Bucket& b = buckets_[next_launch_];
    if (b.filled < static_cast<int64_t>(b.slots.size())) return;
    launch(b, static_cast<int64_t>(next_launch_));
    ++next_launch_;
  }
}

void GradientBuckets::finish() {
  CONSA_CHECK(armed_, "GradientBuckets::finish without arm()");
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (!arrived_[i]) fill(static_cast<int64_t>(i), tensors_[i].grad());
  launch_ready();
  armed_ = false;
  const auto start = std::chrono::steady_clock::now();
  const double inverse_world = 1.0 / static_cast<double>(comm_->world_size());
  at::NoGradGuard no_grad;
  for (Bucket& b : buckets_) {
    b.pending.wait();
    (reduction_ == Reduction::AllReduce ? b.flat : b.shard).mul_(inverse_world);
  }
  exposed_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void GradientBuckets::write_gradients(const std::vector<at::Tensor>& targets) const {
  CONSA_CHECK(reduction_ == Reduction::AllReduce, "write_gradients needs all-reduced buckets");
  CONSA_CHECK(targets.size() == tensors_.size(), "write_gradients: ", targets.size(), " targets for ",
              tensors_.size(), " tensors");
  at::NoGradGuard no_grad;
  for (const Bucket& b : buckets_)
    for (const Slot& s : b.slots) {
      at::Tensor target = targets[s.tensor];
      const at::Tensor averaged = b.flat.narrow(0, s.offset, s.numel).view(target.sizes());
      // Into the existing gradient where there is one; never a view of the bucket, which the
      // next step overwrites.
      at::Tensor& grad = target.mutable_grad();
      if (grad.defined() && grad.sizes() == target.sizes())
        grad.copy_(averaged);
      else
        grad = averaged.to(target.options(), /*non_blocking=*/false, /*copy=*/true);
    }
}

}  // namespace consa::distributed
