"""Figures of a comparison (matplotlib, Agg backend): accuracy-matrix heatmaps and a summary bar chart.

``accuracy_matrix_<method>.png``: one heatmap per scenario of the seed-mean ``R[i][j]``.
``summary.png``: one panel per scenario, bars of ACC, BWT, FWT and readout per method with the std over seeds.
``acc_vs_params.png`` (when the runs record the parameters each task adds): ACC (mean ± std over seeds) against the
parameters added per task, one panel per scenario; the configurations of one method (``awm(resolution=8x8)``, ...)
are joined by a line, other methods are single points (symmetric-log axis, so methods that add 0 appear at 0).
Files are written atomically (:func:`cltk.checkpoint.atomic_write`) and their names are reduced to safe
characters.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from cltk.checkpoint import atomic_write
from cltk.results import RunResult, aggregate, safe_name

__all__ = ["plot_accuracy_matrices", "plot_summary", "plot_acc_vs_params", "plot_all"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))
    finally:
        _pyplot().close(fig)
    return path


def _scenarios(runs: Sequence[RunResult]) -> list[str]:
    return list(dict.fromkeys(r.scenario for r in runs))


def plot_accuracy_matrices(runs: Sequence[RunResult], out_dir: str) -> list[str]:
    """One ``accuracy_matrix_<method>.png`` per method; returns the paths."""
    plt = _pyplot()
    paths = []
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        scen = _scenarios(mine)
        fig, axes = plt.subplots(1, len(scen), figsize=(4.2 * len(scen), 3.8), squeeze=False)
        for ax, sc in zip(axes[0], scen):
            R = np.mean([np.asarray(r.R, dtype=float) for r in mine if r.scenario == sc], axis=0)
            n_seeds = sum(r.scenario == sc for r in mine)
            im = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
            T = R.shape[0]
            for i in range(T):
                for j in range(T):
                    ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if R[i, j] < 0.6 else "black")
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xlabel("task evaluated j")
            ax.set_ylabel("after training task i")
            ax.set_title(f"{method}, {sc}-IL ({n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=9)
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="test accuracy")
        paths.append(_save(fig, os.path.join(out_dir, f"accuracy_matrix_{safe_name(method)}.png")))
    return paths


def plot_summary(runs: Sequence[RunResult], out_dir: str) -> str:
    """``summary.png``: ACC, BWT, FWT and readout (mean ± std over seeds) per method, one panel per scenario."""
    plt = _pyplot()
    rows = aggregate(runs)
    scen = _scenarios(runs)
    methods = list(dict.fromkeys(r.method for r in runs))
    keys = ("acc", "bwt", "fwt", "readout")
    fig, axes = plt.subplots(1, len(scen), figsize=(5.0 * len(scen), 3.6), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(methods))
    for ax, sc in zip(axes[0], scen):
        for k, m in enumerate(methods):
            row = next((r for r in rows if r["method"] == m and r["scenario"] == sc), None)
            if row is None:
                continue
            means = [np.nan_to_num(row[key + "_mean"]) for key in keys]
            stds = [np.nan_to_num(row[key + "_std"]) for key in keys]
            ax.bar(np.arange(len(keys)) + (k - (len(methods) - 1) / 2) * width, means, width, yerr=stds,
                   capsize=2, label=m)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([k.upper() if k != "readout" else "readout" for k in keys])
        ax.set_title(f"{sc}-IL", fontsize=10)
        ax.set_ylim(-1.05, 1.05)
    axes[0][0].set_ylabel("accuracy / transfer")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    return _save(fig, os.path.join(out_dir, "summary.png"))


def _base_name(label: str) -> str:
    """``awm(resolution=8x8)`` -> ``awm``."""
    return label.split("(", 1)[0]


def _short(v) -> str:
    return "x".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def _config_defaults(method: str) -> dict:
    """The registered method's config defaults (runs recorded before a field existed lack it); {} if unknown."""
    from cltk.methods import method_class
    try:
        config = method_class(method).Config
    except ValueError:
        return {}
    return {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}


def _member_labels(labels: list[str], runs: Sequence[RunResult]) -> dict[str, str]:
    """The config values that tell the configurations of one method apart, e.g. ``{"awm": "4x4", ...}``."""
    configs = {lab: next((r.config for r in runs if r.method == lab), {}) for lab in labels}
    configs = {lab: {**_config_defaults(_base_name(lab)), **c} for lab, c in configs.items()}
    keys = [k for k in dict.fromkeys(k for c in configs.values() for k in c)
            if len({repr(c.get(k)) for c in configs.values()}) > 1]
    if not keys:
        return {lab: lab for lab in labels}
    if len(keys) == 1:   # a size reads alone ("8x8"); a word with its field ("bn_stats=task")
        k = keys[0]
        return {lab: f"{k}={c.get(k)}" if isinstance(c.get(k), str) else _short(c.get(k)) for lab, c in configs.items()}
    return {lab: ",".join(f"{k}={_short(c.get(k))}" for k in keys) for lab, c in configs.items()}


def _families(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by method family (``awm``, ``awm(resolution=8x8)``, ... together), each sorted by parameters."""
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(_base_name(r["method"]), []).append(r)
    return {f: sorted(m, key=lambda r: r["params_per_task_mean"]) for f, m in families.items()}


def _is_sweep(members: list[dict]) -> bool:
    """A method run at settings that add different numbers of parameters (AWM's grid sizes, say)."""
    return len({r["params_per_task_mean"] for r in members}) > 1


def _draw_families(ax, families: dict[str, list[dict]], runs: Sequence[RunResult], colors: dict[str, str],
                   zoom: bool) -> None:
    for fam, members in families.items():
        xs = [r["params_per_task_mean"] for r in members]
        ys = [r["acc_mean"] for r in members]
        es = [r["acc_std"] for r in members]
        color = colors[fam]
        ax.errorbar(xs, ys, yerr=es, fmt="o-" if len(set(xs)) > 1 else "o", color=color, capsize=3,
                    markersize=5, label=fam)
        labels = _member_labels([r["method"] for r in members], runs) if len(members) > 1 else {}
        for i, r in enumerate(members):
            text = labels.get(r["method"], r["method"])
            if zoom:   # one member per label, with its figures, to the right of its point
                text = f"{text}: {r['acc_mean']:.3f}, {r['params_per_task_mean']:,.0f}"
                offset = (6, -3)
            else:      # a family's labels alternate above and below its line
                offset = (4, 5 if i % 2 == 0 else -11)
            ax.annotate(text, (r["params_per_task_mean"], r["acc_mean"]), textcoords="offset points",
                        xytext=offset, fontsize=7, color=color)


def plot_acc_vs_params(runs: Sequence[RunResult], out_dir: str) -> Optional[str]:
    """``acc_vs_params.png``: ACC against parameters added per task; None (no file) when no run records them.

    Per scenario one panel with every method and, when a method was run at settings that add different numbers of
    parameters (a sweep such as AWM's grid resolutions, whose points sit close together on the full axis), a second
    panel with only those methods, each point labelled with its setting, ACC and parameter count."""
    import math
    rows = [r for r in aggregate(runs) if not math.isnan(r["params_per_task_mean"])]
    if not rows:
        return None
    plt = _pyplot()
    scen = list(dict.fromkeys(r["scenario"] for r in rows))
    per_scen = {sc: _families([r for r in rows if r["scenario"] == sc]) for sc in scen}
    zoom = any(_is_sweep(m) for fams in per_scen.values() for m in fams.values())
    ncols = 2 if zoom else 1
    fig, axes = plt.subplots(len(scen), ncols, figsize=(6.4 * ncols, 4.4 * len(scen)), squeeze=False)
    for row_axes, sc in zip(axes, scen):
        families = per_scen[sc]
        colors = {fam: f"C{k % 10}" for k, fam in enumerate(families)}
        mine = [r for m in families.values() for r in m]
        lo, hi = min(r["n_seeds"] for r in mine), max(r["n_seeds"] for r in mine)
        seeds = f"{lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"{lo}-{hi} seeds per method"
        ax = row_axes[0]
        _draw_families(ax, families, runs, colors, zoom=False)
        ax.set_xscale("symlog", linthresh=1000)
        ax.set_xlim(left=-300)
        # 0, then the decades from the linear threshold on: symlog's own ticks put 0 and 10^2 on top of each other
        top = max(max(r["params_per_task_mean"] for r in mine), 1000.0)
        ax.set_xticks([0.0] + [10.0 ** e for e in range(3, math.floor(math.log10(top)) + 1)])
        ax.set_xlabel("parameters added per task (symlog)")
        ax.set_ylabel("ACC (accuracy after all tasks, mean over tasks)")
        ax.set_title(f"{sc}-IL: accuracy vs parameters added per task ({seeds})", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        if not zoom:
            continue
        ax = row_axes[1]
        sweeps = {f: m for f, m in families.items() if _is_sweep(m)}
        if not sweeps:
            ax.set_axis_off()
            continue
        _draw_families(ax, sweeps, runs, colors, zoom=True)
        xs = [r["params_per_task_mean"] for m in sweeps.values() for r in m]
        if min(xs) > 0:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 1.15, max(xs) * 2.2)   # room for the labels on the right
        ax.set_xlabel("parameters added per task" + (" (log)" if min(xs) > 0 else ""))
        ax.set_ylabel("ACC")
        ax.set_title(f"{sc}-IL: {', '.join(sweeps)} settings, zoomed (mean and std over seeds)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, os.path.join(out_dir, "acc_vs_params.png"))


def plot_all(runs: Sequence[RunResult], out_dir: str) -> list[str]:
    extra = plot_acc_vs_params(runs, out_dir)
    return plot_accuracy_matrices(runs, out_dir) + [plot_summary(runs, out_dir)] + ([extra] if extra else [])
