#include "consa/load/pretrained.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
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

// The number of decoder layers the checkpoint's tensor names cover ("model.layers.N.*").
int64_t stored_layer_count(const CheckpointTensors& weights) {
  int64_t count = 0;
  const std::string prefix = "model.layers.";
  for (const auto& name : weights.names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t dot = name.find('.', prefix.size());
    const std::string index = name.substr(prefix.size(), dot - prefix.size());
    if (index.empty() || index.size() > 9 || index.find_first_not_of("0123456789") != std::string::npos) continue;
    count = std::max<int64_t>(count, std::stoll(index) + 1);
  }
  return count;
}

// Every parameter the config needs, with its exact shape, checked against the checkpoint's
// headers before a byte is allocated: a config.json far larger than its weights is refused
// here, not by the allocator. The shapes come from the model itself, built on the meta device.
void check_shapes_before_allocating(const ModelConfig& config, const CheckpointTensors& weights,
                                    const std::string& dir) {
  const int64_t stored_layers = stored_layer_count(weights);
  // Checked first: building a meta model of a huge layer count alone would take minutes.
  CONSA_CHECK(config.num_layers <= stored_layers, dir, ": missing tensor 'model.layers.", stored_layers,
              ".input_layernorm.weight' (config.json has num_hidden_layers ", config.num_layers,
              ", the weights hold ", stored_layers, " layers)");
  CausalLM shapes{nullptr};
  try {
    shapes = CausalLM(config, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  } catch (const Error&) {
    throw;
  } catch (const std::exception&) {  // sizes whose products overflow int64, vectors beyond max_size
    fail(dir, "/config.json: its sizes (vocab_size, hidden_size, intermediate_size, heads x head_dim) describe a "
         "tensor of more elements than 64 bits can count");
  }
  std::set<std::string> used;
  for (const auto& item : shapes->named_parameters()) {
    const std::string& name = item.key();
    CONSA_CHECK(weights.contains(name), dir, ": missing tensor '", name, "' (",
                architecture_name(config.arch), " with this config.json needs it)");
    const at::Tensor view = weights.tensor(name);  // of the mapped file, no copy
    const at::IntArrayRef stored = view.sizes();
    CONSA_CHECK(stored == item.value().sizes(), weights.file_of(name), ": tensor '", name,
                "' has shape ", format_shape(stored), ", expected ", format_shape(item.value().sizes()),
                " from config.json");
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
}

// NaN or Inf in a weight poisons every output: `inspect` would print nan and training would
// fail at an unrelated place. Checked on the loaded copy, so that a value that overflows the
// requested dtype (float16) is caught too; min and max propagate NaN without a mask.
void check_finite(const at::Tensor& param, const at::Tensor& stored, const std::string& name,
                  const std::string& file) {
  if (!at::isFloatingType(param.scalar_type()) || param.numel() == 0) return;
  const at::Tensor range = at::stack({param.min(), param.max()}).to(at::kFloat).cpu();
  if (at::isfinite(range).all().item<bool>()) return;
  const at::Tensor bad = ~at::isfinite(stored.to(at::kFloat));
  const int64_t count = bad.sum().item<int64_t>();
  CONSA_CHECK(count == 0, file, ": tensor '", name, "' holds ", count, " NaN or Inf value", count == 1 ? "" : "s",
              " (first at flat index ", bad.flatten().nonzero()[0].item<int64_t>(), "); expected finite weights");
  fail(file, ": tensor '", name, "' is finite as stored (", c10::toString(stored.scalar_type()),
       ") but overflows ", c10::toString(param.scalar_type()), "; load it in float32 or bfloat16");
}

}  // namespace

CausalLM load_pretrained(const std::string& dir, const LoadOptions& options) {
  CONSA_CHECK(fs::is_directory(dir), dir, ": not a directory (expected a Hugging Face checkpoint)");
  ModelConfig config = read_hf_config(dir);
  const at::ScalarType dtype =
      options.dtype ? *options.dtype : parse_dtype(config.dtype, dir + "/config.json: dtype");
  CheckpointTensors weights = CheckpointTensors::open(dir);
  check_shapes_before_allocating(config, weights, dir);

  const bool fused = use_fused_kernels(options.kernels, options.device, options.kernels_key);
  CausalLM model(config, at::TensorOptions().dtype(dtype).device(options.device));
  model->set_attention_backend(make_attention_backend(options.attention));
  model->set_fused_kernels(fused);

  at::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    at::Tensor param = item.value();
    const at::Tensor stored = weights.tensor(item.key());
    param.copy_(stored);
    check_finite(param, stored, item.key(), weights.file_of(item.key()));
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
