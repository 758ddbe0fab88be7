#pragma once
// Moving small host tensors (gates, masks, index lists, token batches) to the device without
// stalling it: a plain .to(cuda) from pageable memory waits for the device's queue to drain, so
// every such copy in a step would be a host synchronisation.
#include <ATen/ATen.h>

namespace consa {

// `t` on `device`. A host-to-CUDA copy goes through pinned memory and does not wait; any other
// move is a plain .to(). Differentiable like .to().
at::Tensor to_device_async(const at::Tensor& t, at::Device device);

}  // namespace consa
