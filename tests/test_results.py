"""results.json / results.csv: atomic writes, strict JSON, round trip, aggregation; figures and safe names."""
import csv
import json
import math
import os

import pytest

from cltk.plots import plot_all
from cltk.results import CSV_COLUMNS, RunResult, aggregate, atomic_write, read_json, safe_name, write_csv, write_json


def _run(method="finetune", scenario="class", seed=0, last=(0.5, 0.9)):
    nan = float("nan")
    return RunResult(method=method, benchmark="split-mnist5k", scenario=scenario, seed=seed, model="mlp",
                     iters_per_task=10, batch_size=128, R=[[1.0, 0.0], list(last)], b=[0.5, 0.0],
                     readout=[[0.99, nan], [0.97, 0.98]], task_time_s=[1.0, 2.0], task_peak_rss_mb=[3.0, 1.0],
                     task_peak_cuda_mb=[0.0, 0.0], config={"lr": 0.001}, task_names=["a", "b"])


def test_summary_of_a_run():
    s = _run().summary()
    assert s["acc"] == pytest.approx(0.7) and s["bwt"] == pytest.approx(-0.5) and s["fwt"] == pytest.approx(0.0)
    assert s["forgetting"] == pytest.approx(0.5) and s["readout"] == pytest.approx(0.975) and s["time_s"] == 3.0


def test_json_is_strict_and_round_trips(tmp_path):
    runs = [_run(seed=0), _run(seed=1, last=(0.3, 0.9))]
    path = write_json(str(tmp_path / "results.json"), runs, {"preset": "x"})
    text = open(path).read()
    assert "NaN" not in text
    doc = json.loads(text)
    assert doc["runs"][0]["readout"][0][1] is None and doc["meta"] == {"preset": "x"}
    meta, back = read_json(path)
    assert [r.summary() == pytest.approx(o.summary()) for r, o in zip(back, runs)] == [True, True]
    assert math.isnan(back[0].readout[0][1])


def test_aggregate_mean_and_sample_std_over_seeds():
    rows = aggregate([_run(seed=0, last=(0.5, 0.9)), _run(seed=1, last=(0.3, 0.9)), _run("joint")])
    ft = next(r for r in rows if r["method"] == "finetune")
    assert ft["n_seeds"] == 2
    assert ft["acc_mean"] == pytest.approx(0.65) and ft["acc_std"] == pytest.approx(math.sqrt(0.005))
    jt = next(r for r in rows if r["method"] == "joint")
    assert jt["n_seeds"] == 1 and jt["acc_std"] == 0.0


def test_csv_one_row_per_run(tmp_path):
    path = write_csv(str(tmp_path / "results.csv"), [_run(seed=0), _run("joint", seed=1)])
    rows = list(csv.DictReader(open(path)))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert rows[1]["method"] == "joint" and float(rows[0]["acc"]) == pytest.approx(0.7)
    assert float(rows[0]["peak_rss_mb"]) == 3.0


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    atomic_write(str(p), "one")
    atomic_write(str(p), b"two")
    assert p.read_text() == "two" and os.listdir(p.parent) == ["f.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.json"
    atomic_write(str(p), "old")
    with pytest.raises(TypeError):
        atomic_write(str(p), 3)   # not str or bytes
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


@pytest.mark.parametrize("name,expected", [("finetune", "finetune"), ("../../etc/passwd", "etc_passwd"),
                                           ("a b/c", "a_b_c"), ("..", "_"), ("", "_"), ("ewc+si", "ewc+si")])
def test_safe_name(name, expected):
    assert safe_name(name) == expected


def test_figures_are_written_with_safe_names(tmp_path):
    runs = [_run(), _run(scenario="task"), _run("../evil")]
    paths = plot_all(runs, str(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert names == ["accuracy_matrix_evil.png", "accuracy_matrix_finetune.png", "summary.png"]
    for p in paths:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
