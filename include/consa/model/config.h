#pragma once
// Hyper-parameters of a Llama-family decoder, as one plain struct. Filled from a Hugging Face
// config.json by read_hf_config (consa/load/hf_config.h), or built directly for a fresh model.
#include <cstdint>
#include <string>
#include <vector>

#include "consa/attention/attention.h"

namespace consa {

enum class Architecture { Llama, Mistral, Qwen2, Qwen3 };

// "LlamaForCausalLM", ... as written in config.json's "architectures".
const char* architecture_name(Architecture arch);
// "llama", "mistral", "qwen2", "qwen3": config.json's "model_type".
const char* model_type_name(Architecture arch);

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3
  double theta = 10000.0;
  double factor = 1.0;                         // linear, llama3
  double low_freq_factor = 1.0;                // llama3
  double high_freq_factor = 4.0;               // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  Architecture arch = Architecture::Llama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // query heads
  int64_t num_kv_heads = 0;  // key/value heads (GQA groups)
  int64_t head_dim = 0;      // hidden_size / num_heads unless given (Qwen3)
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;   // q/k/v projections have a bias (Qwen2, attention_bias)
  bool o_bias = false;     // o_proj has a bias (attention_bias on Llama/Mistral/Qwen3)
  bool qk_norm = false;    // per-head RMSNorm on q and k before RoPE (Qwen3)
  RopeConfig rope;
  // Attention window of each layer as the checkpoint declares it: 0 = full causal attention,
  // W > 0 = sliding window of W keys including the current token (Mistral, Qwen2/3 layer_types).
  std::vector<int64_t> layer_window;
  // A consa hybrid export (config.json "consa" entry), its heads stored in the hybrid layout
  // (consa/export/hybrid_layout.h). Per layer, per stored KV group: the window of its cache, 0 =
  // every position; full-cache groups come first, then the windows widest first. Empty for
  // ordinary checkpoints.
  std::vector<std::vector<int64_t>> hybrid_kv_windows;
  // Query-head granularity: per layer, per stored query head, its window (0 = full attention).
  // Empty otherwise: every query head takes its group's span.
  std::vector<std::vector<int64_t>> hybrid_head_windows;
  int64_t hybrid_sinks = 0;
  bool is_hybrid_export() const { return !hybrid_kv_windows.empty(); }
  // The full-cache KV groups of `layer` in a hybrid export, and the windows it uses, widest first.
  int64_t hybrid_full_kv_heads(int64_t layer) const;
  std::vector<int64_t> hybrid_windows() const;
  std::string dtype = "float32";  // the checkpoint's stored dtype ("float32", "bfloat16", ...)

  int64_t group_size() const { return num_heads / num_kv_heads; }  // query heads per KV head
  bool layer_is_sliding(int64_t layer) const { return layer_window.at(layer) > 0; }
  // The checkpoint's own attention span for KV group `kv_head` of `layer`.
  AttentionSpan declared_span(int64_t layer, int64_t kv_head) const;
  // Throws consa::Error naming `source` when the numbers are inconsistent.
  void validate(const std::string& source) const;
};

}  // namespace consa
