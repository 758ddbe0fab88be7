#pragma once
// The one place that knows which LibTorch it is built against (Debian's 1.13 CPU build, or a
// CUDA LibTorch 2.x). Everything version-dependent is decided here and nowhere else.
#include <ATen/ATen.h>
#include <torch/version.h>

#include <functional>
#include <memory>

#define CONSA_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::_flash_attention_forward takes window_size_left/right from LibTorch 2.4 on.
#define CONSA_HAS_FLASH_ATTENTION CONSA_TORCH_AT_LEAST(2, 4)

namespace consa::compat {

// Runs flash attention over q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D] (GQA native) with a causal
// mask aligned bottom-right and `window_left` extra keys to the left (-1: unlimited).
// Returns {output [B, Lq, Hq, D], logsumexp [B, Hq, Lq]}. Throws on builds without it.
std::pair<at::Tensor, at::Tensor> flash_attention(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale,
                                                  int64_t window_left);

// flash_attention over sequences of different lengths packed end to end: q [T, Hq, D], k/v
// [T, Hkv, D], sequence i at positions [cu_lengths[i], cu_lengths[i + 1]) (int32, on the device),
// none longer than `max_length`. Causal within each sequence; returns [T, Hq, D].
at::Tensor flash_attention_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cu_lengths, int64_t max_length, double scale,
                                  int64_t window_left);

// Causal attention with queries and keys at the same positions, through PyTorch's
// scaled_dot_product_attention dispatcher, which picks its fastest fused kernel (cuDNN on Hopper,
// about twice flash's speed there). q [B, L, Hq, D], k/v [B, L, Hkv, D] (GQA native); returns
// [B, L, Hq, D]. LibTorch >= 2.5 (enable_gqa); throws elsewhere.
at::Tensor fused_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);
constexpr bool fused_causal_attention_compiled() { return CONSA_TORCH_AT_LEAST(2, 5); }

// AdamW's update of many parameters in one multi-tensor kernel (at::_fused_adamw_, CUDA fp32,
// LibTorch >= 2.1): decoupled weight decay, no amsgrad; `steps` holds each parameter's step
// count (after this step) as a float scalar on the device. Throws elsewhere.
void fused_adamw(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList steps, double lr, double beta1, double beta2, double weight_decay, double eps);
constexpr bool fused_adamw_compiled() { return CONSA_TORCH_AT_LEAST(2, 1); }

// Whether this build of LibTorch can run at::_flash_attention_forward at all.
constexpr bool flash_attention_compiled() { return CONSA_HAS_FLASH_ATTENTION; }

// Peak bytes held by tensors on `device` since the last reset (CUDA's caching allocator), and
// the reset. -1 where unknown: CPU devices, or a build without CUDA.
int64_t peak_device_memory(at::Device device);
void reset_peak_device_memory(at::Device device);

// While on, any LibTorch call that waits for the CUDA device (.item(), a blocking copy, a stream
// synchronisation) throws instead. CUDA builds only; a no-op elsewhere.
void set_device_sync_errors(bool on);

// A Chrome trace of CPU operators and CUDA kernels between start_trace and stop_trace (Kineto;
// CUDA builds only, throws elsewhere). For finding where a step's time goes.
void start_trace();
void stop_trace(const std::string& path);

// A CUDA graph: records the kernels that `work` launches, once, then replays them without any
// host-side work per operator. `work` must not wait for the device, and what it reads and writes
// must keep its shapes and addresses between replays (its outputs live in the graph's own
// memory). It first runs `warmup` times on a side stream (first calls allocate and pick kernels),
// then once more under capture. CUDA builds and devices only; throws elsewhere.
class DeviceGraph {
 public:
  DeviceGraph(at::Device device, const std::function<void()>& work, int warmup = 2);
  ~DeviceGraph();
  DeviceGraph(DeviceGraph&&) noexcept;
  DeviceGraph& operator=(DeviceGraph&&) noexcept;
  void replay();

 private:
  struct Recording;
  std::unique_ptr<Recording> recording_;
};
#if CONSA_WITH_CUDA
constexpr bool device_graphs_compiled() { return true; }
#else
constexpr bool device_graphs_compiled() { return false; }
#endif

// A copy of a device tensor to host memory that the host waits for only when it reads it: on
// CUDA, into pinned memory, followed by an event on the current stream; elsewhere a plain copy.
// Lets a step hand a result to a later step without stalling the device.
class HostCopy {
 public:
  HostCopy() = default;
  explicit HostCopy(const at::Tensor& source);
  bool started() const { return host_.defined(); }
  // The copied values; waits for the copy alone, not for work queued after it.
  at::Tensor get();

 private:
  at::Tensor host_;
  std::shared_ptr<void> done_;  // the CUDA event recorded after the copy
};

// Human-readable LibTorch version, e.g. "1.13.0".
std::string torch_version();

}  // namespace consa::compat
