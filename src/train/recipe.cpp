#include "consa/train/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "consa/core/byte_size.h"
#include "consa/core/error.h"
#include "consa/gate/hard_concrete.h"

namespace consa {

namespace {

// One mapping of the recipe. Every typed read records the key, so finish() can refuse keys
// nobody asked for, listing the allowed ones.
class Section {
 public:
  Section(YAML::Node node, std::string path, std::string file)
      : node_(std::move(node)), path_(std::move(path)), file_(std::move(file)) {
    CONSA_CHECK(!node_ || node_.IsNull() || node_.IsMap(), file_, ": ", path_.empty() ? "the recipe" : path_,
                " must be a mapping of keys");
    if (!node_ || !node_.IsMap()) return;
    // YAML reads a repeated key silently, keeping the first: refuse it before anything is read.
    std::vector<std::string> seen;
    for (const auto& item : node_) {
      // YAML also allows null, list and mapping keys; a recipe's keys are names.
      CONSA_CHECK(item.first.IsScalar(), file_, ": ", path_.empty() ? "the recipe" : path_, ": keys must be names, got a ",
                  item.first.IsNull() ? "null" : item.first.IsSequence() ? "list" : "mapping", " key");
      const std::string key = item.first.Scalar();
      CONSA_CHECK(std::find(seen.begin(), seen.end(), key) == seen.end(), file_, ": key '", where(key),
                  "' appears twice; keep one");
      seen.push_back(key);
    }
  }

  Section child(const std::string& key) {
    known_.push_back(key);
    return Section(node_ ? node_[key] : YAML::Node(), where(key), file_);
  }

  std::string text(const std::string& key, const std::string& fallback, const std::vector<std::string>& allowed = {}) {
    YAML::Node v = get(key);
    if (!v) return fallback;
    CONSA_CHECK(v.IsScalar(), file_, ": ", where(key), ": expected a string");
    const std::string s = v.Scalar();
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail(file_, ": ", where(key), ": '", s, "' is not allowed; allowed: ", list);
    }
    return s;
  }

  double number(const std::string& key, double fallback, double lo, double hi) {
    YAML::Node v = get(key);
    double x = fallback;
    if (v) {
      try {
        x = v.as<double>();
      } catch (const YAML::Exception&) {
        fail(file_, ": ", where(key), ": expected a number, got '", describe(v), "'");
      }
    }
    CONSA_CHECK(x >= lo && x <= hi, file_, ": ", where(key), ": must be in [", lo, ", ", hi, "], got ", x);
    return x;
  }

  int64_t integer(const std::string& key, int64_t fallback, int64_t lo, int64_t hi = INT64_MAX) {
    YAML::Node v = get(key);
    int64_t x = fallback;
    if (v) {
      try {
        x = v.as<int64_t>();
      } catch (const YAML::Exception&) {
        fail(file_, ": ", where(key), ": expected an integer, got '", describe(v), "'");
      }
    }
    CONSA_CHECK(x >= lo && x <= hi, file_, ": ", where(key), ": must be in [", lo, ", ",
                hi == INT64_MAX ? std::string("inf") : std::to_string(hi), "], got ", x);
    return x;
  }

  bool boolean(const std::string& key, bool fallback) {
    YAML::Node v = get(key);
    if (!v) return fallback;
    try {
      return v.as<bool>();
    } catch (const YAML::Exception&) {
      fail(file_, ": ", where(key), ": expected true or false, got '", describe(v), "'");
    }
  }

  std::vector<std::string> texts(const std::string& key, const std::vector<std::string>& fallback) {
    YAML::Node v = get(key);
    if (!v) return fallback;
    CONSA_CHECK(v.IsSequence(), file_, ": ", where(key), ": expected a list");
    std::vector<std::string> out;
    for (const auto& item : v) {
      CONSA_CHECK(item.IsScalar(), file_, ": ", where(key), ": expected a list of strings");
      out.push_back(item.Scalar());
    }
    return out;
  }

  // The value of `key` as it stands (undefined when absent), for entries of their own shape.
  YAML::Node value(const std::string& key) { return get(key); }

  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& item : node_) {
      const std::string key = item.first.Scalar();  // names: checked when the section was made
      if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
      std::string list;
      for (const auto& k : known_) list += (list.empty() ? "" : ", ") + k;
      fail(file_, ": unknown key '", where(key), "'; allowed", path_.empty() ? "" : " in " + path_, ": ", list);
    }
  }

  std::string where(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  const std::string& file() const { return file_; }

 private:
  YAML::Node get(const std::string& key) {
    known_.push_back(key);
    if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    YAML::Node v = node_[key];
    if (!v || v.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
    return v;
  }
  static std::string describe(const YAML::Node& v) {
    if (v.IsScalar()) return v.Scalar();
    return v.IsSequence() ? "a list" : "a mapping";
  }

  YAML::Node node_;
  std::string path_, file_;
  std::vector<std::string> known_;
};

constexpr double kInf = 1e300;

// data.shards: each entry a path (format auto) or {path, format, dtype}.
std::vector<TokenSourceSpec> parse_token_sources(Section& data) {
  const std::string key = data.where("shards");
  YAML::Node list = data.value("shards");
  if (!list) return {};
  CONSA_CHECK(list.IsSequence(), data.file(), ": ", key, ": expected a list of paths or {path, format, dtype} mappings");
  std::vector<TokenSourceSpec> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    const std::string where = key + "[" + std::to_string(i) + "]";
    if (item.IsScalar()) {
      CONSA_CHECK(!item.Scalar().empty(), data.file(), ": ", where, ": empty path");
      out.emplace_back(item.Scalar());
      continue;
    }
    CONSA_CHECK(item.IsMap(), data.file(), ": ", where, ": expected a path or a mapping {path, format, dtype}");
    Section entry(item, where, data.file());
    TokenSourceSpec spec;
    spec.path = entry.text("path", "");
    CONSA_CHECK(!spec.path.empty(), data.file(), ": ", where, ".path: required");
    spec.format = parse_token_format(entry.text("format", "auto", {"auto", "consa", "megatron", "raw"}));
    const std::string dtype = entry.text("dtype", "", {"uint16", "uint32"});
    entry.finish();
    if (spec.format == TokenFormat::Raw) {
      CONSA_CHECK(!dtype.empty(), data.file(), ": ", where, ".dtype: required for format raw; allowed: uint16, uint32");
      spec.bytes_per_token = dtype == "uint16" ? 2 : 4;
    } else {
      CONSA_CHECK(dtype.empty(), data.file(), ": ", where, ".dtype: only format raw takes a dtype (",
                  token_format_name(spec.format), " files record their own)");
    }
    out.push_back(spec);
  }
  return out;
}

void apply_override(YAML::Node& root, const std::string& override, const std::string& file) {
  const size_t eq = override.find('=');
  CONSA_CHECK(eq != std::string::npos && eq > 0, "override '", override, "': expected key.sub=value");
  const std::string path = override.substr(0, eq), value = override.substr(eq + 1);
  // An empty value would read as YAML null, that is the key's default: never what was meant.
  CONSA_CHECK(value.find_first_not_of(" \t") != std::string::npos, "override '", override, "': no value after '='; expected ",
              path, "=VALUE");
  std::vector<std::string> parts;
  std::stringstream in(path);
  for (std::string part; std::getline(in, part, '.');) {
    CONSA_CHECK(!part.empty(), "override '", override, "': empty key in '", path, "'");
    parts.push_back(part);
  }
  YAML::Node node = root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = node[parts[i]];
    CONSA_CHECK(!next || next.IsNull() || next.IsMap(), file, ": override '", override, "': '",
                parts[i], "' is not a section");
    if (!next || next.IsNull()) node[parts[i]] = YAML::Node(YAML::NodeType::Map);
    YAML::Node child = node[parts[i]];
    node.reset(child);
  }
  YAML::Node parsed;
  try {
    parsed = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    fail("override '", override, "': value is not valid YAML: ", e.what());
  }
  node[parts.back()] = parsed;
}

Recipe parse(const YAML::Node& root, const std::string& file) {
  Recipe r;
  r.source = file;
  Section top(root, "", file);

  Section model = top.child("model");
  r.model.path = model.text("path", "");
  CONSA_CHECK(!r.model.path.empty(), file, ": model.path: required (a Hugging Face checkpoint directory)");
  r.model.dtype = model.text("dtype", r.model.dtype, {"float32", "bfloat16"});
  r.model.device = model.text("device", r.model.device);
  CONSA_CHECK(r.model.device == "cpu" || r.model.device.rfind("cuda", 0) == 0, file,
              ": model.device: '", r.model.device, "' is not allowed; allowed: cpu, cuda, cuda:N");
  r.model.attention = model.text("attention", r.model.attention, {"auto", "math", "flash"});
  r.model.kernels = model.text("kernels", r.model.kernels, {"auto", "aten", "fused"});
  model.finish();

  Section gates = top.child("gates");
  r.gates.unit = parse_gate_unit(gates.text("unit", "kv_head", {"layer", "kv_head", "head"}));
  r.gates.swa.window = gates.integer("window", 1024, 1);
  r.gates.narrower_windows.clear();
  if (YAML::Node windows = gates.value("windows")) {
    const std::string key = gates.where("windows");
    const bool window_set = static_cast<bool>(gates.value("window"));
    CONSA_CHECK(windows.IsSequence() && windows.size() > 0, file, ": ", key, ": expected a list of windows, e.g. [128, 1024]");
    std::vector<int64_t> list;
    for (const auto& item : windows) {
      int64_t w = 0;
      try {
        w = item.as<int64_t>();
      } catch (const YAML::Exception&) {
        fail(file, ": ", key, ": expected integers, got '", item.IsScalar() ? item.Scalar() : std::string("a list or mapping"), "'");
      }
      CONSA_CHECK(w >= 1, file, ": ", key, ": windows must be >= 1, got ", w);
      CONSA_CHECK(std::find(list.begin(), list.end(), w) == list.end(), file, ": ", key, ": window ", w,
                  " is listed twice");
      list.push_back(w);
    }
    CONSA_CHECK(!window_set || std::find(list.begin(), list.end(), r.gates.swa.window) != list.end(), file,
                ": gates.window ", r.gates.swa.window, " is not among gates.windows; keep one of the two keys");
    std::sort(list.rbegin(), list.rend());  // widest first: the nesting's order
    r.gates.swa.window = list[0];
    r.gates.narrower_windows.assign(list.begin() + 1, list.end());
  }
  r.gates.swa.sinks = gates.integer("sinks", 0, 0);
  HardConcreteOptions& hc = r.gates.hard_concrete;
  hc.beta = gates.number("temperature", hc.beta, 1e-3, 100);
  hc.limit_l = gates.number("limit_l", hc.limit_l, -kInf, -1e-9);
  hc.limit_r = gates.number("limit_r", hc.limit_r, 1 + 1e-9, kInf);
  hc.init_keep = gates.number("init_keep", hc.init_keep, 1e-6, 1 - 1e-6);
  hc.log_alpha_clamp = gates.number("log_alpha_clamp", hc.log_alpha_clamp, 1e-3, 100);
  gates.finish();

  Section constraint = top.child("constraint");
  r.constraint.target = constraint.number("target", r.constraint.target, 0.0, 1.0);
  r.constraint.scope = parse_constraint_scope(constraint.text("scope", "global", {"global", "per_layer"}));
  r.constraint.warmup_steps = constraint.integer("warmup_steps", r.constraint.warmup_steps, 0);
  if (constraint.value("kv_budget")) {
    CONSA_CHECK(!constraint.value("target"), file, ": constraint.target and constraint.kv_budget both set; keep one ",
                "(the budget decides the fraction)");
    Section budget = constraint.child("kv_budget");
    KvBudget& b = r.constraint.kv_budget;
    const std::string bytes = budget.text("bytes", "");
    CONSA_CHECK(!bytes.empty(), file, ": constraint.kv_budget.bytes: required (bytes per sequence, e.g. 2GiB)");
    b.bytes = parse_byte_size(bytes, file + ": constraint.kv_budget.bytes");
    CONSA_CHECK(b.bytes > 0, file, ": constraint.kv_budget.bytes: must be > 0");
    CONSA_CHECK(budget.value("context"), file, ": constraint.kv_budget.context: required (tokens per sequence)");
    b.context = budget.integer("context", 0, 1, int64_t{1} << 40);
    b.element_bytes = budget.integer("element_bytes", b.element_bytes, 1, 8);
    budget.finish();
  }
  constraint.finish();

  Section objective = top.child("objective");
  r.objective.ce = objective.number("ce", r.objective.ce, 0, kInf);
  r.objective.kl = objective.number("kl", r.objective.kl, 0, kInf);
  r.objective.mse = objective.number("mse", r.objective.mse, 0, kInf);
  r.objective.chunked_cross_entropy = objective.boolean("chunked_cross_entropy", r.objective.chunked_cross_entropy);
  r.objective.distill_scored_only = objective.boolean("distill_scored_only", r.objective.distill_scored_only);
  objective.finish();
  CONSA_CHECK(r.objective.ce + r.objective.kl + r.objective.mse > 0, file,
              ": objective: at least one of ce, kl, mse must be > 0");

  Section data = top.child("data");
  r.data.seq_len = data.integer("seq_len", r.data.seq_len, 8);
  r.data.batch_size = data.integer("batch_size", r.data.batch_size, 1);
  r.data.heldout_batches = data.integer("heldout_batches", r.data.heldout_batches, 0);
  r.data.shards = parse_token_sources(data);
  r.data.synthetic_ratio = data.number("synthetic_ratio", r.data.synthetic_ratio, 0.0, 1.0);
  r.data.synthetic_tasks.clear();
  for (const auto& t : data.texts("synthetic_tasks", {"passkey"})) {
    try {
      r.data.synthetic_tasks.push_back(parse_synthetic_task(t));
    } catch (const Error& e) {
      fail(file, ": data.synthetic_tasks: ", e.what());  // the task table's message names no file
    }
  }
  r.data.min_distance = data.integer("min_distance", r.data.min_distance, 0);
  r.data.value_digits = data.integer("value_digits", r.data.value_digits, 1);
  r.data.num_needles = data.integer("num_needles", r.data.num_needles, 1);
  r.data.seed = static_cast<uint64_t>(data.integer("seed", 0, 0));
  r.data.tokenizer = data.text("tokenizer", "");
  r.data.filler = data.text("filler", "");
  r.data.document_mask = data.boolean("document_mask", r.data.document_mask);
  data.finish();
  CONSA_CHECK(!r.data.document_mask || !r.data.shards.empty(), file,
              ": data.document_mask: needs data.shards (a synthetic sequence is one document)");
  CONSA_CHECK(r.data.filler.empty() || !r.data.tokenizer.empty(), file,
              ": data.filler: the haystack text of text tasks needs data.tokenizer");
  CONSA_CHECK(r.data.synthetic_ratio >= 1.0 || !r.data.shards.empty(), file,
              ": data.shards: required when data.synthetic_ratio < 1 (the rest of the data comes from shards)");
  CONSA_CHECK(r.data.synthetic_ratio <= 0.0 || !r.data.synthetic_tasks.empty(), file,
              ": data.synthetic_tasks: required when data.synthetic_ratio > 0");

  Section opt = top.child("optimizer");
  r.optimizer.lr = opt.number("lr", r.optimizer.lr, 0, 10);
  r.optimizer.gate_lr = opt.number("gate_lr", r.optimizer.gate_lr, 0, 100);
  r.optimizer.lambda_lr = opt.number("lambda_lr", r.optimizer.lambda_lr, 0, 100);
  r.optimizer.weight_decay = opt.number("weight_decay", r.optimizer.weight_decay, 0, 1);
  r.optimizer.beta1 = opt.number("beta1", r.optimizer.beta1, 0, 1 - 1e-9);
  r.optimizer.beta2 = opt.number("beta2", r.optimizer.beta2, 0, 1 - 1e-9);
  r.optimizer.grad_clip = opt.number("grad_clip", r.optimizer.grad_clip, 0, kInf);
  r.optimizer.accumulation = opt.integer("accumulation", r.optimizer.accumulation, 1);
  opt.finish();

  Section sched = top.child("schedule");
  r.schedule.kind = sched.text("kind", r.schedule.kind, {"cosine", "linear", "constant"});
  r.schedule.warmup_steps = sched.integer("warmup_steps", r.schedule.warmup_steps, 0);
  sched.finish();

  Section train = top.child("train");
  r.train.mode = train.text("mode", r.train.mode, {"gates", "full", "dense"});
  r.train.steps = train.integer("steps", r.train.steps, 1);
  r.train.seed = static_cast<uint64_t>(train.integer("seed", 0, 0));
  r.train.gradient_checkpointing = train.boolean("gradient_checkpointing", false);
  r.train.overlap_gate_updates = train.boolean("overlap_gate_updates", r.train.overlap_gate_updates);
  r.train.log_every = train.integer("log_every", r.train.log_every, 1);
  r.train.keep_prob_every = train.integer("keep_prob_every", r.train.keep_prob_every, 1);
  r.train.checkpoint_every = train.integer("checkpoint_every", r.train.checkpoint_every, 1);
  train.finish();
  CONSA_CHECK(r.gates.narrower_windows.empty() || r.constraint.kv_budget.defined() || r.train.mode == "dense", file,
              ": gates.windows: several windows need constraint.kv_budget (a fraction of units does not say which "
              "windows to pay for)");

  Section recover = top.child("recover");
  r.recover.steps = recover.integer("steps", r.recover.steps, 0);
  r.recover.lr = recover.number("lr", r.recover.lr, 0, 10);
  recover.finish();

  Section exporting = top.child("export");
  r.exporting.rule = parse_binarize_rule(exporting.text("rule", "exact", {"threshold", "exact"}));
  r.exporting.kv_context = exporting.integer("kv_context", r.exporting.kv_context, 1);
  exporting.finish();

  Section output = top.child("output");
  r.output.dir = output.text("dir", r.output.dir);
  output.finish();

  Section distributed = top.child("distributed");
  r.distributed.backend = distributed.text("backend", r.distributed.backend, {"auto", "nccl", "gloo"});
  r.distributed.timeout_s = distributed.number("timeout_s", r.distributed.timeout_s, 1, 1e7);
  r.distributed.shard_optimizer = distributed.boolean("shard_optimizer", r.distributed.shard_optimizer);
  r.distributed.gate_noise = distributed.text("gate_noise", r.distributed.gate_noise, {"shared", "per_rank"});
  r.distributed.bucket_mb = distributed.integer("bucket_mb", r.distributed.bucket_mb, 1, 1 << 20);
  distributed.finish();

  top.finish();
  return r;
}

}  // namespace

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  CONSA_CHECK(!std::filesystem::is_directory(path), path, ": is a directory; expected a recipe YAML file");
  CONSA_CHECK(std::filesystem::is_regular_file(path), path, ": recipe not found");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    fail(path, ": not valid YAML: ", e.what());
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  CONSA_CHECK(root.IsMap(), path, ": a recipe must be a mapping of sections");
  for (const auto& o : overrides) apply_override(root, o, path);
  return parse(root, overrides.empty() ? path : path + " (with overrides)");
}

std::string recipe_to_yaml(const Recipe& r) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap << YAML::Key << "path" << YAML::Value << r.model.path
      << YAML::Key << "dtype" << YAML::Value << r.model.dtype << YAML::Key << "device" << YAML::Value << r.model.device
      << YAML::Key << "attention" << YAML::Value << r.model.attention << YAML::Key << "kernels" << YAML::Value
      << r.model.kernels << YAML::EndMap;
  const HardConcreteOptions& hc = r.gates.hard_concrete;
  out << YAML::Key << "gates" << YAML::Value << YAML::BeginMap << YAML::Key << "unit" << YAML::Value
      << gate_unit_name(r.gates.unit);
  if (r.gates.narrower_windows.empty()) {
    out << YAML::Key << "window" << YAML::Value << r.gates.swa.window;
  } else {
    out << YAML::Key << "windows" << YAML::Value << YAML::Flow << r.gates.windows();
  }
  out << YAML::Key << "sinks" << YAML::Value << r.gates.swa.sinks << YAML::Key << "temperature" << YAML::Value << hc.beta
      << YAML::Key << "limit_l" << YAML::Value << hc.limit_l << YAML::Key << "limit_r" << YAML::Value << hc.limit_r
      << YAML::Key << "init_keep" << YAML::Value << hc.init_keep << YAML::Key << "log_alpha_clamp" << YAML::Value
      << hc.log_alpha_clamp << YAML::EndMap;
  out << YAML::Key << "constraint" << YAML::Value << YAML::BeginMap;
  if (r.constraint.kv_budget.defined()) {
    const KvBudget& b = r.constraint.kv_budget;
    out << YAML::Key << "kv_budget" << YAML::Value << YAML::BeginMap << YAML::Key << "bytes" << YAML::Value << b.bytes
        << YAML::Key << "context" << YAML::Value << b.context << YAML::Key << "element_bytes" << YAML::Value
        << b.element_bytes << YAML::EndMap;
  } else {
    out << YAML::Key << "target" << YAML::Value << r.constraint.target;
  }
  out << YAML::Key << "scope" << YAML::Value << constraint_scope_name(r.constraint.scope) << YAML::Key
      << "warmup_steps" << YAML::Value << r.constraint.warmup_steps << YAML::EndMap;
  out << YAML::Key << "objective" << YAML::Value << YAML::BeginMap << YAML::Key << "ce" << YAML::Value
      << r.objective.ce << YAML::Key << "kl" << YAML::Value << r.objective.kl << YAML::Key << "mse" << YAML::Value
      << r.objective.mse << YAML::Key << "chunked_cross_entropy" << YAML::Value << r.objective.chunked_cross_entropy
      << YAML::Key << "distill_scored_only" << YAML::Value << r.objective.distill_scored_only << YAML::EndMap;
  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap << YAML::Key << "seq_len" << YAML::Value
      << r.data.seq_len << YAML::Key << "batch_size" << YAML::Value << r.data.batch_size << YAML::Key
      << "heldout_batches" << YAML::Value << r.data.heldout_batches << YAML::Key << "shards" << YAML::Value
      << YAML::Flow << YAML::BeginSeq;
  // An auto entry stays a plain path; the others keep their format, so a resumed run reads the same files.
  for (const TokenSourceSpec& s : r.data.shards) {
    if (s.format == TokenFormat::Auto && s.bytes_per_token == 0) {
      out << s.path;
      continue;
    }
    out << YAML::BeginMap << YAML::Key << "path" << YAML::Value << s.path << YAML::Key << "format" << YAML::Value
        << token_format_name(s.format);
    if (s.format == TokenFormat::Raw)
      out << YAML::Key << "dtype" << YAML::Value << (s.bytes_per_token == 2 ? "uint16" : "uint32");
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::Key << "synthetic_ratio" << YAML::Value << r.data.synthetic_ratio
      << YAML::Key << "synthetic_tasks" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (SyntheticTask t : r.data.synthetic_tasks) out << synthetic_task_name(t);
  out << YAML::EndSeq << YAML::Key << "min_distance" << YAML::Value << r.data.min_distance << YAML::Key
      << "value_digits" << YAML::Value << r.data.value_digits << YAML::Key << "num_needles" << YAML::Value
      << r.data.num_needles << YAML::Key << "seed" << YAML::Value << r.data.seed << YAML::Key << "tokenizer"
      << YAML::Value << r.data.tokenizer << YAML::Key << "filler" << YAML::Value << r.data.filler << YAML::Key
      << "document_mask" << YAML::Value << r.data.document_mask << YAML::EndMap;
  out << YAML::Key << "optimizer" << YAML::Value << YAML::BeginMap << YAML::Key << "lr" << YAML::Value
      << r.optimizer.lr << YAML::Key << "gate_lr" << YAML::Value << r.optimizer.gate_lr << YAML::Key << "lambda_lr"
      << YAML::Value << r.optimizer.lambda_lr << YAML::Key << "weight_decay" << YAML::Value
      << r.optimizer.weight_decay << YAML::Key << "beta1" << YAML::Value << r.optimizer.beta1 << YAML::Key << "beta2"
      << YAML::Value << r.optimizer.beta2 << YAML::Key << "grad_clip" << YAML::Value << r.optimizer.grad_clip
      << YAML::Key << "accumulation" << YAML::Value << r.optimizer.accumulation << YAML::EndMap;
  out << YAML::Key << "schedule" << YAML::Value << YAML::BeginMap << YAML::Key << "kind" << YAML::Value
      << r.schedule.kind << YAML::Key << "warmup_steps" << YAML::Value << r.schedule.warmup_steps << YAML::EndMap;
  out << YAML::Key << "train" << YAML::Value << YAML::BeginMap << YAML::Key << "mode" << YAML::Value << r.train.mode
      << YAML::Key << "steps" << YAML::Value << r.train.steps << YAML::Key << "seed" << YAML::Value << r.train.seed
      << YAML::Key << "gradient_checkpointing" << YAML::Value << r.train.gradient_checkpointing << YAML::Key
      << "overlap_gate_updates" << YAML::Value << r.train.overlap_gate_updates << YAML::Key
      << "log_every" << YAML::Value << r.train.log_every << YAML::Key << "keep_prob_every" << YAML::Value
      << r.train.keep_prob_every << YAML::Key << "checkpoint_every" << YAML::Value << r.train.checkpoint_every
      << YAML::EndMap;
  out << YAML::Key << "recover" << YAML::Value << YAML::BeginMap << YAML::Key << "steps" << YAML::Value
      << r.recover.steps << YAML::Key << "lr" << YAML::Value << r.recover.lr << YAML::EndMap;
  out << YAML::Key << "export" << YAML::Value << YAML::BeginMap << YAML::Key << "rule" << YAML::Value
      << binarize_rule_name(r.exporting.rule) << YAML::Key << "kv_context" << YAML::Value << r.exporting.kv_context
      << YAML::EndMap;
  out << YAML::Key << "output" << YAML::Value << YAML::BeginMap << YAML::Key << "dir" << YAML::Value << r.output.dir
      << YAML::EndMap;
  out << YAML::Key << "distributed" << YAML::Value << YAML::BeginMap << YAML::Key << "backend" << YAML::Value
      << r.distributed.backend << YAML::Key << "timeout_s" << YAML::Value << r.distributed.timeout_s << YAML::Key
      << "shard_optimizer" << YAML::Value << r.distributed.shard_optimizer << YAML::Key << "gate_noise" << YAML::Value
      << r.distributed.gate_noise << YAML::Key << "bucket_mb" << YAML::Value << r.distributed.bucket_mb << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

// data.batch_size, optimizer.accumulation and the sharding keys have checks of their own at
// resume (the global batch, the optimizer shards' layout), which allow a change of world size.
const char* const kResumeFreeKeys[] = {"model.device", "model.attention", "model.kernels", "train.steps", "train.log_every",
                                       "train.keep_prob_every", "train.checkpoint_every", "train.gradient_checkpointing",
                                       "recover.steps", "export.rule", "export.kv_context", "output.dir",
                                       "data.batch_size", "optimizer.accumulation", "distributed.shard_optimizer",
                                       "distributed.bucket_mb", "distributed.backend", "distributed.timeout_s",
                                       "objective.chunked_cross_entropy", nullptr};

namespace {

// Several windows: the expected share of the savable bytes when every gate of every level keeps
// its branch with probability `keep`.
double saving_share(const KvBudgetPlan& plan, double keep) {
  const std::vector<at::Tensor> open(plan.local_unit_bytes.size(), at::scalar_tensor(keep, at::kDouble));
  return plan.saved_share(nested_expected_cost(open, plan.relative_branch_costs()).item<double>());
}

std::string window_budget_reach_warning(const Recipe& recipe, double target, const KvBudgetPlan& plan) {
  const HardConcrete gates(recipe.gates.hard_concrete);
  const auto [lowest_keep, highest_keep] = gates.keep_probability_range();
  const double most = saving_share(plan, lowest_keep), least = saving_share(plan, highest_keep);
  if (target >= least && target <= most) return "";
  std::ostringstream out;
  out << "constraint.kv_budget asks for " << target << " of the savable KV bytes, beyond what gates.log_alpha_clamp "
      << recipe.gates.hard_concrete.log_alpha_clamp << " reaches in expectation with gates.windows: the expected share "
      << "stays in [" << least << ", " << most << "] and lambda grows without end";
  if (target > 0 && target < 1) {
    // The clamp whose bound reaches the target, by bisection (the share is monotone in it), plus one.
    HardConcreteOptions o = recipe.gates.hard_concrete;
    double lo = 1e-3, hi = 100;
    const bool above = target > most;
    for (int i = 0; i < 100; ++i) {
      o.log_alpha_clamp = 0.5 * (lo + hi);
      const auto range = HardConcrete(o).keep_probability_range();
      const double reach = above ? saving_share(plan, range.first) : saving_share(plan, range.second);
      ((above ? reach >= target : reach <= target) ? hi : lo) = o.log_alpha_clamp;
    }
    out << "; gates.log_alpha_clamp=" << std::ceil(10 * (hi + 1)) / 10 << " reaches it";
  } else {
    out << "; the binarized assignment still meets it exactly";
  }
  return out.str();
}

}  // namespace

std::string target_reach_warning(const Recipe& recipe, double target, const KvBudgetPlan* plan) {
  if (recipe.train.mode == "dense") return "";
  if (!recipe.gates.narrower_windows.empty())
    return plan && plan->local_unit_bytes.size() > 1 ? window_budget_reach_warning(recipe, target, *plan) : "";
  const HardConcrete gates(recipe.gates.hard_concrete);
  const auto [lowest_keep, highest_keep] = gates.keep_probability_range();
  const double most_swa = 1 - lowest_keep, least_swa = 1 - highest_keep;
  if (target >= least_swa && target <= most_swa) return "";
  std::ostringstream out;
  out << "constraint.target " << target << " is beyond what gates.log_alpha_clamp "
      << recipe.gates.hard_concrete.log_alpha_clamp << " reaches in expectation: each gate keeps full attention "
      << "with probability " << lowest_keep << " to " << highest_keep << ", so the expected SWA fraction stays in ["
      << least_swa << ", " << most_swa << "] and lambda grows without end";
  if (target > 0 && target < 1) {
    // One more unit of log_alpha than the bound, so the constraint is met before the clamp binds.
    out << "; gates.log_alpha_clamp=" << std::ceil(10 * (gates.clamp_reaching(1 - target) + 1)) / 10 << " reaches it";
  } else {
    out << "; the binarized assignment still meets it exactly";
  }
  return out.str();
}

std::map<std::string, std::string> resume_fingerprint(const Recipe& recipe) {
  std::map<std::string, std::string> keys;
  const YAML::Node root = YAML::Load(recipe_to_yaml(recipe));
  for (const auto& section : root)
    for (const auto& entry : section.second) {
      YAML::Emitter value;
      value << YAML::Flow << entry.second;
      keys[section.first.as<std::string>() + "." + entry.first.as<std::string>()] = value.c_str();
    }
  for (const char* const* k = kResumeFreeKeys; *k; ++k) keys.erase(*k);
  return keys;
}

}  // namespace consa
