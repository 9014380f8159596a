"""Merge ``cltk compare --preset three-scenarios`` result folders (one per process that ran a share of the seeds
and scenarios) into one.

    python bench/summarize_three_scenarios.py OUT_DIR RESULTS_DIR [RESULTS_DIR ...]

A run found in several folders (same method, benchmark, scenario and seed) is taken from the last of them, so a
folder of re-runs listed last replaces those runs. Runs are ordered as the preset lists methods and scenarios, then
by seed. Writes ``OUT_DIR/results.json``,
``results.csv``, ``summary.csv`` and the figures of :func:`cltk.plots.plot_all`, and prints a Markdown table: the
final average accuracy (ACC) per method and scenario, mean ± sample std over seeds, the number of seeds, the
published full-MNIST figure where van de Ven & Tolias 2019 (Table 2, split MNIST) give one (MNIST
streams only), and the mean wall time of one run (training and evaluation).
"""
from __future__ import annotations

import math
import sys

from cltk.plots import plot_all
from cltk.presets import get_preset
from cltk.results import aggregate, read_folders, write_folder

# van de Ven & Tolias 2019, Table 2 (split MNIST, 60k images, 2000 iterations per task), in %: task / domain / class.
PUBLISHED = {
    "finetune": (87.19, 59.21, 19.90),
    "ewc": (98.64, 63.95, 20.01),
    "si": (99.09, 65.36, 19.99),
    "lwf": (None, None, 23.85),
}


def markdown(rows: list[dict], methods: list[str], scenarios: list[str], published: bool = True) -> str:
    by = {(r["method"], r["scenario"]): r for r in rows}
    names = {"task": "task-IL", "domain": "domain-IL", "class": "class-IL"}
    head = ["method", *(names.get(s, s) for s in scenarios), "seeds",
            *(["published (task / domain / class)"] if published else []), "s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        mine = [by.get((m, s)) for s in scenarios]
        if not any(mine):
            continue
        cells = ["–" if r is None else f"{r['acc_mean']:.3f} ± {r['acc_std']:.3f}" for r in mine]
        seeds = sorted({r["n_seeds"] for r in mine if r is not None})
        pub = PUBLISHED.get(m)
        pub_cell = " / ".join("–" if v is None else f"{v:.2f}" for v in pub) if pub else ""
        times = [r["time_s_mean"] for r in mine if r is not None and not math.isnan(r["time_s_mean"])]
        t = f"{sum(times) / len(times):.0f}" if times else "-"
        lines.append("| " + " | ".join([m, *cells, "/".join(map(str, seeds)), *([pub_cell] if published else []),
                                         t]) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out, dirs = argv[0], argv[1:]
    meta, runs = read_folders(dirs)
    runs = list({(r.method, r.benchmark, r.scenario, r.seed): r for r in runs}.values())   # the last folder wins
    preset = get_preset("three-scenarios")
    methods = list(dict.fromkeys([*preset.methods, *(r.method for r in runs)]))
    scenarios = list(dict.fromkeys([*preset.scenarios, *(r.scenario for r in runs)]))
    runs.sort(key=lambda r: (methods.index(r.method), scenarios.index(r.scenario), r.seed))
    write_folder(out, runs, meta)
    plot_all(runs, out)
    mnist = all(r.benchmark in ("split-mnist", "split-mnist5k") for r in runs)
    print(markdown(aggregate(runs), methods, scenarios, published=mnist))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
