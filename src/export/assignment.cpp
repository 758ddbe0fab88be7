#include "consa/export/assignment.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <numeric>
#include <ostream>
#include <sstream>
#include <tuple>

#include "consa/core/atomic_file.h"
#include "consa/core/checked_math.h"
#include "consa/core/device.h"
#include "consa/core/enum_names.h"
#include "consa/core/error.h"

namespace consa {
using json = nlohmann::json;

namespace {
constexpr EnumName<BinarizeRule> kRules[] = {{BinarizeRule::Threshold, "threshold"}, {BinarizeRule::Exact, "exact"}};

// An enum-valued key of assignment.json through its table's parser; the table's message names
// no file, so the refusal is prefixed with the file and the key.
template <typename Parse>
auto parse_key(Parse parse, const json& j, const char* key, const std::string& source) {
  const std::string name = j.at(key).get<std::string>();
  try {
    return parse(name);
  } catch (const Error& e) {
    fail(source, ": ", key, ": ", e.what());
  }
}

// An integer of assignment.json: a float (1.5, 1e20) is refused, not truncated, and a cast of
// one beyond int64 would be undefined. `where` names it in the message ("model.num_heads").
int64_t integer_key(const json& j, const char* key, const std::string& where, const std::string& source) {
  const json& v = j.at(key);
  CONSA_CHECK(v.is_number_integer() && (!v.is_number_unsigned() || fits_int64(v.get<uint64_t>())), source, ": ",
              where, " must be an integer, got ", v.dump());
  return v.get<int64_t>();
}

}  // namespace

BinarizeRule parse_binarize_rule(const std::string& name) { return parse_enum(kRules, name, "binarization rule"); }
const char* binarize_rule_name(BinarizeRule rule) { return enum_name(kRules, rule); }

double Assignment::achieved_sparsity() const {
  int64_t swa = 0, total = 0;
  for (const auto& layer : full)
    for (bool f : layer) swa += !f, ++total;
  return total ? static_cast<double>(swa) / total : 0.0;
}

bool Assignment::kv_head_full(int64_t layer, int64_t kv_head) const { return kv_head_span(layer, kv_head).is_full(); }

AttentionSpan Assignment::unit_span(int64_t layer, int64_t u) const {
  if (full.at(layer).at(u)) return AttentionSpan::full();
  const int64_t w = windows.empty() ? 0 : windows.at(layer).at(u);
  return w > 0 ? AttentionSpan::sliding(w, swa.sinks) : swa;
}

AttentionSpan Assignment::kv_head_span(int64_t layer, int64_t kv_head) const {
  switch (unit) {
    case GateUnit::Layer: return unit_span(layer, 0);
    case GateUnit::KvHead: return unit_span(layer, kv_head);
    case GateUnit::Head: {
      const int64_t group = num_heads / num_kv_heads;
      AttentionSpan widest = unit_span(layer, kv_head * group);
      for (int64_t h = kv_head * group + 1; h < (kv_head + 1) * group && !widest.is_full(); ++h) {
        const AttentionSpan s = unit_span(layer, h);
        if (s.is_full() || s.window > widest.window) widest = s;
      }
      return widest;
    }
  }
  return AttentionSpan::full();
}

std::vector<int64_t> Assignment::local_windows() const {
  std::vector<int64_t> out;
  for (size_t l = 0; l < full.size(); ++l)
    for (size_t u = 0; u < full[l].size(); ++u) {
      const AttentionSpan s = unit_span(static_cast<int64_t>(l), static_cast<int64_t>(u));
      if (!s.is_full() && std::find(out.begin(), out.end(), s.window) == out.end()) out.push_back(s.window);
    }
  if (out.empty()) out.push_back(swa.window);
  std::sort(out.rbegin(), out.rend());
  return out;
}

std::string Assignment::describe_windows() const {
  const std::vector<int64_t> local = local_windows();
  if (local.size() == 1) return swa.describe();
  std::string s = "swa(W=";
  for (size_t k = 0; k < local.size(); ++k) s += (k ? "|" : "") + std::to_string(local[k]);
  if (swa.sinks > 0) s += ",S=" + std::to_string(swa.sinks);
  return s + ")";
}

namespace {
// a * b for the KV-cache figures: both non-negative, and the product refused beyond int64.
int64_t kv_product(int64_t a, int64_t b, const Assignment& asg, int64_t context) {
  uint64_t out = 0;
  CONSA_CHECK(a >= 0 && b >= 0 && checked_multiply(static_cast<uint64_t>(a), static_cast<uint64_t>(b), &out) &&
                  fits_int64(out),
              "assignment: the KV cache of ", asg.num_layers, " layers x ", asg.num_kv_heads, " KV heads x head_dim ",
              asg.head_dim, " at ", context, " tokens is more bytes than int64 counts");
  return static_cast<int64_t>(out);
}
}  // namespace

std::pair<int64_t, int64_t> Assignment::kv_cache_bytes(int64_t context, int64_t bytes_per_element) const {
  const int64_t per_position = kv_product(kv_product(2, head_dim, *this, context), bytes_per_element, *this, context);
  const int64_t fa_head = kv_product(context, per_position, *this, context);
  int64_t fa_heads = 0;
  uint64_t swa_bytes = 0;
  for (int64_t l = 0; l < num_layers; ++l)
    for (int64_t g = 0; g < num_kv_heads; ++g) {
      const AttentionSpan span = kv_head_span(l, g);
      if (span.is_full()) {
        ++fa_heads;
        continue;
      }
      // min(context, window + sinks) without forming a sum that may overflow.
      const int64_t positions =
          span.window >= context || span.sinks >= context - span.window ? context : span.window + span.sinks;
      const uint64_t head = static_cast<uint64_t>(kv_product(std::max<int64_t>(positions, 0), per_position, *this, context));
      CONSA_CHECK(checked_add(swa_bytes, head, &swa_bytes) && fits_int64(swa_bytes), "assignment: the KV cache of ",
                  num_layers, " layers x ", num_kv_heads, " KV heads x head_dim ", head_dim, " at ", context,
                  " tokens is more bytes than int64 counts");
    }
  return {kv_product(fa_heads, fa_head, *this, context), static_cast<int64_t>(swa_bytes)};
}

int64_t Assignment::dense_kv_cache_bytes(int64_t context, int64_t bytes_per_element) const {
  const int64_t per_position = kv_product(kv_product(2, head_dim, *this, context), bytes_per_element, *this, context);
  return kv_product(kv_product(num_layers, num_kv_heads, *this, context), kv_product(context, per_position, *this, context),
                    *this, context);
}

json Assignment::to_json(int64_t kv_context, int64_t bytes_per_element) const {
  json layers = json::array();
  for (size_t l = 0; l < full.size(); ++l) {
    json types = json::array();
    json unit_windows = json::array();
    for (size_t u = 0; u < full[l].size(); ++u) {
      types.push_back(full[l][u] ? "full" : "sliding");
      unit_windows.push_back(unit_span(static_cast<int64_t>(l), static_cast<int64_t>(u)).window);
    }
    layers.push_back({{"layer", l}, {"units", types}, {"windows", unit_windows}, {"scores", scores[l]}});
  }
  auto [fa, sw] = kv_cache_bytes(kv_context, bytes_per_element);
  json j = {{"schema", "consa.assignment"},
          {"version", kAssignmentSchemaVersion},
          {"model",
           {{"architecture", architecture},
            {"num_layers", num_layers},
            {"num_heads", num_heads},
            {"num_kv_heads", num_kv_heads},
            {"head_dim", head_dim},
            {"weights_checksum", weights_checksum}}},
          {"granularity", gate_unit_name(unit)},
          {"window", swa.window},
          {"windows", local_windows()},
          {"sinks", swa.sinks},
          {"method", method},
          {"rule", binarize_rule_name(rule)},
          {"target_sparsity", target},
          {"achieved_sparsity", achieved_sparsity()},
          {"layers", layers},
          {"kv_cache",
           {{"context", kv_context},
            {"bytes_per_element", bytes_per_element},
            {"full_attention_bytes", fa},
            {"sliding_window_bytes", sw},
            {"dense_bytes", dense_kv_cache_bytes(kv_context, bytes_per_element)}}}};
  if (kv_budget.defined()) {
    auto [budget_fa, budget_sw] = kv_cache_bytes(kv_budget.context, kv_budget.element_bytes);
    j["kv_budget"] = {{"bytes", kv_budget.bytes},
                      {"context", kv_budget.context},
                      {"element_bytes", kv_budget.element_bytes},
                      {"used_bytes", budget_fa + budget_sw},
                      {"within", budget_fa + budget_sw <= kv_budget.bytes}};
  }
  return j;
}

Assignment Assignment::from_json(const json& j, const std::string& source) {
  CONSA_CHECK(j.is_object() && j.contains("schema") && j.at("schema") == "consa.assignment", source,
              ": not a consa assignment (missing \"schema\": \"consa.assignment\")");
  const json version = j.contains("version") ? j.at("version") : json(0);
  CONSA_CHECK(version == 1 || version == kAssignmentSchemaVersion, source, ": assignment schema version ",
              version.dump(), ", this consa reads versions 1 and ", kAssignmentSchemaVersion);
  const bool per_unit_windows = version == 2;
  Assignment a;
  a.schema_version = version.get<int>();
  try {
    const json& m = j.at("model");
    a.architecture = m.at("architecture").get<std::string>();
    a.num_layers = integer_key(m, "num_layers", "model.num_layers", source);
    a.num_heads = integer_key(m, "num_heads", "model.num_heads", source);
    a.num_kv_heads = integer_key(m, "num_kv_heads", "model.num_kv_heads", source);
    a.head_dim = integer_key(m, "head_dim", "model.head_dim", source);
    a.weights_checksum = m.at("weights_checksum").get<std::string>();
    a.unit = parse_key(parse_gate_unit, j, "granularity", source);
    a.swa = AttentionSpan::sliding(integer_key(j, "window", "window", source), integer_key(j, "sinks", "sinks", source));
    a.rule = parse_key(parse_binarize_rule, j, "rule", source);
    a.method = j.value("method", std::string("consa"));
    a.target = j.at("target_sparsity").get<double>();
    if (j.contains("kv_budget")) {  // optional: assignments made under constraint.kv_budget
      const json& b = j.at("kv_budget");
      a.kv_budget.bytes = integer_key(b, "bytes", "kv_budget.bytes", source);
      a.kv_budget.context = integer_key(b, "context", "kv_budget.context", source);
      a.kv_budget.element_bytes = integer_key(b, "element_bytes", "kv_budget.element_bytes", source);
      CONSA_CHECK(a.kv_budget.bytes > 0 && a.kv_budget.context > 0 && a.kv_budget.element_bytes > 0, source,
                  ": kv_budget.bytes, context and element_bytes must be > 0");
    }
    for (const auto& layer : j.at("layers")) {
      std::vector<bool> f;
      for (const auto& t : layer.at("units")) {
        const std::string s = t.get<std::string>();
        CONSA_CHECK(s == "full" || s == "sliding", source, ": unit type '", s, "'; allowed: full, sliding");
        f.push_back(s == "full");
      }
      a.full.push_back(f);
      a.scores.push_back(layer.at("scores").get<std::vector<double>>());
      if (per_unit_windows) {
        std::vector<int64_t> w;
        const json& listed = layer.at("windows");
        CONSA_CHECK(listed.is_array(), source, ": layers[", a.full.size() - 1, "].windows must be a list, got ",
                    listed.dump());
        for (const auto& v : listed) {
          CONSA_CHECK(v.is_number_integer() && (!v.is_number_unsigned() || fits_int64(v.get<uint64_t>())), source,
                      ": layers[", a.full.size() - 1, "].windows must list integers, got ", v.dump());
          w.push_back(v.get<int64_t>());
        }
        a.windows.push_back(w);
      }
    }
  } catch (const json::exception& e) {
    fail(source, ": malformed assignment: ", e.what());
  }
  // Head counts beyond any model's: they would also make the KV-cache figures loop for ever.
  constexpr int64_t kMaxHeads = 1 << 16;
  CONSA_CHECK(a.num_layers > 0 && a.head_dim > 0, source, ": model.num_layers and model.head_dim must be > 0, got ",
              a.num_layers, " and ", a.head_dim);
  CONSA_CHECK(a.num_heads > 0 && a.num_heads <= kMaxHeads && a.num_kv_heads > 0 && a.num_heads % a.num_kv_heads == 0,
              source, ": model.num_heads (", a.num_heads, ") must be in [1, ", kMaxHeads,
              "] and a multiple of model.num_kv_heads (", a.num_kv_heads, ")");
  CONSA_CHECK(a.swa.window > 0 && a.swa.sinks >= 0, source, ": window must be > 0 and sinks >= 0, got ", a.swa.window,
              " and ", a.swa.sinks);
  CONSA_CHECK(static_cast<int64_t>(a.full.size()) == a.num_layers, source, ": ", a.full.size(),
              " layers listed, model has ", a.num_layers);
  const int64_t units = consa::units_per_layer(a.unit, a.num_heads, a.num_kv_heads);
  for (size_t l = 0; l < a.full.size(); ++l)
    CONSA_CHECK(static_cast<int64_t>(a.full[l].size()) == units && a.scores[l].size() == a.full[l].size(), source,
                ": layers[", l, "] has ", a.full[l].size(), " units and ", a.scores[l].size(),
                " scores; each layer needs ", units, " units for ", gate_unit_name(a.unit), " granularity, a score each");
  if (per_unit_windows) {
    int64_t widest = 0;
    for (size_t l = 0; l < a.full.size(); ++l) {
      CONSA_CHECK(a.windows[l].size() == a.full[l].size(), source, ": layers[", l, "] has ", a.full[l].size(),
                  " units and ", a.windows[l].size(), " windows; each unit needs one (0 where full)");
      for (size_t u = 0; u < a.full[l].size(); ++u) {
        const int64_t w = a.windows[l][u];
        CONSA_CHECK(a.full[l][u] ? w == 0 : w > 0, source, ": layers[", l, "].windows[", u, "] is ", w, " for a ",
                    a.full[l][u] ? "full unit (expected 0)" : "sliding unit (expected a window > 0)");
        widest = std::max(widest, w);
      }
    }
    CONSA_CHECK(widest == 0 || widest == a.swa.window, source, ": window is ", a.swa.window,
                " but the widest window the units use is ", widest);
  }
  return a;
}

void Assignment::save(const std::string& path, int64_t kv_context, int64_t bytes_per_element) const {
  AtomicFileWriter out(path);
  out.stream() << to_json(kv_context, bytes_per_element).dump(2) << "\n";
  out.commit();
}

Assignment Assignment::load(const std::string& path) {
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

void Assignment::check_fits(const ModelConfig& c, const std::string& source) const {
  CONSA_CHECK(c.num_layers == num_layers && c.num_heads == num_heads && c.num_kv_heads == num_kv_heads &&
                  c.head_dim == head_dim && static_cast<int64_t>(full.size()) == num_layers,
              source.empty() ? std::string("assignment") : source, ": made for ", num_layers, " layers x ", num_heads,
              "/", num_kv_heads, " heads x ", head_dim, " but the model has ", c.num_layers, " x ", c.num_heads, "/",
              c.num_kv_heads, " x ", c.head_dim);
}

void Assignment::apply(CausalLM& model) const {
  check_fits(model->config(), "");
  for (int64_t l = 0; l < num_layers; ++l) {
    SelfAttentionImpl& attn = model->attention(l);
    if (unit == GateUnit::Head) {
      std::vector<AttentionSpan> heads, local;
      for (int64_t h = 0; h < num_heads; ++h) heads.push_back(unit_span(l, h));
      for (int64_t window : local_windows()) local.push_back(AttentionSpan::sliding(window, swa.sinks));
      if (local.empty()) local.push_back(swa);
      attn.set_head_spans(heads, local, model->device());
      continue;
    }
    attn.set_gate_weights({});
    attn.narrower_spans.clear();
    for (int64_t g = 0; g < num_kv_heads; ++g) attn.group_spans[g] = kv_head_span(l, g);
  }
}

Assignment Assignment::for_model(const ModelConfig& config) {
  Assignment a;
  a.architecture = architecture_name(config.arch);
  a.num_layers = config.num_layers;
  a.num_heads = config.num_heads;
  a.num_kv_heads = config.num_kv_heads;
  a.head_dim = config.head_dim;
  return a;
}

std::string weights_checksum(CausalLM& model) {
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& item : model->named_parameters()) params.emplace_back(item.key(), item.value());
  std::sort(params.begin(), params.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  uint64_t h = 1469598103934665603ull;
  auto feed = [&](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  at::NoGradGuard no_grad;
  for (const auto& [name, t] : params) {
    feed(reinterpret_cast<const uint8_t*>(name.data()), name.size());
    at::Tensor c = t.detach().cpu().contiguous();
    feed(static_cast<const uint8_t*>(c.data_ptr()), c.numel() * c.element_size());
  }
  std::ostringstream s;
  s << "fnv1a64:" << std::hex << std::setw(16) << std::setfill('0') << h;
  return s.str();
}

void print_assignment(std::ostream& out, const Assignment& a, const std::string& source, int64_t kv_context) {
  int64_t fa = 0, sw = 0;
  double dense = 0;
  try {
    std::tie(fa, sw) = a.kv_cache_bytes(kv_context, 2);
    dense = static_cast<double>(a.dense_kv_cache_bytes(kv_context, 2));
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
  auto mib = [](double b) { return b / (1024.0 * 1024.0); };
  int64_t swa_units = 0, total = 0;
  for (const auto& l : a.full)
    for (bool f : l) swa_units += !f, ++total;
  out << "assignment    " << source << " (schema " << a.schema_version << ")\n"
      << "model         " << a.architecture << ", " << a.num_layers << " layers, " << a.num_heads << " query / "
      << a.num_kv_heads << " KV heads, head_dim " << a.head_dim << ", weights " << a.weights_checksum << "\n"
      << "units         " << gate_unit_name(a.unit) << ", SWA " << a.describe_windows() << ", rule "
      << binarize_rule_name(a.rule) << "\n"
      << "sparsity      target " << a.target << (a.multi_window() ? " of the savable KV bytes" : "") << ", achieved "
      << a.achieved_sparsity() << " (" << swa_units << " of " << total << " units on SWA)\n"
      << std::fixed << std::setprecision(2) << "KV cache      " << kv_context << " tokens, bf16: FA " << mib(fa)
      << " MiB + SWA " << mib(sw) << " MiB = " << mib(fa + sw) << " MiB (dense " << mib(dense) << " MiB, "
      << std::setprecision(1) << 100.0 * (fa + sw) / dense << "%)\n";
  if (a.kv_budget.defined()) {
    int64_t budget_fa = 0, budget_sw = 0;
    try {
      std::tie(budget_fa, budget_sw) = a.kv_cache_bytes(a.kv_budget.context, a.kv_budget.element_bytes);
    } catch (const Error& e) {
      fail(source, ": ", e.what());
    }
    const int64_t used = budget_fa + budget_sw;
    out << "KV budget     " << a.kv_budget.bytes << " bytes at " << a.kv_budget.context << " tokens ("
        << a.kv_budget.element_bytes << " bytes per element): uses " << used << " bytes, " << std::setprecision(1)
        << 100.0 * static_cast<double>(used) / static_cast<double>(a.kv_budget.bytes) << "%"
        << (used <= a.kv_budget.bytes ? "" : ", OVER the budget") << "\n";
  }
  out.unsetf(std::ios::fixed);
  // One window: S. Several: a digit per window, 1 the widest.
  const std::vector<int64_t> local = a.local_windows();
  if (local.size() == 1) {
    out << "layer  units (F full, S sliding)\n";
  } else {
    out << "windows      ";
    for (size_t k = 0; k < local.size(); ++k)
      out << (k ? ", " : " ") << k + 1 << " = " << AttentionSpan::sliding(local[k], a.swa.sinks).describe();
    out << "\nlayer  units (F full, 1-" << local.size() << " the windows above)\n";
  }
  for (size_t l = 0; l < a.full.size(); ++l) {
    out << std::setw(5) << l << "  ";
    for (size_t u = 0; u < a.full[l].size(); ++u) {
      const AttentionSpan span = a.unit_span(static_cast<int64_t>(l), static_cast<int64_t>(u));
      if (span.is_full()) {
        out << 'F';
      } else if (local.size() == 1) {
        out << 'S';
      } else {
        const size_t k = std::find(local.begin(), local.end(), span.window) - local.begin();
        out << (k < 9 ? static_cast<char>('1' + k) : '+');
      }
    }
    out << "\n";
  }
}

}  // namespace consa

namespace consa {

Assignment declared_assignment(CausalLM& model, const std::string& source) {
  const ModelConfig& c = model->config();
  Assignment a = Assignment::for_model(c);
  a.rule = BinarizeRule::Exact;
  a.method = "declared";
  if (c.is_hybrid_export()) {
    a.unit = c.hybrid_head_windows.empty() ? GateUnit::KvHead : GateUnit::Head;
    const std::vector<int64_t> windows = c.hybrid_windows();
    // An export with no unit on SWA has no window; any positive value keeps the SWA part empty.
    a.swa = AttentionSpan::sliding(windows.empty() ? 1 : windows.front(), c.hybrid_sinks);
    const auto& unit_windows = a.unit == GateUnit::KvHead ? c.hybrid_kv_windows : c.hybrid_head_windows;
    for (const auto& layer : unit_windows) {
      std::vector<bool> full;
      for (int64_t w : layer) full.push_back(w == 0);
      a.full.push_back(full);
    }
    if (windows.size() > 1) a.windows = unit_windows;
  } else {
    a.unit = GateUnit::Layer;
    int64_t window = 0;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const int64_t w = c.layer_window[l];
      CONSA_CHECK(w == 0 || window == 0 || w == window, source, ": layers use sliding windows ", window, " and ", w,
                  "; a hybrid export has one window");
      if (w > 0) window = w;
      a.full.push_back({w == 0});
    }
    // An all-full model has no window; any positive value keeps the SWA part empty.
    a.swa = AttentionSpan::sliding(window > 0 ? window : 1, 0);
  }
  for (const auto& layer : a.full) {
    std::vector<double> scores;
    for (bool f : layer) scores.push_back(f ? 1.0 : -1.0);  // no learned gates: +-1 by the threshold rule
    a.scores.push_back(scores);
  }
  a.target = a.achieved_sparsity();
  a.weights_checksum = weights_checksum(model);
  return a;
}

}  // namespace consa
