#!/usr/bin/env python3
"""Check consa's Hugging Face exports in transformers (fp32). Exits non-zero on any failure.

  check_hf_export.py EXPORT_DIR INSPECT_OUTPUT PROMPT_IDS
      A stock-class export: the "id N  p P  logit L" lines that
      `consa inspect EXPORT_DIR --prompt-ids PROMPT_IDS --top 5` printed must match transformers'
      last-position logits (consa prints 4 decimals).
  check_hf_export.py stock EXPORT_DIR LOGITS PROMPT_IDS --expect-class NAME
      A stock-class export loaded with plain AutoModelForCausalLM.from_pretrained: it must be
      NAME, and every position's logits must be within --tolerance of LOGITS, the float32
      [len, vocab] file of `consa inspect EXPORT_DIR --prompt-ids PROMPT_IDS --logits-out LOGITS`.
  check_hf_export.py remote EXPORT_DIR LOGITS PROMPT_IDS [--new-tokens N]
      A consa_hybrid export loaded with trust_remote_code=True, under sdpa and eager attention:
      every position's logits (without cache, through the cache, and in chunks through it) within
      --tolerance of LOGITS (one window or several); greedy generate of N tokens (fresh, and continuing a cache filled by
      model(ids, use_cache=True)) equal to greedy recompute without cache; the cache's bytes equal
      the layout's analytic figure and assignment.json's; a left-padded batch (no sinks) equal to
      its rows run alone.
  check_hf_export.py refuse EXPORT_DIR [EXPORT_DIR ...]
      Loading a consa_hybrid export without trust_remote_code must fail, never give a stock class.
"""
import argparse
import io
import json
import os
import re
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

failures = []


def check(ok, message):
    print(("ok    " if ok else "FAIL  ") + message)
    if not ok:
        failures.append(message)


def prompt_ids(text):
    return [int(x) for x in text.split(",")]


def read_logits(path, length, vocab):
    raw = open(path, "rb").read()
    expected = length * vocab * 4
    if len(raw) != expected:
        raise SystemExit(f"{path}: {len(raw)} bytes, expected {expected} for [{length}, {vocab}] float32")
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).view(length, vocab)


def max_diff(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def greedy_recompute(model, ids, new_tokens):
    """Greedy tokens by running the whole sequence again for each one, without a cache."""
    seq, tokens, logits = ids, [], []
    with torch.no_grad():
        for _ in range(new_tokens):
            last = model(input_ids=seq, use_cache=False).logits[0, -1]
            logits.append(last)
            tokens.append(int(last.argmax()))
            seq = torch.cat([seq, seq.new_tensor([[tokens[-1]]])], dim=1)
    return tokens, logits


def legacy(args):
    export_dir, inspect_file, prompt = args
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32, attn_implementation="eager")
    print("transformers", transformers.__version__, "loaded", type(model).__name__,
          "layer_types", getattr(model.config, "layer_types", None), "sliding_window", model.config.sliding_window)
    ids = torch.tensor([prompt_ids(prompt)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    worst = 0.0
    for line in open(inspect_file):
        m = re.match(r"\s*id\s+(\d+)\s+p\s+([\d.]+)\s+logit\s+([-\d.]+)", line)
        if m:
            token, consa_logit = int(m.group(1)), float(m.group(3))
            diff = abs(logits[token].item() - consa_logit)
            worst = max(worst, diff)
            print(f"token {token}: consa {consa_logit:.4f} transformers {logits[token].item():.4f} |diff| {diff:.2e}")
    print(f"max |logit diff| {worst:.2e} (consa prints 4 decimals)")
    check(worst < 2e-3, f"last-position top-5 logits within 2e-3 of consa's (max {worst:.2e})")


def stock(a):
    model = AutoModelForCausalLM.from_pretrained(a.export_dir, dtype=torch.float32).to(a.device).eval()
    name = type(model).__name__
    print(f"transformers {transformers.__version__}: {a.export_dir} loaded as {name}, "
          f"layer_types {getattr(model.config, 'layer_types', None)}, sliding_window {model.config.sliding_window}")
    check(name == a.expect_class, f"plain from_pretrained gives {name} (expected {a.expect_class})")
    ids = torch.tensor([prompt_ids(a.prompt_ids)], device=a.device)
    reference = read_logits(a.logits, ids.shape[1], model.config.vocab_size)
    with torch.no_grad():
        diff = max_diff(model(input_ids=ids, use_cache=False).logits[0], reference)
    check(diff < a.tolerance, f"every position's logits within {a.tolerance:g} of consa's: max |diff| {diff:.2e}")
    tokens, _ = greedy_recompute(model, ids, a.new_tokens)
    with torch.no_grad():
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                                   do_sample=False)[0, ids.shape[1]:].tolist()
    check(generated == tokens, f"greedy generate of {a.new_tokens} tokens equals recompute")


def remote(a):
    config = AutoConfig.from_pretrained(a.export_dir, trust_remote_code=True)
    layout = config.hybrid_layout()
    sinks, widest = layout.sinks, max(layout.windows, default=0)
    ids = torch.tensor([prompt_ids(a.prompt_ids)], device=a.device)
    length = ids.shape[1]
    reference = read_logits(a.logits, length, config.vocab_size)
    granularity = config.consa.get("granularity", "layer")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {a.device}: {a.export_dir}: "
          f"{config.consa.get('base_model_type')} {granularity}, windows {layout.windows}, sinks {sinks}, "
          f"full KV groups per layer {layout.full_kv}"
          + (f", KV-group windows {layout.kv_windows}" if len(layout.windows) > 1 else "")
          + (f", query-head windows {layout.head_windows}" if granularity == "head" else ""))
    check(length > widest + sinks, f"the prompt ({length} tokens) is longer than the widest window + sinks "
                                   f"({widest + sinks})")
    assignment = json.load(open(os.path.join(a.export_dir, "assignment.json")))
    for attn in a.attention.split(","):
        model = AutoModelForCausalLM.from_pretrained(a.export_dir, trust_remote_code=True, dtype=torch.float32,
                                                     attn_implementation=attn).to(a.device).eval()
        tag = f"[{attn}]"
        check(type(model).__name__ == "ConsaHybridForCausalLM", f"{tag} loaded as {type(model).__name__}")
        with torch.no_grad():
            plain = model(input_ids=ids, use_cache=False).logits[0]
            out = model(input_ids=ids, use_cache=True)
            cache = out.past_key_values
            chunked, chunk_cache = [], None
            for start in range(0, length, a.chunk):
                step = model(input_ids=ids[:, start:start + a.chunk], past_key_values=chunk_cache, use_cache=True)
                chunk_cache = step.past_key_values
                chunked.append(step.logits[0])
        for what, logits in (("without cache", plain), ("through the cache", out.logits[0]),
                             (f"in chunks of {a.chunk} through the cache", torch.cat(chunked))):
            diff = max_diff(logits, reference)
            check(diff < a.tolerance, f"{tag} every position's logits {what} within {a.tolerance:g} of consa's: "
                                      f"max |diff| {diff:.2e} (logits up to {reference.abs().max().item():.2f})")

        # The cache after the prompt: full groups hold every position, a group with window W at most W + sinks.
        held, analytic = cache.nbytes(), model.kv_cache_bytes(length, 4)
        dense = 2 * config.num_hidden_layers * config.num_key_value_heads * length * config.head_dim * 4
        check(type(cache).__name__ == "ConsaHybridCache" and held == analytic,
              f"{tag} {type(cache).__name__} after the {length}-token prompt holds {held} bytes; analytic {analytic}; "
              f"dense {dense}")
        kv = assignment["kv_cache"]
        ours = model.kv_cache_bytes(kv["context"], kv["bytes_per_element"])
        consa_figure = kv["full_attention_bytes"] + kv["sliding_window_bytes"]
        check(ours == consa_figure, f"{tag} kv_cache_bytes({kv['context']}, {kv['bytes_per_element']}) = {ours}; "
                                    f"assignment.json says {consa_figure}")

        # Greedy decoding: recompute, generate from scratch, and generate continuing the cache.
        n = a.new_tokens
        tokens, recompute_logits = greedy_recompute(model, ids, n)
        with torch.no_grad():
            fresh = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                   do_sample=False)[0, length:].tolist()
            first = int(out.logits[0, -1].argmax())
            seq = torch.cat([ids, ids.new_tensor([[first]])], dim=1)
            continued = model.generate(seq, attention_mask=torch.ones_like(seq), past_key_values=cache,
                                       max_new_tokens=n - 1, do_sample=False)[0, length + 1:].tolist()
            # The same decoding one token at a time, comparing logits with recompute.
            seq, step_cache, worst = ids, None, 0.0
            for i in range(n):
                step = model(input_ids=seq[:, -1:] if i else seq, past_key_values=step_cache, use_cache=True)
                step_cache = step.past_key_values
                worst = max(worst, max_diff(step.logits[0, -1], recompute_logits[i]))
                seq = torch.cat([seq, seq.new_tensor([[tokens[i]]])], dim=1)
        check(fresh == tokens, f"{tag} greedy generate of {n} tokens equals greedy recompute without cache")
        check([first] + continued == tokens,
              f"{tag} generate continuing model(ids, use_cache=True)'s cache equals recompute")
        check(worst < a.tolerance, f"{tag} decoding through the cache: logits within {a.tolerance:g} of recompute "
                                   f"for {n} steps (max |diff| {worst:.2e})")
        context = length + n - 1  # the last generated token is never fed back
        held, analytic = cache.nbytes(), model.kv_cache_bytes(context, 4)
        check(held == analytic, f"{tag} after generate the cache holds {held} bytes for {context} positions; "
                                f"analytic {analytic}")
        if tokens == fresh:
            print(f"      tokens {' '.join(map(str, tokens))}")

        if sinks == 0:  # padded batches: refused with sinks, which count from the first position
            pad = 3
            short = ids[:, : length - pad]
            batch = torch.cat([torch.cat([short.new_zeros(1, pad), short], dim=1), ids])
            mask = torch.ones_like(batch)
            mask[0, :pad] = 0
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            with torch.no_grad():
                both = model(input_ids=batch, attention_mask=mask, position_ids=positions, use_cache=False).logits
                alone = model(input_ids=short, use_cache=False).logits[0]
            diff = max(max_diff(both[0, pad:], alone), max_diff(both[1], reference))
            check(diff < a.tolerance, f"{tag} a left-padded batch of two equals its rows alone: max |diff| {diff:.2e}")


def refuse(a):
    # Without trust_remote_code transformers asks on stdin; give it none, as a script would.
    sys.stdin = io.StringIO("")
    for export_dir in a.export_dirs:
        model_type = json.load(open(os.path.join(export_dir, "config.json")))["model_type"]
        check(model_type == "consa_hybrid", f"{export_dir} declares model_type {model_type}")
        for what, load in (
                ("AutoConfig, trust_remote_code=False", lambda: AutoConfig.from_pretrained(
                    export_dir, trust_remote_code=False)),
                ("AutoModelForCausalLM, trust_remote_code=False", lambda: AutoModelForCausalLM.from_pretrained(
                    export_dir, trust_remote_code=False)),
                ("AutoModelForCausalLM, trust_remote_code unset", lambda: AutoModelForCausalLM.from_pretrained(
                    export_dir))):
            try:
                loaded = load()
            except Exception as e:  # transformers raises ValueError; anything but a model is a refusal
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                check(True, f"{what}: refused ({type(e).__name__}: {first_line[:100]})")
            else:
                check(False, f"{what}: loaded {type(loaded).__name__} instead of refusing")


def main():
    modes = ("stock", "remote", "refuse")
    if len(sys.argv) == 4 and sys.argv[1] not in modes:
        legacy(sys.argv[1:])
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = parser.add_subparsers(dest="mode", required=True)
        for mode in ("stock", "remote"):
            p = sub.add_parser(mode)
            p.add_argument("export_dir")
            p.add_argument("logits", help="float32 [len, vocab] from consa inspect --logits-out")
            p.add_argument("prompt_ids", help="comma-separated token ids, as given to consa inspect")
            p.add_argument("--tolerance", type=float, default=1e-4)
            p.add_argument("--new-tokens", type=int, default=24)
            p.add_argument("--device", default="cpu")
            if mode == "stock":
                p.add_argument("--expect-class", required=True)
            else:
                p.add_argument("--attention", default="sdpa,eager", help="attn_implementation values to check")
                p.add_argument("--chunk", type=int, default=5, help="prefill chunk for the chunked check")
        p = sub.add_parser("refuse")
        p.add_argument("export_dirs", nargs="+")
        a = parser.parse_args()
        torch.manual_seed(0)
        {"stock": stock, "remote": remote, "refuse": refuse}[a.mode](a)
    print(f"{len(failures)} failure(s)" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
