#!/usr/bin/env python3
"""Quality against KV bytes across sweeps: the frontier of each (sweep, method).

usage: plot_frontier.py OUT_PNG SWEEP_DIR=LABEL [SWEEP_DIR=LABEL ...]

Each SWEEP_DIR holds a sweep.csv written by `consa sweep` (typically --kv-budgets runs, one sweep
per window setting, e.g. runs/w16=W16 runs/w16_8=W16|8). Every method of every sweep becomes one
series, "LABEL method"; its points are the runs' KV bytes at the longest evaluated length (as a
share of the dense cache) against retrieval accuracy there and held-out perplexity. Writes OUT_PNG
and prints a Markdown table with one row per KV budget and one column per series.
Needs matplotlib (Debian: python3-matplotlib).
"""
import csv
import os
import sys


def fail(message):
    print(f"plot_frontier: error: {message}", file=sys.stderr)
    sys.exit(1)


def read_series(spec):
    if "=" not in spec:
        fail(f"{spec}: expected SWEEP_DIR=LABEL")
    sweep, label = spec.split("=", 1)
    path = os.path.join(sweep, "sweep.csv")
    if not os.path.exists(path):
        fail(f"{path}: not found (run consa sweep first)")
    rows = list(csv.DictReader(open(path)))
    if not rows:
        fail(f"{path}: no finished runs")
    lengths = sorted(int(c[len("kv_bytes_"):]) for c in rows[0] if c.startswith("kv_bytes_"))
    if not lengths:
        fail(f"{path}: no kv_bytes_<length> column")
    length = lengths[-1]
    series = {}
    for r in rows:
        point = {
            "budget": int(r.get("kv_budget") or 0),
            "kv": int(r[f"kv_bytes_{length}"]),
            "dense_kv": int(r[f"dense_kv_bytes_{length}"]),
            "accuracy": float(r[f"acc_{length}"]) if r.get(f"acc_{length}") else None,
            "perplexity": float(r["perplexity"]) if r["perplexity"] else None,
        }
        series.setdefault((label, r["method"]), []).append(point)
    return length, series


def cell(point):
    if point is None:
        return "-"
    acc = "-" if point["accuracy"] is None else f"{point['accuracy']:.2f}"
    ppl = "-" if point["perplexity"] is None else f"{point['perplexity']:.3f}"
    return f"{acc} / {ppl} ({100 * point['kv'] / point['dense_kv']:.0f}%)"


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out_png, specs = sys.argv[1], sys.argv[2:]
    series, lengths = {}, set()
    for spec in specs:
        length, s = read_series(spec)
        lengths.add(length)
        series.update(s)
    if len(lengths) != 1:
        fail(f"the sweeps were evaluated at different longest lengths {sorted(lengths)}; compare like with like")
    length = lengths.pop()

    budgets = sorted({p["budget"] for points in series.values() for p in points if p["budget"] > 0})
    names = list(series)
    titles = [f"{label} {method}" for label, method in names]
    print(f"retrieval accuracy @{length} / perplexity (KV bytes @{length} of dense), per KV budget\n")
    print("| KV budget | " + " | ".join(titles) + " |")
    print("| --- |" + " --- |" * len(names))
    for b in budgets:
        row = [cell(next((p for p in series[n] if p["budget"] == b), None)) for n in names]
        print(f"| {b} | " + " | ".join(row) + " |")
    dense = [p for n in names if n[1] == "dense" for p in series[n]]
    if dense:
        print(f"| dense | {cell(dense[0])} |" + " |" * (len(names) - 1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("accuracy", f"retrieval accuracy @ {length} tokens", False),
               ("perplexity", "held-out perplexity", True)]
    # One colour per method, one line style and marker per sweep: methods compare across settings.
    methods = list(dict.fromkeys(m for _, m in names))
    labels = list(dict.fromkeys(label for label, _ in names))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.2), squeeze=False)
    for ax, (key, title, log_scale) in zip(axes[0], metrics):
        for n, name in zip(names, titles):
            pts = sorted((100 * p["kv"] / p["dense_kv"], p[key]) for p in series[n] if p[key] is not None)
            if not pts:
                continue
            line, marker = styles[labels.index(n[0]) % len(styles)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=line, marker=marker, label=name,
                    color=colours[methods.index(n[1]) % len(colours)], alpha=0.85)
        ax.set_title(title)
        ax.set_xlabel(f"KV cache @ {length} tokens (% of dense)")
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"\nwrote {out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
