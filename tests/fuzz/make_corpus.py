#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into tests/fuzz/corpus/<target>/: one small valid
example of each shape a reader accepts, so that the fuzzer starts past the header checks.
The output is committed; run again after changing a format."""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
REPO = os.path.dirname(os.path.dirname(ROOT))


def put(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)] laid out in order."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def consa_shard(tokens, width, starts=None, version=2):
    fmt = "<H" if width == 2 else "<I"
    body = b"".join(struct.pack(fmt, t) for t in tokens)
    head = b"CONSATOK" + struct.pack("<IIQ", version, width, len(tokens))
    if version == 1:
        return head + body
    starts = starts if starts is not None else [0]
    offsets = b"".join(struct.pack("<Q", s) for s in starts + [len(tokens)])
    return head + struct.pack("<Q", len(starts)) + body + offsets


def megatron(sequences, code, docs, order=None):
    """sequences: lists of ids; docs: document index entries; order: .bin order of the sequences."""
    size, fmt = {1: (1, "B"), 2: (1, "b"), 3: (2, "h"), 4: (4, "i"), 5: (8, "q"), 8: (2, "H")}[code]
    order = order or list(range(len(sequences)))
    pointers, binary = [0] * len(sequences), b""
    for s in order:
        pointers[s] = len(binary)
        binary += b"".join(struct.pack("<" + fmt, t) for t in sequences[s])
    idx = b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, code, len(sequences), len(docs))
    idx += b"".join(struct.pack("<i", len(s)) for s in sequences)
    idx += b"".join(struct.pack("<q", p) for p in pointers)
    idx += b"".join(struct.pack("<q", d) for d in docs)
    return struct.pack("<H", len(idx)) + idx + binary


def main():
    f32 = lambda *v: struct.pack("<%df" % len(v), *v)
    put("fuzz_safetensors_header", "two_tensors", safetensors(
        [("a", "F32", [2], f32(1, 2)), ("b", "BF16", [1, 3], b"\0\x3f" * 3)], {"format": "pt"}))
    put("fuzz_safetensors_header", "empty_and_scalar", safetensors(
        [("e", "I64", [0, 4], b""), ("s", "U8", [], b"\x07"), ("t", "BOOL", [2], b"\x01\x00")]))
    put("fuzz_safetensors_header", "no_tensors", safetensors([], {"k": "v"}))

    put("fuzz_safetensors_index", "two_shards", json.dumps({"metadata": {"total_size": 28}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}))
    put("fuzz_safetensors_index", "one_shard", json.dumps({"weight_map": {"c": "model-00002-of-00002.safetensors"}}))

    for name in ("llama_gqa", "llama3_tied_mha", "mistral_swa", "qwen2_bias", "qwen3_norm"):
        with open(os.path.join(REPO, "tests", "fixtures", name, "config.json"), "rb") as f:
            put("fuzz_hf_config", name, f.read())
    hybrid = {"architectures": ["ConsaHybridForCausalLM"], "model_type": "consa_hybrid", "vocab_size": 64,
              "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 10000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
              "consa": {"base_architecture": "Qwen3ForCausalLM", "granularity": "head", "window": 8, "sinks": 2,
                        "full_attention_kv_heads": [1, 2], "full_attention_heads": [[0], [0, 3]]}}
    put("fuzz_hf_config", "hybrid_head", json.dumps(hybrid))
    qwen_swa = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 32, "hidden_size": 32,
                "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1,
                "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}}
    put("fuzz_hf_config", "qwen2_window_layers", json.dumps(qwen_swa))

    with open(os.path.join(REPO, "recipes", "tiny_cpu.yaml"), "rb") as f:
        put("fuzz_recipe", "tiny_cpu", f.read())
    put("fuzz_recipe", "shards_and_overrides",
        "model: {path: m}\ndata:\n  shards: [a.tok, {path: b.bin, format: raw, dtype: uint16},"
        " {path: c, format: megatron}]\n  synthetic_ratio: 0.5\n  tokenizer: t\n  filler: f.txt\n"
        "export: {rule: threshold}\ndistributed: {backend: gloo, gate_noise: per_rank}\n"
        "#overrides\ngates.window=16\ndata.synthetic_tasks=[passkey, multi_key_needle]\nschedule.kind=linear\n")

    put("fuzz_token_shard", "v2_uint16", b"\0" + consa_shard([1, 2, 3, 4, 5], 2, [0, 2, 2]))
    put("fuzz_token_shard", "v2_uint32", b"\0" + consa_shard([70000, 1], 4))
    put("fuzz_token_shard", "v1_auto", b"\1" + consa_shard([9, 8, 7], 2, version=1))
    put("fuzz_token_shard", "raw_uint16", b"\2" + struct.pack("<4H", 1, 2, 3, 4))
    put("fuzz_token_shard", "raw_uint32", b"\3" + struct.pack("<2I", 5, 6))

    put("fuzz_megatron", "contiguous_int32", megatron([[1, 2], [3], [4, 5, 6]], 4, [0, 1, 3]))
    put("fuzz_megatron", "out_of_order_uint16", megatron([[1, 2], [], [3, 4, 5]], 8, [0, 2, 3], order=[2, 0, 1]))
    put("fuzz_megatron", "uint8_one_doc", megatron([[7, 8, 9]], 1, [0, 1]))

    layers = [{"layer": 0, "units": ["full", "sliding"], "scores": [1.5, -0.5]},
              {"layer": 1, "units": ["sliding", "sliding"], "scores": [-1.0, -2.0]}]
    assignment = {"schema": "consa.assignment", "version": 1,
                  "model": {"architecture": "Qwen3ForCausalLM", "num_layers": 2, "num_heads": 4,
                            "num_kv_heads": 2, "head_dim": 16, "weights_checksum": "fnv1a64:0123456789abcdef"},
                  "granularity": "kv_head", "window": 8, "sinks": 1, "method": "consa", "rule": "exact",
                  "target_sparsity": 0.75, "achieved_sparsity": 0.75, "layers": layers}
    put("fuzz_assignment", "kv_head", json.dumps(assignment, indent=1))
    heads = dict(assignment, granularity="head",
                 layers=[{"layer": l, "units": ["full", "sliding", "sliding", "full"], "scores": [1, -1, -1, 1]}
                         for l in range(2)])
    put("fuzz_assignment", "head", json.dumps(heads))
    put("fuzz_assignment", "layer", json.dumps(dict(assignment, granularity="layer", rule="threshold", layers=[
        {"layer": 0, "units": ["full"], "scores": [0.5]}, {"layer": 1, "units": ["sliding"], "scores": [-0.5]}])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
