"""Run every ``bench/bench_<kernel>.py`` under pytest-benchmark: ``pytest bench/ --benchmark-only``.

Each bench file is collected as a test module into which one generic test is injected; it is parametrized over
the file's ``cases(quick)`` x providers, with ids ``<kernel>/<mode>/<shape>-<provider>``. The same timing rules as
``cltk bench`` hold: 1 thread, warm-up rounds, process CPU time (unless ``--benchmark-timer`` is given), the case's
run count. ``--bench-quick`` selects the benches' small sizes. ``cltk bench`` is the path that also computes ratios in
one process, measures peak memory and appends to the results CSV; this path feeds pytest-benchmark's own
storage/compare tooling.
"""
from __future__ import annotations

import pytest

from cltk.benchmark.case import load_bench_module, load_cases
from cltk.benchmark.timing import _Clock, calibrate_number, num_threads


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true", default=False,
                     help="run the bench files' quick (small) cases")


def pytest_configure(config):
    try:
        from pytest_benchmark.timers import default_timer
        from pytest_benchmark.utils import NameWrapper
    except ImportError:  # pytest-benchmark not installed: the generic test then errors on the missing fixture
        return
    if getattr(config.option, "benchmark_timer", None) == str(NameWrapper(default_timer)):
        config.option.benchmark_timer = "time.process_time"


def _test_bench_case(benchmark, bench_item):
    case, provider = bench_item
    if case.device != "cpu":
        pytest.skip(f"{case.id} is on {case.device}: use `cltk bench --device {case.device}` (CUDA-event timing)")
    with num_threads(1):
        fns = case.build_checked()
        fn = fns[provider]
        benchmark.group = case.id
        benchmark.extra_info.update(kernel=case.kernel, mode=case.mode, shape=case.shape, provider=provider,
                                    bytes_moved=case.bytes_moved, baseline=case.baseline)
        if case.setup is not None:
            benchmark.pedantic(fn, setup=lambda: (case.setup(fns), None)[1], rounds=case.runs,
                               warmup_rounds=case.warmup, iterations=1)
        else:
            number = calibrate_number(fn, _Clock(), 2e-3)
            benchmark.pedantic(fn, rounds=case.runs, warmup_rounds=case.warmup, iterations=number)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and case.bytes_moved:  # absent under --benchmark-disable
        benchmark.extra_info["gbps"] = case.bytes_moved / stats.stats.median / 1e9


class BenchModule(pytest.Module):
    def _getobj(self):
        module = load_bench_module(str(self.path))
        module.test_bench_case = _test_bench_case
        return module


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return BenchModule.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc):
    if metafunc.function is not _test_bench_case:
        return
    quick = metafunc.config.getoption("--bench-quick")
    items, ids = [], []
    for case in load_cases(metafunc.module.__file__, quick):
        for p in case.providers:
            items.append((case, p))
            ids.append(f"{case.id}-{p}".replace(" ", "_"))
    metafunc.parametrize("bench_item", items, ids=ids)
