"""Run results and their files: ``results.json`` (everything) and ``results.csv`` (one row per run).

Every file is written atomically by :func:`cltk.checkpoint.atomic_write`: to a temporary file in the same folder,
flushed and fsynced, then moved over the target with ``os.replace``, so a reader never sees a half-written file and
an interrupted run leaves the old one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from cltk import metrics
from cltk.checkpoint import atomic_write_bytes

__all__ = ["RunResult", "atomic_write", "safe_name", "write_json", "write_csv", "write_summary_csv", "read_json",
           "read_folders", "write_folder", "aggregate", "CSV_COLUMNS", "METRICS"]

METRICS = ("acc", "bwt", "fwt", "forgetting", "readout", "time_s", "time_per_task_s", "params_per_task")
CSV_COLUMNS = ("method", "benchmark", "scenario", "seed", "model", "iters_per_task", "batch_size", "eval_split", "acc",
               "bwt", "fwt", "forgetting", "readout", "time_s", "peak_rss_mb", "peak_cuda_mb", "time_per_task_s",
               "params_per_task")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def safe_name(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9_.+-]`` (runs of anything else become ``_``), never empty nor ``.``/``..``."""
    s = _UNSAFE.sub("_", str(name)).strip("._") or "_"
    return s[:120]


@dataclass
class RunResult:
    """One run of one method on one stream with one seed.

    ``R[i][j]``: test accuracy on task j after training task i (every task is evaluated after every task).
    ``b[j]``: test accuracy of the randomly initialised model on task j (mask as for ``R[j-1][j]``).
    ``readout[i][j]``: linear-readout test accuracy on task j from the features after training task i, for j <= i
    (NaN for j > i); empty when the model has no ``features``.
    ``task_time_s[i]``, ``task_peak_rss_mb[i]`` (growth of the process's resident high-water mark during task i),
    ``task_peak_cuda_mb[i]`` (``torch.cuda.max_memory_allocated`` during task i; 0 on CPU).
    ``params_per_task[i]``: the trainable parameters task i adds to the model (``Method.added_parameters``; None
    where the method does not say; empty in results written before it was recorded).
    ``eval_split``: the split ``R``, ``b`` and ``readout`` were measured on, "test" or "val" (the validation split
    held out of each task's training data, for choosing hyperparameters); "test" in results written before it was
    recorded.
    """

    method: str
    benchmark: str
    scenario: str
    seed: int
    model: str
    iters_per_task: int
    batch_size: int
    R: list[list[float]]
    b: list[float]
    readout: list[list[float]] = field(default_factory=list)
    task_time_s: list[float] = field(default_factory=list)
    task_peak_rss_mb: list[float] = field(default_factory=list)
    task_peak_cuda_mb: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    task_names: list[str] = field(default_factory=list)
    params_per_task: list = field(default_factory=list)
    eval_split: str = "test"

    def summary(self) -> dict[str, float]:
        """ACC, BWT, FWT, forgetting (see :mod:`cltk.metrics`), readout (mean over tasks of the readout accuracy
        after the last task), time_s (total wall time of training and evaluation), time_per_task_s (its mean over
        tasks; 0 without tasks), params_per_task (mean over tasks of the parameters each task adds; only when every
        task's count is known)."""
        last = self.readout[-1] if self.readout else None
        out = metrics.summarize(self.R, self.b, last)
        out["time_s"] = float(sum(self.task_time_s))
        out["time_per_task_s"] = float(np.mean(self.task_time_s)) if self.task_time_s else 0.0
        if self.params_per_task and None not in self.params_per_task:
            out["params_per_task"] = float(np.mean(self.params_per_task))
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary()
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("R", "readout"):
            kw[key] = [[math.nan if v is None else v for v in row] for row in kw.get(key, [])]
        return cls(**kw)

    def csv_row(self) -> dict:
        s = self.summary()
        return {"method": self.method, "benchmark": self.benchmark, "scenario": self.scenario, "seed": self.seed,
                "model": self.model, "iters_per_task": self.iters_per_task, "batch_size": self.batch_size,
                "eval_split": self.eval_split,
                **{k: s[k] for k in ("acc", "bwt", "fwt", "forgetting", "readout", "time_s")},
                "peak_rss_mb": max(self.task_peak_rss_mb, default=0.0),
                "peak_cuda_mb": max(self.task_peak_cuda_mb, default=0.0),
                "time_per_task_s": s["time_per_task_s"], "params_per_task": s.get("params_per_task", math.nan)}


def _jsonable(x: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def atomic_write(path: str, data: "str | bytes") -> str:
    """Write ``data`` to ``path`` atomically with :func:`cltk.checkpoint.atomic_write` (temp file in the same
    folder, fsync, ``os.replace``, fsync of the folder)."""
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return path


def aggregate(runs: Iterable[RunResult]) -> list[dict]:
    """Mean and (sample std, ddof=1; 0 for a single run) std over seeds per (method, benchmark, scenario).

    Each row: method, benchmark, scenario, n_seeds, ``<metric>_mean`` / ``<metric>_std`` for :data:`METRICS`, and
    per task j (lists over tasks): ``task_acc_mean`` / ``task_acc_std`` (accuracy on task j after the last task,
    ``R[-1][j]``), ``task_time_s_mean`` and ``task_params_mean`` (None where unknown).
    """
    groups: dict[tuple[str, str, str], list[dict]] = {}
    members: dict[tuple[str, str, str], list[RunResult]] = {}
    for r in runs:
        groups.setdefault((r.method, r.benchmark, r.scenario), []).append(r.summary())
        members.setdefault((r.method, r.benchmark, r.scenario), []).append(r)
    rows = []
    for (m, bench, sc), sums in groups.items():
        splits = sorted({r.eval_split for r in members[(m, bench, sc)]})
        if len(splits) > 1:
            raise ValueError(f"aggregate: the runs of {m} on {bench} ({sc}-IL) were measured on different splits "
                             f"({', '.join(splits)}); aggregate each split's runs separately")
        row: dict[str, Any] = {"method": m, "benchmark": bench, "scenario": sc, "n_seeds": len(sums)}
        for k in METRICS:
            vals = np.array([s.get(k, math.nan) for s in sums], dtype=np.float64)
            if np.all(np.isnan(vals)):
                row[k + "_mean"], row[k + "_std"] = math.nan, math.nan
            else:
                vals = vals[~np.isnan(vals)]
                row[k + "_mean"] = float(vals.mean())
                row[k + "_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        row.update(_per_task(members[(m, bench, sc)]))
        rows.append(row)
    return rows


def _per_task(runs: Sequence[RunResult]) -> dict[str, list]:
    """Seed means (and stds) per task of the final accuracies, the task times and the parameters added."""
    def mean_std(lists: list[list[float]]) -> tuple[list[float], list[float]]:
        n = min((len(x) for x in lists), default=0)
        a = np.array([x[:n] for x in lists], dtype=np.float64).reshape(len(lists), n)
        std = a.std(axis=0, ddof=1) if len(lists) > 1 else np.zeros(n)
        return [float(v) for v in a.mean(axis=0)], [float(v) for v in std]

    acc_mean, acc_std = mean_std([list(r.R[-1]) if r.R else [] for r in runs])
    time_mean, _ = mean_std([list(r.task_time_s) for r in runs])
    params = [list(r.params_per_task) for r in runs]
    if params and all(p and None not in p for p in params):
        params_mean: list = mean_std(params)[0]
    else:
        params_mean = []
    return {"task_acc_mean": acc_mean, "task_acc_std": acc_std, "task_time_s_mean": time_mean,
            "task_params_mean": params_mean}


def write_summary_csv(path: str, runs: Sequence[RunResult]) -> str:
    """One row per (method, benchmark, scenario): n_seeds, mean and std over seeds of ACC, BWT, forgetting, the
    time and the parameters added per task, then per task j the final accuracy ``task<j>_acc_mean`` /
    ``task<j>_acc_std`` and ``task<j>_time_s_mean``."""
    rows = aggregate(runs)
    n = max((len(r["task_acc_mean"]) for r in rows), default=0)
    keys = ["acc", "bwt", "fwt", "forgetting", "readout", "time_s", "time_per_task_s", "params_per_task"]
    cols = ["method", "benchmark", "scenario", "n_seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
    cols += [f"task{j}_{k}" for j in range(n) for k in ("acc_mean", "acc_std", "time_s_mean")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        out = {c: r.get(c) for c in cols[:4 + 2 * len(keys)]}
        for j in range(len(r["task_acc_mean"])):
            out[f"task{j}_acc_mean"] = r["task_acc_mean"][j]
            out[f"task{j}_acc_std"] = r["task_acc_std"][j]
        for j in range(len(r["task_time_s_mean"])):
            out[f"task{j}_time_s_mean"] = r["task_time_s_mean"][j]
        w.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else
                        (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in out.items()})
    return atomic_write(path, buf.getvalue())


def write_json(path: str, runs: Sequence[RunResult], meta: Optional[dict] = None) -> str:
    """``{"meta": ..., "summary": aggregate(runs), "runs": [run.to_dict(), ...]}`` as strict JSON (NaN -> null)."""
    doc = {"meta": meta or {}, "summary": aggregate(runs), "runs": [r.to_dict() for r in runs]}
    return atomic_write(path, json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n")


def read_json(path: str) -> tuple[dict, list[RunResult]]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return doc.get("meta", {}), [RunResult.from_dict(r) for r in doc.get("runs", [])]


def read_folders(dirs: Sequence[str]) -> tuple[dict, list[RunResult]]:
    """The runs of the result folders ``dirs`` (each holding a ``results.json``), folder after folder, and the meta
    of the first with ``merged_from`` (the folders' names) added: the parts of one comparison run side by side."""
    if not dirs:
        raise ValueError("read_folders: dirs must name at least one result folder")
    meta, runs = {}, []
    for d in dirs:
        m, rs = read_json(os.path.join(d, "results.json"))
        meta = meta or m
        runs += rs
    return dict(meta, merged_from=[os.path.basename(os.path.normpath(d)) for d in dirs]), runs


def write_folder(out: str, runs: Sequence[RunResult], meta: Optional[dict] = None) -> list[str]:
    """Write ``results.json``, ``results.csv`` and ``summary.csv`` of ``runs`` to the folder ``out`` (created)."""
    os.makedirs(out, exist_ok=True)
    return [write_json(os.path.join(out, "results.json"), runs, meta),
            write_csv(os.path.join(out, "results.csv"), runs),
            write_summary_csv(os.path.join(out, "summary.csv"), runs)]


def write_csv(path: str, runs: Sequence[RunResult]) -> str:
    """One row per run with the columns :data:`CSV_COLUMNS` (NaN written as an empty field)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in runs:
        row = r.csv_row()
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else
                        (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
    return atomic_write(path, buf.getvalue())
