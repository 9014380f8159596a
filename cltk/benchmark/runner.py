"""Run bench cases: time providers round-robin, compute GB/s against the measured bandwidth, measure peak memory in
subprocesses, append CSV rows."""
from __future__ import annotations

import functools
import gc
import os
import time
from typing import Any, Callable, Optional

import torch

from cltk.benchmark.bandwidth import Bandwidth, machine_bandwidth
from cltk.benchmark.case import Case
from cltk.benchmark.memory import case_peaks_extra_bytes
from cltk.benchmark.results import environment_fields
from cltk.benchmark.timing import compare

DEVICE_ENV = "CLTK_BENCH_DEVICE"


def bench_device() -> str:
    """Where bench files should allocate: ``$CLTK_BENCH_DEVICE`` (set by ``cltk bench --device``), default cpu."""
    dev = os.environ.get(DEVICE_ENV, "cpu") or "cpu"
    torch.device(dev)  # validates the string
    return dev


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the memory subprocesses)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_case(case: Case, *, bench_file: Optional[str] = None, quick: bool = False, memory: bool = True,
             threads: int = 1, bandwidth: Optional[Bandwidth] = None,
             log: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Time one case and return its results rows (one per provider, baseline first is not required)."""
    dev = torch.device(case.device)
    if bandwidth is None:
        bandwidth = machine_bandwidth(device=dev, threads=threads)
    log(f"  {case.id}: timing {', '.join(case.providers)} ({case.runs} runs, {threads} thread)")
    t_start, c_start = time.time(), _cpu_seconds()
    fns = case.build_checked()
    setup = functools.partial(case.setup, fns) if case.setup is not None else None
    results = compare(fns, baseline=case.baseline, runs=case.runs, warmup=case.warmup, setup=setup,
                      threads=threads, device=dev if dev.type == "cuda" else None)
    del fns, setup
    gc.collect()
    t_timed, c_timed = time.time(), _cpu_seconds()
    peaks: dict[str, Optional[int]] = {n: None for n in case.providers}
    if memory and case.memory:
        if bench_file is None:
            raise ValueError(f"run_case: case {case.id} measures memory, so bench_file must be given")
        peaks.update(case_peaks_extra_bytes(bench_file, case.id, list(case.providers), quick=quick, threads=threads))
    t_end, c_end = time.time(), _cpu_seconds()
    log(f"    {case.id}: build + timing {t_timed - t_start:.1f} s wall ({c_timed - c_start:.1f} s CPU), "
        f"memory {t_end - t_timed:.1f} s wall ({c_end - c_timed:.1f} s CPU incl. subprocesses)")
    env = environment_fields(str(dev), threads)
    machine = bandwidth.get(case.bandwidth)
    rows = []
    for n in case.providers:
        t = results[n].timing
        gbps = case.bytes_moved / t.median / 1e9 if case.bytes_moved and t.median > 0 else None
        rows.append({
            "kernel": case.kernel, "provider": n, "mode": case.mode, "shape": case.shape,
            "median_s": t.median, "p20_s": t.p20, "p80_s": t.p80, "runs": t.runs,
            "ratio": results[n].ratio, "baseline": case.baseline, "bytes_moved": case.bytes_moved,
            "gbps": gbps, "bandwidth_kind": case.bandwidth,
            "pct_bandwidth": 100.0 * gbps / machine if gbps is not None else None,
            "peak_extra_bytes": peaks[n], "clock": t.clock, **env,
        })
    return rows
