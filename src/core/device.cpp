#include "consa/core/device.h"

namespace consa {

at::Tensor to_device_async(const at::Tensor& t, at::Device device) {
  if (!device.is_cuda() || !t.device().is_cpu()) return t.to(device);
  return t.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace consa
