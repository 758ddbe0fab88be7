#!/usr/bin/env python3
"""Joins the JSON of `consa bench train`, scripts/reference_train_step.py and `consa bench decode`
(measured in one run) into Markdown tables and checks the performance goals:

  dense MFU at 8K >= 45% (without checkpointing) / >= 40% (with it)
  gated step <= 1.08x dense at 8K           hard step (stage 2) faster than dense at 8K and 16K
  consa tokens/s >= 1.5x the Python reference, dense and gated
  decode 32K, rho 0.75: <= 1.5 ms/token at batch 1, >= 2x rho 0 at batches 1 and 8
  prefill 32K, rho 0.75 >= 2x rho 0         KV bytes within 2% of analytic
Training goals are checked on the rows that ran consa's fused kernels (`kernels` fused, or auto
where they ran); rows with ATen ops are listed beside them. Decode goals likewise on the rows of
exports that call consa's operators (`kernels` fused, `consa bench decode --kernels aten,fused`)
where the JSON has them, with the portable export's figure beside.

usage: bench_report.py [--train T.json [--reference R.json]] [--decode D.json] [--goal-length 8192]
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
    p.add_argument("--train")
    p.add_argument("--reference")
    p.add_argument("--decode")
    p.add_argument("--goal-length", type=int, default=8192)
    args = p.parse_args()
    goals = []  # (goal, measured, met)
    if args.train:
        train_report(args, goals)
    if args.decode:
        decode_report(load(args.decode), goals)

    print("\n### Goals\n")
    print("| goal | measured | met |")
    print("| --- | --- | --- |")
    for goal, measured, met in goals:
        print(f"| {goal} | {measured} | {'yes' if met else '**no**'} |")


def train_report(args, goals):
    train = load(args.train)
    reference = load(args.reference) if args.reference else {"results": []}
    ref = {(r["shape"], r["seq_len"], r["mode"]): r for r in reference["results"]}

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



def decode_report(decode, goals):
    rows = decode["results"]
    for r in rows:
        r.setdefault("kernels", "aten")  # JSON from before fused exports has no such field
    print(f"\n### Exported model ({decode['shape']}, {decode['dtype']}, W = {decode['window']})\n")
    print("decode ms/step: eager (`extend`, the TorchScript interpreter per operator) and through a CUDA "
          "graph of `decode_step`; decode tok/s from the faster path measured (`decode_path`). kernels: the "
          "export's operators (aten: portable; fused: consa's).\n")
    print("| kernels | batch | rho | context | prefill tok/s | eager ms/step | graph ms/step | decode tok/s | "
          "KV bytes | analytic | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (r["kernels"], r["batch"], r["sparsity"], r["context"])):
        eager = r.get("decode_eager_ms_per_step", r["decode_ms_per_step"])
        graph = r.get("decode_graph_ms_per_step")
        print(f"| {r['kernels']} | {r['batch']} | {r['sparsity']:g} | {r['context']} | "
              f"{fmt(r['prefill_tokens_per_s'], 0)} | {eager:.2f} | {'-' if graph is None else f'{graph:.2f}'} | "
              f"{r['decode_tokens_per_s']:.1f} | {r['kv_bytes']:,} | {int(r['kv_bytes_analytic']):,} | "
              f"{r['kv_bytes'] / r['kv_bytes_analytic']:.4f} |")
    worst = max(abs(r["kv_bytes"] / r["kv_bytes_analytic"] - 1) for r in rows)
    goals.append(("KV bytes within 2% of analytic", f"worst {100 * worst:.2f}%", worst <= 0.02))
    by = {(r["kernels"], r["batch"], r["sparsity"], r["context"]): r for r in rows}
    kinds = [k for k in ("fused", "aten") if any(r["kernels"] == k for r in rows)]
    goal_kind = kinds[0]  # the goals take the fused export's rows where there are any

    def ratios(kind, batch):
        """(decode, prefill) speed-ups of rho 0.75 over rho 0 at 32K, or None."""
        hybrid, dense = by.get((kind, batch, 0.75, 32768)), by.get((kind, batch, 0.0, 32768))
        if hybrid is None or dense is None:
            return None
        return (dense["decode_ms_per_step"] / hybrid["decode_ms_per_step"],
                hybrid["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"])

    def beside(kind, text):
        return f"{text} ({kind})" if len(kinds) > 1 else text

    for batch in sorted({r["batch"] for r in rows}):
        measured = {kind: ratios(kind, batch) for kind in kinds}
        if measured[goal_kind] is None:
            continue
        decode_text = "; ".join(beside(k, f"{m[0]:.2f}x") for k, m in measured.items() if m)
        prefill_text = "; ".join(beside(k, f"{m[1]:.2f}x") for k, m in measured.items() if m)
        goals.append((f"decode 32K rho 0.75 >= 2x rho 0 (batch {batch})", decode_text, measured[goal_kind][0] >= 2))
        goals.append((f"prefill 32K rho 0.75 >= 2x rho 0 (batch {batch})", prefill_text, measured[goal_kind][1] >= 2))
        if batch == 1:
            ms = {k: by[(k, 1, 0.75, 32768)]["decode_ms_per_step"] for k in kinds if (k, 1, 0.75, 32768) in by}
            goals.append(("decode 32K rho 0.75 <= 1.5 ms/token (batch 1)",
                          "; ".join(beside(k, f"{v:.2f} ms") for k, v in ms.items()), ms[goal_kind] <= 1.5))

if __name__ == "__main__":
    main()
