#include "consa/export/torchscript_export.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/csrc/jit/serialization/import.h>

#include <filesystem>
#include <sstream>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "consa/export/hybrid_layout.h"
#include "consa/model/rope.h"

namespace consa {
namespace fs = std::filesystem;
using torch::jit::Module;

namespace {

// Masks used by _attend: which keys a slice of query heads sees besides the causal limit.
enum AttendMode : int64_t { kCausal = 0, kWindow = 1, kPerHead = 2 };

// One decoder layer. Dtype codes are ScalarType numbers (TorchScript source has no torch.float32
// without Python): 4 = int64.
std::string layer_source(const ModelConfig& c) {
  const std::string qkv_bias = c.qkv_bias ? "self.q_b" : "None";
  std::ostringstream s;
  s << R"JIT(
def _rms(self, x: Tensor, w: Tensor) -> Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
    return w * h.to(x.dtype)

def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = self.head_dim // 2
    rotated = torch.cat([-x[:, :, :, half:], x[:, :, :, :half]], -1)
    return x * cos + rotated * sin

def _attend(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, mode: int) -> Tensor:
    # q [B, n*G, tq, D] (the G query heads of a group adjacent); k, v [B, n, tk, D];
    # positions [tq] and [tk], -1 for an empty ring slot.
    b = q.size(0)
    n = k.size(1)
    g = self.group
    tq = q.size(2)
    tk = k.size(2)
    scores = torch.matmul(q.reshape(b, n, g * tq, self.head_dim), k.transpose(2, 3)) * self.scale
    scores = scores.view(b, n, g, tq, tk)
    qp = q_pos.unsqueeze(1)
    kp = k_pos.unsqueeze(0)
    visible = (kp >= 0) & (kp <= qp)
    if mode != 0:
        in_window = (kp > qp - self.window) | (kp < self.sinks)
        if mode == 2:
            in_window = in_window | self.head_full.view(n, g, 1, 1)
        visible = visible & in_window
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores.float(), -1).to(q.dtype)
    return torch.matmul(probs.view(b, n, g * tq, tk), v).view(b, n * g, tq, self.head_dim)

def forward(self, x: Tensor, cos: Tensor, sin: Tensor, p0: int, full_k: Tensor, full_v: Tensor,
            ring_k: Tensor, ring_v: Tensor, ring_pos: Tensor, ring_keep: Tensor, ring_slots: Tensor,
            query_block: int) -> Tensor:
    b = x.size(0)
    t = x.size(1)
    h = self._rms(x, self.input_norm)
    q = torch.linear(h, self.q_w, )JIT" << qkv_bias << R"JIT().view(b, t, self.num_heads, self.head_dim)
    k = torch.linear(h, self.k_w, )JIT" << (c.qkv_bias ? "self.k_b" : "None") << R"JIT().view(b, t, self.num_kv_heads, self.head_dim)
    v = torch.linear(h, self.v_w, )JIT" << (c.qkv_bias ? "self.v_b" : "None") << R"JIT().view(b, t, self.num_kv_heads, self.head_dim)
)JIT";
  if (c.qk_norm)
    s << R"JIT(    q = self._rms(q, self.q_norm)
    k = self._rms(k, self.k_norm)
)JIT";
  s << R"JIT(    q = self._rope(q.transpose(1, 2), cos, sin)
    k = self._rope(k.transpose(1, 2), cos, sin)
    v = v.transpose(1, 2)
    nf = self.full_kv_heads
    g = self.group
    q_pos = torch.arange(p0, p0 + t, device=x.device)
    outs: List[Tensor] = []
    if nf > 0:
        # Full-cache groups: write the new positions, attend over everything so far.
        full_k[:, :, p0:p0 + t] = k[:, :nf]
        full_v[:, :, p0:p0 + t] = v[:, :nf]
        k_pos = torch.arange(0, p0 + t, device=x.device)
        blocks: List[Tensor] = []
        for t0 in range(0, t, query_block):
            t1 = min(t, t0 + query_block)
            blocks.append(self._attend(q[:, :nf * g, t0:t1], full_k[:, :, :p0 + t1], full_v[:, :, :p0 + t1],
                                       q_pos[t0:t1], k_pos[:p0 + t1], self.full_mode))
        outs.append(torch.cat(blocks, 2))
    if nf < self.num_kv_heads:
        # Sliding-window groups: the ring (earlier positions) plus the new keys a block can see.
        new_k = k[:, nf:]
        new_v = v[:, nf:]
        new_sinks = min(t, max(0, self.sinks - p0))
        blocks = []
        for t0 in range(0, t, query_block):
            t1 = min(t, t0 + query_block)
            lo = max(0, t0 - self.window + 1)
            s_end = min(new_sinks, lo)
            keys = torch.cat([ring_k, new_k[:, :, :s_end], new_k[:, :, lo:t1]], 2)
            values = torch.cat([ring_v, new_v[:, :, :s_end], new_v[:, :, lo:t1]], 2)
            k_pos = torch.cat([ring_pos, q_pos[:s_end], q_pos[lo:t1]])
            blocks.append(self._attend(q[:, nf * g:, t0:t1], keys, values, q_pos[t0:t1], k_pos, 1))
        outs.append(torch.cat(blocks, 2))
        ring_k.index_copy_(2, ring_slots, new_k.index_select(2, ring_keep))
        ring_v.index_copy_(2, ring_slots, new_v.index_select(2, ring_keep))
    heads = torch.cat(outs, 1).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
    x = x + torch.linear(heads, self.o_w, )JIT" << (c.o_bias ? "self.o_b" : "None") << R"JIT()
    h = self._rms(x, self.post_norm)
    mlp = torch.silu(torch.linear(h, self.gate_w, None)) * torch.linear(h, self.up_w, None)
    return x + torch.linear(mlp, self.down_w, None)
)JIT";
  return s.str();
}

// The model: embeddings, the layers (unrolled: one call each), final norm and head.
std::string model_source(const ModelConfig& c) {
  std::ostringstream s;
  const int64_t slot_entry = 4 * c.num_layers, length_entry = slot_entry + 1;
  s << R"JIT(
def _rms(self, x: Tensor, w: Tensor) -> Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
    return w * h.to(x.dtype)

def init_cache(self, batch: int, capacity: int) -> List[Tensor]:
    dev = self.embed_tokens.device
    dt = self.embed_tokens.dtype
    ring = min(self.sinks + self.window, capacity)
    cache: List[Tensor] = []
    for nf in self.full_kv_heads:
        cache.append(torch.zeros([batch, nf, capacity, self.head_dim], dtype=dt, device=dev))
        cache.append(torch.zeros([batch, nf, capacity, self.head_dim], dtype=dt, device=dev))
        cache.append(torch.zeros([batch, self.num_kv_heads - nf, ring, self.head_dim], dtype=dt, device=dev))
        cache.append(torch.zeros([batch, self.num_kv_heads - nf, ring, self.head_dim], dtype=dt, device=dev))
    cache.append(torch.full([ring], -1, dtype=4, device=dev))
    # [length, capacity] on the CPU; built from the argument so no call shares a constant.
    cache.append(torch.tensor([0, capacity], dtype=4))
    return cache

def _ring_slots(self, p0: int, t: int, dev: Device) -> Tuple[Tensor, Tensor]:
    # New positions the ring keeps (indices into the new tokens) and their slots: sinks in
    # slots [0, S), later positions j in slot S + (j - S) % W; only the last W survive.
    sink_end = min(t, max(0, self.sinks - p0))
    start = max(sink_end, t - self.window)
    keep = torch.cat([torch.arange(0, sink_end, device=dev), torch.arange(start, t, device=dev)])
    pos = keep + p0
    slots = torch.where(pos < self.sinks, pos, self.sinks + torch.remainder(pos - self.sinks, self.window))
    return keep, slots

def extend(self, input_ids: Tensor, cache: List[Tensor], last_only: bool) -> Tensor:
    t = input_ids.size(1)
    state = cache[)JIT" << length_entry << R"JIT(]
    p0 = int(state[0])
    capacity = int(state[1])
    assert p0 + t <= capacity, "consa: the KV cache is full; create it with a larger capacity"
    dev = self.embed_tokens.device
    x = torch.embedding(self.embed_tokens, input_ids.to(dev))
    freqs = torch.outer(torch.arange(p0, p0 + t, device=dev).float(), self.inv_freq)
    emb = torch.cat([freqs, freqs], -1)
    cos = emb.cos().to(x.dtype)
    sin = emb.sin().to(x.dtype)
    keep, slots = self._ring_slots(p0, t, dev)
    ring_pos = cache[)JIT" << slot_entry << R"JIT(]
)JIT";
  for (int64_t l = 0; l < c.num_layers; ++l)
    s << "    x = self.layer_" << l << ".forward(x, cos, sin, p0, cache[" << 4 * l << "], cache[" << 4 * l + 1
      << "], cache[" << 4 * l + 2 << "], cache[" << 4 * l + 3 << "], ring_pos, keep, slots, self.query_block)\n";
  s << R"JIT(    ring_pos.index_copy_(0, slots, keep + p0)
    state[0] += t
    if last_only:
        x = x[:, t - 1:]
    return torch.linear(self._rms(x, self.norm), )JIT" << (c.tie_word_embeddings ? "self.embed_tokens" : "self.lm_head")
    << R"JIT(, None)

def forward(self, input_ids: Tensor) -> Tensor:
    cache = self.init_cache(input_ids.size(0), input_ids.size(1))
    return self.extend(input_ids, cache, False)
)JIT";
  return s.str();
}

void add_parameter(Module& m, const std::string& name, const at::Tensor& t) {
  m.register_parameter(name, t.detach().clone(), /*is_buffer=*/false);
}

Module build_layer(DecoderLayerImpl& layer, const LayerHeadLayout& layout, const ModelConfig& c,
                   const AttentionSpan& swa, int64_t index) {
  Module m("__torch__.consa.HybridLayer" + std::to_string(index));
  const SelfAttentionImpl& a = *layer.self_attn;
  add_parameter(m, "input_norm", layer.input_layernorm->weight);
  add_parameter(m, "q_w", a.q_proj->weight);
  add_parameter(m, "k_w", a.k_proj->weight);
  add_parameter(m, "v_w", a.v_proj->weight);
  if (c.qkv_bias) {
    add_parameter(m, "q_b", a.q_proj->bias);
    add_parameter(m, "k_b", a.k_proj->bias);
    add_parameter(m, "v_b", a.v_proj->bias);
  }
  add_parameter(m, "o_w", a.o_proj->weight);
  if (c.o_bias) add_parameter(m, "o_b", a.o_proj->bias);
  if (c.qk_norm) {
    add_parameter(m, "q_norm", a.q_norm->weight);
    add_parameter(m, "k_norm", a.k_norm->weight);
  }
  add_parameter(m, "post_norm", layer.post_attention_layernorm->weight);
  add_parameter(m, "gate_w", layer.mlp->gate_proj->weight);
  add_parameter(m, "up_w", layer.mlp->up_proj->weight);
  add_parameter(m, "down_w", layer.mlp->down_proj->weight);

  const int64_t full_heads = layout.full_kv_heads * c.group_size();
  std::vector<uint8_t> head_full(layout.head_full.begin(), layout.head_full.begin() + full_heads);
  const bool all_full = std::all_of(head_full.begin(), head_full.end(), [](uint8_t f) { return f != 0; });
  m.register_buffer("head_full", at::tensor(head_full, at::kByte).to(at::kBool));
  auto int_attr = [&](const char* name, int64_t v) { m.register_attribute(name, c10::IntType::get(), v); };
  int_attr("num_heads", c.num_heads);
  int_attr("num_kv_heads", c.num_kv_heads);
  int_attr("head_dim", c.head_dim);
  int_attr("group", c.group_size());
  int_attr("window", swa.window);
  int_attr("sinks", swa.sinks);
  int_attr("full_kv_heads", layout.full_kv_heads);
  int_attr("full_mode", all_full ? kCausal : kPerHead);
  m.register_attribute("eps", c10::FloatType::get(), c.rms_norm_eps);
  m.register_attribute("scale", c10::FloatType::get(), 1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  m.define(layer_source(c));
  return m;
}

nlohmann::json format_info(const ModelConfig& c, const Assignment& a, int64_t query_block) {
  return {{"format", "consa.torchscript"},
          {"version", kTorchScriptFormatVersion},
          {"architecture", architecture_name(c.arch)},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"num_layers", c.num_layers},
          {"num_heads", c.num_heads},
          {"num_kv_heads", c.num_kv_heads},
          {"head_dim", c.head_dim},
          {"window", a.swa.window},
          {"sinks", a.swa.sinks},
          {"query_block", query_block},
          {"methods", {"forward(input_ids) -> logits", "init_cache(batch, capacity) -> cache",
                       "extend(input_ids, cache, last_only) -> logits"}}};
}

}  // namespace

Module build_scripted_model(CausalLM& model, const Assignment& assignment, const TorchScriptOptions& options) {
  CONSA_CHECK(options.query_block > 0, "torchscript export: query_block must be > 0");
  at::NoGradGuard no_grad;
  std::vector<LayerHeadLayout> layouts;
  CausalLM work = hybrid_model_copy(model, assignment, &layouts);
  const ModelConfig& c = work->config();
  Module top("__torch__.consa.HybridCausalLM");
  add_parameter(top, "embed_tokens", work->model->embed_tokens->weight);
  add_parameter(top, "norm", work->model->norm->weight);
  if (!c.tie_word_embeddings) add_parameter(top, "lm_head", work->lm_head->weight);
  top.register_buffer("inv_freq", rope_inv_freq(c.rope, c.head_dim).to(work->device()));
  std::vector<int64_t> full_kv_heads;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    full_kv_heads.push_back(layouts[l].full_kv_heads);
    top.register_module("layer_" + std::to_string(l),
                        build_layer(*work->model->layer_list[l], layouts[l], c, assignment.swa, l));
  }
  top.register_attribute("full_kv_heads", c10::ListType::ofInts(), c10::List<int64_t>(full_kv_heads));
  top.register_attribute("num_kv_heads", c10::IntType::get(), c.num_kv_heads);
  top.register_attribute("head_dim", c10::IntType::get(), c.head_dim);
  top.register_attribute("window", c10::IntType::get(), assignment.swa.window);
  top.register_attribute("sinks", c10::IntType::get(), assignment.swa.sinks);
  top.register_attribute("query_block", c10::IntType::get(), options.query_block);
  top.register_attribute("eps", c10::FloatType::get(), c.rms_norm_eps);
  top.define(model_source(c));
  return top;
}

void export_torchscript(CausalLM& model, const Assignment& assignment, const std::string& path,
                        const TorchScriptOptions& options) {
  Module module = build_scripted_model(model, assignment, options);
  std::vector<LayerHeadLayout> layouts;
  for (int64_t l = 0; l < model->num_layers(); ++l) layouts.push_back(hybrid_layout(assignment, l));
  Assignment stored = permuted_assignment(assignment, layouts);
  stored.weights_checksum = assignment.weights_checksum;  // the weights it was learned on
  torch::jit::ExtraFilesMap extra{
      {"assignment.json", stored.to_json(4096, static_cast<int64_t>(c10::elementSize(model->dtype()))).dump(2)},
      {"consa.json", format_info(model->config(), assignment, options.query_block).dump(2)}};
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
  torch::jit::ExtraFilesMap extra{{"assignment.json", ""}, {"consa.json", ""}};
  Module module;
  try {
    module = torch::jit::load(path, device, extra);
  } catch (const std::exception& e) {  // c10::Error; LibTorch's zip reader on 1.13 throws others
    const std::string what = e.what();
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
  const int64_t vocab = vocab_size();
  // One host read per call (this runs at every decode step).
  CONSA_CHECK(input_ids.numel() == 0 || !((input_ids < 0) | (input_ids >= vocab)).any().item<bool>(),
              "input_ids: token ids must lie in [0, ", vocab, ")");
  return module_.get_method("extend")({input_ids.to(at::kLong), cache.tensors, last_only}).toTensor();
}

at::Tensor ScriptedLM::forward(const at::Tensor& input_ids) {
  Cache cache = new_cache(input_ids.size(0), std::max<int64_t>(1, input_ids.size(1)));
  return extend(input_ids, cache, false);
}

int64_t ScriptedLM::Cache::length() const { return tensors.get(tensors.size() - 1)[0].item<int64_t>(); }
int64_t ScriptedLM::Cache::capacity() const { return tensors.get(tensors.size() - 1)[1].item<int64_t>(); }

int64_t ScriptedLM::Cache::kv_bytes() const {
  int64_t bytes = 0;
  for (size_t i = 0; i + 2 < tensors.size(); ++i) {
    const at::Tensor t = tensors.get(i);
    bytes += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return bytes;
}

int64_t ScriptedLM::vocab_size() const { return module_.attr("embed_tokens").toTensor().size(0); }
at::Device ScriptedLM::device() const { return module_.attr("embed_tokens").toTensor().device(); }
at::ScalarType ScriptedLM::dtype() const { return module_.attr("embed_tokens").toTensor().scalar_type(); }

}  // namespace consa
