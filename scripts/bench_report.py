#!/usr/bin/env python3
"""Joins the JSON of `consa bench train`, scripts/reference_train_step.py and `consa bench decode`
(measured in one run) into Markdown tables and checks the performance goals:

  dense MFU at 8K >= 45% (without checkpointing) / >= 40% (with it)
  gated step <= 1.08x dense at 8K           hard step (stage 2) faster than dense at 8K and 16K
  consa tokens/s >= 1.5x the Python reference, dense and gated
  decode 32K, rho 0.75: <= 1.5 ms/token at batch 1, >= 2x rho 0 at batches 1 and 8
  prefill 32K, rho 0.75 >= 2x rho 0         KV bytes within 2% of analytic
Training goals are checked on the rows that ran consa's fused kernels (`kernels` fused, or auto
where they ran); rows with ATen ops are listed beside them.

usage: bench_report.py --train T.json --reference R.json --decode D.json [--goal-length 8192]
"""
import argparse
import json


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt(x, digits=1):
    return f"{x:,.{digits}f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--reference")
    p.add_argument("--decode")
    p.add_argument("--goal-length", type=int, default=8192)
    args = p.parse_args()
    train = load(args.train)
    reference = load(args.reference) if args.reference else {"results": []}
    ref = {(r["shape"], r["seq_len"], r["mode"]): r for r in reference["results"]}
    goals = []  # (goal, measured, met)

    print(f"### Training (consa, {train['dtype']}, checkpointing {'on' if train['checkpointing'] else 'off'}, "
          f"{train['tokens_per_step']} tokens/step, MFU against {train['peak_tflops']:g} TFLOP/s)\n")
    print("| shape | seq | batch | kernels | mode | step ms | tokens/s | TFLOP/s | MFU | peak GiB | vs dense | reference tokens/s | consa / reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    mfu_goal = 0.40 if train["checkpointing"] else 0.45
    for r in train["results"]:
        key = (r["shape"], r["seq_len"], r["mode"])
        fused = r.get("fused_kernels", False)  # JSON from before the kernels has no such field
        kernels = r.get("kernels", "aten") + (" (fused)" if r.get("kernels") == "auto" and fused else "")
        peak = f"{r['peak_bytes'] / 2**30:.1f}" if r["peak_bytes"] >= 0 else "-"
        vs = f"{r['step_vs_dense']:.3f}" if "step_vs_dense" in r else "-"
        ref_tps, ratio = "-", "-"
        if key in ref:
            ref_tps = fmt(ref[key]["tokens_per_s"], 0)
            ratio = f"{r['tokens_per_s'] / ref[key]['tokens_per_s']:.2f}"
            if fused:
                goals.append((f"consa >= 1.5x reference ({r['shape']}, {r['seq_len']}, {r['mode']})",
                              f"{r['tokens_per_s'] / ref[key]['tokens_per_s']:.2f}x",
                              r["tokens_per_s"] >= 1.5 * ref[key]["tokens_per_s"]))
        print(f"| {r['shape']} | {r['seq_len']} | {r['batch']} | {kernels} | {r['mode']} | {r['step_ms']:.1f} | "
              f"{fmt(r['tokens_per_s'], 0)} | {r['tflops']:.1f} | {100 * r['mfu']:.1f}% | {peak} | {vs} | {ref_tps} | {ratio} |")
        if not fused:
            continue
        if r["seq_len"] == args.goal_length and r["mode"] == "gated" and "step_vs_dense" in r:
            goals.append((f"gated step <= 1.08x dense ({r['shape']}, {r['seq_len']})", f"{r['step_vs_dense']:.3f}x",
                          r["step_vs_dense"] <= 1.08))
        if r["seq_len"] >= args.goal_length and r["mode"] == "hard" and "step_vs_dense" in r:
            goals.append((f"hard step < dense ({r['shape']}, {r['seq_len']})", f"{r['step_vs_dense']:.3f}x",
                          r["step_vs_dense"] < 1.0))
        if r["seq_len"] == args.goal_length and r["mode"] == "dense":
            goals.append((f"dense MFU >= {100 * mfu_goal:.0f}% ({r['shape']}, {r['seq_len']}, checkpointing "
                           f"{'on' if train['checkpointing'] else 'off'})", f"{100 * r['mfu']:.1f}%", r["mfu"] >= mfu_goal))

    if reference["results"]:
        print(f"\n### Reference ({reference['torch']} eager, fp32 weights + bf16 autocast, SDPA)\n")
        print("| shape | seq | batch | mode | step ms | tokens/s | peak GiB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in reference["results"]:
            print(f"| {r['shape']} | {r['seq_len']} | {r['batch']} | {r['mode']} | {r['step_ms']:.1f} | "
                  f"{fmt(r['tokens_per_s'], 0)} | {r['peak_bytes'] / 2**30:.1f} |")

    if args.decode:
        decode = load(args.decode)
        rows = decode["results"]
        print(f"\n### Exported model ({decode['shape']}, {decode['dtype']}, W = {decode['window']})\n")
        print("decode ms/step: eager (`extend`, the TorchScript interpreter per operator) and through a CUDA "
              "graph of `decode_step`; decode tok/s from the faster path measured (`decode_path`).\n")
        print("| batch | rho | context | prefill tok/s | eager ms/step | graph ms/step | decode tok/s | KV bytes | "
              "analytic | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in sorted(rows, key=lambda r: (r["batch"], r["sparsity"], r["context"])):
            eager = r.get("decode_eager_ms_per_step", r["decode_ms_per_step"])
            graph = r.get("decode_graph_ms_per_step")
            print(f"| {r['batch']} | {r['sparsity']:g} | {r['context']} | {fmt(r['prefill_tokens_per_s'], 0)} | "
                  f"{eager:.2f} | {'-' if graph is None else f'{graph:.2f}'} | {r['decode_tokens_per_s']:.1f} | "
                  f"{r['kv_bytes']:,} | {int(r['kv_bytes_analytic']):,} | {r['kv_bytes'] / r['kv_bytes_analytic']:.4f} |")
        worst = max(abs(r["kv_bytes"] / r["kv_bytes_analytic"] - 1) for r in rows)
        goals.append(("KV bytes within 2% of analytic", f"worst {100 * worst:.2f}%", worst <= 0.02))
        by = {(r["batch"], r["sparsity"], r["context"]): r for r in rows}
        for (batch, rho, context), r in sorted(by.items()):
            if rho == 0.75 and context == 32768 and (batch, 0.0, context) in by:
                dense = by[(batch, 0.0, context)]
                speedup = dense["decode_ms_per_step"] / r["decode_ms_per_step"]
                goals.append((f"decode 32K rho 0.75 >= 2x rho 0 (batch {batch})", f"{speedup:.2f}x", speedup >= 2))
                prefill = r["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"]
                goals.append((f"prefill 32K rho 0.75 >= 2x rho 0 (batch {batch})", f"{prefill:.2f}x", prefill >= 2))
                if batch == 1:
                    goals.append(("decode 32K rho 0.75 <= 1.5 ms/token (batch 1)", f"{r['decode_ms_per_step']:.2f} ms",
                                  r["decode_ms_per_step"] <= 1.5))

    print("\n### Goals\n")
    print("| goal | measured | met |")
    print("| --- | --- | --- |")
    for goal, measured, met in goals:
        print(f"| {goal} | {measured} | {'yes' if met else '**no**'} |")


if __name__ == "__main__":
    main()
