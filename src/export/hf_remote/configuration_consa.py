# Configuration of consa's hybrid full / sliding-window attention decoder (model_type "consa_hybrid").
#
# consa writes this file, modeling_consa.py and an "auto_map" entry into every Hugging Face export
# whose layout transformers cannot express with its per-layer `layer_types` (per-KV-head or
# per-query-head windows, attention sinks). Load such an export with
#
#     AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True)
#
# Supported transformers versions: 5.x (checked on 5.17 with torch 2.11). The code also avoids what
# changed between 4.56 and 5.0 (rope_parameters vs rope_theta / rope_scaling, the tied-weights
# format, Cache construction), but it has not been run on 4.x.
#
# The weights are the base model's (Llama, Mistral, Qwen2 or Qwen3) under their usual names, with
# the attention heads of every layer stored in the hybrid order: the KV groups that keep a
# full-length cache first, then the sliding-window groups, widest window first; within a group
# the full-attention query heads first, then the widest windows. The "consa" entry describes it:
#   base_architecture, base_model_type   the model the weights come from ("qwen3", ...)
#   granularity                          "kv_head" or "head"
#   window, sinks                        query i sees key j iff j <= i and (j > i - window or j < sinks)
#   full_attention_kv_heads[l]           layer l's first n KV groups keep a full cache
#   full_attention_heads[l]              (head granularity) the stored query heads with full
#                                        attention, all within those first groups
# With these keys alone the model has one window: every other KV group is sliding with `window`,
# and so are the other query heads (under head granularity, those of a full-cache group attend
# over the window of their group's full cache). Exports whose units use several windows add:
#   windows                              the windows in use, strictly decreasing, at least two;
#                                        `window` is windows[0]
#   kv_head_windows[l][g]                per stored KV group: 0 (full cache) or the window of its
#                                        ring cache; the full_attention_kv_heads[l] zeros first,
#                                        then the windows non-increasing
#   head_windows[l][h]                   (head granularity) per stored query head: 0 (full
#                                        attention) or its window. A head of a sliding group has a
#                                        window <= its group's, and the group's widest head has the
#                                        group's; a full-cache group has a head with 0, and its other
#                                        heads may have any window.
#                                        full_attention_heads lists the heads with 0.
# Under kv_head granularity each query head takes its group's window; group g holds the stored
# query heads g * G .. g * G + G - 1, G = num_attention_heads / num_key_value_heads. A sliding
# group with window W caches the `sinks` first and the W most recent positions.
# An entry without "granularity" (a biased Llama with whole sliding layers) takes its layout from
# `layer_types` and `sliding_window` instead.
from collections import namedtuple

from transformers import PretrainedConfig

# What hybrid_layout() returns. Per layer l:
#   kv_windows[l][g]    stored KV group g's cache: 0 = every position, W = sinks + W most recent
#   head_windows[l][h]  stored query head h's attention: 0 = full causal, W = window W with sinks
#   full_kv[l]          the number of full-cache groups (the leading zeros of kv_windows[l])
# and for the model: `sinks`, and `windows`, the distinct windows in use, widest first (empty when
# every unit keeps full attention).
HybridLayout = namedtuple("HybridLayout", "sinks kv_windows head_windows full_kv windows")

_BASE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_ROPE_TYPES = ("default", "linear", "llama3")


class ConsaHybridConfig(PretrainedConfig):
    model_type = "consa_hybrid"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        head_dim=None,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        initializer_range=0.02,
        use_cache=True,
        tie_word_embeddings=False,
        rope_parameters=None,
        rope_theta=None,
        rope_scaling=None,
        attention_bias=False,
        attention_dropout=0.0,
        layer_types=None,
        sliding_window=None,
        consa=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.layer_types = layer_types
        self.sliding_window = sliding_window
        self.consa = dict(consa or {})
        # One RoPE description for both transformers generations. Only `rope_parameters` is set:
        # on 5.x `rope_scaling` is a property that writes through to it, so assigning None there
        # would erase it. transformers 5 prefers rope_scaling when a file has both; so does this.
        rope = dict(rope_scaling or rope_parameters or {})
        rope.setdefault("rope_theta", rope_theta if rope_theta is not None else 10000.0)
        rope.setdefault("rope_type", rope.get("type", "default"))
        self.rope_parameters = rope
        # 4.x's base class defaults tie_word_embeddings to True unless it is passed on.
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        # A malformed layout fails here, at load time, not at the first forward. transformers also
        # builds default instances (to diff against), which have no layout to check.
        if self.consa:
            self.hybrid_layout()

    def base_model_type(self):
        kind = self.consa.get("base_model_type")
        if kind is None:
            name = self.consa.get("base_architecture", "")
            kind = next((t for t in _BASE_TYPES if name.lower().startswith(t)), None)
        if kind not in _BASE_TYPES:
            raise ValueError(f"consa.base_model_type {kind!r} is not supported; supported: {', '.join(_BASE_TYPES)}")
        return kind

    def hybrid_layout(self):
        """The checked layout of the "consa" entry (or of layer_types) as a HybridLayout."""
        layers, kv, heads = self.num_hidden_layers, self.num_key_value_heads, self.num_attention_heads
        if heads % kv:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        group = heads // kv
        rope_type = self.rope_parameters.get("rope_type")
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope type {rope_type!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
        self.base_model_type()
        granularity = self.consa.get("granularity")
        if granularity is None:
            types = self.layer_types or ["full_attention"] * layers
            if len(types) != layers or any(t not in ("full_attention", "sliding_attention") for t in types):
                raise ValueError("layer_types must list full_attention or sliding_attention for every layer")
            if "sliding_attention" in types and not self.sliding_window:
                raise ValueError("sliding_attention layers need sliding_window")
            kv_windows = [[0 if t == "full_attention" else int(self.sliding_window)] * kv for t in types]
            return _layout(0, kv_windows, [[w[0]] * heads for w in kv_windows])
        if granularity not in ("kv_head", "head"):
            raise ValueError(f"consa.granularity {granularity!r} is not supported; supported: kv_head, head")
        window, sinks = int(self.consa.get("window", 0)), int(self.consa.get("sinks", 0))
        full_kv = [int(n) for n in self.consa.get("full_attention_kv_heads", [])]
        if window <= 0 or sinks < 0:
            raise ValueError("consa.window must be > 0 and consa.sinks >= 0")
        if len(full_kv) != layers or any(n < 0 or n > kv for n in full_kv):
            raise ValueError(f"consa.full_attention_kv_heads needs one count in [0, {kv}] per layer")
        full_heads = None
        if granularity == "head":
            full_heads = [sorted(int(h) for h in layer) for layer in self.consa.get("full_attention_heads", [])]
            if len(full_heads) != layers:
                raise ValueError("consa.full_attention_heads needs one list per layer")
            for l, layer in enumerate(full_heads):
                if any(h < 0 or h >= full_kv[l] * group for h in layer):
                    raise ValueError(f"consa.full_attention_heads[{l}] must lie in the layer's first "
                                     f"{full_kv[l]} KV groups (query heads < {full_kv[l] * group})")
        if not any(key in self.consa for key in ("windows", "kv_head_windows", "head_windows")):
            # One window for the whole model.
            kv_windows = [[0] * n + [window] * (kv - n) for n in full_kv]
            if full_heads is None:
                head_windows = [[w for w in layer for _ in range(group)] for layer in kv_windows]
            else:
                head_windows = [[0 if h in set(layer) else window for h in range(heads)] for layer in full_heads]
            return _layout(sinks, kv_windows, head_windows)

        # Several windows: each group's and (head granularity) each query head's own.
        windows = _int_list(self.consa.get("windows"), "consa.windows")
        if len(windows) < 2 or windows[0] != window or any(a <= b for a, b in zip(windows, windows[1:])):
            raise ValueError(f"consa.windows must list at least two windows, strictly decreasing, the first "
                             f"equal to consa.window ({window}); got {windows}")
        kv_windows = _int_lists(self.consa.get("kv_head_windows"), "consa.kv_head_windows", layers, kv)
        for l, layer in enumerate(kv_windows):
            sliding = layer[full_kv[l]:]
            if (any(layer[:full_kv[l]]) or any(w not in windows for w in sliding)
                    or any(a < b for a, b in zip(sliding, sliding[1:]))):
                raise ValueError(f"consa.kv_head_windows[{l}] must list {full_kv[l]} zeros "
                                 f"(full_attention_kv_heads) and then windows from consa.windows, "
                                 f"non-increasing; got {layer}")
        if granularity == "kv_head":
            if "head_windows" in self.consa:
                raise ValueError("consa.head_windows is for granularity head; kv_head units take their "
                                 "group's window")
            head_windows = [[w for w in layer for _ in range(group)] for layer in kv_windows]
        else:
            head_windows = _int_lists(self.consa.get("head_windows"), "consa.head_windows", layers, heads)
            for l, layer in enumerate(head_windows):
                if any(w != 0 and w not in windows for w in layer):
                    raise ValueError(f"consa.head_windows[{l}] must hold 0 or windows from consa.windows; "
                                     f"got {layer}")
                for g, cache in enumerate(kv_windows[l]):
                    own = layer[g * group:(g + 1) * group]
                    if not cache and 0 not in own:
                        raise ValueError(f"consa.head_windows[{l}]: full-cache KV group {g} needs a query head "
                                         f"with full attention (0); got {own}")
                    if cache and (0 in own or max(own) != cache):
                        raise ValueError(f"consa.head_windows[{l}]: the query heads of sliding KV group {g} "
                                         f"(window {cache}) need windows <= {cache}, the widest equal to it; "
                                         f"got {own}")
                full = [h for h, w in enumerate(layer) if w == 0]
                if full != full_heads[l]:
                    raise ValueError(f"consa.full_attention_heads[{l}] is {full_heads[l]}, but head_windows "
                                     f"gives full attention to {full}")
        result = _layout(sinks, kv_windows, head_windows)
        if result.windows != windows:
            raise ValueError(f"consa.windows is {windows}, but kv_head_windows and head_windows use "
                             f"{result.windows}")
        return result


def _layout(sinks, kv_windows, head_windows):
    used = {w for layer in kv_windows + head_windows for w in layer if w}
    return HybridLayout(sinks=sinks, kv_windows=kv_windows, head_windows=head_windows,
                        full_kv=[layer.count(0) for layer in kv_windows], windows=sorted(used, reverse=True))


def _int_list(value, name):
    if not isinstance(value, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, int) for x in value):
        raise ValueError(f"{name} must be a list of integers; got {value!r}")
    return [int(x) for x in value]


def _int_lists(value, name, layers, length):
    """One list of `length` non-negative integers per layer."""
    if not isinstance(value, (list, tuple)) or len(value) != layers:
        raise ValueError(f"{name} needs one list per layer ({layers})")
    out = [_int_list(layer, f"{name}[{l}]") for l, layer in enumerate(value)]
    for l, layer in enumerate(out):
        if len(layer) != length or any(w < 0 for w in layer):
            raise ValueError(f"{name}[{l}] needs {length} entries >= 0; got {layer}")
    return out
