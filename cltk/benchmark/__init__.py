"""cltk's benchmark harness: one timing rule, one bandwidth figure, one results schema for every kernel.

``cltk bench [--kernel K] [--out DIR] [--quick]`` runs ``bench/bench_<kernel>.py`` files of the source checkout.
Each defines ``cases(quick) -> list[Case]`` (see ``cltk.benchmark.case``). Timing: 1 thread, warm-up, median and
p20/p80 of process CPU time over >= 9 runs, all providers of a case timed round-robin in one process (CUDA events
on CUDA). GB/s are reported against this machine's bandwidth measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Optional

from cltk.benchmark.bandwidth import Bandwidth, machine_bandwidth, measure_bandwidth, sgemm_peak_gflops
from cltk.benchmark.case import Case, discover, find_bench_dir, load_cases
from cltk.benchmark.memory import CallableSpec, peak_extra_bytes
from cltk.benchmark.results import COLUMNS, append_rows, read_rows
from cltk.benchmark.runner import DEVICE_ENV, bench_device, run_case
from cltk.benchmark.timing import Comparison, Timing, compare, measure, num_threads, single_thread

__all__ = [
    "Bandwidth", "CallableSpec", "Case", "COLUMNS", "Comparison", "Timing", "add_arguments", "append_rows",
    "bench_device", "compare", "discover", "machine_bandwidth", "main", "measure", "measure_bandwidth",
    "num_threads", "peak_extra_bytes", "read_rows", "run_case", "sgemm_peak_gflops", "single_thread",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cltk bench``."""
    parser.add_argument("--kernel", default=None, help="run only bench/bench_<KERNEL>.py (default: every bench)")
    parser.add_argument("--out", default=None, help="folder for bench.csv, bench_ratios.png and bandwidth.json "
                        "(default: bench/results of the source checkout)")
    parser.add_argument("--quick", action="store_true", help="the benches' small sizes (a smoke run, not for README)")
    parser.add_argument("--no-memory", dest="no_memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--device", default=None,
                        help=f"where the benches allocate (cpu, cuda); sets ${DEVICE_ENV}; default cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1; report it)")


def main(args: Any) -> int:
    """Run the benches named by ``args`` (``.kernel``, ``.out``; optional ``.quick``, ``.no_memory``, ``.device``,
    ``.threads``), append rows to ``<out>/bench.csv``, print the table and write ``<out>/bench_ratios.png``."""
    from cltk.benchmark.report import format_table, plot_ratios

    kernel: Optional[str] = getattr(args, "kernel", None)
    quick = bool(getattr(args, "quick", False))
    memory = not bool(getattr(args, "no_memory", False))
    threads = int(getattr(args, "threads", 1) or 1)
    if threads < 1:
        raise ValueError(f"cltk bench: --threads must be >= 1, got {threads}")
    device = getattr(args, "device", None)
    if device:
        os.environ[DEVICE_ENV] = device  # also inherited by the memory subprocesses
    device = bench_device()
    bench_dir = find_bench_dir()
    out = getattr(args, "out", None) or os.path.join(bench_dir, "results")
    os.makedirs(out, exist_ok=True)
    files = discover(bench_dir, kernel)
    if not files:
        raise FileNotFoundError(f"cltk bench: no bench_*.py files in {bench_dir}")
    t0 = time.time()
    suffix = "" if device == "cpu" else "_" + device.replace(":", "")
    bw = machine_bandwidth(device=device, threads=threads,
                           cache_file=os.path.join(out, f"bandwidth{suffix}.json"))
    print(f"machine bandwidth on {bw.cpu_model} ({device}, {threads} thread(s), {bw.array_bytes >> 20} MiB arrays): "
          f"read {bw.read:.2f} GB/s, copy {bw.copy:.2f} GB/s, in-place {bw.inplace:.2f} GB/s")
    csv_path = os.path.join(out, f"bench{suffix}.csv")
    all_rows = []
    for name, path in files.items():
        print(f"bench_{name}.py")
        for case in load_cases(path, quick):
            rows = run_case(case, bench_file=path, quick=quick, memory=memory, threads=threads, bandwidth=bw)
            append_rows(csv_path, rows)
            all_rows.extend(rows)
    print()
    print(format_table(all_rows))
    png = plot_ratios(all_rows, os.path.join(out, f"bench_ratios{suffix}.png"))
    print(f"{len(all_rows)} rows appended to {csv_path}; plot {png}; {time.time() - t0:.0f} s")
    return 0
