// config.json, and the round trip that exports rely on: what to_hf_config writes for a config
// read_hf_config accepted must read back as the same model.
#include "consa/load/hf_config.h"
#include "fuzz_common.h"

namespace {
bool same_model(const consa::ModelConfig& a, const consa::ModelConfig& b) {
  return a.arch == b.arch && a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.intermediate_size == b.intermediate_size && a.num_layers == b.num_layers && a.num_heads == b.num_heads &&
         a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim && a.rms_norm_eps == b.rms_norm_eps &&
         a.max_position_embeddings == b.max_position_embeddings && a.tie_word_embeddings == b.tie_word_embeddings &&
         a.qkv_bias == b.qkv_bias && a.o_bias == b.o_bias && a.qk_norm == b.qk_norm && a.rope.type == b.rope.type &&
         a.rope.theta == b.rope.theta && a.rope.factor == b.rope.factor &&
         a.rope.low_freq_factor == b.rope.low_freq_factor && a.rope.high_freq_factor == b.rope.high_freq_factor &&
         a.rope.original_max_position_embeddings == b.rope.original_max_position_embeddings &&
         a.layer_window == b.layer_window && a.hybrid_kv_windows == b.hybrid_kv_windows &&
         a.hybrid_head_windows == b.hybrid_head_windows && a.hybrid_sinks == b.hybrid_sinks && a.dtype == b.dtype;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = consa_fuzz::write_input("config.json", data, size);
  consa::ModelConfig config;
  bool accepted = false;
  consa_fuzz::refuse_with_error({path}, [&] {
    config = consa::read_hf_config(path);
    accepted = true;
  });
  if (!accepted) return 0;
  consa::hf_class(config);
  nlohmann::json written;
  try {
    written = consa::to_hf_config(config);
    const consa::ModelConfig back = consa::parse_hf_config(written, "written config.json");
    if (!same_model(config, back))
      consa_fuzz::property_failed(path + ": to_hf_config reads back as another model: " + written.dump());
  } catch (const consa::Error& e) {
    consa_fuzz::property_failed(path + ": accepted, but what to_hf_config writes for it is refused: " +
                                std::string(e.what()) + "\n" + written.dump());
  }
  return 0;
}
