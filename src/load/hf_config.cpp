#include "consa/load/hf_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"

namespace consa {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct ArchitectureEntry {
  Architecture arch;
  const char* class_name;
  const char* model_type;
};
constexpr ArchitectureEntry kArchitectures[] = {
    {Architecture::Llama, "LlamaForCausalLM", "llama"},
    {Architecture::Mistral, "MistralForCausalLM", "mistral"},
    {Architecture::Qwen2, "Qwen2ForCausalLM", "qwen2"},
    {Architecture::Qwen3, "Qwen3ForCausalLM", "qwen3"},
};
// Ministral is Mistral's weights with transformers' per-layer `layer_types`: the stock class of a
// Llama or Mistral model with some sliding-window layers. Read as Mistral.
constexpr ArchitectureEntry kMinistral = {Architecture::Mistral, "MinistralForCausalLM", "ministral"};

std::string supported_architectures() {
  std::string list;
  for (const auto& a : kArchitectures) list += (list.empty() ? "" : ", ") + std::string(a.class_name);
  return list;
}

const char* const kRopeTypes = "default, linear, llama3";

// Typed accessors: each names the file and key on failure.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t positive_int(const char* key) const {
    CONSA_CHECK(has(key), source_, ": missing required key '", key, "'");
    return positive_int_value(j_[key], key);
  }
  int64_t positive_int(const char* key, int64_t fallback) const {
    return has(key) ? positive_int_value(j_[key], key) : fallback;
  }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    CONSA_CHECK(j_[key].is_number(), source_, ": key '", key, "' must be a number, got ",
                j_[key].dump());
    return j_[key].get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    CONSA_CHECK(j_[key].is_boolean(), source_, ": key '", key, "' must be true or false, got ",
                j_[key].dump());
    return j_[key].get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    CONSA_CHECK(j_[key].is_string(), source_, ": key '", key, "' must be a string, got ",
                j_[key].dump());
    return j_[key].get<std::string>();
  }
  // The value of `key`, null when absent: json's const operator[] of a missing key is undefined.
  const json& at(const char* key) const {
    static const json kAbsent;
    return j_.contains(key) ? j_.at(key) : kAbsent;
  }
  const std::string& source() const { return source_; }

 private:
  int64_t positive_int_value(const json& v, const char* key) const {
    CONSA_CHECK(v.is_number_integer() && v.get<int64_t>() > 0, source_, ": key '", key,
                "' must be a positive integer, got ", v.dump());
    return v.get<int64_t>();
  }
  const json& j_;
  std::string source_;
};

Architecture parse_architecture(const ConfigReader& r) {
  std::string name;
  if (r.has("architectures")) {
    const json& list = r.at("architectures");
    CONSA_CHECK(list.is_array() && !list.empty() && list[0].is_string(), r.source(),
                ": 'architectures' must be a non-empty list of class names");
    name = list[0].get<std::string>();
  } else {
    name = r.string("model_type", "");
  }
  if (name == kHybridArchitecture || name == kHybridModelType) {
    // consa's own hybrid class: the weights are those of the base architecture it names.
    CONSA_CHECK(r.has("consa") && r.at("consa").is_object(), r.source(), ": ", name,
                " needs the 'consa' entry that describes its hybrid layout");
    ConfigReader hybrid(r.at("consa"), r.source() + ": consa");
    name = hybrid.string("base_architecture", "");
    CONSA_CHECK(!name.empty(), r.source(), ": consa.base_architecture is missing; expected one of ",
                supported_architectures());
  }
  for (const auto& a : kArchitectures)
    if (name == a.class_name || name == a.model_type) return a.arch;
  if (name == kMinistral.class_name || name == kMinistral.model_type) return kMinistral.arch;
  fail(r.source(), ": unsupported architecture '", name, "'; supported: ",
       supported_architectures(), ", ", kMinistral.class_name, ", ", kHybridArchitecture);
}

// RoPE from either `rope_parameters` (newer files) or `rope_theta` + `rope_scaling`. A file with
// both and a non-null `rope_scaling` means what transformers 5 makes of it: `rope_scaling` wins,
// its theta taken from `rope_scaling`, else `rope_theta`, else `rope_parameters`.
RopeConfig parse_rope(const ConfigReader& r) {
  RopeConfig rope;
  json params = json::object();
  std::string where;
  const bool scaling_wins = r.has("rope_parameters") && r.has("rope_scaling") && !r.at("rope_scaling").is_null();
  if (scaling_wins) {
    params = r.at("rope_scaling");
    CONSA_CHECK(params.is_object(), r.source(), ": 'rope_scaling' must be an object or null");
    where = "rope_scaling";
    if (!params.contains("rope_theta")) {
      const json& p = r.at("rope_parameters");
      params["rope_theta"] = r.has("rope_theta") ? json(r.number("rope_theta", rope.theta))
                             : (p.is_object() && p.contains("rope_theta")) ? p.at("rope_theta")
                                                                           : json(rope.theta);
    }
  } else if (r.has("rope_parameters")) {
    params = r.at("rope_parameters");
    where = "rope_parameters";
    CONSA_CHECK(params.is_object(), r.source(), ": 'rope_parameters' must be an object");
    CONSA_CHECK(!params.contains("full_attention") && !params.contains("sliding_attention"),
                r.source(),
                ": per-layer-type 'rope_parameters' are not supported; supported: one set of "
                "rope parameters for every layer");
  } else {
    if (r.has("rope_scaling")) {
      params = r.at("rope_scaling");
      CONSA_CHECK(params.is_object(), r.source(), ": 'rope_scaling' must be an object or null");
    }
    where = "rope_scaling";
    params["rope_theta"] = r.number("rope_theta", rope.theta);
  }
  ConfigReader p(params, r.source() + ": " + where);
  rope.theta = p.number("rope_theta", rope.theta);
  CONSA_CHECK(rope.theta > 0, r.source(), ": rope_theta must be > 0, got ", rope.theta);
  rope.type = p.string("rope_type", p.string("type", "default"));
  if (rope.type == "default") return rope;
  if (rope.type == "linear") {
    CONSA_CHECK(p.has("factor"), p.source(), ": rope type 'linear' needs 'factor'");
    rope.factor = p.number("factor", 1.0);
    return rope;
  }
  if (rope.type == "llama3") {
    for (const char* key : {"factor", "low_freq_factor", "high_freq_factor",
                            "original_max_position_embeddings"})
      CONSA_CHECK(p.has(key), p.source(), ": rope type 'llama3' needs '", key, "'");
    rope.factor = p.number("factor", 1.0);
    rope.low_freq_factor = p.number("low_freq_factor", 1.0);
    rope.high_freq_factor = p.number("high_freq_factor", 4.0);
    rope.original_max_position_embeddings = p.positive_int("original_max_position_embeddings");
    CONSA_CHECK(rope.high_freq_factor > rope.low_freq_factor, p.source(),
                ": llama3 high_freq_factor must exceed low_freq_factor");
    return rope;
  }
  fail(p.source(), ": unsupported rope type '", rope.type, "'; supported: ", kRopeTypes);
}

std::vector<int64_t> parse_layer_windows(const ConfigReader& r, Architecture arch,
                                         int64_t num_layers) {
  std::vector<int64_t> windows(num_layers, 0);
  const int64_t window = r.has("sliding_window") ? r.positive_int("sliding_window") : 0;
  if (r.has("layer_types")) {
    const json& types = r.at("layer_types");
    CONSA_CHECK(types.is_array() && static_cast<int64_t>(types.size()) == num_layers, r.source(),
                ": 'layer_types' must list one type per layer (", num_layers, ")");
    for (int64_t i = 0; i < num_layers; ++i) {
      const std::string type = types[i].is_string() ? types[i].get<std::string>() : types[i].dump();
      if (type == "full_attention") continue;
      CONSA_CHECK(type == "sliding_attention", r.source(), ": layer_types[", i, "] is '", type,
                  "'; supported: full_attention, sliding_attention");
      CONSA_CHECK(window > 0, r.source(), ": layer_types[", i,
                  "] is sliding_attention but 'sliding_window' is not set");
      windows[i] = window;
    }
    return windows;
  }
  if (window == 0) return windows;
  if (arch == Architecture::Mistral) {
    std::fill(windows.begin(), windows.end(), window);
  } else if ((arch == Architecture::Qwen2 || arch == Architecture::Qwen3) &&
             r.boolean("use_sliding_window", false)) {
    const int64_t first = r.positive_int("max_window_layers", num_layers);
    for (int64_t i = first; i < num_layers; ++i) windows[i] = window;
  }
  return windows;
}

}  // namespace

const char* architecture_name(Architecture arch) {
  for (const auto& a : kArchitectures)
    if (a.arch == arch) return a.class_name;
  return "?";
}

const char* model_type_name(Architecture arch) {
  for (const auto& a : kArchitectures)
    if (a.arch == arch) return a.model_type;
  return "?";
}

AttentionSpan ModelConfig::declared_span(int64_t layer, int64_t kv_head) const {
  if (is_hybrid_export()) {
    const int64_t w = hybrid_kv_windows.at(layer).at(kv_head);
    return w == 0 ? AttentionSpan::full() : AttentionSpan::sliding(w, hybrid_sinks);
  }
  return layer_is_sliding(layer) ? AttentionSpan::sliding(layer_window.at(layer)) : AttentionSpan::full();
}

int64_t ModelConfig::hybrid_full_kv_heads(int64_t layer) const {
  const auto& w = hybrid_kv_windows.at(layer);
  return std::count(w.begin(), w.end(), int64_t{0});
}

std::vector<int64_t> ModelConfig::hybrid_windows() const {
  std::vector<int64_t> out;
  for (const auto* lists : {&hybrid_kv_windows, &hybrid_head_windows})
    for (const auto& layer : *lists)
      for (int64_t w : layer)
        if (w > 0 && std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
  std::sort(out.rbegin(), out.rend());
  return out;
}

void ModelConfig::validate(const std::string& source) const {
  CONSA_CHECK(num_heads % num_kv_heads == 0, source, ": num_attention_heads (", num_heads,
              ") must be a multiple of num_key_value_heads (", num_kv_heads, ")");
  CONSA_CHECK(head_dim % 2 == 0, source, ": head_dim must be even for RoPE, got ", head_dim);
  CONSA_CHECK(static_cast<int64_t>(layer_window.size()) == num_layers, source,
              ": one attention window per layer expected");
  CONSA_CHECK(rms_norm_eps > 0, source, ": rms_norm_eps must be > 0");
  if (!is_hybrid_export()) {
    CONSA_CHECK(hybrid_head_windows.empty(), source, ": consa.head_windows needs the KV groups' windows");
    return;
  }
  CONSA_CHECK(static_cast<int64_t>(hybrid_kv_windows.size()) == num_layers && hybrid_sinks >= 0, source,
              ": consa's layout needs one list of KV-group windows per layer and sinks >= 0");
  for (int64_t l = 0; l < num_layers; ++l) {
    const auto& kv = hybrid_kv_windows[l];
    CONSA_CHECK(static_cast<int64_t>(kv.size()) == num_kv_heads, source, ": consa.kv_head_windows[", l, "] has ",
                kv.size(), " entries, expected one per KV head (", num_kv_heads, ")");
    for (size_t g = 0; g < kv.size(); ++g)
      CONSA_CHECK(kv[g] >= 0 && (g == 0 || kv[g - 1] == 0 || (kv[g] > 0 && kv[g] <= kv[g - 1])), source,
                  ": consa.kv_head_windows[", l, "] must list the full-cache groups (0) first, then windows "
                  "widest first, got ", join_integers(kv));
    if (hybrid_head_windows.empty()) continue;
    CONSA_CHECK(static_cast<int64_t>(hybrid_head_windows.size()) == num_layers &&
                    static_cast<int64_t>(hybrid_head_windows[l].size()) == num_heads,
                source, ": consa's head layout needs one window per query head (", num_heads, ") in every layer");
    for (int64_t g = 0; g < num_kv_heads; ++g) {
      // A group keeps a full cache iff one of its heads has full attention; a sliding group's
      // cache is its widest head's window.
      int64_t widest = -1;
      bool any_full = false;
      for (int64_t h = g * group_size(); h < (g + 1) * group_size(); ++h) {
        const int64_t w = hybrid_head_windows[l][h];
        CONSA_CHECK(w >= 0, source, ": consa.head_windows[", l, "] holds ", w, "; expected 0 (full) or a window");
        any_full = any_full || w == 0;
        widest = std::max(widest, w);
      }
      CONSA_CHECK(any_full ? kv[g] == 0 : kv[g] == widest, source, ": consa layout of layer ", l, ": KV group ", g,
                  any_full ? " has a full-attention query head, so it needs a full cache (window 0)"
                           : " needs the window of its widest query head (" + std::to_string(widest) + ")",
                  ", got ", kv[g]);
    }
  }
}

ModelConfig parse_hf_config(const json& j, const std::string& source) {
  CONSA_CHECK(j.is_object(), source, ": expected a JSON object");
  ConfigReader r(j, source);
  ModelConfig c;
  c.arch = parse_architecture(r);

  CONSA_CHECK(!r.has("quantization_config"), source,
              ": quantization_config is not supported; consa loads unquantized F32, F16 or BF16 "
              "weights");
  CONSA_CHECK(std::abs(r.number("partial_rotary_factor", 1.0) - 1.0) < 1e-12, source,
              ": partial_rotary_factor ", r.number("partial_rotary_factor", 1.0),
              " is not supported; supported: 1.0 (rotary over the whole head)");
  const std::string act = r.string("hidden_act", "silu");
  CONSA_CHECK(act == "silu", source, ": hidden_act '", act, "' is not supported; supported: silu");
  CONSA_CHECK(!r.boolean("mlp_bias", false), source,
              ": mlp_bias = true is not supported; supported: false");

  c.vocab_size = r.positive_int("vocab_size");
  c.hidden_size = r.positive_int("hidden_size");
  c.intermediate_size = r.positive_int("intermediate_size");
  c.num_layers = r.positive_int("num_hidden_layers");
  c.num_heads = r.positive_int("num_attention_heads");
  c.num_kv_heads = r.positive_int("num_key_value_heads", c.num_heads);
  // These counts size vectors (a window per layer, a span per KV head) before any tensor is read.
  for (const auto& [key, n] : {std::pair<const char*, int64_t>{"num_hidden_layers", c.num_layers},
                               {"num_attention_heads", c.num_heads}, {"num_key_value_heads", c.num_kv_heads}})
    CONSA_CHECK(n <= (int64_t{1} << 20), source, ": key '", key, "' must be at most 2^20, got ", n);
  if (r.has("head_dim")) {
    c.head_dim = r.positive_int("head_dim");
  } else {
    CONSA_CHECK(c.hidden_size % c.num_heads == 0, source, ": hidden_size (", c.hidden_size,
                ") is not a multiple of num_attention_heads (", c.num_heads,
                ") and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.max_position_embeddings = r.positive_int("max_position_embeddings", 4096);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  const bool attention_bias = r.boolean("attention_bias", false);
  c.qkv_bias = c.arch == Architecture::Qwen2 || attention_bias;
  c.o_bias = c.arch != Architecture::Qwen2 && attention_bias;
  c.qk_norm = c.arch == Architecture::Qwen3;
  c.rope = parse_rope(r);
  c.layer_window = parse_layer_windows(r, c.arch, c.num_layers);
  c.dtype = r.string("dtype", r.string("torch_dtype", "float32"));
  if (r.has("consa") && r.at("consa").is_object() && r.at("consa").contains("granularity")) {
    ConfigReader h(r.at("consa"), source + ": consa");
    const std::string granularity = h.string("granularity", "");
    CONSA_CHECK(granularity == "kv_head" || granularity == "head", source, ": consa.granularity '", granularity,
                "' is not a consa hybrid layout; supported: kv_head, head");
    auto int_list = [&](const json& list, const std::string& key) {
      CONSA_CHECK(list.is_array(), source, ": consa.", key, " must be a list with one entry per layer");
      std::vector<int64_t> out;
      for (const auto& n : list) {
        CONSA_CHECK(n.is_number_integer(), source, ": consa.", key, " must hold integers");
        out.push_back(n.get<int64_t>());
      }
      return out;
    };
    auto int_lists = [&](const char* key, const char* what) {
      const json& lists = h.at(key);
      CONSA_CHECK(lists.is_array(), source, ": consa.", key, " must list, per layer, ", what);
      std::vector<std::vector<int64_t>> out;
      for (const auto& layer : lists) out.push_back(int_list(layer, std::string(key) + "[layer]"));
      CONSA_CHECK(static_cast<int64_t>(out.size()) == c.num_layers, source, ": consa.", key, " has ", out.size(),
                  " lists, expected one per layer (", c.num_layers, ")");
      return out;
    };
    const json& sinks = h.at("sinks");
    CONSA_CHECK(sinks.is_null() || (sinks.is_number_integer() && sinks.get<int64_t>() >= 0), source,
                ": consa.sinks must be a non-negative integer, got ", sinks.dump());
    c.hybrid_sinks = sinks.is_null() ? 0 : sinks.get<int64_t>();
    const std::vector<int64_t> full_kv = int_list(h.at("full_attention_kv_heads"), "full_attention_kv_heads");
    CONSA_CHECK(static_cast<int64_t>(full_kv.size()) == c.num_layers, source,
                ": consa.full_attention_kv_heads needs one count per layer (", c.num_layers, ")");
    std::vector<std::vector<int64_t>> full_heads;
    if (granularity == "head") full_heads = int_lists("full_attention_heads", "the full-attention query heads");
    const int64_t window = h.positive_int("window");
    const bool several = h.has("windows") || h.has("kv_head_windows") || h.has("head_windows");
    std::vector<int64_t> listed_windows;
    if (several) {
      // Several windows: each group's and (head granularity) each query head's own.
      CONSA_CHECK(h.has("windows") && h.has("kv_head_windows") && (granularity == "head") == h.has("head_windows"),
                  source, ": a consa layout of several windows needs windows and kv_head_windows, and head_windows "
                  "under granularity head only");
      listed_windows = int_list(h.at("windows"), "windows");
      c.hybrid_kv_windows = int_lists("kv_head_windows", "each stored KV group's window (0: full cache)");
      if (granularity == "head") c.hybrid_head_windows = int_lists("head_windows", "each query head's window (0: full attention)");
    } else {
      // One window: the first full_attention_kv_heads[l] groups keep a full cache, and in those
      // the query heads not listed in full_attention_heads attend over the window.
      for (int64_t l = 0; l < c.num_layers; ++l) {
        CONSA_CHECK(full_kv[l] >= 0 && full_kv[l] <= c.num_kv_heads, source,
                    ": consa.full_attention_kv_heads entries must be in [0, ", c.num_kv_heads, "], got ", full_kv[l]);
        std::vector<int64_t> kv(c.num_kv_heads, window);
        std::fill(kv.begin(), kv.begin() + full_kv[l], 0);
        c.hybrid_kv_windows.push_back(kv);
        if (granularity != "head") continue;
        std::vector<int64_t> heads(c.num_heads, window);
        for (int64_t q : full_heads[l]) {
          CONSA_CHECK(q >= 0 && q < full_kv[l] * (c.num_heads / c.num_kv_heads), source,
                      ": consa.full_attention_heads[", l, "] holds ", q,
                      "; full-attention heads must lie in the layer's first full_attention_kv_heads groups");
          heads[q] = 0;
        }
        c.hybrid_head_windows.push_back(heads);
      }
    }
    c.validate(source);
    // The summary keys beside the per-group lists must say the same.
    const std::vector<int64_t> windows = c.hybrid_windows();
    CONSA_CHECK(windows.empty() || windows.front() == window, source, ": consa.window is ", window,
                ", but the widest window in use is ", windows.front());
    CONSA_CHECK(!several || (listed_windows == windows && windows.size() > 1), source, ": consa.windows is [",
                join_integers(listed_windows), "], but kv_head_windows and head_windows use [", join_integers(windows),
                "] (a layout of several windows lists at least two, widest first)");
    for (int64_t l = 0; l < c.num_layers; ++l) {
      CONSA_CHECK(full_kv[l] == c.hybrid_full_kv_heads(l), source, ": consa.full_attention_kv_heads[", l, "] is ",
                  full_kv[l], ", but kv_head_windows lists ", c.hybrid_full_kv_heads(l), " full-cache groups");
      if (granularity != "head") continue;
      std::vector<int64_t> listed = full_heads[l], actual;
      std::sort(listed.begin(), listed.end());
      for (int64_t q = 0; q < c.num_heads; ++q)
        if (c.hybrid_head_windows[l][q] == 0) actual.push_back(q);
      CONSA_CHECK(listed == actual, source, ": consa.full_attention_heads[", l, "] lists ", join_integers(listed),
                  ", but head_windows gives full attention to ", join_integers(actual));
    }
  }
  c.validate(source);
  return c;
}

ModelConfig read_hf_config(const std::string& path) {
  std::string file = path;
  if (fs::is_directory(path)) file = (fs::path(path) / "config.json").string();
  CONSA_CHECK(fs::exists(file), file, ": not found (expected a Hugging Face config.json)");
  json j;
  try {
    j = json::parse(read_text_file(file));
  } catch (const json::exception& e) {
    fail(file, ": not valid JSON: ", e.what());
  }
  return parse_hf_config(j, file);
}

HfClass hf_class(const ModelConfig& c) {
  if (c.is_hybrid_export()) return {kHybridArchitecture, kHybridModelType};
  const int64_t sliding = std::count_if(c.layer_window.begin(), c.layer_window.end(), [](int64_t w) { return w > 0; });
  const bool llama_like = c.arch == Architecture::Llama || c.arch == Architecture::Mistral;
  if (sliding == 0 || !llama_like) return {architecture_name(c.arch), model_type_name(c.arch)};
  // Llama and Mistral classes have no per-layer types; Mistral's one window covers every layer.
  // Neither Mistral nor Ministral has attention biases.
  if (c.qkv_bias || c.o_bias) return {kHybridArchitecture, kHybridModelType};
  if (sliding == c.num_layers) return {architecture_name(Architecture::Mistral), model_type_name(Architecture::Mistral)};
  return {kMinistral.class_name, kMinistral.model_type};
}

json to_hf_config(const ModelConfig& c) {
  json rope = {{"rope_type", c.rope.type}, {"rope_theta", c.rope.theta}};
  if (c.rope.type != "default") rope["factor"] = c.rope.factor;
  if (c.rope.type == "llama3") {
    rope["low_freq_factor"] = c.rope.low_freq_factor;
    rope["high_freq_factor"] = c.rope.high_freq_factor;
    rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
  }
  const HfClass declared = hf_class(c);
  json j = {
      {"architectures", {declared.architecture}},
      {"model_type", declared.model_type},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"hidden_act", "silu"},
      {"rms_norm_eps", c.rms_norm_eps},
      {"max_position_embeddings", c.max_position_embeddings},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"rope_parameters", rope},
      // Older transformers read these two instead of rope_parameters.
      {"rope_theta", c.rope.theta},
      {"rope_scaling", c.rope.type == "default" ? json(nullptr) : rope},
      {"dtype", c.dtype},
      {"torch_dtype", c.dtype},
  };
  if (c.arch != Architecture::Qwen2) j["attention_bias"] = c.o_bias;
  const bool hybrid = declared.architecture == std::string(kHybridArchitecture);
  if (hybrid) {
    // Stock transformers cannot express this layout: the config names consa's own class, so it
    // is refused there (or loaded through the export's remote code), never run as dense.
    j["consa"] = {{"base_architecture", architecture_name(c.arch)}, {"base_model_type", model_type_name(c.arch)}};
    // The code consa writes beside config.json (src/export/hf_remote/).
    j["auto_map"] = {{"AutoConfig", "configuration_consa.ConsaHybridConfig"},
                     {"AutoModelForCausalLM", "modeling_consa.ConsaHybridForCausalLM"}};
    if (c.is_hybrid_export()) {
      const bool heads = !c.hybrid_head_windows.empty();
      const std::vector<int64_t> windows = c.hybrid_windows();
      json& h = j["consa"];
      h["granularity"] = heads ? "head" : "kv_head";
      h["window"] = windows.empty() ? 1 : windows.front();  // no sliding unit: any window
      h["sinks"] = c.hybrid_sinks;
      std::vector<int64_t> full_kv;
      for (int64_t l = 0; l < c.num_layers; ++l) full_kv.push_back(c.hybrid_full_kv_heads(l));
      h["full_attention_kv_heads"] = full_kv;
      if (heads) {
        json full_heads = json::array();
        for (const auto& layer : c.hybrid_head_windows) {
          std::vector<int64_t> full;
          for (size_t q = 0; q < layer.size(); ++q)
            if (layer[q] == 0) full.push_back(static_cast<int64_t>(q));
          full_heads.push_back(full);
        }
        h["full_attention_heads"] = full_heads;
      }
      // One window is said by the keys above; several need each group's and head's own.
      if (windows.size() > 1) {
        h["windows"] = windows;
        h["kv_head_windows"] = c.hybrid_kv_windows;
        if (heads) h["head_windows"] = c.hybrid_head_windows;
      }
    }
  }
  int64_t window = 0;
  bool any_sliding = false;
  for (int64_t w : c.layer_window) {
    if (w > 0) {
      CONSA_CHECK(window == 0 || window == w, "config: transformers supports one sliding_window "
                  "per model, got ", window, " and ", w);
      window = w;
      any_sliding = true;
    }
  }
  if (any_sliding) {
    // Mistral's one sliding_window covers every layer. transformers 5 loads a mistral config
    // that lists layer_types as Ministral, so the declared class would not be the one loaded.
    if (declared.model_type != model_type_name(Architecture::Mistral)) {
      json types = json::array();
      for (int64_t w : c.layer_window) types.push_back(w > 0 ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
    }
    j["sliding_window"] = window;
    // Qwen2/Qwen3 configs drop sliding_window unless this is set.
    if (c.arch == Architecture::Qwen2 || c.arch == Architecture::Qwen3) j["use_sliding_window"] = true;
  } else {
    j["sliding_window"] = nullptr;
  }
  return j;
}

}  // namespace consa
