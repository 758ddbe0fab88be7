#!/usr/bin/env python3
"""Plots of a consa sweep: quality against sparsity per method, and each run's assignment.

usage: plot_sweep.py SWEEP_DIR

Reads SWEEP_DIR/sweep.csv (written by `consa sweep`) and each run's assignment.json, and writes
  SWEEP_DIR/quality_vs_sparsity.png   retrieval accuracy and perplexity against achieved sparsity
  SWEEP_DIR/assignments.png           a layer x unit map (dark = full attention) per run
Needs matplotlib (Debian: python3-matplotlib).
"""
import csv
import json
import math
import os
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    sweep = sys.argv[1]
    path = os.path.join(sweep, "sweep.csv")
    if not os.path.exists(path):
        print(f"plot_sweep: error: {path}: not found (run consa sweep first)", file=sys.stderr)
        return 1
    rows = list(csv.DictReader(open(path)))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    length_columns = [c for c in rows[0] if c.startswith("acc_") and c[4:].isdigit()]

    has_ppl = any(r["perplexity"] for r in rows)
    panels = len(length_columns) + (1 if has_ppl else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
    for i, column in enumerate(length_columns):
        ax = axes[0][i]
        for m in methods:
            pts = sorted((float(r["achieved_sparsity"]), float(r[column])) for r in rows if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_title(f"retrieval accuracy @ {column[4:]} tokens")
        ax.set_xlabel("achieved sparsity (fraction of units on SWA)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    if has_ppl:
        ax = axes[0][-1]
        for m in methods:
            pts = sorted((float(r["achieved_sparsity"]), float(r["perplexity"])) for r in rows
                         if r["method"] == m and r["perplexity"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_title("held-out perplexity")
        ax.set_yscale("log")
        ax.set_xlabel("achieved sparsity")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(sweep, "quality_vs_sparsity.png"), dpi=120)

    runs = [r for r in rows if os.path.exists(os.path.join(r["run_dir"], "assignment.json"))]
    if runs:
        cols = min(len(runs), 5)
        rws = math.ceil(len(runs) / cols)
        fig, axes = plt.subplots(rws, cols, figsize=(2.6 * cols, 2.8 * rws), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, r in zip(axes.flat, runs):
            a = json.load(open(os.path.join(r["run_dir"], "assignment.json")))
            grid = [[1 if u == "full" else 0 for u in layer["units"]] for layer in a["layers"]]
            ax.axis("on")
            ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            ax.set_title(f"{r['method']} t={float(r['target']):g}", fontsize=9)
            ax.set_xlabel(a["granularity"], fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        fig.suptitle("assignments (dark = full attention, light = sliding window)", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(sweep, "assignments.png"), dpi=120)
    print(f"wrote {os.path.join(sweep, 'quality_vs_sparsity.png')} and {os.path.join(sweep, 'assignments.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
