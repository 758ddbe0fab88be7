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
# full-length cache first, then the sliding-window-only groups; within a group the full-attention
# query heads first. The "consa" entry describes the split:
#   base_architecture, base_model_type   the model the weights come from ("qwen3", ...)
#   granularity                          "kv_head" or "head"
#   window, sinks                        query i sees key j iff j <= i and (j > i - window or j < sinks)
#   full_attention_kv_heads[l]           layer l's first n KV groups keep a full cache
#   full_attention_heads[l]              (head granularity) the stored query heads with full
#                                        attention, all within those first groups; the group's
#                                        other heads attend over the window of the full cache
# An entry without "granularity" (a biased Llama with whole sliding layers) takes its layout from
# `layer_types` and `sliding_window` instead.
from transformers import PretrainedConfig

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
        """(window, sinks, full KV groups per layer, full query heads per layer or None)."""
        layers, kv = self.num_hidden_layers, self.num_key_value_heads
        group = self.num_attention_heads // kv
        if self.num_attention_heads % kv:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
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
            full_kv = [kv if t == "full_attention" else 0 for t in types]
            return int(self.sliding_window or 1), 0, full_kv, None
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
            full_heads = [sorted(int(h) for h in heads) for heads in self.consa.get("full_attention_heads", [])]
            if len(full_heads) != layers:
                raise ValueError("consa.full_attention_heads needs one list per layer")
            for l, heads in enumerate(full_heads):
                if any(h < 0 or h >= full_kv[l] * group for h in heads):
                    raise ValueError(f"consa.full_attention_heads[{l}] must lie in the layer's first "
                                     f"{full_kv[l]} KV groups (query heads < {full_kv[l] * group})")
        return window, sinks, full_kv, full_heads
