import time

import pytest
import torch

from cltk.benchmark.timing import compare, measure, num_threads, percentile


def _busy(n):
    def fn():
        s = 0
        for i in range(n):
            s += i
        return s

    return fn


def test_measure_gives_ordered_positive_percentiles():
    t = measure(_busy(2000), runs=9, warmup=1)
    assert t.runs == 9 and len(t.samples) == 9
    assert 0 < t.p20 <= t.median <= t.p80
    assert t.clock == "process_cpu"


def test_the_clock_is_cpu_time_not_wall_time():
    # sleeping costs no CPU: the CPU clock must see far less than the 20 ms of wall time
    t = measure(lambda: time.sleep(0.02), runs=3, warmup=0, number=1)
    assert t.median < 0.01


def test_compare_ratios_against_the_baseline():
    res = compare({"light": _busy(2000), "heavy": _busy(40000)}, baseline="light", runs=9, warmup=1)
    assert res["light"].ratio == 1.0
    assert res["heavy"].ratio < 0.5  # 20x the work; > 2x slower even on a noisy machine


def test_compare_interleaves_providers_round_robin():
    calls = []
    provs = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    compare(provs, baseline="a", runs=3, warmup=0, number=1)
    timed = calls[-9:]
    # each run times every provider once, starting one later each time
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_a_slow_provider_is_called_warmup_plus_runs_times():
    # one call >= min_time: the last warm-up call serves as the calibration probe, no extra call
    calls = {"slow": 0, "fast": 0}

    def slow():
        calls["slow"] += 1
        _busy(200000)()

    def fast():
        calls["fast"] += 1

    res = compare({"slow": slow, "fast": fast}, baseline="slow", runs=9, warmup=1, min_time=1e-3)
    assert calls["slow"] == 1 + 9 and res["slow"].timing.runs == 9
    assert calls["fast"] > 1 + 9  # a short call is still repeated inside each sample


def test_setup_runs_before_every_timed_call():
    state = {"setups": 0, "calls": 0}

    def setup():
        state["setups"] += 1

    def fn():
        state["calls"] += 1
        assert state["setups"] == state["calls"]

    measure(fn, runs=5, warmup=2, setup=setup)
    assert state["calls"] == 7


def test_threads_are_set_and_restored():
    before = torch.get_num_threads()
    seen = []
    measure(lambda: seen.append(torch.get_num_threads()), runs=2, warmup=0, number=1)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="baseline must be one of the providers"):
        compare({"a": lambda: None}, baseline="b")
    with pytest.raises(ValueError, match="runs must be a positive int, got 0"):
        measure(lambda: None, runs=0)
    with pytest.raises(TypeError, match="provider 'a' must be callable"):
        compare({"a": 3}, baseline="a")
    with pytest.raises(ValueError, match="n must be a positive int"):
        with num_threads(0):
            pass


def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 20) == pytest.approx(1.8)
    assert percentile([10.0], 80) == 10.0
