#!/usr/bin/env python3
"""Check that stock transformers loads a consa Hugging Face export and computes what consa does.

Usage: python3 scripts/check_hf_export.py EXPORT_DIR INSPECT_OUTPUT PROMPT_IDS
INSPECT_OUTPUT is what `consa inspect EXPORT_DIR --prompt-ids PROMPT_IDS --top 5` printed; its
"id N  p P  logit L" lines are compared with transformers' last-position logits (fp32).
"""
import re
import sys

import torch
import transformers

export_dir, inspect_file, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32, attn_implementation="eager")
print("transformers", transformers.__version__, "loaded", type(model).__name__,
      "layer_types", getattr(model.config, "layer_types", None), "sliding_window", model.config.sliding_window)
ids = torch.tensor([[int(x) for x in prompt.split(",")]])
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
sys.exit(0 if worst < 2e-3 else 1)
