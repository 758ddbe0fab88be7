#pragma once
// Hugging Face-format export of a model under a binarized assignment: safetensors, config.json
// and assignment.json in one directory.
//   layer granularity   - transformers' own per-layer `layer_types` + `sliding_window`, so stock
//                         transformers runs each layer with the right attention (no sinks there);
//   kv_head granularity - KV groups permuted within each layer so the full-attention ones come
//                         first (q/k/v rows, biases and o_proj columns moved together), and the
//                         per-layer split recorded under config.json's "consa" entry. consa loads
//                         it as the hybrid; stock transformers loads the same weights as a dense
//                         model (it has no per-head attention types).
#include <string>

#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa {

void export_hf(CausalLM& model, const Assignment& assignment, const std::string& dir);

// Moves KV group perm[i] of `layer` to position i (its query heads, k/v rows, o_proj columns).
void permute_kv_groups(CausalLM& model, int64_t layer, const std::vector<int64_t>& perm);

}  // namespace consa
