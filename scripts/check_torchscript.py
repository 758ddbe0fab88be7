#!/usr/bin/env python3
"""Loads a consa TorchScript export with torch.jit.load and checks it against expected logits.

usage: check_torchscript.py MODEL.ts IDS.txt LOGITS.f32 [--device cuda] [--tolerance 1e-5]

IDS.txt holds token ids (space- or comma-separated) of one sequence; LOGITS.f32 the expected logits
[len, vocab] as raw little-endian float32. Checks forward() and token-by-token decode through
init_cache/extend; prints the largest differences and exits 1 when one exceeds the tolerance.
"""
import argparse
import json
import sys

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("ids")
    p.add_argument("logits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tolerance", type=float, default=1e-5)
    args = p.parse_args()

    extra = {"assignment.json": "", "consa.json": ""}
    model = torch.jit.load(args.model, map_location=args.device, _extra_files=extra)
    info = json.loads(extra["consa.json"])
    assignment = json.loads(extra["assignment.json"])
    ids = torch.tensor([[int(t) for t in open(args.ids).read().replace(",", " ").split()]], device=args.device)
    raw = bytearray(open(args.logits, "rb").read())
    expected = torch.frombuffer(raw, dtype=torch.float32).view(ids.shape[1], info["vocab_size"])

    with torch.no_grad():
        full = model(ids)[0].float().cpu()
        cache = model.init_cache(1, ids.shape[1])
        steps = [model.extend(ids[:, t:t + 1], cache, False)[0].float().cpu() for t in range(ids.shape[1])]
    decoded = torch.cat(steps, 0)
    forward_diff = (full - expected).abs().max().item()
    decode_diff = (decoded - expected).abs().max().item()
    print(f"torch {torch.__version__} on {args.device}: {info['architecture']} {info['num_layers']} layers, "
          f"{assignment['granularity']} units, sparsity {assignment['achieved_sparsity']:.3f}")
    print(f"max |forward - expected| = {forward_diff:.3g}, max |decode - expected| = {decode_diff:.3g}")
    return 0 if max(forward_diff, decode_diff) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
