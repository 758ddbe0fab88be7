#pragma once
// The TorchScript source of the pruned export (torchscript_source.cpp), compiled by
// torchscript_export.cpp into the layer and model modules.
#include <torch/csrc/jit/frontend/resolver.h>

#include <string>

#include "consa/model/config.h"

namespace consa::torchscript {

// Masks used by a layer's _attend: which keys a slice of query heads sees besides the causal
// limit: none, the slice's window, or each head's own.
enum AttendMode : int64_t { kCausal = 0, kWindow = 1, kPerHead = 2 };

// One decoder layer's methods (forward, decode and their helpers) and the model's (init_cache,
// extend, decode_step, forward) for a model whose sliding units use `windows` distinct windows
// (one ring cache each). With `fused` they call consa's operators (consa.<op>); the decode step's
// fused QKV and two-slice attention need a single ring.
std::string layer_source(const ModelConfig& c, bool fused, bool single_ring);
std::string model_source(const ModelConfig& c, bool fused, int64_t windows);

// What compiles those sources: C++'s native resolver, plus `consa` where `fused`.
torch::jit::ResolverPtr source_resolver(bool fused);

}  // namespace consa::torchscript
