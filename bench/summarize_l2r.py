"""Merge ``cltk l2r`` result folders of several seeds into one table (mean and sample std over seeds).

    python bench/summarize_l2r.py OUT.md RESULTS_DIR [RESULTS_DIR ...]

Each RESULTS_DIR holds one ``results.json`` of ``cltk l2r --experiment E --seed S``. For every experiment and rule
it gives the readout accuracy (%) on A after the last meta-test step and its change from step 0, and the readout
accuracy on the last task (B, or B2 in three-tasks) after the last step, as mean ± std over the seeds found;
writes the Markdown table to OUT.md (atomically) and prints it.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from cltk.checkpoint import atomic_write_text


def _ms(v: list[float]) -> str:
    a = 100 * np.asarray(v)
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a.mean():.1f}"


def summarize(dirs: list[str]) -> str:
    runs = defaultdict(list)   # experiment -> results
    for d in dirs:
        r = json.loads((Path(d) / "results.json").read_text())
        if r.get("quick"):
            raise ValueError(f"{d}: a --quick run; only full runs are summarized")
        runs[(r["experiment"], r.get("variant", "synapse"))].append(r)
    lines = []
    for (exp, variant), rs in runs.items():
        seeds = sorted(r["seed"] for r in rs)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{exp}: seed given twice among {seeds}")
        rules = list(rs[0]["curves"])
        tasks = [k for k in rs[0]["curves"][rules[0]] if k != "step"]
        last = tasks[-1]
        lines += [f"### {exp} ({variant}; seeds {', '.join(map(str, seeds))}; meta-training "
                  f"{np.mean([r['meta_cpu_s'] for r in rs]):.0f} CPU-s on average)", "",
                  f"| rule | A, last step | ΔA | {last}, last step |", "|---|---:|---:|---:|"]
        for m in rules:
            a1 = [r["curves"][m]["A"][-1] for r in rs]
            da = [r["curves"][m]["A"][-1] - r["curves"][m]["A"][0] for r in rs]
            b1 = [r["curves"][m][last][-1] for r in rs]
            lines.append(f"| {m} | {_ms(a1)} | {_ms(da)} | {_ms(b1)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    text = summarize(argv[1:])
    atomic_write_text(argv[0], text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
