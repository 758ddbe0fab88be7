#pragma once
// Reading and writing Hugging Face config.json for the Llama family (Llama, Mistral, Qwen2,
// Qwen3). Options consa does not model are refused with an error that lists what is supported.
#include <nlohmann/json.hpp>
#include <string>

#include "consa/model/config.h"

namespace consa {

// Parses config.json (a file path, or a checkpoint directory containing it).
ModelConfig read_hf_config(const std::string& path);

// Parses an already loaded config; `source` names it in error messages.
ModelConfig parse_hf_config(const nlohmann::json& config, const std::string& source);

// consa's own class for layouts stock transformers cannot express (per-head windows, sinks,
// sliding layers of a biased Llama): config.json declares it so that transformers refuses the
// checkpoint, or loads it through the export's remote code, instead of running it as dense.
inline constexpr const char* kHybridArchitecture = "ConsaHybridForCausalLM";
inline constexpr const char* kHybridModelType = "consa_hybrid";

// The class config.json declares for this config: the stock transformers class that runs its
// layout exactly (Ministral for Llama/Mistral with mixed layers, Mistral when every layer
// slides), or consa's hybrid class when none does.
struct HfClass {
  std::string architecture, model_type;
};
HfClass hf_class(const ModelConfig& config);

// The config.json that transformers needs to load a checkpoint of this shape.
nlohmann::json to_hf_config(const ModelConfig& config);

}  // namespace consa
