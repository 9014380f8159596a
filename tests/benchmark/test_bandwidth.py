import json

import pytest

from cltk.benchmark.bandwidth import KINDS, machine_bandwidth, measure_bandwidth, save


def test_bandwidth_is_positive_on_a_small_size(tmp_path):
    bw = measure_bandwidth(4 * 2**20, runs=3, warmup=1)
    for kind in KINDS:
        assert bw.get(kind) > 0.1  # GB/s; any machine moves 4 MiB faster than 0.1 GB/s
    assert bw.array_bytes == 4 * 2**20 and bw.threads == 1 and bw.cpu_model
    path = tmp_path / "bw.json"
    save(bw, str(path))
    assert json.loads(path.read_text())["read"] == bw.read


def test_machine_bandwidth_is_measured_once_per_process():
    a = machine_bandwidth(2**20)
    assert machine_bandwidth(2**20) is a


def test_bad_input():
    with pytest.raises(ValueError, match="array_bytes must be an int >= 4"):
        measure_bandwidth(0)
    bw = measure_bandwidth(2**16, runs=1, warmup=0)
    with pytest.raises(ValueError, match="bandwidth kind must be one of"):
        bw.get("write")
