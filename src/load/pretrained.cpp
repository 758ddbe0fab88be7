#include "consa/load/pretrained.h"

#include <ATen/core/grad_mode.h>

#include <filesystem>
#include <set>

#include "consa/core/atomic_file.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/load/hf_config.h"
#include "consa/load/safetensors.h"

namespace consa {
namespace fs = std::filesystem;

namespace {

bool ignorable_extra(const std::string& name, const ModelConfig& config) {
  if (name.find("rotary_emb.inv_freq") != std::string::npos) return true;
  return config.tie_word_embeddings && name == "lm_head.weight";
}

}  // namespace

CausalLM load_pretrained(const std::string& dir, const LoadOptions& options) {
  CONSA_CHECK(fs::is_directory(dir), dir, ": not a directory (expected a Hugging Face checkpoint)");
  ModelConfig config = read_hf_config(dir);
  const at::ScalarType dtype =
      options.dtype ? *options.dtype : parse_dtype(config.dtype, dir + "/config.json: dtype");
  CheckpointTensors weights = CheckpointTensors::open(dir);

  CausalLM model(config, at::TensorOptions().dtype(dtype).device(options.device));
  model->set_attention_backend(make_attention_backend(options.attention));

  at::NoGradGuard no_grad;
  std::set<std::string> used;
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor param = item.value();
    CONSA_CHECK(weights.contains(name), dir, ": missing tensor '", name, "' (",
                architecture_name(config.arch), " with this config.json needs it)");
    at::Tensor stored = weights.tensor(name);
    CONSA_CHECK(stored.sizes() == param.sizes(), weights.file_of(name), ": tensor '", name,
                "' has shape ", format_shape(stored.sizes()), ", expected ",
                format_shape(param.sizes()), " from config.json");
    param.copy_(stored);
    used.insert(name);
  }
  std::vector<std::string> unexpected;
  for (const auto& name : weights.names())
    if (!used.count(name) && !ignorable_extra(name, config)) unexpected.push_back(name);
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 3; ++i) list += (i ? ", " : "") + unexpected[i];
    if (unexpected.size() > 3) list += ", ... (" + std::to_string(unexpected.size()) + " in all)";
    fail(dir, ": checkpoint has tensors this ", architecture_name(config.arch),
         " config does not use: ", list);
  }
  return model;
}

void save_pretrained(CausalLM& model, const std::string& dir, uint64_t max_shard_bytes,
                     const ModelConfig* config_override) {
  fs::create_directories(dir);
  ModelConfig config = config_override ? *config_override : model->config();
  config.dtype = dtype_name(model->dtype());
  NamedTensors tensors;
  for (const auto& item : model->named_parameters()) tensors.emplace_back(item.key(), item.value());
  write_checkpoint_tensors(dir, tensors, max_shard_bytes);
  AtomicFileWriter out((fs::path(dir) / "config.json").string());
  out.stream() << to_hf_config(config).dump(2) << "\n";
  out.commit();
}

}  // namespace consa
