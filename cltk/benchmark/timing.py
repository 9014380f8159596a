"""Timing for every cltk bench: 1 thread, warm-up, median and p20/p80 of process CPU time.

On this shared 2-core machine wall-clock time is dominated by what the neighbours do; the process CPU time of a
single-threaded run is not. Every provider of a comparison is timed in the same process, round-robin, so that slow
drift (frequency, cache pollution by neighbours) hits all of them alike and the ratio is the figure to quote.

On CUDA tensors the clock is a pair of ``torch.cuda.Event``s around each call instead (see ``clock``).
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and the 20th/80th percentiles over ``runs`` samples."""

    median: float
    p20: float
    p80: float
    runs: int
    samples: tuple[float, ...] = ()
    clock: str = "process_cpu"


@dataclass(frozen=True)
class Comparison:
    """One provider's timing and its speed-up over the baseline: ``baseline.median / timing.median``."""

    name: str
    timing: Timing
    ratio: float


def percentile(samples: list[float] | tuple[float, ...], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100]."""
    if not samples:
        raise ValueError("percentile: samples must be non-empty, got 0 samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q must be in [0, 100], got {q}")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: list[float], clock: str = "process_cpu") -> Timing:
    return Timing(
        median=statistics.median(samples),
        p20=percentile(samples, 20),
        p80=percentile(samples, 80),
        runs=len(samples),
        samples=tuple(samples),
        clock=clock,
    )


@contextlib.contextmanager
def num_threads(n: int = 1) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` and restore the previous count afterwards."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads: n must be a positive int, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


single_thread = num_threads  # ``with single_thread():`` reads as what the benches want


def _check_runs(runs: int, warmup: int) -> None:
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive int, got {runs!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")


def _uses_cuda(device: Any) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class _Clock:
    """Times one call of ``fn`` (repeated ``number`` times) in seconds per call."""

    def __init__(self, device: Any = None):
        self.cuda = _uses_cuda(device)
        self.name = "cuda_event" if self.cuda else "process_cpu"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], Any], number: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            self._start.record()
            for _ in range(number):
                fn()
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3 / number
        t0 = time.process_time()
        for _ in range(number):
            fn()
        return (time.process_time() - t0) / number


def calibrate_number(fn: Callable[[], Any], clock: _Clock, min_time: float, first: Optional[float] = None) -> int:
    """Calls per sample so that one sample lasts at least ``min_time`` s (process CPU time has ~1 us
    resolution but scheduler noise of tens of us; a 1 us kernel needs repeating).

    first: the seconds of one call already timed (the last warm-up call); it stands for the first probe, so a slow
    kernel (one call >= min_time) is not called again just to learn that one call per sample is enough."""
    number = 1
    while True:
        if first is not None:
            t, first = first, None
        else:
            t = clock.time(fn, number)
        if t * number >= min_time or number >= 1 << 20:
            return number
        number *= 10 if t * number < min_time / 10 else 2


def measure(
    fn: Callable[[], Any],
    *,
    runs: int = 9,
    warmup: int = 2,
    setup: Optional[Callable[[], Any]] = None,
    threads: int = 1,
    device: Any = None,
    number: Optional[int] = None,
    min_time: float = 2e-3,
) -> Timing:
    """Time ``fn()`` on ``threads`` threads: ``warmup`` untimed calls, then ``runs`` timed samples.

    setup: called before every sample, outside the timed region (e.g. to reset state an in-place op mutates).
    device: a CUDA device switches the clock to CUDA events; otherwise process CPU time is used.
    number: calls per sample; by default calibrated so that a sample takes >= ``min_time`` (1 when setup is given,
        since setup must precede every call).
    Returns seconds per call.
    """
    return compare({"fn": fn}, baseline="fn", runs=runs, warmup=warmup, setup=setup, threads=threads,
                   device=device, number=number, min_time=min_time)["fn"].timing


def compare(
    providers: Mapping[str, Callable[[], Any]],
    *,
    baseline: str,
    runs: int = 9,
    warmup: int = 2,
    setup: Optional[Callable[[], Any]] = None,
    threads: int = 1,
    device: Any = None,
    number: Optional[int] = None,
    min_time: float = 2e-3,
) -> dict[str, Comparison]:
    """Time every provider in this process, interleaved round-robin, and give each one's speed-up over ``baseline``.

    Sample i times provider (i + k) mod P in slot k, so no provider always runs first after another's cache damage.
    The ratio is ``baseline.median / provider.median``: > 1 means faster than the baseline.
    """
    if not providers:
        raise ValueError("compare: providers must be a non-empty dict {name: callable}, got an empty one")
    if baseline not in providers:
        raise ValueError(f"compare: baseline must be one of the providers {sorted(providers)}, got {baseline!r}")
    for name, fn in providers.items():
        if not callable(fn):
            raise TypeError(f"compare: provider {name!r} must be callable, got {type(fn).__name__}")
    _check_runs(runs, warmup)
    names = list(providers)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with num_threads(threads):
        clock = _Clock(device)
        last_warmup: dict[str, float] = {}
        for _ in range(warmup):
            for n in names:
                if setup is not None:
                    setup()
                last_warmup[n] = clock.time(providers[n], 1)  # untimed for the results; reused by calibration
        numbers = {}
        for n in names:
            if number is not None:
                numbers[n] = number
            elif setup is not None:
                numbers[n] = 1
            else:
                numbers[n] = calibrate_number(providers[n], clock, min_time, first=last_warmup.get(n))
        for i in range(runs):
            for k in range(len(names)):
                n = names[(i + k) % len(names)]
                if setup is not None:
                    setup()
                samples[n].append(clock.time(providers[n], numbers[n]))
    timings = {n: summarize(samples[n], clock.name) for n in names}
    base = timings[baseline].median
    return {
        n: Comparison(n, t, base / t.median if t.median > 0 else math.inf)
        for n, t in timings.items()
    }
