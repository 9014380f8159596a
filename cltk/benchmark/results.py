"""The one results schema: rows appended to CSV files under bench/results/, never hand-edited.

Each append rewrites the file atomically (read the existing rows, write a temporary file, fsync, os.replace), so a
crash or a concurrent reader never sees a half-written file. A file whose header differs from ``COLUMNS`` is refused
rather than silently mixed.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import subprocess
from typing import Any, Iterable, Mapping, Optional

import torch

COLUMNS = (
    "kernel",          # op or experiment name, e.g. row_l1_accumulate_, scaling_gpt
    "provider",        # cltk, ref_eager, ref_compile, user_hook, adamw_fused, ...
    "mode",            # forward | backward | full | step | optimizer | read | ...
    "shape",           # human-readable problem size
    "median_s",        # seconds per call (median over runs)
    "p20_s",
    "p80_s",
    "runs",
    "ratio",           # baseline median / this median, both timed in the same process (> 1: faster)
    "baseline",        # the provider the ratio is against
    "bytes_moved",     # minimum bytes the kernel must move (see the bench file for the reasoning)
    "gbps",            # bytes_moved / median_s / 1e9
    "bandwidth_kind",  # read | copy | inplace: the measured machine figure pct_bandwidth is against
    "pct_bandwidth",
    "peak_extra_bytes",  # peak RSS above the post-setup baseline, measured in a subprocess ('' if not measured)
    "clock",           # process_cpu | cuda_event
    "device",          # cpu | cuda:0
    "cpu_model",       # CPU model, or the GPU name for CUDA rows
    "threads",
    "torch_version",
    "commit",
    "timestamp",
)


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(path: Optional[str] = None) -> str:
    """Short commit of the checkout containing ``path`` (this file by default), with ``-dirty`` when modified
    (changes to the results under bench/results/, which a bench run writes itself, do not count)."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)bench/results"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_fields(device: str = "cpu", threads: Optional[int] = None) -> dict[str, Any]:
    """The columns that describe where and when a row was measured."""
    from cltk.benchmark.bandwidth import device_name

    return {
        "device": device,
        "cpu_model": device_name(device),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch_version": torch.__version__,
        "commit": git_commit(),
        "timestamp": now_utc(),
    }


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def validate_row(row: Mapping[str, Any]) -> dict[str, str]:
    """Check ``row`` has exactly the schema's columns and return it as strings in schema order."""
    keys = set(row)
    missing = [c for c in COLUMNS if c not in keys]
    extra = sorted(keys - set(COLUMNS))
    if missing or extra:
        raise ValueError(f"results row: missing columns {missing}, unknown columns {extra}; expected {list(COLUMNS)}")
    return {c: _format(row[c]) for c in COLUMNS}


def read_rows(path: str) -> list[dict[str, str]]:
    """All rows of a results CSV ([] when it does not exist). Refuses a file with another header."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(
                f"results file {path}: header {reader.fieldnames} does not match the schema {list(COLUMNS)}; "
                "write to a new file instead of mixing schemas"
            )
        return list(reader)


def append_rows(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append ``rows`` to the CSV at ``path`` atomically; returns the number of rows appended."""
    new = [validate_row(r) for r in rows]
    existing = read_rows(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(existing)
    writer.writerows(new)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return len(new)
