#!/usr/bin/env python3
"""Loads a consa TorchScript export with torch.jit.load and checks it against expected logits.

usage: check_torchscript.py MODEL.ts IDS.txt LOGITS.f32 [--device cuda] [--tolerance 1e-5]
                            [--ops-library build/libconsa_ops.so]

IDS.txt holds token ids (space- or comma-separated) of one sequence; LOGITS.f32 the expected logits
[len, vocab] as raw little-endian float32. Checks forward(), token-by-token decode through
init_cache/extend and through decode_step; prints the largest differences and exits 1 when one
exceeds the tolerance. An export made with --kernels fused calls consa's operators: pass
--ops-library, which is loaded with torch.ops.load_library before the model.
"""
import argparse
import json
import sys
import zipfile

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("ids")
    p.add_argument("logits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--ops-library", help="libconsa_ops.so, for exports made with --kernels fused")
    args = p.parse_args()

    # consa.json says which operators the file calls; read it before torch.jit.load compiles them.
    with zipfile.ZipFile(args.model) as archive:
        name = next((n for n in archive.namelist() if n.endswith("/extra/consa.json")), None)
        kernels = json.loads(archive.read(name)).get("kernels", "aten") if name else "aten"
    if args.ops_library:
        torch.ops.load_library(args.ops_library)
    elif kernels == "fused":
        print(f"{args.model}: made with --kernels fused, it calls consa's operators; "
              "pass --ops-library PATH/libconsa_ops.so (built beside consa)", file=sys.stderr)
        return 2

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
        # decode_step: fixed shapes, the position as a tensor; the caller advances the length.
        fixed = model.init_cache(1, ids.shape[1] + 3)
        fixed_steps = []
        for t in range(ids.shape[1] if hasattr(model, "decode_step") else 0):
            position = torch.tensor([t], device=args.device)
            fixed_steps.append(model.decode_step(ids[:, t:t + 1], fixed, position)[0].float().cpu())
            fixed[-1][0] += 1
    decoded = torch.cat(steps, 0)
    forward_diff = (full - expected).abs().max().item()
    decode_diff = (decoded - expected).abs().max().item()
    if fixed_steps:  # exports written before decode_step existed lack it
        decode_diff = max(decode_diff, (torch.cat(fixed_steps, 0) - expected).abs().max().item())
    print(f"torch {torch.__version__} on {args.device}, {kernels} operators: {info['architecture']} {info['num_layers']} layers, "
          f"{assignment['granularity']} units, sparsity {assignment['achieved_sparsity']:.3f}")
    print(f"max |forward - expected| = {forward_diff:.3g}, max |decode - expected| = {decode_diff:.3g}")
    return 0 if max(forward_diff, decode_diff) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
