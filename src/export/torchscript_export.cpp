#include "consa/export/torchscript_export.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/csrc/jit/serialization/import.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/export/hybrid_layout.h"
#include "consa/kernels/torch_ops.h"
#include "consa/model/rope.h"
#include "torchscript_source.h"

namespace consa {
namespace fs = std::filesystem;
using torch::jit::Module;

namespace {

using torchscript::kCausal;
using torchscript::kPerHead;
using torchscript::kWindow;
using torchscript::layer_source;
using torchscript::model_source;
using torchscript::source_resolver;

void add_parameter(Module& m, const std::string& name, const at::Tensor& t) {
  m.register_parameter(name, t.detach().clone(), /*is_buffer=*/false);
}

// The distinct windows of the export's ring caches, widest first: the assignment's, or its one
// SWA window (a ring with no heads where every unit keeps full attention), so that a
// single-window export keeps one ring per layer.
std::vector<int64_t> ring_windows(const Assignment& a) {
  return a.multi_window() ? a.local_windows() : std::vector<int64_t>{a.swa.window};
}

// A distance no key position reaches: a full head's window in the masks.
constexpr int64_t kUnbounded = int64_t{1} << 62;

Module build_layer(DecoderLayerImpl& layer, const LayerHeadLayout& layout, const ModelConfig& c,
                   const std::vector<int64_t>& windows, int64_t sinks, int64_t index, bool fused) {
  Module m("__torch__.consa.HybridLayer" + std::to_string(index));
  const SelfAttentionImpl& a = *layer.self_attn;
  add_parameter(m, "input_norm", layer.input_layernorm->weight);
  // Projections that read the same input are stacked, so each is one matmul.
  add_parameter(m, "qkv_w", at::cat({a.q_proj->weight, a.k_proj->weight, a.v_proj->weight}));
  if (c.qkv_bias) add_parameter(m, "qkv_b", at::cat({a.q_proj->bias, a.k_proj->bias, a.v_proj->bias}));
  add_parameter(m, "o_w", a.o_proj->weight);
  if (c.o_bias) add_parameter(m, "o_b", a.o_proj->bias);
  if (c.qk_norm) {
    add_parameter(m, "q_norm", a.q_norm->weight);
    add_parameter(m, "k_norm", a.k_norm->weight);
  }
  add_parameter(m, "post_norm", layer.post_attention_layernorm->weight);
  add_parameter(m, "gate_up_w", at::cat({layer.mlp->gate_proj->weight, layer.mlp->up_proj->weight}));
  add_parameter(m, "down_w", layer.mlp->down_proj->weight);

  // Per stored query head: its window (kUnbounded when full) and its row in the decode bias
  // tables (0 causal, i + 1 window i).
  const int64_t group = c.group_size();
  std::vector<int64_t> head_window, head_level;
  for (int64_t w : layout.head_windows) {
    head_window.push_back(w == 0 ? kUnbounded : w);
    head_level.push_back(w == 0 ? 0 : std::find(windows.begin(), windows.end(), w) - windows.begin() + 1);
    CONSA_CHECK(head_level.back() <= static_cast<int64_t>(windows.size()), "torchscript export: layer ", index,
                " uses window ", w, ", none of the export's ", join_integers(windows));
  }
  // A slice's mode: one mask for every head where they share the slice's own span.
  auto slice_mode = [&](int64_t g0, int64_t g1, int64_t window) {
    for (int64_t h = g0 * group; h < g1 * group; ++h)
      if (layout.head_windows[h] != window) return kPerHead;
    return window == 0 ? kCausal : kWindow;
  };
  std::vector<int64_t> ring_g0, ring_g1, ring_mode;
  for (int64_t w : windows) {
    const auto begin = std::find(layout.kv_windows.begin(), layout.kv_windows.end(), w);
    const int64_t g0 = begin == layout.kv_windows.end() ? c.num_kv_heads : begin - layout.kv_windows.begin();
    const int64_t g1 = g0 + std::count(layout.kv_windows.begin(), layout.kv_windows.end(), w);
    ring_g0.push_back(g0 == c.num_kv_heads ? 0 : g0);
    ring_g1.push_back(g0 == c.num_kv_heads ? 0 : g1);
    ring_mode.push_back(slice_mode(g0, g1, w));
  }
  const at::Device device = layer.input_layernorm->weight.device();
  m.register_buffer("head_window", at::tensor(head_window, at::kLong).to(device));
  m.register_buffer("head_level", at::tensor(head_level, at::kLong).to(device));
  auto int_attr = [&](const char* name, int64_t v) { m.register_attribute(name, c10::IntType::get(), v); };
  auto ints_attr = [&](const char* name, const std::vector<int64_t>& v) {
    m.register_attribute(name, c10::ListType::ofInts(), c10::List<int64_t>(v));
  };
  int_attr("num_heads", c.num_heads);
  int_attr("num_kv_heads", c.num_kv_heads);
  int_attr("head_dim", c.head_dim);
  int_attr("group", group);
  int_attr("sinks", sinks);
  int_attr("full_kv_heads", layout.full_kv_heads);
  int_attr("full_mode", slice_mode(0, layout.full_kv_heads, 0));
  ints_attr("windows", windows);
  ints_attr("ring_g0", ring_g0);  // per window: its KV groups [g0, g1) (empty when g0 == g1)
  ints_attr("ring_g1", ring_g1);
  ints_attr("ring_mode", ring_mode);
  m.register_attribute("eps", c10::FloatType::get(), c.rms_norm_eps);
  m.register_attribute("scale", c10::FloatType::get(), 1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  m.define(layer_source(c, fused, windows.size() == 1), source_resolver(fused));
  return m;
}

nlohmann::json format_info(const ModelConfig& c, const Assignment& a, const TorchScriptOptions& options) {
  nlohmann::json info = {{"format", "consa.torchscript"},
          {"version", kTorchScriptFormatVersion},
          {"architecture", architecture_name(c.arch)},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"num_layers", c.num_layers},
          {"num_heads", c.num_heads},
          {"num_kv_heads", c.num_kv_heads},
          {"head_dim", c.head_dim},
          {"window", a.swa.window},
          {"windows", ring_windows(a)},
          {"sinks", a.swa.sinks},
          {"query_block", options.query_block},
          {"kernels", options.fused_kernels ? "fused" : "aten"},
          {"methods", {"forward(input_ids) -> logits", "init_cache(batch, capacity) -> cache",
                       "extend(input_ids, cache, last_only) -> logits",
                       "decode_step(input_ids, cache, position) -> logits"}}};
  if (options.fused_kernels) info["ops_library"] = kernels::kTorchOpsLibrary;  // torch.ops.load_library it first
  return info;
}

}  // namespace

Module build_scripted_model(CausalLM& model, const Assignment& assignment, const TorchScriptOptions& options) {
  CONSA_CHECK(options.query_block > 0, "torchscript export: query_block must be > 0");
  if (options.fused_kernels) kernels::register_torch_ops();  // the source below calls them
  at::NoGradGuard no_grad;
  std::vector<LayerHeadLayout> layouts;
  CausalLM work = hybrid_model_copy(model, assignment, &layouts);
  const ModelConfig& c = work->config();
  Module top("__torch__.consa.HybridCausalLM");
  add_parameter(top, "embed_tokens", work->model->embed_tokens->weight);
  add_parameter(top, "norm", work->model->norm->weight);
  if (!c.tie_word_embeddings) add_parameter(top, "lm_head", work->lm_head->weight);
  top.register_buffer("inv_freq", rope_inv_freq(c.rope, c.head_dim).to(work->device()));
  const std::vector<int64_t> windows = ring_windows(assignment);
  std::vector<int64_t> full_kv_heads, ring_kv_heads;  // per layer; per layer and window
  for (int64_t l = 0; l < c.num_layers; ++l) {
    full_kv_heads.push_back(layouts[l].full_kv_heads);
    for (int64_t w : windows)
      ring_kv_heads.push_back(std::count(layouts[l].kv_windows.begin(), layouts[l].kv_windows.end(), w));
    top.register_module("layer_" + std::to_string(l), build_layer(*work->model->layer_list[l], layouts[l], c, windows,
                                                                  assignment.swa.sinks, l, options.fused_kernels));
  }
  std::vector<int64_t> reach{kUnbounded};  // the rows of the decode bias tables: causal, then each window
  reach.insert(reach.end(), windows.begin(), windows.end());
  top.register_buffer("reach", at::tensor(reach, at::kLong).to(work->device()));
  top.register_attribute("full_kv_heads", c10::ListType::ofInts(), c10::List<int64_t>(full_kv_heads));
  top.register_attribute("ring_kv_heads", c10::ListType::ofInts(), c10::List<int64_t>(ring_kv_heads));
  top.register_attribute("windows", c10::ListType::ofInts(), c10::List<int64_t>(windows));
  top.register_attribute("num_kv_heads", c10::IntType::get(), c.num_kv_heads);
  top.register_attribute("head_dim", c10::IntType::get(), c.head_dim);
  top.register_attribute("window", c10::IntType::get(), assignment.swa.window);
  top.register_attribute("sinks", c10::IntType::get(), assignment.swa.sinks);
  top.register_attribute("query_block", c10::IntType::get(), options.query_block);
  top.register_attribute("eps", c10::FloatType::get(), c.rms_norm_eps);
  top.define(model_source(c, options.fused_kernels, static_cast<int64_t>(windows.size())),
             source_resolver(options.fused_kernels));
  return top;
}

void export_torchscript(CausalLM& model, const Assignment& assignment, const std::string& path,
                        const TorchScriptOptions& options) {
  assignment.check_fits(model->config(), "");
  Module module = build_scripted_model(model, assignment, options);
  std::vector<LayerHeadLayout> layouts;
  for (int64_t l = 0; l < model->num_layers(); ++l) layouts.push_back(hybrid_layout(assignment, l));
  Assignment stored = permuted_assignment(assignment, layouts);
  stored.weights_checksum = assignment.weights_checksum;  // the weights it was learned on
  torch::jit::ExtraFilesMap extra{
      {"assignment.json", stored.to_json(4096, static_cast<int64_t>(c10::elementSize(model->dtype()))).dump(2)},
      {"consa.json", format_info(model->config(), assignment, options).dump(2)}};
  std::ostringstream bytes;
  module.save(bytes, extra);
  write_file_atomically(path, bytes.str());
}

ScriptedLM::ScriptedLM(Module module, Assignment assignment)
    : module_(std::move(module)), assignment_(std::move(assignment)) {
  // Decoding changes the cache slices' lengths at every step, which defeats the profiling
  // executor's shape specialisation (seconds of re-optimisation on a GPU's first tokens); run
  // the scripted methods as written instead.
  torch::jit::setGraphExecutorOptimize(false);
}

ScriptedLM ScriptedLM::load(const std::string& path, at::Device device) {
  CONSA_CHECK(fs::is_regular_file(path), path, ": no such TorchScript file");
  {  // TorchScript files are zip archives; anything else would reach the user as the zip reader's message
    char magic[4] = {};
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
    CONSA_CHECK(in.gcount() == 4 && std::string(magic, 4) == std::string("PK\x03\x04", 4), path,
                ": not a TorchScript file (not a zip archive); expected a model written by consa export --format torchscript");
  }
  torch::jit::ExtraFilesMap extra{{"assignment.json", ""}, {"consa.json", ""}};
  kernels::register_torch_ops();  // exports made with --kernels fused call them
  Module module;
  try {
    module = torch::jit::load(path, device, extra);
  } catch (const std::exception& e) {  // c10::Error; LibTorch's zip reader on 1.13 throws others
    const std::string what = e.what();
    // The zip reader's own words name no file and no fix.
    if (what.find("PytorchStreamReader") != std::string::npos)
      fail(path, ": not a loadable TorchScript file (a truncated or damaged zip archive); export it again");
    fail(path, ": not a loadable TorchScript file: ", what.substr(0, what.find('\n')));
  }
  CONSA_CHECK(!extra["consa.json"].empty(), path, ": a TorchScript file, but not a consa export (no consa.json inside)");
  const auto info = nlohmann::json::parse(extra["consa.json"], nullptr, false);
  CONSA_CHECK(info.is_object() && info.value("format", "") == "consa.torchscript", path,
              ": consa.json inside is not a consa.torchscript description");
  CONSA_CHECK(info.value("version", 0) == kTorchScriptFormatVersion, path, ": consa TorchScript format version ",
              info.value("version", 0), ", this consa reads version ", kTorchScriptFormatVersion);
  const auto assignment_json = nlohmann::json::parse(extra["assignment.json"], nullptr, false);
  module.eval();
  return ScriptedLM(std::move(module), Assignment::from_json(assignment_json, path + ": assignment.json"));
}

ScriptedLM::Cache ScriptedLM::new_cache(int64_t batch, int64_t capacity) {
  CONSA_CHECK(batch > 0 && capacity > 0, "KV cache: batch and capacity must be > 0, got ", batch, " and ", capacity);
  return Cache{module_.get_method("init_cache")({batch, capacity}).toTensorList()};
}

at::Tensor ScriptedLM::extend(const at::Tensor& input_ids, Cache& cache, bool last_only) {
  CONSA_CHECK(input_ids.dim() == 2, "input_ids must be [batch, length], got ", input_ids.sizes());
  CONSA_CHECK(cache.length() + input_ids.size(1) <= cache.capacity(), "KV cache: ", cache.length(), " + ",
              input_ids.size(1), " tokens exceed its capacity of ", cache.capacity());
  check_token_ids(input_ids);
  return module_.get_method("extend")({input_ids.to(at::kLong), cache.tensors, last_only}).toTensor();
}

void ScriptedLM::check_token_ids(const at::Tensor& input_ids) const {
  const int64_t vocab = vocab_size();
  // One host read per call (this runs at every decode step).
  CONSA_CHECK(input_ids.numel() == 0 || !((input_ids < 0) | (input_ids >= vocab)).any().item<bool>(),
              "input_ids: token ids must lie in [0, ", vocab, ")");
}

bool ScriptedLM::has_decode_step() const { return module_.find_method("decode_step").has_value(); }

namespace {
void check_can_decode(const ScriptedLM& model, const ScriptedLM::Cache& cache) {
  CONSA_CHECK(model.has_decode_step(),
              "this TorchScript export has no decode_step method (written by an older consa); decode with extend, "
              "or export it again");
  CONSA_CHECK(cache.length() < cache.capacity(), "KV cache: full at ", cache.capacity(), " positions");
}

void check_decode_step(const ScriptedLM& model, const at::Tensor& input_ids, const ScriptedLM::Cache& cache) {
  check_can_decode(model, cache);
  CONSA_CHECK(input_ids.dim() == 2 && input_ids.size(1) == 1, "decode_step: input_ids must be [batch, 1], got ",
              input_ids.sizes());
  model.check_token_ids(input_ids);
}
}  // namespace

at::Tensor ScriptedLM::decode_step(const at::Tensor& input_ids, Cache& cache) {
  check_decode_step(*this, input_ids, cache);
  const auto on_device = at::TensorOptions().dtype(at::kLong).device(device());
  const at::Tensor position = at::full({1}, cache.length(), on_device);
  at::Tensor logits =
      module_.get_method("decode_step")({input_ids.to(on_device), cache.tensors, position}).toTensor();
  cache.advance(1);
  return logits;
}

bool GraphedDecoder::supported(const ScriptedLM& model) {
  return compat::device_graphs_compiled() && model.device().is_cuda() && model.has_decode_step();
}

GraphedDecoder::GraphedDecoder(ScriptedLM& model, ScriptedLM::Cache& cache) : model_(model), cache_(cache) {
  check_can_decode(model, cache);
  const auto on_device = at::TensorOptions().dtype(at::kLong).device(model.device());
  input_ids_ = at::zeros({cache.tensors.get(0).size(0), 1}, on_device);
  position_ = at::full({1}, cache.length(), on_device);
  // Recording runs decode_step (the warm-ups too) at the current position without advancing
  // the cache: what it writes there, the first real step overwrites.
  torch::jit::Method method = model.module().get_method("decode_step");
  graph_ = std::make_unique<compat::DeviceGraph>(model.device(), [&] {
    logits_ = method({input_ids_, cache_.tensors, position_}).toTensor();
  });
}

at::Tensor GraphedDecoder::step(const at::Tensor& input_ids) {
  check_decode_step(model_, input_ids, cache_);
  CONSA_CHECK(input_ids.size(0) == input_ids_.size(0), "decode: the graph was recorded for batch ",
              input_ids_.size(0), ", got ", input_ids.size(0));
  input_ids_.copy_(input_ids);
  position_.fill_(cache_.length());
  graph_->replay();
  cache_.advance(1);
  return logits_;
}

at::Tensor ScriptedLM::forward(const at::Tensor& input_ids) {
  Cache cache = new_cache(input_ids.size(0), std::max<int64_t>(1, input_ids.size(1)));
  return extend(input_ids, cache, false);
}

int64_t ScriptedLM::Cache::length() const { return tensors.get(tensors.size() - 1)[0].item<int64_t>(); }
int64_t ScriptedLM::Cache::capacity() const { return tensors.get(tensors.size() - 1)[1].item<int64_t>(); }

void ScriptedLM::Cache::advance(int64_t tokens) {
  at::Tensor state = tensors.get(tensors.size() - 1);  // [length, capacity] on the CPU
  state.data_ptr<int64_t>()[0] += tokens;
}

int64_t ScriptedLM::Cache::kv_bytes() const {
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors)  // keys and values are the 4-D entries
    if (t.dim() == 4) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

int64_t ScriptedLM::vocab_size() const { return module_.attr("embed_tokens").toTensor().size(0); }
at::Device ScriptedLM::device() const { return module_.attr("embed_tokens").toTensor().device(); }
at::ScalarType ScriptedLM::dtype() const { return module_.attr("embed_tokens").toTensor().scalar_type(); }

}  // namespace consa
