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

// The layer's input norm and QKV projection.
std::string input_projection(bool fused, const std::string& qkv_bias) {
  if (fused) return "consa.rms_norm_linear(x, self.input_norm, self.eps, self.qkv_w, " + qkv_bias + ")";
  return "torch.linear(self._rms(x, self.input_norm), self.qkv_w, " + qkv_bias + ")";
}

// The final norm and the head.
std::string head_projection(bool fused, const ModelConfig& c) {
  const std::string head = c.tie_word_embeddings ? "self.embed_tokens" : "self.lm_head";
  if (fused) return "consa.rms_norm_linear(x, self.norm, self.eps, " + head + ", None)";
  return "torch.linear(self._rms(x, self.norm), " + head + ", None)";
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
std::string layer_source(const ModelConfig& c, bool fused, bool single_ring) {
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

def _attend(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, mode: int, window: int,
            head_window: Tensor) -> Tensor:
    # q [B, n*G, tq, D] (the G query heads of a group adjacent); k, v [B, n, tk, D];
    # positions [tq] and [tk], -1 for an empty ring slot. mode (AttendMode): 0 causal, 1 the
    # slice's `window`, 2 each head's own (head_window [n*G], huge for a full head).
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
    if mode == 1:
        visible = visible & ((kp > qp - window) | (kp < self.sinks))
    elif mode == 2:
        visible = visible & ((kp > qp - head_window.view(n, g, 1, 1)) | (kp < self.sinks))
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores.float(), -1).to(q.dtype)
    return torch.matmul(probs.view(b, n, g * tq, tk), v).view(b, n * g, tq, self.head_dim)

)JIT";
  s << R"JIT(def _project(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    # q [B, heads, T, D], k and v [B, kv_heads, T, D], RoPE applied.
    b = x.size(0)
    t = x.size(1)
    # q, k and v projections in one matmul (their weights stacked at export).
    qkv = )JIT" << input_projection(fused, qkv_bias) << R"JIT(
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
)JIT";
  const std::string o_bias = c.o_bias ? "self.o_b" : "None";
  if (fused)  // each projection with its residual add, its input's norm or SwiGLU: one kernel at a decode step
    s << "    x = consa.linear(heads, self.o_w, " << o_bias << R"JIT(, x)
    gate_up = consa.rms_norm_linear(x, self.post_norm, self.eps, self.gate_up_w, None)  # gate and up stacked
    return consa.swiglu_linear(gate_up, self.down_w, x)
)JIT";
  else
    s << "    x = x + torch.linear(heads, self.o_w, " << o_bias << R"JIT()
    gate_up = torch.linear(self._rms(x, self.post_norm), self.gate_up_w, None)  # gate and up projections stacked
    inner = gate_up.size(-1) // 2
    return x + torch.linear(torch.silu(gate_up[:, :, :inner]) * gate_up[:, :, inner:], self.down_w, None)
)JIT";
  s << R"JIT(

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

def _slice_bias(self, table: Tensor, g0: int, g1: int, mode: int, level: int) -> Tensor:
    # The decode bias of KV groups [g0, g1): row `level` of decode_step's table, or under mode 2
    # each query head's own row, [n, G, keys].
    if mode == 2:
        g = self.group
        return table.index_select(0, self.head_level[g0 * g:g1 * g]).view(g1 - g0, g, table.size(1))
    return table[level]

def forward(self, x: Tensor, cos: Tensor, sin: Tensor, p0: int, cache: List[Tensor], ring_pos: List[Tensor],
            ring_keep: List[Tensor], ring_slots: List[Tensor], query_block: int) -> Tensor:
    # cache: this layer's [full_k, full_v, then ring_k, ring_v per window]; ring_pos, ring_keep
    # and ring_slots per window (extend's).
    t = x.size(1)
    q, k, v = self._project(x, cos, sin)
    nf = self.full_kv_heads
    g = self.group
    q_pos = torch.arange(p0, p0 + t, device=x.device)
    outs: List[Tensor] = []
    if nf > 0:
        # Full-cache groups: write the new positions, attend over everything so far.
        full_k = cache[0]
        full_v = cache[1]
        full_k[:, :, p0:p0 + t] = k[:, :nf]
        full_v[:, :, p0:p0 + t] = v[:, :nf]
        k_pos = torch.arange(0, full_k.size(2), device=x.device)
        head_window = self.head_window[:nf * g]
        blocks: List[Tensor] = []
        for t0 in range(0, t, query_block):
            t1 = min(t, t0 + query_block)
            # Keys up to a multiple of 8 where the cache has them: the score rows then stay 16-byte
            # aligned for cuBLAS's tensor-core kernels (an odd count falls back to a slow GEMV);
            # the extra keys lie after the queries, so the causal mask hides them.
            end = min(full_k.size(2), (p0 + t1 + 7) // 8 * 8)
            blocks.append(self._attend(q[:, :nf * g, t0:t1], full_k[:, :, :end], full_v[:, :, :end],
                                       q_pos[t0:t1], k_pos[:end], self.full_mode, 0, head_window))
        outs.append(torch.cat(blocks, 2))
    for i in range(len(self.windows)):
        g0 = self.ring_g0[i]
        g1 = self.ring_g1[i]
        if g1 == g0:
            continue
        window = self.windows[i]
        mode = self.ring_mode[i]
        ring_k = cache[2 + 2 * i]
        ring_v = cache[3 + 2 * i]
        new_k = k[:, g0:g1]
        new_v = v[:, g0:g1]
        head_window = self.head_window[g0 * g:g1 * g]
        if t == 1:
            # One token: it takes its ring slot first (extend has recorded its position), then
            # attends over the ring alone. The slot held position p0 - window, which the window
            # no longer sees; sink slots are never reused.
            ring_k.index_copy_(2, ring_slots[i], new_k)
            ring_v.index_copy_(2, ring_slots[i], new_v)
            outs.append(self._attend(q[:, g0 * g:g1 * g], ring_k, ring_v, q_pos, ring_pos[i], mode, window,
                                     head_window))
        else:
            # The ring (earlier positions) plus the new keys a block can see, then the ring keeps
            # the last positions.
            new_sinks = min(t, max(0, self.sinks - p0))
            blocks = []
            for t0 in range(0, t, query_block):
                t1 = min(t, t0 + query_block)
                lo = max(0, t0 - window + 1)
                s_end = min(new_sinks, lo)
                keys = torch.cat([ring_k, new_k[:, :, :s_end], new_k[:, :, lo:t1]], 2)
                values = torch.cat([ring_v, new_v[:, :, :s_end], new_v[:, :, lo:t1]], 2)
                k_pos = torch.cat([ring_pos[i], q_pos[:s_end], q_pos[lo:t1]])
                blocks.append(self._attend(q[:, g0 * g:g1 * g, t0:t1], keys, values, q_pos[t0:t1], k_pos, mode,
                                           window, head_window))
            outs.append(torch.cat(blocks, 2))
            ring_k.index_copy_(2, ring_slots[i], new_k.index_select(2, ring_keep[i]))
            ring_v.index_copy_(2, ring_slots[i], new_v.index_select(2, ring_keep[i]))
    return self._output(x, outs)

def decode(self, x: Tensor, cos: Tensor, sin: Tensor, position: Tensor, slots: List[Tensor], cache: List[Tensor],
           full_table: Tensor, ring_tables: List[Tensor]) -> Tensor:
    # One token at `position` ([1], on the device) in shapes that do not depend on it: the full
    # groups attend over the whole cache, masked past the position by the bias tables
    # decode_step builds once for all layers (rows: causal, then one per window); each ring as
    # in forward, its token already in `slots`.
    nf = self.full_kv_heads
    g = self.group
    outs: List[Tensor] = []
    full_bias = self._slice_bias(full_table, 0, nf, self.full_mode, 0)
)JIT";
  if (fused && single_ring) {  // one kernel from the projection to q and the cache writes; both slices in one launch
    s << "    qkv = " << input_projection(fused, qkv_bias) << "\n"
      << "    q = consa.decode_qkv(qkv, " << (c.qk_norm ? "self.q_norm, self.k_norm" : "None, None")
      << ", self.eps, cos, sin, position, slots[0], cache[0], cache[1], cache[2], cache[3])\n";
    s << R"JIT(    ring_bias = self._slice_bias(ring_tables[0], nf, self.num_kv_heads, self.ring_mode[0], 1)
    if nf > 0 and nf < self.num_kv_heads:
        outs.append(consa.hybrid_decode_attention(q, cache[0], cache[1], full_bias, cache[2], cache[3], ring_bias,
                                                  self.scale))
    elif nf > 0:
        outs.append(self._attend_one(q, cache[0], cache[1], full_bias))
    else:
        outs.append(self._attend_one(q, cache[2], cache[3], ring_bias))
    return self._output(x, outs)
)JIT";
    return s.str();
  }
  s << R"JIT(    q, k, v = self._project(x, cos, sin)
    if nf > 0:
        cache[0].index_copy_(2, position, k[:, :nf])
        cache[1].index_copy_(2, position, v[:, :nf])
        outs.append(self._attend_one(q[:, :nf * g], cache[0], cache[1], full_bias))
    for i in range(len(self.windows)):
        g0 = self.ring_g0[i]
        g1 = self.ring_g1[i]
        if g1 > g0:
            cache[2 + 2 * i].index_copy_(2, slots[i], k[:, g0:g1])
            cache[3 + 2 * i].index_copy_(2, slots[i], v[:, g0:g1])
            bias = self._slice_bias(ring_tables[i], g0, g1, self.ring_mode[i], i + 1)
            outs.append(self._attend_one(q[:, g0 * g:g1 * g], cache[2 + 2 * i], cache[3 + 2 * i], bias))
    return self._output(x, outs)
)JIT";
  return s.str();
}

// The model: embeddings, the layers (unrolled: one call each), final norm and head. The cache
// list holds per layer [full_k, full_v, then ring_k, ring_v per window], then the ring slot
// positions per window, then [length, capacity].
std::string model_source(const ModelConfig& c, bool fused, int64_t windows) {
  std::ostringstream s;
  const int64_t per_layer = 2 + 2 * windows, ring_pos_entry = per_layer * c.num_layers,
                length_entry = ring_pos_entry + windows;
  auto layer_cache = [&](int64_t l) {
    return "cache[" + std::to_string(per_layer * l) + ":" + std::to_string(per_layer * (l + 1)) + "]";
  };
  const std::string ring_positions =
      "cache[" + std::to_string(ring_pos_entry) + ":" + std::to_string(ring_pos_entry + windows) + "]";
  s << rms_source(fused) << R"JIT(
def init_cache(self, batch: int, capacity: int) -> List[Tensor]:
    dev = self.embed_tokens.device
    dt = self.embed_tokens.dtype
    cache: List[Tensor] = []
    for l in range(len(self.full_kv_heads)):
        nf = self.full_kv_heads[l]
        cache.append(torch.zeros([batch, nf, capacity, self.head_dim], dtype=dt, device=dev))
        cache.append(torch.zeros([batch, nf, capacity, self.head_dim], dtype=dt, device=dev))
        for i in range(len(self.windows)):
            ring = min(self.sinks + self.windows[i], capacity)
            n = self.ring_kv_heads[l * len(self.windows) + i]
            cache.append(torch.zeros([batch, n, ring, self.head_dim], dtype=dt, device=dev))
            cache.append(torch.zeros([batch, n, ring, self.head_dim], dtype=dt, device=dev))
    for w in self.windows:
        cache.append(torch.full([min(self.sinks + w, capacity)], -1, dtype=4, device=dev))
    # [length, capacity] on the CPU; built from the argument so no call shares a constant.
    cache.append(torch.tensor([0, capacity], dtype=4))
    return cache

def _ring_slot(self, pos: Tensor, window: int) -> Tensor:
    # Sinks in slots [0, S), later positions j in slot S + (j - S) % W.
    return torch.where(pos < self.sinks, pos, self.sinks + torch.remainder(pos - self.sinks, window))

def _ring_slots(self, p0: int, t: int, window: int, dev: Device) -> Tuple[Tensor, Tensor]:
    # New positions a ring keeps (indices into the new tokens) and their slots; only the last W
    # of the non-sink positions survive.
    sink_end = min(t, max(0, self.sinks - p0))
    start = max(sink_end, t - window)
    keep = torch.cat([torch.arange(0, sink_end, device=dev), torch.arange(start, t, device=dev)])
    return keep, self._ring_slot(keep + p0, window)

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
    keeps: List[Tensor] = []
    slots: List[Tensor] = []
    for w in self.windows:
        keep, slot = self._ring_slots(p0, t, w, dev)
        keeps.append(keep)
        slots.append(slot)
    ring_pos = )JIT" << ring_positions << R"JIT(
    if t == 1:  # a single token takes its ring slots before attending (see the layers)
        for i in range(len(self.windows)):
            ring_pos[i].index_copy_(0, slots[i], keeps[i] + p0)
)JIT";
  for (int64_t l = 0; l < c.num_layers; ++l)
    s << "    x = self.layer_" << l << ".forward(x, cos, sin, p0, " << layer_cache(l)
      << ", ring_pos, keeps, slots, self.query_block)\n";
  s << R"JIT(    if t != 1:
        for i in range(len(self.windows)):
            ring_pos[i].index_copy_(0, slots[i], keeps[i] + p0)
    state[0] += t
    if last_only:
        x = x[:, t - 1:]
    return )JIT" << head_projection(fused, c) << R"JIT(

def _bias_table(self, position: Tensor, k_pos: Tensor) -> Tensor:
    # fp32 (dtype 6) [1 + windows, keys]: 0 where the query at `position` sees key position k_pos
    # (-1: an empty ring slot), -inf elsewhere; row 0 causal, row i + 1 window i with its sinks
    # (self.reach holds a distance no key reaches in row 0).
    kp = k_pos.unsqueeze(0)
    visible = (kp >= 0) & (kp <= position) & ((kp > position - self.reach.unsqueeze(1)) | (kp < self.sinks))
    return torch.zeros(visible.size(), dtype=6, device=k_pos.device).masked_fill(~visible, float("-inf"))

def decode_step(self, input_ids: Tensor, cache: List[Tensor], position: Tensor) -> Tensor:
    # One token per sequence (input_ids [B, 1] on the model's device) at cache position
    # `position` ([1] int64, on the device) -> logits [B, 1, vocab]. No shape depends on the
    # position and nothing is read on the host, so a CUDA graph can record it once and replay it
    # at every step. The caller advances the cache's length.
    x = torch.embedding(self.embed_tokens, input_ids)
    cos, sin = self._rope_tables(position, x.dtype)
    ring_pos = )JIT" << ring_positions << R"JIT(
    slots: List[Tensor] = []
    ring_tables: List[Tensor] = []
    for i in range(len(self.windows)):
        slot = self._ring_slot(position, self.windows[i])
        ring_pos[i].index_copy_(0, slot, position)
        slots.append(slot)
        ring_tables.append(self._bias_table(position, ring_pos[i]))
    full_table = self._bias_table(position, torch.arange(0, cache[0].size(2), device=x.device))
)JIT";
  for (int64_t l = 0; l < c.num_layers; ++l)
    s << "    x = self.layer_" << l << ".decode(x, cos, sin, position, slots, " << layer_cache(l)
      << ", full_table, ring_tables)\n";
  s << "    return " << head_projection(fused, c) << R"JIT(

def forward(self, input_ids: Tensor) -> Tensor:
    cache = self.init_cache(input_ids.size(0), input_ids.size(1))
    return self.extend(input_ids, cache, False)
)JIT";
  return s.str();
}

}  // namespace consa::torchscript
