#pragma once
// Hugging Face-format export of a model under a binarized assignment: safetensors, config.json
// and assignment.json in one directory.
//   layer granularity   - transformers' own per-layer `layer_types` + `sliding_window`, so stock
//                         transformers runs each layer with the right attention (no sinks there);
//   kv_head / head      - heads stored in the hybrid layout (consa/export/hybrid_layout.h: in each
//                         layer the full-cache KV groups first, full-attention query heads first
//                         within a group) and the per-layer split recorded under config.json's
//                         "consa" entry. consa loads it as the hybrid; stock transformers loads the
//                         same weights as a dense model (it has no per-head attention types).
#include <string>

#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa {

void export_hf(CausalLM& model, const Assignment& assignment, const std::string& dir);

}  // namespace consa
