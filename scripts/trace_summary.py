#!/usr/bin/env python3
"""Where a traced step's GPU time goes: CUDA kernel time by kernel (top N) and by kind (matmul,
attention, other), and how busy the GPU was over the step. Reads the Chrome traces that
`consa bench train --trace DIR` writes.

usage: trace_summary.py TRACE.json [--top 15] [--steps N]

--steps N divides the kernel counts and times by the N steps a trace holds (8 for the decode
traces of `consa bench decode --trace DIR`).
"""
import argparse
import collections
import json
import re

KINDS = [("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|cublas", re.I)),
         ("attention", re.compile(r"flash|fmha|cudnn|attention|sdpa", re.I))]


def kind(name):
    for label, pattern in KINDS:
        if pattern.search(name):
            return label
    return "other"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--steps", type=int, default=1, help="steps in the trace: figures per step")
    args = p.parse_args()
    with open(args.trace) as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        print(f"{args.trace}: no CUDA kernels in the trace")
        return
    total = sum(e["dur"] for e in kernels)
    span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    print(f"{args.trace}: {len(kernels)} kernels, {total / 1e3:.1f} ms of kernel time over a "
          f"{span / 1e3:.1f} ms span (GPU busy {100 * total / span:.0f}%)")
    by_kind = collections.Counter()
    by_name = collections.Counter()
    count = collections.Counter()
    for e in kernels:
        by_kind[kind(e["name"])] += e["dur"]
        short = e["name"][:90]
        by_name[short] += e["dur"]
        count[short] += 1
    if args.steps > 1:
        print(f"  per step: {len(kernels) / args.steps:.0f} kernels, {total / args.steps:.0f} us of kernel time, "
              f"{total / len(kernels):.2f} us per kernel on average")
    print("  " + ", ".join(f"{k} {v / 1e3:.1f} ms ({100 * v / total:.0f}%)" for k, v in by_kind.most_common()))
    for name, dur in by_name.most_common(args.top):
        print(f"  {dur / 1e3:8.2f} ms {100 * dur / total:5.1f}% x{count[name]:<5} {dur / count[name]:7.2f} us each  {name}")


if __name__ == "__main__":
    main()
