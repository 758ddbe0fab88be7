#include "consa/export/hf_export.h"

#include <algorithm>
#include <filesystem>
#include <functional>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "consa/export/hf_remote_code.h"  // generated from src/export/hf_remote/ at build time
#include "consa/export/hybrid_layout.h"
#include "consa/load/hf_config.h"
#include "consa/load/pretrained.h"

namespace consa {
namespace fs = std::filesystem;

bool expressible_per_layer(const Assignment& a) {
  // transformers has no attention sinks, and one sliding_window per model.
  if (a.multi_window() || (a.swa.sinks != 0 && a.achieved_sparsity() > 0)) return false;
  for (const auto& layer : a.full)
    if (std::adjacent_find(layer.begin(), layer.end(), std::not_equal_to<bool>()) != layer.end()) return false;
  return true;
}

namespace {

// configuration_consa.py and modeling_consa.py beside a config.json that declares consa's hybrid
// class, so that transformers loads it with trust_remote_code; a re-export to the same folder
// under a stock class drops them. Written before config.json, whose auto_map names them.
void write_remote_code(const std::string& dir, bool hybrid) {
  fs::create_directories(dir);
  for (const auto& file : hf_remote_code::kFiles) {
    const fs::path path = fs::path(dir) / file.name;
    if (hybrid)
      write_file_atomically(path.string(), std::string(reinterpret_cast<const char*>(file.data), file.size));
    else
      fs::remove(path);
  }
}

}  // namespace

void export_hf(CausalLM& model, const Assignment& assignment, const std::string& dir, const ModelCardSource& source) {
  ModelConfig config = model->config();
  assignment.check_fits(config, "");
  std::vector<LayerHeadLayout> layouts;
  CausalLM work = hybrid_model_copy(model, assignment, &layouts);
  config.hybrid_kv_windows.clear();
  config.hybrid_head_windows.clear();
  if (expressible_per_layer(assignment)) {
    // Every layer wholly full or wholly sliding: transformers' own layer_types (the layouts
    // leave such layers' heads in place).
    for (int64_t l = 0; l < config.num_layers; ++l)
      config.layer_window[l] = assignment.full[l][0] ? 0 : assignment.swa.window;
  } else {
    for (int64_t l = 0; l < config.num_layers; ++l) {
      config.hybrid_kv_windows.push_back(layouts[l].kv_windows);
      if (assignment.unit == GateUnit::Head) config.hybrid_head_windows.push_back(layouts[l].head_windows);
    }
    config.hybrid_sinks = assignment.swa.sinks;
    std::fill(config.layer_window.begin(), config.layer_window.end(), 0);
  }
  const std::string declared = hf_class(config).architecture;
  write_remote_code(dir, declared == kHybridArchitecture);
  save_pretrained(work, dir, 4ull << 30, &config);
  // assignment.json describes the weights as stored.
  Assignment saved = permuted_assignment(assignment, layouts);
  saved.weights_checksum = weights_checksum(work);
  saved.save((fs::path(dir) / "assignment.json").string());
  ModelCardSource card = source;
  if (card.weights_checksum.empty()) card.weights_checksum = assignment.weights_checksum;
  write_file_atomically((fs::path(dir) / "README.md").string(), model_card(saved, declared, card));
}

}  // namespace consa
