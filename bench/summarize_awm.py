"""Merge ``cltk compare --preset awm`` result folders (e.g. one per method group run side by side) into one.

    python bench/summarize_awm.py OUT_DIR RESULTS_DIR [RESULTS_DIR ...]

Runs are ordered as the preset lists their methods. A run whose ``params_per_task`` was not recorded gets it from
``Method.added_parameters`` on a freshly set-up model (a count fixed by the configuration, the model and the stream).
Writes ``OUT_DIR/results.json``, ``results.csv``, ``summary.csv`` and the figures of :func:`cltk.plots.plot_all`
(``acc_vs_params.png`` among them), and prints the Markdown table of docs/methods_awm.md.
"""
from __future__ import annotations

import math
import sys

from cltk.cli import parse_method_spec
from cltk.methods import get_method
from cltk.models import build_model
from cltk.plots import plot_all
from cltk.presets import get_preset
from cltk.results import aggregate, read_folders, write_folder
from cltk.streams.builders import make_stream


def fill_params(runs, meta: dict) -> None:
    cache: dict = {}
    for r in runs:
        if r.params_per_task and None not in r.params_per_task:
            continue
        key = (r.method, r.benchmark, r.scenario, r.model)
        if key not in cache:
            _, name, overrides = parse_method_spec(_spec(r.method))
            stream = make_stream(r.benchmark, r.scenario, r.seed, **meta.get("stream_kwargs", {}))
            method = get_method(name, **overrides)
            method.setup(build_model(r.model, stream, seed=r.seed), stream)
            cache[key] = [method.added_parameters(i) for i in range(len(stream.tasks))]
        r.params_per_task = list(cache[key])


def _spec(label: str) -> str:
    """``awm(resolution=8x8)`` -> ``awm:resolution=[8,8]`` (the labels of the awm preset)."""
    for spec in get_preset("awm").methods:
        if parse_method_spec(spec)[0] == label:
            return spec
    return label


def markdown(rows: list[dict], task_names: list[str]) -> str:
    def f(v: float, digits: int = 3) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    head = ["method", "seeds", *task_names, "ACC", "BWT", "forgetting", "params added / task", "s / task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tasks = [f"{m:.3f} ± {s:.3f}" for m, s in zip(r["task_acc_mean"], r["task_acc_std"])]
        lines.append("| " + " | ".join([
            f"`{r['method']}`", str(r["n_seeds"]), *tasks, f"{f(r['acc_mean'])} ± {f(r['acc_std'])}",
            f"{f(r['bwt_mean'])} ± {f(r['bwt_std'])}", f"{f(r['forgetting_mean'])} ± {f(r['forgetting_std'])}",
            f"{r['params_per_task_mean']:,.0f}", f"{f(r['time_per_task_s_mean'], 1)}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out, dirs = argv[0], argv[1:]
    meta, runs = read_folders(dirs)
    order = [parse_method_spec(s)[0] for s in get_preset("awm").methods]
    runs.sort(key=lambda r: (order.index(r.method) if r.method in order else len(order), r.seed))
    fill_params(runs, meta)
    write_folder(out, runs, meta)
    plot_all(runs, out)
    print(markdown(aggregate(runs), runs[0].task_names if runs else []))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
