#!/usr/bin/env python3
"""The gated ConSA training step in plain eager PyTorch, as a throughput reference for
`consa bench train`.

A Qwen3-shaped decoder with the usual eager recipe: fp32 parameters, bf16 autocast, SDPA
attention, per-layer torch.utils.checkpoint, torch.optim.AdamW. Modes:
  dense  full causal attention (SDPA is_causal)
  gated  one QKV projection, then full attention (SDPA is_causal) and sliding-window attention
         (SDPA with a boolean band mask) for every head, mixed per head by hard-concrete gates
         sampled per KV group; gates (log_alpha) and weights train, plus the Lagrangian penalty.
Prints a table and writes JSON (--out). Same shapes, batch rule and timing rule as consa:
median over --repeats of the mean step time of --steps steps after --warmup.
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

SHAPES = {
    "qwen3-0.6b": dict(hidden=1024, intermediate=3072),
    "qwen3-1.7b": dict(hidden=2048, intermediate=6144),
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=256),
}
BETA, GAMMA, ZETA, EPS = 2.0 / 3.0, -0.1, 1.1, 1e-6


def shape(name):
    s = dict(layers=28, heads=16, kv_heads=8, head_dim=128, vocab=151936, theta=1e6)
    s.update(SHAPES[name])
    return s


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


class Layer(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        h, d = s["hidden"], s["head_dim"]
        self.heads, self.kv_heads, self.d = s["heads"], s["kv_heads"], d
        self.q_proj = torch.nn.Linear(h, s["heads"] * d, bias=False)
        self.k_proj = torch.nn.Linear(h, s["kv_heads"] * d, bias=False)
        self.v_proj = torch.nn.Linear(h, s["kv_heads"] * d, bias=False)
        self.o_proj = torch.nn.Linear(s["heads"] * d, h, bias=False)
        self.q_norm, self.k_norm = RMSNorm(d), RMSNorm(d)
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(h), RMSNorm(h)
        self.gate_proj = torch.nn.Linear(h, s["intermediate"], bias=False)
        self.up_proj = torch.nn.Linear(h, s["intermediate"], bias=False)
        self.down_proj = torch.nn.Linear(s["intermediate"], h, bias=False)

    def attention(self, x, cos, sin, z, band):
        b, l, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, l, self.heads, self.d)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, l, self.kv_heads, self.d)).transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.kv_heads, self.d).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if z is not None:  # gated: z * FA + (1 - z) * SWA per head
            swa = F.scaled_dot_product_attention(q, k, v, attn_mask=band, enable_gqa=True)
            w = z.to(out.dtype).view(1, self.heads, 1, 1)
            out = out * w + swa * (1 - w)
        return self.o_proj(out.transpose(1, 2).reshape(b, l, self.heads * self.d))

    def forward(self, x, cos, sin, z, band):
        x = x + self.attention(self.input_layernorm(x), cos, sin, z, band)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Model(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.embed_tokens = torch.nn.Embedding(s["vocab"], s["hidden"])
        self.layers = torch.nn.ModuleList(Layer(s) for _ in range(s["layers"]))
        self.norm = RMSNorm(s["hidden"])
        for name, p in self.named_parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, 0.0, 0.02)
        inv_freq = 1.0 / s["theta"] ** (torch.arange(0, s["head_dim"], 2).float() / s["head_dim"])
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, tokens, z, band, use_checkpoint):
        l = tokens.shape[1]
        freqs = torch.outer(torch.arange(l, device=tokens.device).float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            zi = None if z is None else z[i]
            if use_checkpoint:
                x = checkpoint(layer, x, cos, sin, zi, band, use_reentrant=False)
            else:
                x = layer(x, cos, sin, zi, band)
        return F.linear(self.norm(x), self.embed_tokens.weight)  # tied lm_head


def sample_gates(log_alpha, heads_per_group):
    u = torch.empty_like(log_alpha).uniform_(EPS, 1 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
    z = (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    return z.repeat_interleave(heads_per_group, 1)


def time_mode(model, s, mode, length, batch, args, device):
    gated = mode == "gated"
    log_alpha = torch.zeros(s["layers"], s["kv_heads"], device=device, requires_grad=True)
    lambdas = torch.zeros(2, device=device, requires_grad=True)
    params = [{"params": model.parameters(), "lr": 1e-5}]
    if gated:
        params += [{"params": [log_alpha], "lr": 0.1}, {"params": [lambdas], "lr": 0.05}]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.95), weight_decay=0.0)
    i = torch.arange(length, device=device)
    band = ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - args.window)) if gated else None

    def step():
        tokens = torch.randint(0, s["vocab"], (batch, length), device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = sample_gates(log_alpha, s["heads"] // s["kv_heads"]) if gated else None
            logits = model(tokens, z, band, args.checkpointing)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, s["vocab"]), tokens[:, 1:].reshape(-1))
        if gated:
            keep = torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))
            gap = (1 - keep.mean()) - args.sparsity
            loss = loss + lambdas[0] * gap + lambdas[1] * gap * gap
        loss.backward()
        if gated:
            lambdas.grad.neg_()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / args.steps)
    peak = torch.cuda.max_memory_allocated()
    del opt
    model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2], times, peak


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="qwen3-0.6b,qwen3-1.7b")
    p.add_argument("--seq-lens", default="2048,8192,16384")
    p.add_argument("--modes", default="dense,gated")
    p.add_argument("--tokens-per-step", type=int, default=16384)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--sparsity", type=float, default=0.75)
    p.add_argument("--checkpointing", default="true", choices=["true", "false"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    args.checkpointing = args.checkpointing == "true"
    device = torch.device("cuda")
    torch.manual_seed(0)
    results = []
    print(f"reference: eager PyTorch {torch.__version__}, fp32 weights + bf16 autocast, SDPA, "
          f"checkpointing {'on' if args.checkpointing else 'off'}\n")
    print("shape        seq_len  batch  mode    step ms   tokens/s  peak GiB")
    for name in args.shapes.split(","):
        s = shape(name)
        model = Model(s).to(device)
        for length in [int(x) for x in args.seq_lens.split(",")]:
            batch = max(1, args.tokens_per_step // length)
            for mode in args.modes.split(","):
                step_s, times, peak = time_mode(model, s, mode, length, batch, args, device)
                tps = batch * length / step_s
                print(f"{name:<13}{length:>7}{batch:>7}  {mode:<6}{1e3 * step_s:>9.1f}{tps:>11.0f}{peak / 2**30:>10.2f}",
                      flush=True)
                results.append(dict(shape=name, seq_len=length, batch=batch, mode=mode, step_ms=1e3 * step_s,
                                    repeat_step_ms=[1e3 * t for t in times], tokens_per_s=tps, peak_bytes=peak))
        del model
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(dict(torch=torch.__version__, window=args.window, checkpointing=args.checkpointing,
                           tokens_per_step=args.tokens_per_step, results=results), f, indent=2)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
