#pragma once
// Loading a Hugging Face checkpoint directory into a CausalLM, and writing one back.
#include <c10/util/Optional.h>

#include <string>

#include "consa/attention/attention.h"
#include "consa/kernels/fused_ops.h"
#include "consa/model/decoder.h"

namespace consa {

struct LoadOptions {
  c10::optional<at::ScalarType> dtype;  // default: the checkpoint's stored dtype
  at::Device device = at::kCPU;
  AttentionImpl attention = AttentionImpl::Auto;
  KernelImpl kernels = KernelImpl::Auto;  // fused CUDA kernels (consa/kernels/fused_ops.h)
  std::string kernels_key = "model.kernels";  // names the setting in a refusal of `fused`
};

// Reads config.json and the weights (single file or sharded). Every parameter must be present
// with its exact shape; tensors the model does not use are refused, except the ones transformers
// also ignores (rotary inv_freq buffers, a tied lm_head.weight).
CausalLM load_pretrained(const std::string& dir, const LoadOptions& options = {});

// Writes config.json and model.safetensors (sharded above max_shard_bytes), each atomically.
// `config` replaces the model's own in config.json (an export that re-labels the weights).
void save_pretrained(CausalLM& model, const std::string& dir, uint64_t max_shard_bytes = 4ull << 30,
                     const ModelConfig* config = nullptr);

}  // namespace consa
