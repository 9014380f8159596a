"""Peak extra memory of one provider call, measured in a fresh subprocess.

The child imports the target, runs its setup, calls the provider once untimed (lazy initialisation, compilation and
allocator warm-up are not what we measure), resets the high-water mark by writing "5" to /proc/self/clear_refs,
reads VmHWM (= current RSS right after the reset) as the baseline, calls the provider again and reads VmHWM.
The difference is the peak memory the call needed beyond what setup already held.

glibc's dynamic mmap threshold would let a freed 30 MB block be reused from the heap without showing in the
high-water mark; the child therefore runs with MALLOC_MMAP_THRESHOLD_=65536, so every large tensor is a fresh
mapping that counts while alive and returns to the OS when freed. Linux only (VmHWM, clear_refs).
Resolution: the kernel keeps RSS in per-CPU counters that are folded in batches, so a figure can be a few hundred
KiB off; quote peak memory in MiB.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

_MARK = "CLTK_PEAK_JSON:"


@dataclass(frozen=True)
class CallableSpec:
    """``module.name(**kwargs)`` is the setup; it returns the zero-argument callable whose peak is measured."""

    module: str
    name: str
    kwargs: dict = field(default_factory=dict)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key} line; peak memory needs Linux")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _measure_in_child(fn: Callable[[], Any], threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    device = torch.device(getattr(fn, "cltk_device", "cpu"))
    if device.type == "cuda":  # device memory: the caching allocator's own peak counter
        fn()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"baseline_bytes": base, "peak_bytes": peak, "peak_extra_bytes": max(0, peak - base)}
    fn()  # warm-up call: lazy init and compilation are not the steady-state peak
    gc.collect()
    reset_peak()
    base = _status_kib("VmHWM")
    fn()
    peak = _status_kib("VmHWM")
    return {"baseline_bytes": base * 1024, "peak_bytes": peak * 1024, "peak_extra_bytes": max(0, peak - base) * 1024}


def _child_spec(module: str, name: str, kwargs_json: str, threads: int) -> None:
    import importlib

    fn = getattr(importlib.import_module(module), name)(**json.loads(kwargs_json))
    if not callable(fn):
        raise TypeError(f"{module}.{name}(**kwargs) must return a callable, got {type(fn).__name__}")
    print(_MARK + json.dumps(_measure_in_child(fn, threads)), flush=True)


def case_provider(bench_file: str, case_id: str, provider: str, quick: bool = False) -> Callable[[], Any]:
    """Setup for one bench case's provider: build the case and return that provider (and its per-call setup)."""
    from cltk.benchmark.case import find_case

    case = find_case(bench_file, case_id, quick)
    fns = case.build_checked()
    fn = fns[provider]

    def call() -> Any:
        if case.setup is not None:
            case.setup(fns)
        return fn()

    call.cltk_device = case.device  # type: ignore[attr-defined]
    return call


def _child_case(bench_file: str, case_id: str, providers_json: str, quick: bool, threads: int) -> None:
    """Build one case once and measure each named provider in turn (warm-up call, reset, measured call)."""
    from cltk.benchmark.case import find_case

    case = find_case(bench_file, case_id, quick)
    fns = case.build_checked()
    out = {}
    for name in json.loads(providers_json):
        fn = fns[name]

        def call(fn: Callable[[], Any] = fn) -> Any:
            if case.setup is not None:
                case.setup(fns)
            return fn()

        call.cltk_device = case.device  # type: ignore[attr-defined]
        out[name] = _measure_in_child(call, threads)
        gc.collect()
    print(_MARK + json.dumps(out), flush=True)


def _run_child(code: str, timeout: float, env_extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    import cltk

    root = os.path.dirname(os.path.dirname(os.path.abspath(cltk.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if env_extra:
        env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    raise RuntimeError(
        f"peak-memory subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def peak_extra_bytes(spec: CallableSpec, *, threads: int = 1, timeout: float = 600.0) -> int:
    """Peak extra RSS in bytes of one call of ``spec``'s callable, after its setup, in a fresh process."""
    if not isinstance(spec, CallableSpec):
        raise TypeError(f"peak_extra_bytes: spec must be a CallableSpec, got {type(spec).__name__}")
    kwargs_json = json.dumps(spec.kwargs)  # fails early (TypeError) if kwargs are not JSON-serialisable
    code = (
        "from cltk.benchmark.memory import _child_spec; "
        f"_child_spec({spec.module!r}, {spec.name!r}, {kwargs_json!r}, {threads})"
    )
    return _run_child(code, timeout)["peak_extra_bytes"]


def case_peaks_extra_bytes(bench_file: str, case_id: str, providers: list[str], *, quick: bool = False,
                           threads: int = 1, timeout: float = 1800.0) -> dict[str, int]:
    """Peak extra memory of several providers of one bench case, measured one after another in one fresh process.

    The case is built once; each provider then gets its own warm-up call, high-water-mark reset and measured call,
    so its figure is what its call needs beyond everything the process holds at that moment (the case's inputs,
    as in ``case_peak_extra_bytes``). Saves one interpreter start, import and case build per provider."""
    code = (
        "from cltk.benchmark.memory import _child_case; "
        f"_child_case({os.path.abspath(bench_file)!r}, {case_id!r}, {json.dumps(list(providers))!r}, {bool(quick)!r}, "
        f"{threads})"
    )
    res = _run_child(code, timeout)
    return {n: res[n]["peak_extra_bytes"] for n in providers}


def case_peak_extra_bytes(bench_file: str, case_id: str, provider: str, *, quick: bool = False,
                          threads: int = 1, timeout: float = 600.0) -> int:
    """Peak extra memory of one provider of one bench case (see ``case_provider``)."""
    spec = CallableSpec("cltk.benchmark.memory", "case_provider",
                        {"bench_file": os.path.abspath(bench_file), "case_id": case_id, "provider": provider,
                         "quick": quick})
    return peak_extra_bytes(spec, threads=threads, timeout=timeout)
