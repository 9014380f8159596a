"""The protocol a ``bench/bench_<kernel>.py`` file implements, and its discovery.

A bench file defines one function::

    def cases(quick: bool) -> list[Case]

``cases`` must be cheap: it only describes the problems. Each ``Case.build()`` allocates that case's inputs and
returns ``{provider name: zero-argument callable}``; the harness builds one case at a time, times its providers
round-robin in one process, then drops it, so large cases never coexist in memory. Peak memory is measured by
re-importing the bench file in a fresh subprocess and building only the case and provider it measures.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

MODES = ("forward", "backward", "full", "step", "read", "copy", "inplace")
BANDWIDTH_KINDS = ("read", "copy", "inplace")


@dataclass
class Case:
    """One problem of one kernel, and the providers that solve it.

    kernel: op name, e.g. ``row_l1_accumulate_``.
    mode: forward | backward | full (forward + backward) | step (an optimizer step) | read | copy | inplace.
    shape: a readable size, e.g. ``8192x3072 fp32``; together with kernel and mode it identifies the case.
    bytes_moved: the minimum bytes any implementation must move; write the reasoning in a comment beside it.
        0 when no roofline applies (then no GB/s is reported).
    providers: the provider names, in display order; ``build()`` must return exactly these keys.
    baseline: the provider ratios are against (usually the ``_ref`` in eager mode).
    build: allocates the inputs and returns ``{name: callable}``; each callable runs the provider once.
    setup: optional, called before every timed call outside the timing (e.g. restore an in-place op's input);
        it receives the dict ``build()`` returned. With setup, every sample is a single call.
    bandwidth: which measured machine figure ``pct_bandwidth`` is against: read | copy | inplace.
    device: where the tensors live; ``cuda`` switches to CUDA-event timing and device bandwidth.
    memory: measure each provider's peak extra memory in a subprocess.
    runs, warmup: timing samples and untimed warm-up calls (>= 9 runs in reported benches).
    """

    kernel: str
    mode: str
    shape: str
    bytes_moved: int
    providers: tuple[str, ...]
    baseline: str
    build: Callable[[], dict[str, Callable[[], Any]]]
    setup: Optional[Callable[[dict[str, Callable[[], Any]]], Any]] = None
    bandwidth: str = "copy"
    device: str = "cpu"
    memory: bool = True
    runs: int = 9
    warmup: int = 2
    note: str = ""

    def __post_init__(self) -> None:
        self.providers = tuple(self.providers)
        if not self.kernel or not isinstance(self.kernel, str):
            raise ValueError(f"Case.kernel must be a non-empty str, got {self.kernel!r}")
        if self.mode not in MODES:
            raise ValueError(f"Case.mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.bytes_moved, int) or self.bytes_moved < 0:
            raise ValueError(f"Case.bytes_moved must be a non-negative int, got {self.bytes_moved!r}")
        if not self.providers:
            raise ValueError(f"Case.providers must name at least one provider, got {self.providers!r}")
        if len(set(self.providers)) != len(self.providers):
            raise ValueError(f"Case.providers must be unique, got {self.providers!r}")
        if self.baseline not in self.providers:
            raise ValueError(f"Case.baseline must be one of the providers {self.providers}, got {self.baseline!r}")
        if self.bandwidth not in BANDWIDTH_KINDS:
            raise ValueError(f"Case.bandwidth must be one of {BANDWIDTH_KINDS}, got {self.bandwidth!r}")
        if not callable(self.build):
            raise TypeError(f"Case.build must be callable, got {type(self.build).__name__}")
        if not isinstance(self.runs, int) or self.runs < 1:
            raise ValueError(f"Case.runs must be a positive int, got {self.runs!r}")

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.mode}/{self.shape}"

    def build_checked(self) -> dict[str, Callable[[], Any]]:
        fns = self.build()
        if not isinstance(fns, dict) or set(fns) != set(self.providers):
            got = sorted(fns) if isinstance(fns, dict) else type(fns).__name__
            raise ValueError(f"case {self.id}: build() must return a dict with keys {list(self.providers)}, got {got}")
        return {n: fns[n] for n in self.providers}


def find_bench_dir(start: Optional[str] = None) -> str:
    """The ``bench/`` folder of the source checkout that holds the imported cltk package."""
    if start is None:
        import cltk

        start = os.path.dirname(os.path.dirname(os.path.abspath(cltk.__file__)))
    path = os.path.join(start, "bench")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"cltk bench: no bench/ folder next to the cltk package (looked for {path}); the benches live in the "
            "source checkout: run from a clone installed with `pip install -e .`"
        )
    return path


def discover(bench_dir: str, kernel: Optional[str] = None) -> dict[str, str]:
    """``{kernel: path}`` of every ``bench_<kernel>.py`` in ``bench_dir`` (only ``kernel`` if given)."""
    found = {}
    for name in sorted(os.listdir(bench_dir)):
        if name.startswith("bench_") and name.endswith(".py"):
            found[name[len("bench_"):-len(".py")]] = os.path.join(bench_dir, name)
    if kernel is not None:
        if kernel not in found:
            raise ValueError(f"cltk bench: --kernel must be one of {sorted(found)}, got {kernel!r}")
        return {kernel: found[kernel]}
    return found


def load_bench_module(path: str) -> types.ModuleType:
    """Import a bench file by path (bench/ is not a package) and check it defines ``cases(quick)``."""
    name = "cltk_bench_" + os.path.splitext(os.path.basename(path))[0]
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import bench file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "cases", None)):
        raise AttributeError(f"bench file {path} must define `cases(quick: bool) -> list[Case]`")
    return module


def load_cases(path: str, quick: bool) -> list[Case]:
    cases = load_bench_module(path).cases(quick)
    for c in cases:
        if not isinstance(c, Case):
            raise TypeError(f"bench file {path}: cases() must return Case objects, got {type(c).__name__}")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"bench file {path}: case ids (kernel/mode/shape) must be unique, got {ids}")
    return cases


def find_case(path: str, case_id: str, quick: bool) -> Case:
    for c in load_cases(path, quick):
        if c.id == case_id:
            return c
    raise KeyError(f"bench file {path} has no case {case_id!r}")
