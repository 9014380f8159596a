"""Merge ``cltk compare --preset attention-meta`` result folders (one per seed or method group) into one table.

    python bench/summarize_attention_meta.py OUT_DIR RESULTS_DIR [RESULTS_DIR ...]

Writes ``OUT_DIR/results.json`` (the merged runs, accuracy matrices included), ``OUT_DIR/runs.csv`` (one row per run: ACC, BWT and FWT of Lopez-Paz & Ranzato, the paper's BWT over all
pairs and FWT after adaptation, readout, time), ``OUT_DIR/summary.csv`` (mean and sample std over seeds per method) and
``OUT_DIR/accuracy_matrix_<method>.png`` (accuracy matrix averaged over seeds, :func:`cltk.plots.plot_accuracy_matrices`),
and prints the summary as a Markdown table.
"""
from __future__ import annotations

import csv
import os
import sys

import numpy as np

from cltk import metrics
from cltk.plots import plot_accuracy_matrices
from cltk.results import read_folders, write_json

KEYS = ("acc", "bwt", "bwt_all_pairs", "fwt", "fwt_adapted", "readout", "time_s")


def run_row(r) -> dict:
    s = r.summary()
    return {"method": r.method, "benchmark": r.benchmark, "scenario": r.scenario, "seed": r.seed,
            "acc": s["acc"], "bwt": s["bwt"], "bwt_all_pairs": metrics.bwt_all_pairs(r.R), "fwt": s["fwt"],
            "fwt_adapted": metrics.fwt_adapted(r.R), "readout": s["readout"], "time_s": s["time_s"]}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out, dirs = argv[0], argv[1:]
    meta, runs = read_folders(dirs)
    os.makedirs(out, exist_ok=True)
    rows = [run_row(r) for r in runs]
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    summary = []
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        s = {"method": m, "seeds": ",".join(str(r["seed"]) for r in mine)}
        for k in KEYS:
            v = np.array([r[k] for r in mine], dtype=float)   # sample std (ddof=1) as cltk.results.aggregate
            s[k + "_mean"], s[k + "_std"] = float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0
        summary.append(s)
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in s.items()} for s in summary)
    write_json(os.path.join(out, "results.json"), runs, meta)
    plot_accuracy_matrices(runs, out)
    print("| method | seeds | ACC | BWT (last row) | BWT over all pairs | FWT (L-P & R) | FWT after adaptation | "
          "readout |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for s in summary:
        cells = [f"{s[k + '_mean']:.3f} ± {s[k + '_std']:.3f}" for k in KEYS[:-1]]
        print(f"| {s['method']} | {s['seeds']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
