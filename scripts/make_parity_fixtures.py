#!/usr/bin/env python3
"""Build the parity fixtures in tests/fixtures/ with Hugging Face transformers' own classes.

Each fixture is a small randomly initialised checkpoint saved with save_pretrained, plus
reference.safetensors holding fixed input_ids [2, T] (I64) and the reference logits [2, T, V] (F32)
computed by transformers in float64 on the CPU with eager attention. consa's tests load the
checkpoint and compare their logits against these.

Usage (needs torch + transformers; the GPU machine has both):
    python3 scripts/make_parity_fixtures.py OUT_DIR
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

SEQ_LEN = 24
BATCH = 2
VOCAB = 96

# Shared small shape. initializer_range is large on purpose: with the default 0.02 the logits are
# near zero and attention is near uniform, so a wrong mask or RoPE would barely move them.
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    initializer_range=0.25,
)


def rope(theta, **extra):
    return dict(rope_type=extra.pop("rope_type", "default"), rope_theta=theta, **extra)


FIXTURES = {
    # Llama, GQA (4 query heads / 2 KV heads), untied embeddings, plain RoPE. Saved in F32.
    "llama_gqa": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(BASE, num_key_value_heads=2, tie_word_embeddings=False, rope_parameters=rope(10000.0)),
        dict(dtype=torch.float32),
    ),
    # Llama 3 style: MHA, tied embeddings, llama3 RoPE scaling. Saved in BF16 and sharded.
    "llama3_tied_mha": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            BASE,
            num_key_value_heads=4,
            tie_word_embeddings=True,
            rope_parameters=rope(
                500000.0,
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
        dict(dtype=torch.bfloat16, max_shard_size="60KB"),
    ),
    # Mistral with a sliding window of 5 in every layer (shorter than SEQ_LEN). Saved in F16.
    "mistral_swa": (
        transformers.MistralConfig,
        transformers.MistralForCausalLM,
        dict(BASE, num_key_value_heads=2, sliding_window=5, tie_word_embeddings=False, rope_parameters=rope(10000.0)),
        dict(dtype=torch.float16),
    ),
    # Qwen2: q/k/v bias, tied embeddings, layer 0 full attention and layer 1 sliding (window 6).
    "qwen2_bias": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(
            BASE,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=6,
            max_window_layers=1,
            rope_parameters=rope(1000000.0),
        ),
        dict(dtype=torch.float32),
    ),
    # Qwen3: explicit head_dim (24, not hidden/heads), q_norm/k_norm, GQA, untied.
    "qwen3_norm": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(BASE, num_key_value_heads=2, head_dim=24, tie_word_embeddings=False, rope_parameters=rope(1000000.0)),
        dict(dtype=torch.float32),
    ),
}


def make_config(config_cls, kwargs):
    try:
        return config_cls(**kwargs)
    except TypeError:
        # Older transformers: rope_theta + rope_scaling instead of rope_parameters.
        kwargs = dict(kwargs)
        rp = dict(kwargs.pop("rope_parameters"))
        kwargs["rope_theta"] = rp.pop("rope_theta")
        if rp.get("rope_type", "default") != "default":
            kwargs["rope_scaling"] = rp
        return config_cls(**kwargs)


def perturb_norms(model, gen):
    # RMSNorm weights start at 1; give them structure so a missing or misplaced norm shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            if name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    summary = {"transformers": transformers.__version__, "torch": torch.__version__, "fixtures": {}}
    for i, (name, (config_cls, model_cls, cfg_kwargs, save_kwargs)) in enumerate(FIXTURES.items()):
        torch.manual_seed(1234 + i)
        gen = torch.Generator().manual_seed(99 + i)
        config = make_config(config_cls, cfg_kwargs)
        config._attn_implementation = "eager"
        model = model_cls(config).eval()
        perturb_norms(model, gen)

        input_ids = torch.randint(0, VOCAB, (BATCH, SEQ_LEN), generator=gen)
        store_dtype = save_kwargs["dtype"]
        # The reference is computed from exactly the weights that are stored (rounded to the
        # stored dtype), in float64.
        # Round the parameters only: casting the whole module would also round RoPE's inv_freq
        # buffer, and the reference would inherit that error.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(store_dtype).to(p.dtype))
        model = model.to(torch.float64)
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits.float()
            # Same weights with every layer on full attention: shows the window really matters.
            dense_cfg = make_config(config_cls, dict(cfg_kwargs, **({"sliding_window": None} if "sliding_window" in cfg_kwargs else {})))
            if "use_sliding_window" in cfg_kwargs:
                dense_cfg = make_config(config_cls, dict(cfg_kwargs, use_sliding_window=False))
            dense_cfg._attn_implementation = "eager"
            dense = model_cls(dense_cfg).eval().to(torch.float64)
            dense.load_state_dict(model.state_dict())
            dense_logits = dense(input_ids=input_ids).logits.float()

        path = os.path.join(out_dir, name)
        model.to(store_dtype).save_pretrained(
            path, safe_serialization=True, **({"max_shard_size": save_kwargs["max_shard_size"]} if "max_shard_size" in save_kwargs else {})
        )
        save_file(
            {"input_ids": input_ids.contiguous(), "logits": logits.contiguous(), "dense_logits": dense_logits.contiguous()},
            os.path.join(path, "reference.safetensors"),
        )
        for junk in ("generation_config.json",):
            p = os.path.join(path, junk)
            if os.path.exists(p):
                os.remove(p)
        summary["fixtures"][name] = {
            "architecture": model_cls.__name__,
            "stored_dtype": str(store_dtype),
            "logit_abs_max": float(logits.abs().max()),
            "logit_std": float(logits.std()),
            "window_effect_max_abs": float((logits - dense_logits).abs().max()),
            "files": sorted(os.listdir(path)),
        }
        print(name, json.dumps(summary["fixtures"][name]))
    with open(os.path.join(out_dir, "MANIFEST.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
