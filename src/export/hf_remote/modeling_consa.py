# consa's hybrid full / sliding-window attention decoder for transformers' remote code.
#
#     model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True)
#
# Supported transformers versions: 5.x (checked on 5.17 with torch 2.11). Written to also run on
# 4.56 and later 4.x, which has not been checked. Attention runs through transformers' attention
# interface: "sdpa" (the default) or "eager"; flash and flex attention are refused, since neither
# takes the per-head masks or the sinks.
#
# In every layer the KV groups that keep a full-length cache come first and the sliding-window
# groups after them, widest window first (configuration_consa.py describes the "consa" entry). So
# a layer's groups split into contiguous slices of equal cache window, the full-cache slice and
# one slice per window, and attention runs as one call per slice. A slice whose query heads all
# share its window (or all keep full attention, in the full slice) takes a mask shared with every
# layer; under head granularity a slice can mix heads of several windows, and gets a per-head mask.
#
# Generation uses ConsaHybridCache: full groups keep every position, a group with window W only
# the `sinks` first and the W most recent positions, so it holds min(context, W + sinks) positions
# whatever the length. `cache.nbytes()` reports what it holds and
# `model.kv_cache_bytes(context, bytes_per_element)` the same figure computed from the layout, as
# consa's assignment.json does.
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_consa import ConsaHybridConfig

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def rope_inv_freq(rope, head_dim, device):
    """Inverse frequencies for rope_type default, linear or llama3 (float32, as transformers)."""
    theta = float(rope.get("rope_theta", 10000.0))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / float(rope["factor"])
    if kind != "llama3":
        return inv_freq
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_len = float(rope["original_max_position_embeddings"])
    wavelen = 2 * torch.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x, n_rep):
    batch, heads, length, dim = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None].expand(batch, heads, n_rep, length, dim).reshape(batch, heads * n_rep, length, dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention; `attention_mask` is additive ([B, 1 or H, Q, K])."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def kept_positions(seen, window, sinks):
    """(sinks kept, window start): a group with window `window` that has seen `seen` positions
    keeps [0, sinks kept) and [window start, seen), min(seen, window + sinks) positions in all."""
    head = min(sinks, seen)
    return head, max(head, seen - window)


def window_slices(kv_windows):
    """[(window, first group, end group)]: the runs of equal cache window in a layer's groups."""
    out = []
    for g, w in enumerate(kv_windows):
        if out and out[-1][0] == w:
            out[-1][2] = g + 1
        else:
            out.append([w, g, g + 1])
    return [tuple(x) for x in out]


class ConsaLayerCache:
    """One layer's cache: per slice of window_slices(kv_windows), [B, groups, positions, D] keys and
    values, the full slice (window 0) with every position seen, a ring slice with window W the
    `sinks` first and the W most recent (<= W + sinks)."""

    # Flags transformers' generic code reads. Not "sliding": the full-cache part grows.
    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, kv_windows, sinks):
        self.kv_windows, self.sinks = list(kv_windows), sinks
        self.slices = window_slices(self.kv_windows)
        self.parts = [None] * len(self.slices)  # (keys, values) per slice
        self.seen = 0
        self.keys = self.values = None  # transformers' generic code reads these; the split lives above
        self.is_initialized = False

    def update(self, key, value):
        """Adds [B, KV, T, D] states; returns [(keys, values)] per slice: what it attends over in
        this forward, positions [0, seen + T) for the full slice, and
        ConsaHybridCache.sliding_key_positions(W, T) for a ring slice with window W."""
        n, t = self.seen, key.shape[2]
        out = []
        for i, (window, g0, g1) in enumerate(self.slices):
            k, v = key[:, g0:g1], value[:, g0:g1]
            if self.parts[i] is None:
                # Head slices are views of the whole projection: stored alone they would keep all
                # of it alive, so what is kept is always a copy of its own (torch.cat copies too).
                k, v = k.clone(memory_format=torch.contiguous_format), v.clone(memory_format=torch.contiguous_format)
            else:
                k, v = torch.cat([self.parts[i][0], k], dim=2), torch.cat([self.parts[i][1], v], dim=2)
            out.append((k, v))
            kept_k, kept_v = k, v
            if window:
                # The states cover sliding_key_positions(window, t), ascending: the new sinks are
                # their first entries and the new window their last ones.
                head, start = kept_positions(n + t, window, self.sinks)
                tail = n + t - start
                if k.shape[2] > head + tail:
                    kept_k = torch.cat([k[:, :, :head], k[:, :, k.shape[2] - tail:]], dim=2)
                    kept_v = torch.cat([v[:, :, :head], v[:, :, v.shape[2] - tail:]], dim=2)
            self.parts[i] = (kept_k, kept_v)
        self.seen = n + t
        self.is_initialized = True
        return out

    def tensors(self):
        return [x for part in self.parts if part is not None for x in part]

    def nbytes(self):
        return sum(x.numel() * x.element_size() for x in self.tensors())

    def _map(self, fn):
        self.parts = [None if part is None else (fn(part[0]), fn(part[1])) for part in self.parts]

    def get_seq_length(self, *args):
        return self.seen

    def get_max_length(self, *args):
        return -1

    get_max_cache_shape = get_max_length

    def get_mask_sizes(self, *args):
        raise NotImplementedError("ConsaHybridCache builds its own masks")

    def lazy_initialization(self, *args, **kwargs):
        pass

    def reorder_cache(self, beam_idx):
        self._map(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_repeat_interleave(self, repeats):
        self._map(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        self._map(lambda x: x[indices])

    def crop(self, max_length):
        if max_length in (0, self.seen):
            return
        raise NotImplementedError("a sliding-window cache cannot be cropped: evicted positions are gone")

    def reset(self):
        self.__init__(self.kv_windows, self.sinks)


class ConsaHybridCache(Cache):
    """KV cache of the hybrid: full-cache groups keep every position, a group with window W only
    the `sinks` first and the W most recent ones. Layers are ConsaLayerCache objects."""

    def __init__(self, config):
        try:
            super().__init__(layers=[])  # transformers >= 4.56
        except TypeError:
            super().__init__()
        layout = config.hybrid_layout()
        self.sinks = layout.sinks
        self.layers = [ConsaLayerCache(w, self.sinks) for w in layout.kv_windows]

    @property
    def is_compileable(self):
        return False

    @property
    def is_croppable(self):
        return False

    @property
    def is_initialized(self):
        return any(layer.is_initialized for layer in self.layers)

    @property
    def is_sliding(self):
        return [False] * len(self.layers)

    def __len__(self):
        return len(self.layers)

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        raise NotImplementedError("ConsaHybridCache holds several head slices; ConsaAttention calls update_split")

    def update_split(self, key_states, value_states, layer_idx):
        return self.layers[layer_idx].update(key_states, value_states)

    def sliding_key_positions(self, window, new_tokens, device):
        """Cache positions of the keys a ring slice with `window` attends over in the next forward."""
        seen = self.get_seq_length()
        head, start = kept_positions(seen, window, self.sinks)
        return torch.cat([torch.arange(head, device=device), torch.arange(start, seen + new_tokens, device=device)])

    def get_seq_length(self, layer_idx=0):
        return self.layers[layer_idx].seen if self.layers else 0

    def get_max_length(self, layer_idx=0):
        return -1

    get_max_cache_shape = get_max_length

    def get_mask_sizes(self, *args, **kwargs):
        raise NotImplementedError("ConsaHybridCache builds its own masks")

    def reorder_cache(self, beam_idx):
        for layer in self.layers:
            layer.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats):
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices):
        for layer in self.layers:
            layer.batch_select_indices(indices)

    def crop(self, max_length):
        for layer in self.layers:
            layer.crop(max_length)

    def reset(self):
        for layer in self.layers:
            layer.reset()

    def nbytes(self):
        """Bytes of key and value states the cache holds now."""
        return sum(layer.nbytes() for layer in self.layers)


class ConsaRMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(x.dtype)


class ConsaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class AttentionMasks:
    """The boolean masks of one forward (True: attend), built on first use and shared by every
    layer. Positions are cache positions: `past` cached tokens, then `new` ones. `ring_keys` maps
    each ring window to the cache positions of the keys its slices attend over."""

    def __init__(self, sinks, past, new, padding, ring_keys, device):
        self.sinks, self.past, self.new, self.padding, self.ring_keys = sinks, past, new, padding, ring_keys
        self.queries = torch.arange(past, past + new, device=device)[:, None]
        self.all_keys = torch.arange(past + new, device=device)
        self._cache = {}

    def _get(self, name, build):
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    def _build(self, keys, head_windows):
        """[1 or B, 1 or H, Q, K]: query i sees key j iff j <= i and, for a head with window W,
        (j > i - W or j < sinks); a window 0 is full causal attention. One entry in head_windows
        gives a mask shared by all heads."""
        # Window 0 as one wider than any distance, so one formula covers both.
        reach = torch.tensor([w or self.past + self.new + 1 for w in head_windows], device=keys.device)
        k, q = keys[None, None, :], self.queries[None]
        mask = (k <= q) & ((k > q - reach[:, None, None]) | (k < self.sinks))
        mask = mask[None]
        if self.padding is not None:
            mask = mask & self.padding[:, keys][:, None, None, :].bool()
        # A padded query may see no key at all: let it see every key rather than give NaNs (its
        # output is never used).
        return mask | ~mask.any(dim=-1, keepdim=True)

    def mask(self, window, head_windows, eager):
        """Mask of a slice whose cache window is `window` (0: the full slice) and whose query heads
        have `head_windows` (a tuple); None where sdpa's own causal mask does."""
        shared = all(w == window for w in head_windows)
        if shared and window == 0 and not eager and self.padding is None and (self.past == 0 or self.new == 1):
            # Plain causal attention over every cached key: sdpa needs no mask for it when the
            # queries start at 0 (its is_causal) or are a single decode step.
            return None
        keys = self.ring_keys[window] if window else self.all_keys
        heads = (window,) if shared else tuple(head_windows)
        return self._get((window, heads), lambda: self._build(keys, heads))

    def additive(self, mask, dtype):
        """The eager form of a boolean mask: 0 where attended, the dtype's minimum elsewhere."""
        if mask is None:
            return None
        return self._get(("additive", id(mask), dtype), lambda: torch.where(
            mask, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min))


class ConsaAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        layout = config.hybrid_layout()
        kind = config.base_model_type()
        self.head_dim = config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        # Qwen2 always has q/k/v biases and no o_proj bias; the others follow attention_bias.
        qkv_bias = kind == "qwen2" or bool(config.attention_bias)
        o_bias = kind != "qwen2" and bool(config.attention_bias)
        hidden, d = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * d, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * d, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, hidden, bias=o_bias)
        if kind == "qwen3":  # an RMSNorm over head_dim, shared by the heads, before RoPE
            self.q_norm = ConsaRMSNorm(d, config.rms_norm_eps)
            self.k_norm = ConsaRMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # Per slice of equal cache window: (window, first group, end group, its heads' windows).
        group, heads = self.num_key_value_groups, layout.head_windows[layer_idx]
        self.slices = [(w, g0, g1, tuple(heads[g0 * group:g1 * group]))
                       for w, g0, g1 in window_slices(layout.kv_windows[layer_idx])]

    def _attend(self, query, key, value, mask, masks):
        """One head slice through the configured attention function; returns [B, T, heads, D]."""
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        if impl == "eager":
            fn, mask = eager_attention_forward, masks.additive(mask, query.dtype)
        else:
            fn = ALL_ATTENTION_FUNCTIONS[impl]
        out, _ = fn(self, query, key, value, mask, scaling=self.scaling,
                    dropout=self.attention_dropout if self.training else 0.0)
        return out

    def forward(self, hidden_states, cos, sin, masks, past_key_values=None):
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape)
        k = self.k_proj(hidden_states).view(shape)
        v = self.v_proj(hidden_states).view(shape)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

        if past_key_values is not None:
            states = past_key_values.update_split(k, v, self.layer_idx)
        else:
            states = [(k[:, g0:g1], v[:, g0:g1]) for _, g0, g1, _ in self.slices]
        eager = (getattr(self.config, "_attn_implementation", None) or "eager") == "eager"
        group, parts = self.num_key_value_groups, []
        for (window, g0, g1, heads), (sk, sv) in zip(self.slices, states):
            parts.append(self._attend(q[:, g0 * group:g1 * group], sk, sv, masks.mask(window, heads, eager), masks))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return self.o_proj(out.reshape(batch, length, -1))


class ConsaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = ConsaAttention(config, layer_idx)
        self.mlp = ConsaMLP(config)
        self.input_layernorm = ConsaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = ConsaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, cos, sin, masks, past_key_values=None):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin, masks,
                                                       past_key_values)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class ConsaHybridPreTrainedModel(PreTrainedModel):
    config_class = ConsaHybridConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["ConsaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # Neither takes per-head masks nor sinks: transformers refuses them at load time.
    _supports_flash_attn = False
    _supports_flash_attn_2 = False
    _supports_flex_attn = False
    _supports_cache_class = True
    _supports_static_cache = False

    if not _TRANSFORMERS_5:  # 5.x initializes Linear, Embedding and *RMSNorm modules itself
        def _init_weights(self, module):
            std = getattr(self.config, "initializer_range", 0.02)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.data.normal_(mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    module.bias.data.zero_()
            elif isinstance(module, ConsaRMSNorm):
                module.weight.data.fill_(1.0)


class ConsaHybridModel(ConsaHybridPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([ConsaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = ConsaRMSNorm(config.hidden_size, config.rms_norm_eps)
        # Not a buffer: computed from the config on each device, so loading on the meta device
        # (transformers 5) has nothing to re-initialize.
        self._inv_freq = {}
        layout = config.hybrid_layout()
        self.sinks = layout.sinks
        self.ring_windows = sorted({w for layer in layout.kv_windows for w in layer if w}, reverse=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def rope(self, position_ids, dtype):
        device = position_ids.device
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inv_freq(self.config.rope_parameters, self.config.head_dim, device)
        freqs = position_ids[..., None].float() * self._inv_freq[device]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, return_dict=None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if past_key_values is not None and not isinstance(past_key_values, ConsaHybridCache):
            # generate() or a caller may hand over a stock cache: an empty one can be swapped,
            # a filled one holds states this layout cannot use.
            if past_key_values.get_seq_length() > 0:
                raise ValueError("ConsaHybridForCausalLM needs a ConsaHybridCache, got a filled "
                                 f"{type(past_key_values).__name__}")
            past_key_values = None
        if use_cache and past_key_values is None:
            past_key_values = ConsaHybridCache(self.config)
        cache = past_key_values if use_cache else None
        batch, new = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        device = inputs_embeds.device
        if position_ids is None:
            position_ids = torch.arange(past, past + new, device=device)[None].expand(batch, -1)

        padding = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[-1] != past + new:
                raise ValueError("attention_mask must be a [batch, past + new tokens] padding mask")
            if not bool(attention_mask.bool().all()):
                padding = attention_mask.bool()
                if self.sinks > 0:
                    # Sinks are the first cache positions; with left padding they would be pads.
                    raise ValueError("padded batches are not supported with attention sinks; run the "
                                     "sequences unpadded, one at a time")
        # Before any layer updates the cache: the keys each ring window's slices attend over.
        if cache is not None:
            ring_keys = {w: cache.sliding_key_positions(w, new, device) for w in self.ring_windows}
        else:
            ring_keys = {w: torch.arange(new, device=device) for w in self.ring_windows}
        masks = AttentionMasks(self.sinks, past, new, padding, ring_keys, device)
        cos, sin = self.rope(position_ids, inputs_embeds.dtype)

        hidden_states = inputs_embeds
        all_hidden = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states = layer(hidden_states, cos, sin, masks, cache)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=cache,
                                       hidden_states=all_hidden)


class ConsaHybridForCausalLM(ConsaHybridPreTrainedModel, GenerationMixin):
    # 5.x maps target to source; 4.x lists the targets.
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if _TRANSFORMERS_5 else ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = ConsaHybridModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # generate() would build a DynamicCache, which keeps every position of every head.
        if model_kwargs.get("past_key_values") is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if getattr(generation_config, "cache_implementation", None) not in (None, "dynamic"):
            raise ValueError(f"cache_implementation {generation_config.cache_implementation!r} is not supported: "
                             "ConsaHybridForCausalLM generates with its own ConsaHybridCache")
        model_kwargs["past_key_values"] = ConsaHybridCache(self.config)

    def kv_cache_bytes(self, context, bytes_per_element=None, batch=1):
        """KV-cache bytes of `batch` sequences of `context` tokens from the layout alone: full
        groups hold `context` positions, a group with window W min(context, W + sinks); keys and
        values, head_dim elements each. consa's assignment.json computes the same figure."""
        if bytes_per_element is None:
            bytes_per_element = self.lm_head.weight.element_size()
        layout = self.config.hybrid_layout()
        positions = sum(min(context, w + layout.sinks) if w else context
                        for layer in layout.kv_windows for w in layer)
        return 2 * self.config.head_dim * bytes_per_element * batch * positions

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None, return_dict=None,
                logits_to_keep=0, **kwargs):
        kwargs.pop("cache_position", None)  # transformers 4.x passes it; positions come from the cache
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_hidden_states=output_hidden_states)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                        hidden_states=outputs.hidden_states)
        return result if return_dict else result.to_tuple()


__all__ = ["ConsaHybridCache", "ConsaHybridForCausalLM", "ConsaHybridModel", "ConsaHybridPreTrainedModel"]
