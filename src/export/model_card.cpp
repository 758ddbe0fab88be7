#include "consa/export/model_card.h"

#include <iomanip>
#include <sstream>

#include "consa/load/hf_config.h"

namespace consa {

namespace {

// "1.50 GiB", "12.00 MiB": bytes for people.
std::string gib(double bytes) {
  std::ostringstream out;
  const bool large = bytes >= 1024.0 * 1024.0 * 1024.0;
  out << std::fixed << std::setprecision(2) << bytes / (large ? 1024.0 * 1024.0 * 1024.0 : 1024.0 * 1024.0)
      << (large ? " GiB" : " MiB");
  return out.str();
}

}  // namespace

std::string model_card(const Assignment& a, const std::string& architecture, const ModelCardSource& source) {
  const bool hybrid_class = architecture == kHybridArchitecture;
  int64_t swa_units = 0, units = 0;
  for (const auto& layer : a.full)
    for (bool full : layer) swa_units += !full, ++units;
  std::ostringstream md;
  md << "---\nlibrary_name: transformers\ntags:\n- consa\n- hybrid-attention\n- sliding-window-attention\n---\n\n"
     << "# Hybrid full / sliding-window attention model\n\n"
     << "Made by consa from `" << source.model << "` (" << a.architecture << ", weights `"
     << (source.weights_checksum.empty() ? "unknown" : source.weights_checksum) << "`). Each "
     << (a.unit == GateUnit::Layer ? "layer" : a.unit == GateUnit::KvHead ? "KV head (with its query heads)" : "query head")
     << " keeps full attention or attends over a sliding window of " << a.swa.window << " keys"
     << (a.swa.sinks > 0 ? " plus the first " + std::to_string(a.swa.sinks) + " tokens (attention sinks)" : "")
     << ".\n\n"
     << "| | |\n| --- | --- |\n"
     << "| granularity | " << gate_unit_name(a.unit) << " |\n"
     << "| window, sinks | " << a.swa.window << ", " << a.swa.sinks << " |\n"
     << "| chosen by | " << a.method << " (rule `" << binarize_rule_name(a.rule) << "`) |\n"
     << "| target sparsity | " << a.target << " |\n"
     << "| achieved sparsity | " << a.achieved_sparsity() << " (" << swa_units << " of " << units
     << " units on the window) |\n"
     << "| declared class | `" << architecture << "` |\n\n";

  md << "## KV cache per sequence (bf16)\n\n| context | this model | dense | share |\n| --- | --- | --- | --- |\n";
  for (int64_t context : {4096, 32768, 131072}) {
    const auto [fa, swa] = a.kv_cache_bytes(context, 2);
    const double dense = static_cast<double>(a.dense_kv_cache_bytes(context, 2));
    md << "| " << context << " | " << gib(static_cast<double>(fa + swa)) << " | " << gib(dense) << " | "
       << std::fixed << std::setprecision(1) << 100.0 * static_cast<double>(fa + swa) / dense << "% |\n";
    md.unsetf(std::ios::fixed);
  }

  md << "\n## Attention map\n\nOne row per layer, one letter per unit (F full attention, S sliding window), "
     << (a.unit == GateUnit::Layer ? "" : "in the stored head order (full-attention heads first in each layer)")
     << ":\n\n```text\n";
  for (size_t l = 0; l < a.full.size(); ++l) {
    md << std::setw(3) << l << "  ";
    for (bool full : a.full[l]) md << (full ? 'F' : 'S');
    md << "\n";
  }
  md << "```\n\n## Loading\n\n```python\nfrom transformers import AutoModelForCausalLM\n";
  if (hybrid_class) {
    md << "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)\n```\n\n"
       << "transformers has no per-head or sink windows, so this folder carries its own modeling code "
       << "(`modeling_consa.py`, `configuration_consa.py`; transformers 5.x). Without "
       << "`trust_remote_code=True` transformers refuses the model rather than running it as dense. "
       << "Generation keeps only window + sinks positions for the sliding heads.\n";
  } else {
    md << "model = AutoModelForCausalLM.from_pretrained(path)\n```\n\n"
       << "A stock transformers class: `layer_types` and `sliding_window` in config.json give each layer "
       << "its attention.\n";
  }
  md << "\nconsa itself: `consa eval PATH`, `consa generate PATH --prompt-ids ...`; `assignment.json` "
     << "holds the layout and its scores.\n";
  if (!source.recipe_yaml.empty())
    md << "\n## The recipe that made it\n\n```yaml\n" << source.recipe_yaml
       << (source.recipe_yaml.back() == '\n' ? "" : "\n") << "```\n";
  return md.str();
}

}  // namespace consa
