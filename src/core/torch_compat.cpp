#include "consa/core/torch_compat.h"

#include "consa/core/error.h"

#include <set>

#if CONSA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

namespace consa::compat {

std::pair<at::Tensor, at::Tensor> flash_attention(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale,
                                                  int64_t window_left) {
#if CONSA_HAS_FLASH_ATTENTION
  const int64_t lq = q.size(1);
  const int64_t lk = k.size(1);
  auto result = at::_flash_attention_forward(q, k, v, {}, {}, lq, lk, /*dropout_p=*/0.0,
                                             /*is_causal=*/true, /*return_debug_mask=*/false,
                                             scale, window_left, /*window_size_right=*/0);
  return {std::get<0>(result), std::get<1>(result)};
#else
  (void)q, (void)k, (void)v, (void)scale, (void)window_left;
  fail("the flash attention backend needs LibTorch >= 2.4 with CUDA; this build uses LibTorch ",
       torch_version(), " (use --attention math)");
#endif
}

at::Tensor flash_attention_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cu_lengths, int64_t max_length, double scale,
                                  int64_t window_left) {
#if CONSA_HAS_FLASH_ATTENTION
  auto result = at::_flash_attention_forward(q, k, v, cu_lengths, cu_lengths, max_length, max_length,
                                             /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false,
                                             scale, window_left, /*window_size_right=*/0);
  return std::get<0>(result);
#else
  (void)q, (void)k, (void)v, (void)cu_lengths, (void)max_length, (void)scale, (void)window_left;
  fail("the flash attention backend needs LibTorch >= 2.4 with CUDA; this build uses LibTorch ",
       torch_version(), " (use --attention math)");
#endif
}

int64_t peak_device_memory(at::Device device) {
#if CONSA_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return stats.allocated_bytes[0].peak;  // [0]: all pools together
  }
#endif
  (void)device;
  return -1;
}

void reset_peak_device_memory(at::Device device) {
#if CONSA_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
  (void)device;
}

at::Tensor fused_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
#if CONSA_TORCH_AT_LEAST(2, 5)
  // SDPA takes [B, H, L, D]; its causal mask is aligned top-left, right here as Lq == Lk.
  CONSA_CHECK(q.size(1) == k.size(1), "fused_causal_attention: needs as many queries as keys, got ", q.size(1),
              " and ", k.size(1));
  return at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), {},
                                          /*dropout_p=*/0.0, /*is_causal=*/true, scale, /*enable_gqa=*/true)
      .transpose(1, 2);
#else
  (void)q, (void)k, (void)v, (void)scale;
  fail("fused causal attention needs LibTorch >= 2.5; this build uses LibTorch ", torch_version());
#endif
}

void fused_adamw(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList steps, double lr, double beta1, double beta2, double weight_decay, double eps) {
#if CONSA_TORCH_AT_LEAST(2, 1)
  at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay,
                    eps, /*amsgrad=*/false, /*maximize=*/false);
#else
  (void)params, (void)grads, (void)exp_avgs, (void)exp_avg_sqs, (void)steps, (void)lr, (void)beta1, (void)beta2,
      (void)weight_decay, (void)eps;
  fail("the fused AdamW kernel needs LibTorch >= 2.1; this build uses LibTorch ", torch_version());
#endif
}

void set_device_sync_errors(bool on) {
#if CONSA_WITH_CUDA
  c10::cuda::warning_state().set_sync_debug_mode(on ? c10::cuda::SyncDebugMode::L_ERROR
                                                    : c10::cuda::SyncDebugMode::L_DISABLED);
#else
  (void)on;
#endif
}

#if CONSA_WITH_CUDA
namespace {
namespace profiler = torch::autograd::profiler;
const std::set<profiler::ActivityType> kTraceActivities = {profiler::ActivityType::CPU, profiler::ActivityType::CUDA};
profiler::ProfilerConfig trace_config() { return profiler::ProfilerConfig(profiler::ProfilerState::KINETO, false, false); }
}  // namespace

void start_trace() {
  profiler::prepareProfiler(trace_config(), kTraceActivities);
  profiler::enableProfiler(trace_config(), kTraceActivities);
}

void stop_trace(const std::string& path) { profiler::disableProfiler()->save(path); }
#else
void start_trace() { fail("tracing needs a CUDA build of LibTorch (Kineto)"); }
void stop_trace(const std::string& path) { fail("tracing needs a CUDA build of LibTorch (Kineto); not written: ", path); }
#endif

#if CONSA_WITH_CUDA
struct DeviceGraph::Recording {
  at::cuda::CUDAGraph graph;
};

DeviceGraph::DeviceGraph(at::Device device, const std::function<void()>& work, int warmup)
    : recording_(std::make_unique<Recording>()) {
  CONSA_CHECK(device.is_cuda(), "CUDA graphs need a CUDA device, got ", device.str());
  c10::cuda::CUDAGuard device_guard(device);
  c10::cuda::device_synchronize();  // the side stream must see what the current one wrote
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  {
    // Capture needs a stream other than the legacy default one.
    c10::cuda::CUDAStreamGuard stream_guard(side);
    for (int i = 0; i < warmup; ++i) work();
    side.synchronize();
    recording_->graph.capture_begin();
    work();
    recording_->graph.capture_end();
  }
  side.synchronize();
}

void DeviceGraph::replay() { recording_->graph.replay(); }
#else
struct DeviceGraph::Recording {};

DeviceGraph::DeviceGraph(at::Device device, const std::function<void()>& work, int warmup) {
  (void)work, (void)warmup;
  fail("CUDA graphs need a CUDA build of LibTorch and a CUDA device; got ", device.str(), " with LibTorch ",
       torch_version());
}

void DeviceGraph::replay() { fail("CUDA graphs need a CUDA build of LibTorch"); }
#endif

DeviceGraph::~DeviceGraph() = default;
DeviceGraph::DeviceGraph(DeviceGraph&&) noexcept = default;
DeviceGraph& DeviceGraph::operator=(DeviceGraph&&) noexcept = default;

HostCopy::HostCopy(const at::Tensor& source) {
  const at::Tensor values = source.detach();
#if CONSA_WITH_CUDA
  if (values.is_cuda()) {
    host_ = at::empty(values.sizes(), values.options().device(at::kCPU).pinned_memory(true));
    host_.copy_(values, /*non_blocking=*/true);
    auto event = std::make_shared<at::cuda::CUDAEvent>();
    event->record(at::cuda::getCurrentCUDAStream(values.device().index()));
    done_ = event;
    return;
  }
#endif
  host_ = values.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
}

at::Tensor HostCopy::get() {
#if CONSA_WITH_CUDA
  if (done_) static_cast<at::cuda::CUDAEvent*>(done_.get())->synchronize();
#endif
  done_.reset();
  return host_;
}

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace consa::compat
