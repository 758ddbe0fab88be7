#pragma once
// The TorchScript source of the pruned export (torchscript_source.cpp), compiled by
// torchscript_export.cpp into the layer and model modules.
#include <torch/csrc/jit/frontend/resolver.h>

#include <string>

#include "consa/model/config.h"

namespace consa::torchscript {

// Masks used by a layer's _attend: which keys a slice of query heads sees besides the causal limit.
enum AttendMode : int64_t { kCausal = 0, kWindow = 1, kPerHead = 2 };

// One decoder layer's methods (forward, decode and their helpers) and the model's (init_cache,
// extend, decode_step, forward). With `fused` they call consa's operators (consa.<op>).
std::string layer_source(const ModelConfig& c, bool fused);
std::string model_source(const ModelConfig& c, bool fused);

// What compiles those sources: C++'s native resolver, plus `consa` where `fused`.
torch::jit::ResolverPtr source_resolver(bool fused);

}  // namespace consa::torchscript
