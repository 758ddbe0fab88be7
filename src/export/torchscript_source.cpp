// The TorchScript source of the pruned export's methods (torchscript_export.cpp builds the
// modules around it): one decoder layer's and the whole model's, with aten operators or, where
// `fused`, consa's own (consa/kernels/torch_ops.h), and the resolver that compiles either.
#include "torchscript_source.h"

#include <sstream>

namespace consa::torchscript {

namespace {

// Resolves `consa.<op>` in the sources below to consa's registered operators (torch.ops.consa in
// Python; C++'s native resolver knows only `torch`, which it maps to aten).
struct ConsaOpsResolver : torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string& name, torch::jit::GraphFunction& m,
                                                         const torch::jit::SourceRange& loc) override {
    if (name == "consa") return std::make_shared<torch::jit::BuiltinModule>("consa");
    return torch::jit::nativeResolver()->resolveValue(name, m, loc);
  }
  c10::TypePtr resolveType(const std::string& name, const torch::jit::SourceRange& loc) override {
    return torch::jit::nativeResolver()->resolveType(name, loc);
  }
};

// RMSNorm over the last dimension, as the model computes it.
std::string rms_source(bool fused) {
  if (fused) return R"JIT(
def _rms(self, x: Tensor, w: Tensor) -> Tensor:
    return consa.rms_norm(x, w, self.eps)
)JIT";
  return R"JIT(
def _rms(self, x: Tensor, w: Tensor) -> Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
    return w * h.to(x.dtype)
)JIT";
}

}  // namespace

torch::jit::ResolverPtr source_resolver(bool fused) {
  if (fused) return std::make_shared<ConsaOpsResolver>();
  return torch::jit::nativeResolver();
}

// One decoder layer. Dtype codes are ScalarType numbers (TorchScript source has no torch.float32
// without Python): 4 = int64.
// With `fused`, RMSNorm, RoPE, the residual add before the post-attention norm and the decode
// attention call consa's operators (consa/kernels/torch_ops.h) instead of aten ones.
std::string layer_source(const ModelConfig& c, bool fused) {
  const std::string qkv_bias = c.qkv_bias ? "self.qkv_b" : "None";
  std::ostringstream s;
  s << rms_source(fused);
  if (fused)
    s << R"JIT(
def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x [B, T, H, D], before the heads move ahead of the positions
    return consa.rope(x, cos, sin)
)JIT";
  else
    s << R"JIT(
def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x [B, H, T, D]
    half = self.head_dim // 2
    rotated = torch.cat([-x[:, :, :, half:], x[:, :, :, :half]], -1)
    return x * cos + rotated * sin
)JIT";
  s << R"JIT(

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

def _project(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    # q [B, heads, T, D], k and v [B, kv_heads, T, D], RoPE applied.
    b = x.size(0)
    t = x.size(1)
    # q, k and v projections in one matmul (their weights stacked at export).
    qkv = torch.linear(self._rms(x, self.input_norm), self.qkv_w, )JIT" << qkv_bias << R"JIT()
    nq = self.num_heads * self.head_dim
    nk = self.num_kv_heads * self.head_dim
    q = qkv[:, :, :nq].view(b, t, self.num_heads, self.head_dim)
    k = qkv[:, :, nq:nq + nk].view(b, t, self.num_kv_heads, self.head_dim)
    v = qkv[:, :, nq + nk:].view(b, t, self.num_kv_heads, self.head_dim)
)JIT";
  if (c.qk_norm)
    s << R"JIT(    q = self._rms(q, self.q_norm)
    k = self._rms(k, self.k_norm)
)JIT";
  if (fused)
    s << R"JIT(    return self._rope(q, cos, sin).transpose(1, 2), self._rope(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
)JIT";
  else
    s << R"JIT(    return self._rope(q.transpose(1, 2), cos, sin), self._rope(k.transpose(1, 2), cos, sin), v.transpose(1, 2)
)JIT";
  s << R"JIT(

def _output(self, x: Tensor, outs: List[Tensor]) -> Tensor:
    # The attention heads (full-cache slice, then sliding) through o_proj, the residual and the MLP.
    # (one slice: no concatenation, which would copy it)
    attention = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
    heads = attention.transpose(1, 2).reshape(x.size(0), x.size(1), self.num_heads * self.head_dim)
    attended = torch.linear(heads, self.o_w, )JIT" << (c.o_bias ? "self.o_b" : "None") << R"JIT()
)JIT";
  if (fused)
    s << R"JIT(    x, h = consa.add_rms_norm(attended, x, self.post_norm, self.eps)
)JIT";
  else
    s << R"JIT(    x = x + attended
    h = self._rms(x, self.post_norm)
)JIT";
  s << R"JIT(
    gate_up = torch.linear(h, self.gate_up_w, None)  # gate and up projections stacked
    inner = gate_up.size(-1) // 2
)JIT" << (fused ? "    mlp = consa.swiglu(gate_up[:, :, :inner], gate_up[:, :, inner:])\n"
                    : "    mlp = torch.silu(gate_up[:, :, :inner]) * gate_up[:, :, inner:]\n")
    << R"JIT(    return x + torch.linear(mlp, self.down_w, None)

def _attend_one(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    # One query per sequence, q [B, n*G, 1, D]; k, v [B, n, tk, D]; bias fp32, 0 (visible) or
    # -inf, broadcasting to [n, G, tk]. Scale, mask and the fp32 cast are one kernel: a decode
    # step is bound by how many kernels it launches.
)JIT";
  if (fused)
    s << R"JIT(    return consa.decode_attention(q, k, v, bias, self.scale)
)JIT";
  else
    s << R"JIT(    b = q.size(0)
    n = k.size(1)
    scores = torch.matmul(q.reshape(b, n, self.group, self.head_dim), k.transpose(2, 3))
    probs = torch.softmax(torch.add(bias, scores, alpha=self.scale), -1).to(q.dtype)
    return torch.matmul(probs, v).view(b, n * self.group, 1, self.head_dim)
)JIT";
  s << R"JIT(

def forward(self, x: Tensor, cos: Tensor, sin: Tensor, p0: int, full_k: Tensor, full_v: Tensor,
            ring_k: Tensor, ring_v: Tensor, ring_pos: Tensor, ring_keep: Tensor, ring_slots: Tensor,
            query_block: int) -> Tensor:
    t = x.size(1)
    q, k, v = self._project(x, cos, sin)
    nf = self.full_kv_heads
    g = self.group
    q_pos = torch.arange(p0, p0 + t, device=x.device)
    outs: List[Tensor] = []
    if nf > 0:
        # Full-cache groups: write the new positions, attend over everything so far.
        full_k[:, :, p0:p0 + t] = k[:, :nf]
        full_v[:, :, p0:p0 + t] = v[:, :nf]
        k_pos = torch.arange(0, full_k.size(2), device=x.device)
        blocks: List[Tensor] = []
        for t0 in range(0, t, query_block):
            t1 = min(t, t0 + query_block)
            # Keys up to a multiple of 8 where the cache has them: the score rows then stay 16-byte
            # aligned for cuBLAS's tensor-core kernels (an odd count falls back to a slow GEMV);
            # the extra keys lie after the queries, so the causal mask hides them.
            end = min(full_k.size(2), (p0 + t1 + 7) // 8 * 8)
            blocks.append(self._attend(q[:, :nf * g, t0:t1], full_k[:, :, :end], full_v[:, :, :end],
                                       q_pos[t0:t1], k_pos[:end], self.full_mode))
        outs.append(torch.cat(blocks, 2))
    if nf < self.num_kv_heads:
        new_k = k[:, nf:]
        new_v = v[:, nf:]
        if t == 1:
            # One token: it takes its ring slot first (extend has recorded its position), then
            # attends over the ring alone. The slot held position p0 - window, which the window
            # no longer sees; sink slots are never reused.
            ring_k.index_copy_(2, ring_slots, new_k)
            ring_v.index_copy_(2, ring_slots, new_v)
            outs.append(self._attend(q[:, nf * g:], ring_k, ring_v, q_pos, ring_pos, 1))
        else:
            # The ring (earlier positions) plus the new keys a block can see, then the ring keeps
            # the last positions.
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
    return self._output(x, outs)

def decode(self, x: Tensor, cos: Tensor, sin: Tensor, position: Tensor, slot: Tensor, full_k: Tensor,
           full_v: Tensor, ring_k: Tensor, ring_v: Tensor, full_bias: Tensor, full_window_bias: Tensor,
           ring_bias: Tensor) -> Tensor:
    # One token at `position` ([1], on the device) in shapes that do not depend on it: the full
    # groups attend over the whole cache, masked past the position by the biases decode_step
    # builds once for all layers; the ring as in forward.
    nf = self.full_kv_heads
    g = self.group
)JIT";
  if (fused)  // one kernel from the projection to q and the cache writes
    s << "    qkv = torch.linear(self._rms(x, self.input_norm), self.qkv_w, " << qkv_bias << ")\n"
      << "    q = consa.decode_qkv(qkv, " << (c.qk_norm ? "self.q_norm, self.k_norm" : "None, None")
      << ", self.eps, cos, sin, position, slot, full_k, full_v, ring_k, ring_v)\n";
  else
    s << R"JIT(    q, k, v = self._project(x, cos, sin)
    if nf > 0:
        full_k.index_copy_(2, position, k[:, :nf])
        full_v.index_copy_(2, position, v[:, :nf])
    if nf < self.num_kv_heads:
        ring_k.index_copy_(2, slot, k[:, nf:])
        ring_v.index_copy_(2, slot, v[:, nf:])
)JIT";
  s << R"JIT(    outs: List[Tensor] = []
    bias = full_bias
    if nf > 0 and self.full_mode == 2:
        bias = torch.where(self.head_full.view(nf, g, 1), full_bias, full_window_bias)
)JIT";
  if (fused)  // both slices in one launch
    s << R"JIT(    if nf > 0 and nf < self.num_kv_heads:
        outs.append(consa.hybrid_decode_attention(q, full_k, full_v, bias, ring_k, ring_v, ring_bias, self.scale))
    elif nf > 0:
        outs.append(self._attend_one(q, full_k, full_v, bias))
    else:
        outs.append(self._attend_one(q, ring_k, ring_v, ring_bias))
)JIT";
  else
    s << R"JIT(    if nf > 0:
        outs.append(self._attend_one(q[:, :nf * g], full_k, full_v, bias))
    if nf < self.num_kv_heads:
        outs.append(self._attend_one(q[:, nf * g:], ring_k, ring_v, ring_bias))
)JIT";
  s << R"JIT(    return self._output(x, outs)
)JIT";
  return s.str();
}

// The model: embeddings, the layers (unrolled: one call each), final norm and head.
std::string model_source(const ModelConfig& c, bool fused) {
  std::ostringstream s;
  const int64_t slot_entry = 4 * c.num_layers, length_entry = slot_entry + 1;
  s << rms_source(fused) << R"JIT(
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

def _ring_slot(self, pos: Tensor) -> Tensor:
    # Sinks in slots [0, S), later positions j in slot S + (j - S) % W.
    return torch.where(pos < self.sinks, pos, self.sinks + torch.remainder(pos - self.sinks, self.window))

def _ring_slots(self, p0: int, t: int, dev: Device) -> Tuple[Tensor, Tensor]:
    # New positions the ring keeps (indices into the new tokens) and their slots; only the
    # last W of the non-sink positions survive.
    sink_end = min(t, max(0, self.sinks - p0))
    start = max(sink_end, t - self.window)
    keep = torch.cat([torch.arange(0, sink_end, device=dev), torch.arange(start, t, device=dev)])
    return keep, self._ring_slot(keep + p0)

def _rope_tables(self, positions: Tensor, dtype: int) -> Tuple[Tensor, Tensor]:
    freqs = torch.outer(positions.float(), self.inv_freq)
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)

def extend(self, input_ids: Tensor, cache: List[Tensor], last_only: bool) -> Tensor:
    t = input_ids.size(1)
    state = cache[)JIT" << length_entry << R"JIT(]
    p0 = int(state[0])
    capacity = int(state[1])
    assert p0 + t <= capacity, "consa: the KV cache is full; create it with a larger capacity"
    dev = self.embed_tokens.device
    x = torch.embedding(self.embed_tokens, input_ids.to(dev))
    cos, sin = self._rope_tables(torch.arange(p0, p0 + t, device=dev), x.dtype)
    keep, slots = self._ring_slots(p0, t, dev)
    ring_pos = cache[)JIT" << slot_entry << R"JIT(]
    if t == 1:  # a single token takes its ring slot before attending (see the layers)
        ring_pos.index_copy_(0, slots, keep + p0)
)JIT";
  for (int64_t l = 0; l < c.num_layers; ++l)
    s << "    x = self.layer_" << l << ".forward(x, cos, sin, p0, cache[" << 4 * l << "], cache[" << 4 * l + 1
      << "], cache[" << 4 * l + 2 << "], cache[" << 4 * l + 3 << "], ring_pos, keep, slots, self.query_block)\n";
  s << R"JIT(    if t != 1:
        ring_pos.index_copy_(0, slots, keep + p0)
    state[0] += t
    if last_only:
        x = x[:, t - 1:]
    return torch.linear(self._rms(x, self.norm), )JIT" << (c.tie_word_embeddings ? "self.embed_tokens" : "self.lm_head")
    << R"JIT(, None)

def _bias(self, position: Tensor, k_pos: Tensor, windowed: bool) -> Tensor:
    # fp32 (dtype 6) 0 where the query at `position` sees key position k_pos (-1: an empty ring
    # slot), -inf elsewhere; `windowed` adds the window and its sinks.
    visible = (k_pos >= 0) & (k_pos <= position)
    if windowed:
        visible = visible & ((k_pos > position - self.window) | (k_pos < self.sinks))
    return torch.zeros([k_pos.size(0)], dtype=6, device=k_pos.device).masked_fill(~visible, float("-inf"))

def decode_step(self, input_ids: Tensor, cache: List[Tensor], position: Tensor) -> Tensor:
    # One token per sequence (input_ids [B, 1] on the model's device) at cache position
    # `position` ([1] int64, on the device) -> logits [B, 1, vocab]. No shape depends on the
    # position and nothing is read on the host, so a CUDA graph can record it once and replay it
    # at every step. The caller advances the cache's length.
    x = torch.embedding(self.embed_tokens, input_ids)
    cos, sin = self._rope_tables(position, x.dtype)
    slot = self._ring_slot(position)
    ring_pos = cache[)JIT" << slot_entry << R"JIT(]
    ring_pos.index_copy_(0, slot, position)
    k_pos = torch.arange(0, cache[0].size(2), device=x.device)
    full_bias = self._bias(position, k_pos, False)
    full_window_bias = self._bias(position, k_pos, True)
    ring_bias = self._bias(position, ring_pos, True)
)JIT";
  for (int64_t l = 0; l < c.num_layers; ++l)
    s << "    x = self.layer_" << l << ".decode(x, cos, sin, position, slot, cache[" << 4 * l << "], cache["
      << 4 * l + 1 << "], cache[" << 4 * l + 2 << "], cache[" << 4 * l + 3
      << "], full_bias, full_window_bias, ring_bias)\n";
  s << R"JIT(    return torch.linear(self._rms(x, self.norm), )JIT"
    << (c.tie_word_embeddings ? "self.embed_tokens" : "self.lm_head") << R"JIT(, None)

def forward(self, input_ids: Tensor) -> Tensor:
    cache = self.init_cache(input_ids.size(0), input_ids.size(1))
    return self.extend(input_ids, cache, False)
)JIT";
  return s.str();
}

}  // namespace consa::torchscript
