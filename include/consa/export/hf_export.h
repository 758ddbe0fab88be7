#pragma once
// Hugging Face-format export of a model under a binarized assignment: safetensors, config.json
// and assignment.json in one directory. config.json declares a class that runs the layout
// exactly, never one that would run it as dense:
//   every layer wholly full or wholly sliding, no sinks (layer runs, and kv_head / head runs
//   that came out so) - transformers' own per-layer `layer_types` + `sliding_window` on a stock
//                       class (Qwen2/Qwen3 themselves; Ministral, or Mistral when every layer
//                       slides, for Llama and Mistral);
//   anything else       - heads stored in the hybrid layout (consa/export/hybrid_layout.h: in
//                       each layer the full-cache KV groups first, full-attention query heads
//                       first within a group), the per-layer split under config.json's "consa"
//                       entry, and consa's own class (kHybridArchitecture), which stock
//                       transformers refuses instead of loading the weights as a dense model.
//                       Such exports carry that class's transformers code (src/export/hf_remote/,
//                       compiled in) and an auto_map, so trust_remote_code=True runs them exactly.
#include <string>

#include "consa/export/assignment.h"
#include "consa/export/model_card.h"
#include "consa/model/decoder.h"

namespace consa {

// Whether transformers' per-layer layout expresses `assignment` exactly.
bool expressible_per_layer(const Assignment& assignment);

// Writes the export into `dir`, its README.md model card from `source` and the assignment.
void export_hf(CausalLM& model, const Assignment& assignment, const std::string& dir,
               const ModelCardSource& source = {});

}  // namespace consa
