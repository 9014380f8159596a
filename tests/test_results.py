"""results.json / results.csv: atomic writes, strict JSON, round trip, aggregation; figures and safe names."""
import csv
import json
import math
import os

import pytest

from cltk.plots import plot_all
from cltk.results import (CSV_COLUMNS, RunResult, aggregate, atomic_write, read_folders, read_json, safe_name,
                          write_csv, write_folder, write_json, write_summary_csv)


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


def test_folders_of_one_comparison_merge_in_order(tmp_path):
    a, b = str(tmp_path / "seeds01"), str(tmp_path / "seed2") + os.sep
    write_folder(a, [_run(seed=0), _run(seed=1, last=(0.3, 0.9))], {"preset": "x"})
    written = write_folder(b, [_run("joint", seed=2)], {"preset": "y"})
    assert sorted(os.path.basename(p) for p in written) == ["results.csv", "results.json", "summary.csv"]
    meta, runs = read_folders([a, b])
    assert meta == {"preset": "x", "merged_from": ["seeds01", "seed2"]}
    assert [(r.method, r.seed) for r in runs] == [("finetune", 0), ("finetune", 1), ("joint", 2)]
    assert runs[1].R == [[1.0, 0.0], [0.3, 0.9]]
    with pytest.raises(ValueError, match="dirs"):
        read_folders([])


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


def test_time_and_parameters_per_task_in_summary_aggregate_and_csv(tmp_path):
    a, b = _run(seed=0, last=(0.5, 0.9)), _run(seed=1, last=(0.3, 0.7))
    a.params_per_task, b.params_per_task = [10, 30], [10, 30]
    b.task_time_s = [3.0, 5.0]
    assert a.summary()["time_per_task_s"] == 1.5 and a.summary()["params_per_task"] == 20.0
    row = aggregate([a, b])[0]
    assert row["time_per_task_s_mean"] == pytest.approx(2.75) and row["params_per_task_mean"] == 20.0
    assert row["task_acc_mean"] == pytest.approx([0.4, 0.8]) and row["task_acc_std"] == pytest.approx(
        [math.sqrt(0.02), math.sqrt(0.02)])
    assert row["task_time_s_mean"] == [2.0, 3.5] and row["task_params_mean"] == [10.0, 30.0]
    rows = list(csv.DictReader(open(write_csv(str(tmp_path / "results.csv"), [a, b]))))
    assert float(rows[1]["time_per_task_s"]) == 4.0 and float(rows[0]["params_per_task"]) == 20.0
    srows = list(csv.DictReader(open(write_summary_csv(str(tmp_path / "summary.csv"), [a, b, _run("joint")]))))
    assert [r["method"] for r in srows] == ["finetune", "joint"]
    assert float(srows[0]["task1_acc_mean"]) == pytest.approx(0.8) and float(srows[0]["task0_time_s_mean"]) == 2.0
    assert srows[1]["params_per_task_mean"] == ""          # not recorded: empty, not 0


def test_unknown_parameters_are_nan_and_old_results_still_read(tmp_path):
    r = _run()
    r.params_per_task = [5, None]
    assert "params_per_task" not in r.summary() and math.isnan(aggregate([r])[0]["params_per_task_mean"])
    d = _run().to_dict()
    del d["params_per_task"]                                # a results.json written before the field existed
    back = RunResult.from_dict(d)
    assert back.params_per_task == [] and "params_per_task" not in back.summary()


def test_accuracy_vs_parameters_figure_only_with_recorded_parameters(tmp_path):
    from cltk.plots import plot_acc_vs_params
    assert plot_acc_vs_params([_run(scenario="task")], str(tmp_path)) is None and os.listdir(tmp_path) == []
    runs = []
    for label, params, acc in [("awm(resolution=2x2)", 6601, 0.8), ("awm", 7189, 0.85), ("linear-probe", 6405, 0.7),
                               ("finetune", 0, 0.5)]:
        r = _run(label, scenario="task", last=(acc, acc))
        r.params_per_task = [params, params]
        runs.append(r)
    paths = plot_all(runs, str(tmp_path))
    assert paths[-1] == str(tmp_path / "acc_vs_params.png")
    head = open(paths[-1], "rb").read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    # the awm sweep (two settings) gets a zoomed second panel; without a sweep the figure is one panel wide
    os.makedirs(tmp_path / "single")
    single = plot_acc_vs_params(runs[1:], str(tmp_path / "single"))
    widths = [int.from_bytes(open(p, "rb").read(24)[16:20], "big") for p in (paths[-1], single)]
    assert widths[0] > 1.5 * widths[1]       # tight bounding boxes: 1180 against 675 pixels


def test_eval_split_is_recorded_and_never_aggregated_across_splits(tmp_path):
    import dataclasses
    val = dataclasses.replace(_run(seed=1), eval_split="val")
    rows = list(csv.DictReader(open(write_csv(str(tmp_path / "results.csv"), [_run(seed=0), val]))))
    assert [r["eval_split"] for r in rows] == ["test", "val"]
    assert RunResult.from_dict(val.to_dict()).eval_split == "val"
    old = _run().to_dict()
    del old["eval_split"]                       # results written before the split was recorded
    assert RunResult.from_dict(old).eval_split == "test"
    with pytest.raises(ValueError, match=r"finetune on split-mnist5k \(class-IL\).*different splits \(test, val\)"):
        aggregate([_run(seed=0), val])


def test_figure_labels_name_a_setting_missing_from_older_runs_by_its_default():
    from cltk.plots import _member_labels
    old, new = _run("ewc"), _run("ewc(bn_stats=task)")
    old.config, new.config = {"lambda_": 1e8}, {"lambda_": 1e8, "bn_stats": "task"}   # old: recorded before the field
    assert _member_labels(["ewc", "ewc(bn_stats=task)"], [old, new]) == {"ewc": "bn_stats=shared",
                                                                         "ewc(bn_stats=task)": "bn_stats=task"}
