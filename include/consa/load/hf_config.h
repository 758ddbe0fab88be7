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

// The config.json that transformers needs to load a checkpoint of this shape.
nlohmann::json to_hf_config(const ModelConfig& config);

}  // namespace consa
