"""Render results rows: a text table (ratios vs the baseline, GB/s, % of measured bandwidth, peak memory) and a PNG
of the ratios."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Mapping, Sequence


def _f(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key, "")
    if v in ("", None):
        return None
    return float(v)


def _group(rows: Sequence[Mapping[str, Any]]) -> "OrderedDict[tuple[str, str, str], list]":
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault((r["kernel"], r["mode"], r["shape"]), []).append(r)
    return groups


def _time(s: float) -> str:
    if s >= 1:
        return f"{s:8.3f} s "
    if s >= 1e-3:
        return f"{s * 1e3:8.3f} ms"
    return f"{s * 1e6:8.2f} us"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One block per case (kernel, mode, shape); one line per provider."""
    lines = []
    header = f"  {'provider':<22} {'median':>11} {'p20..p80':>21} {'vs base':>8} {'GB/s':>7} {'% bw':>6} {'peak extra':>11}"
    for (kernel, mode, shape), rs in _group(rows).items():
        base = rs[0].get("baseline", "")
        kind = rs[0].get("bandwidth_kind", "")
        lines.append(f"{kernel}  {mode}  {shape}   (ratio = {base} time / provider time; % of measured {kind} bandwidth)")
        lines.append(header)
        for r in rs:
            med, p20, p80 = _f(r, "median_s"), _f(r, "p20_s"), _f(r, "p80_s")
            ratio, gbps, pct, mem = _f(r, "ratio"), _f(r, "gbps"), _f(r, "pct_bandwidth"), _f(r, "peak_extra_bytes")
            lines.append(
                f"  {r['provider']:<22} {_time(med) if med is not None else '':>11} "
                f"{(_time(p20).strip() + '..' + _time(p80).strip()) if p20 is not None else '':>21} "
                f"{(f'{ratio:.2f}x') if ratio is not None else '':>8} "
                f"{(f'{gbps:.2f}') if gbps is not None else '':>7} "
                f"{(f'{pct:.0f}%') if pct is not None else '':>6} "
                f"{(f'{mem / 2**20:.1f} MiB') if mem is not None else '':>11}"
            )
        lines.append("")
    return "\n".join(lines)


def plot_ratios(rows: Sequence[Mapping[str, Any]], path: str, title: str = "cltk bench: speed-up vs baseline") -> str:
    """Horizontal bars of every provider's ratio, grouped by case; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for gi, ((kernel, mode, shape), rs) in enumerate(_group(rows).items()):
        for r in rs:
            ratio = _f(r, "ratio")
            if ratio is None:
                continue
            labels.append(f"{kernel} {mode} {shape} | {r['provider']}")
            values.append(ratio)
            colors.append(palette[gi % len(palette)])
    fig, ax = plt.subplots(figsize=(10, 0.35 * max(len(labels), 2) + 1.2))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up vs baseline (baseline time / provider time, log scale)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.tmp.{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
