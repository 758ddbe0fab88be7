#!/usr/bin/env python3
"""What bounds a training step on this GPU: measured bf16 matmul TFLOP/s and causal attention
forward+backward TFLOP/s of each SDPA backend (flash, cuDNN, and SDPA's own choice), full and
sliding-window, at Qwen3 attention shapes (16 query / 8 KV heads of 128). Median of 5 runs.

usage: kernel_bounds.py [--seq-lens 2048,8192,16384] [--tokens 16384] [--window 1024] [--out J.json]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, repeats=5, inner=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / inner)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seq-lens", default="2048,8192,16384")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--out")
    args = p.parse_args()
    dev = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "attention": []}

    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    t = timed(lambda: a @ b)
    results["matmul_tflops"] = 2 * n ** 3 / t / 1e12
    print(f"bf16 matmul {n}^3: {results['matmul_tflops']:.0f} TFLOP/s")

    print("seq_len batch  kernel          span    fwd+bwd ms  TFLOP/s")
    for length in [int(x) for x in args.seq_lens.split(",")]:
        batch = max(1, args.tokens // length)
        q = torch.randn(batch, 16, length, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(batch, 8, length, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(batch, 8, length, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(batch, 16, length, 128, device=dev, dtype=torch.bfloat16)
        for span in ["full", "swa"]:
            if span == "full":
                pairs = length * (length + 1) / 2
            else:
                w = min(args.window, length)
                pairs = w * (w + 1) / 2 + (length - w) * w
            flops = 3 * 4 * 128 * 16 * pairs * batch
            for name, backends in [("sdpa-default", None), ("flash", [SDPBackend.FLASH_ATTENTION]),
                                   ("cudnn", [SDPBackend.CUDNN_ATTENTION])]:
                if span == "swa":
                    if name != "flash":
                        continue

                    def run():
                        out = torch.ops.aten._flash_attention_forward(
                            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, None, length, length,
                            0.0, True, False, window_size_left=args.window - 1, window_size_right=0)[0]
                        out.backward(grad.transpose(1, 2))
                else:
                    def run():
                        if backends is None:
                            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                        else:
                            with sdpa_kernel(backends):
                                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                        out.backward(grad)
                try:
                    t = timed(run)
                except Exception as e:  # a backend that cannot run this shape
                    print(f"{length:>7}{batch:>6}  {name:<15} {span:<6}  unavailable: {str(e).splitlines()[0][:80]}")
                    continue
                tf = flops / t / 1e12
                print(f"{length:>7}{batch:>6}  {name:<15} {span:<6}{1e3 * t:>11.2f}{tf:>9.0f}", flush=True)
                results["attention"].append(dict(seq_len=length, batch=batch, kernel=name, span=span,
                                                 ms=1e3 * t, tflops=tf))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
