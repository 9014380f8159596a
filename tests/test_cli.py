"""The cltk command: every bad invocation is one line `cltk: error: ...` and a non-zero exit; list, env, run work."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest

import cltk as cltk_pkg
from cltk.cli import _csv_list, parse_method_spec, parse_overrides
from cltk.methods.finetune import FinetuneConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--stream", "n_tasks=2", "--stream", "classes_per_task=2", "--stream", "train_per_task=100",
        "--stream", "test_per_task=50", "--stream", "image_size=14"]


def cltk(*args, tmp_path=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("CLTK_DEBUG", None)
    if tmp_path is not None:
        env["CLTK_DATA"] = str(tmp_path)     # an empty data root: only the built-in finders succeed
    return subprocess.run([sys.executable, "-m", "cltk", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(tmp_path) if tmp_path is not None else ROOT)


RUN = ["run", "--benchmark", "split-mnist5k", "--iters", "1", "--no-progress", "--no-readout"]
BAD = {
    "no command": ([], "required"),
    "unknown command": (["frobnicate"], "invalid choice"),
    "run without a method": (["run", "--benchmark", "split-mnist5k"], "--method"),
    "unknown method": (RUN + ["--method", "nope"], "unknown method 'nope'"),
    "unknown benchmark family": (["run", "--method", "finetune", "--benchmark", "bogus"], "benchmark must match"),
    "unknown data set": (["run", "--method", "finetune", "--benchmark", "split-nosuchdata"], "unknown data set"),
    "missing data set": (["run", "--method", "finetune", "--benchmark", "split-cifar10"], "not installed"),
    "bad scenario": (RUN + ["--method", "finetune", "--scenario", "foo"], "unknown scenario 'foo'"),
    "unsupported scenario": (["compare", "--methods", "separate", "--scenarios", "class"], "does not support"),
    "run in an unsupported scenario": (["run", "--method", "icarl", "--benchmark", "split-mnist5k", "--scenario", "domain"],
                                       "does not support"),
    "--set not a number": (RUN + ["--method", "finetune", "--set", "lr=abc"], "lr=abc: expected a number"),
    "--set unknown field": (RUN + ["--method", "finetune", "--set", "lamda=1"], "lamda"),
    "--set invalid value": (RUN + ["--method", "finetune", "--set", "lr=-1"], "lr must be > 0"),
    "--set without =": (RUN + ["--method", "finetune", "--set", "lr"], "field=value"),
    "--set bad choice": (RUN + ["--method", "finetune", "--set", "optimizer=rmsprop"], "optimizer"),
    "unknown model": (RUN + ["--method", "finetune", "--model", "resnet"], "unknown model 'resnet'"),
    "bad seeds": (["compare", "--seeds", "a,b"], "--seeds"),
    "negative iters": (RUN[:3] + ["--method", "finetune", "--iters", "-3"], "--iters must be >= 0"),
    "iters not an int": (["run", "--method", "finetune", "--benchmark", "x", "--iters", "x"], "invalid int"),
    "unknown stream argument": (RUN + ["--method", "finetune", "--stream", "bogus=1"], "no argument 'bogus'"),
    "bad stream value": (RUN + ["--method", "finetune", "--stream", "n_tasks=0"], "n_tasks"),
    "zero threads": (RUN + ["--method", "finetune", "--threads", "0"], "--threads must be >= 1"),
    "domain-IL over unequal tasks": (["compare", "--methods", "finetune", "--scenarios", "task,domain", "--stream",
                                      "partition=[[0,1],[2,3,4]]"], "domain scenario needs tasks of equal size"),
    "unknown preset": (["compare", "--preset", "nope"], "unknown preset 'nope'"),
    "cuda on a cpu build": (RUN + ["--method", "finetune", "--device", "cuda"], "cuda"),
    "unknown device": (RUN + ["--method", "finetune", "--device", "tpu"], "--device 'tpu'"),
    "unknown option": (RUN + ["--method", "finetune", "--frobnicate"], "unrecognized arguments"),
    "zero processes": (RUN + ["--method", "finetune", "--nproc", "0"], "--nproc must be >= 1, got 0"),
    "negative processes": (RUN + ["--method", "finetune", "--nproc", "-2"], "--nproc must be >= 1, got -2"),
    "processes not an int": (RUN + ["--method", "finetune", "--nproc", "two"], "invalid int"),
    "zero batch size": (RUN + ["--method", "finetune", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "negative seed": (RUN + ["--method", "finetune", "--seeds", "-1"], "--seeds expects integers >= 0"),
    "fractional seed": (RUN + ["--method", "finetune", "--seeds", "0,1.5"], "--seeds expects comma-separated"),
    "empty seeds": (RUN + ["--method", "finetune", "--seeds", ""], "--seeds needs at least one"),
    "compare empty --seeds": (["compare", "--seeds", ","], "--seeds needs at least one"),
    "compare empty --methods": (["compare", "--methods", ""], "--methods needs at least one"),
    "compare empty --scenarios": (["compare", "--scenarios", ""], "--scenarios needs at least one"),
    "--out is a file": (RUN + ["--method", "finetune", "--out", "a-file"], "--out a-file: cannot create the folder"),
    "--out under a file": (RUN + ["--method", "finetune", "--out", "a-file/x"], "cannot create the folder"),
    "--out is a file with --nproc": (RUN + ["--method", "finetune", "--out", "a-file", "--nproc", "2"],
                                     "--out a-file: cannot create the folder"),
    "--set empty value": (RUN + ["--method", "finetune", "--set", "lr="], "expected a number"),
    "--set empty field": (RUN + ["--method", "finetune", "--set", "=3"], "field=value"),
    "--set field of no selected method": (RUN + ["--method", "finetune", "--set", "buffer_size=5"], "buffer_size"),
    "--stream without =": (RUN + ["--method", "finetune", "--stream", "n_tasks"], "key=value"),
    "--model-arg without =": (RUN + ["--method", "finetune", "--model-arg", "hidden"], "key=value"),
    "--model-arg unknown": (RUN + ["--method", "finetune", "--model-arg", "bogus=1"], "does not take"),
    "negative --checkpoint-every": (RUN + ["--method", "finetune", "--out", "o", "--checkpoint-every", "-1"],
                                    "--checkpoint-every must be >= 0"),
    "zero --keep-checkpoints": (RUN + ["--method", "finetune", "--out", "o", "--keep-checkpoints", "0"],
                                "--keep-checkpoints must be >= 1"),
    "--resume without --out": (RUN + ["--method", "finetune", "--resume"], "need --out"),
    "a setting the method refuses in its setup": (RUN + ["--method", "ewc", "--set", "bn_stats=task", "--scenario",
                                                         "class", "--out", "o", "--checkpoint-every", "1"],
                                                  "EWCConfig.bn_stats='task' needs the task-IL scenario"),
    "spec: unknown method": (["compare", "--methods", "finetune,nope:lr=0.1"], "method spec 'nope:lr=0.1': unknown"),
    "spec: unknown field": (["compare", "--methods", "awm:resolutoin=[8,8]"],
                            "method spec 'awm:resolutoin=[8,8]': field resolutoin: AWMConfig has no field"),
    "spec: bad value": (["compare", "--methods", "finetune:lr=fast"], "method spec 'finetune:lr=fast': field lr=fast"),
    "spec: refused value": (["compare", "--methods", "awm:resolution=[0,4]"],
                            "method spec 'awm:resolution=[0,4]': AWMConfig.resolution must be"),
    "spec: item without =": (["compare", "--methods", "awm:resolution"], "method spec 'awm:resolution'"),
    "spec: the same twice": (["compare", "--methods", "finetune:lr=0.1,finetune:lr=1e-1"], "selected twice"),
    "run with a bad spec": (RUN + ["--method", "ewc:lamda=x"], "method spec 'ewc:lamda=x'"),
    "zero --jobs": (["compare", "--methods", "finetune", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    "--eval-split unknown": (RUN + ["--method", "finetune", "--eval-split", "train"],
                             "argument --eval-split: invalid choice: 'train'"),
    "--eval-split val without a val split": (RUN + ["--method", "finetune", "--eval-split", "val", "--stream",
                                                    "val_fraction=0"],
                                             "--eval-split: eval_split='val' but split-mnist5k (task-IL) has tasks "
                                             "with an empty val split"),
    "--eval-split on bbc-cpt": (["compare", "--benchmark", "bbc-cpt", "--eval-split", "val"],
                               "--eval-split is not supported"),
    "--jobs with --nproc": (["compare", "--methods", "finetune", "--iters", "1", "--jobs", "2", "--nproc", "2"],
                            "cannot be combined with --nproc"),
}


def _skip_cuda_case(case):
    if case == "cuda on a cpu build":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_invocation_is_one_error_line(case, tmp_path, monkeypatch, capsys):
    """Every case through cltk.cli.main in this process (a process per case costs a torch import each)."""
    from cltk.cli import main
    _skip_cuda_case(case)
    args, needle = BAD[case]
    monkeypatch.setenv("CLTK_DATA", str(tmp_path))
    monkeypatch.delenv("CLTK_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    try:
        rc = main(args)
    except SystemExit as e:      # argparse errors exit from parse_args
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc not in (0, None)
    assert len(lines) == 1 and lines[0].startswith("cltk: error: "), err
    assert needle.lower() in lines[0].lower()
    assert not os.path.exists(tmp_path / "results") and not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("case", ["no command", "unknown method", "missing data set", "--set not a number",
                                  "bad scenario", "unknown stream argument", "zero processes",
                                  "--out is a file with --nproc"])
def test_bad_invocation_in_a_real_process(case, tmp_path):
    args, needle = BAD[case]
    (tmp_path / "a-file").write_text("not a folder")
    p = cltk(*args, tmp_path=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("cltk: error: "), p.stderr
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in p.stderr + p.stdout


def test_list_names_methods_benchmarks_and_presets():
    p = cltk("list")
    assert p.returncode == 0, p.stderr
    for word in ("finetune", "joint", "separate", "split-<dataset>", "seq-<d1>+<d2>", "three-scenarios", "mlp"):
        assert word in p.stdout


def test_env_reports_torch_extension_ops_and_data(tmp_path):
    import torch

    from cltk import _ext
    p = cltk("env", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"torch {torch.__version__}" in p.stdout
    assert "mnist5k        found" in p.stdout and "cifar10" in p.stdout and "missing" in p.stdout
    if _ext.available():
        assert "cltk._C: loaded" in p.stdout and "cltk::masked_adamw_" in p.stdout and "CPU yes" in p.stdout
    else:
        assert "not loaded" in p.stdout


def test_run_writes_results_and_figures(tmp_path):
    out = tmp_path / "out"
    p = cltk("run", "--method", "finetune", "--benchmark", "split-mnist5k", "--scenario", "class", "--seeds",
             "0,1", "--iters", "5", "--no-progress", "--set", "lr=0.01", "--out", str(out), *TINY, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "class-IL" in p.stdout and "finetune" in p.stdout and "±" in p.stdout
    assert sorted(os.listdir(out)) == ["acc_vs_params.png", "accuracy_matrix_finetune.png", "results.csv",
                                       "results.json", "summary.csv", "summary.png"]
    doc = json.load(open(out / "results.json"))
    assert [r["seed"] for r in doc["runs"]] == [0, 1] and doc["runs"][0]["config"]["lr"] == 0.01
    assert doc["runs"][0]["iters_per_task"] == 5 and len(doc["runs"][0]["R"]) == 2
    assert doc["summary"][0]["n_seeds"] == 2
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2
    # which cltk made the results: its version, and the commit where it runs from a git checkout
    assert re.fullmatch(re.escape(cltk_pkg.__version__) + r"(\+g[0-9a-f]{12}(\.dirty)?)?", doc["meta"]["cltk"])


def test_compare_default_folder_under_results(tmp_path):
    p = cltk("compare", "--methods", "finetune,joint", "--scenarios", "task", "--seeds", "0", "--iters", "2",
             "--name", "../tiny run", "--no-progress", "--no-readout", *TINY, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "results" / "tiny_run"          # the name is sanitised
    assert {"results.json", "accuracy_matrix_finetune.png", "accuracy_matrix_joint.png"} <= set(os.listdir(out))


def test_compare_leaves_out_unsupported_method_scenario_pairs(tmp_path):
    p = cltk("compare", "--methods", "finetune,separate", "--scenarios", "task,class", "--seeds", "0", "--iters", "2",
             "--out", str(tmp_path / "out"), "--no-progress", "--no-readout", *TINY, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "note: separate does not support class-IL" in p.stdout
    runs = json.load(open(tmp_path / "out" / "results.json"))["runs"]
    assert sorted((r["method"], r["scenario"]) for r in runs) == [("finetune", "class"), ("finetune", "task"),
                                                                    ("separate", "task")]


def test_bench_delegates_to_the_benchmark_options(capsys):
    from cltk.cli import main
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--kernel" in out and "--quick" in out and "--threads" in out


def test_parse_overrides_uses_the_field_types():
    assert parse_overrides(["lr=0.5", "optimizer=sgd", "momentum=0.9"], FinetuneConfig) == {
        "lr": 0.5, "optimizer": "sgd", "momentum": 0.9}
    with pytest.raises(ValueError, match="has no field 'nope'"):
        parse_overrides(["nope=1"], FinetuneConfig)
    with pytest.raises(ValueError, match="expected a number"):
        parse_overrides(["lr=fast"], FinetuneConfig)


def test_method_specs_parse_with_the_field_types_and_label_the_configuration():
    assert parse_method_spec("awm") == ("awm", "awm", {})
    assert parse_method_spec("awm:resolution=[8,8]") == ("awm(resolution=8x8)", "awm", {"resolution": (8, 8)})
    assert parse_method_spec("awm:resolution=16,2:lr=0.05:fused=false") == (
        "awm(resolution=16x2,lr=0.05,fused=False)", "awm", {"resolution": (16, 2), "lr": 0.05, "fused": False})
    assert parse_method_spec("ewc:lambda_=100") == ("ewc(lambda_=100.0)", "ewc", {"lambda_": 100.0})
    assert _csv_list("awm:resolution=[8,8], ewc ,awm:resolution=(2,2)", "--methods") == [
        "awm:resolution=[8,8]", "ewc", "awm:resolution=(2,2)"]
    for spec, needle in [("nope:x=1", "unknown method 'nope'"), ("awm:nope=1", "has no field 'nope'"),
                         ("awm:lr=abc", "expected a number"), ("awm:lr=-1", "lr must be > 0"),
                         ("awm:resolution=[1,2,3]", "resolution must be two integers"), ("awm:=3", "field=value")]:
        with pytest.raises(ValueError, match="method spec") as e:
            parse_method_spec(spec)
        assert needle in str(e.value) and repr(spec) in str(e.value)


def test_compare_holds_several_configurations_of_one_method(tmp_path):
    """Two finetune configurations in one run: distinct labels and configs in every result file and figure."""
    out = tmp_path / "out"
    p = cltk("compare", "--methods", "finetune,finetune:lr=0.01:optimizer=sgd", "--scenarios", "task", "--seeds",
             "0,1", "--iters", "3", "--out", str(out), "--no-progress", "--no-readout", *TINY, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    label = "finetune(lr=0.01,optimizer=sgd)"
    assert label in p.stdout and "params/task" in p.stdout and "s/task" in p.stdout
    doc = json.load(open(out / "results.json"))
    runs = {(r["method"], r["seed"]): r for r in doc["runs"]}
    assert sorted(runs) == [("finetune", 0), ("finetune", 1), (label, 0), (label, 1)]
    assert runs[(label, 0)]["config"]["lr"] == 0.01 and runs[(label, 0)]["config"]["optimizer"] == "sgd"
    assert runs[("finetune", 0)]["config"]["lr"] == 0.001 and runs[("finetune", 0)]["config"]["optimizer"] == "adam"
    assert runs[(label, 1)]["params_per_task"] == [0, 0]
    assert runs[(label, 0)]["R"] != runs[("finetune", 0)]["R"]     # a different configuration ran
    summary = {r["method"]: r for r in doc["summary"]}
    assert set(summary) == {"finetune", label} and summary[label]["n_seeds"] == 2
    assert summary[label]["params_per_task_mean"] == 0.0 and len(summary[label]["task_acc_mean"]) == 2
    assert summary[label]["time_per_task_s_mean"] > 0 and len(summary[label]["task_time_s_mean"]) == 2
    assert sorted(r["method"] for r in csv.DictReader(open(out / "results.csv"))) == [
        "finetune", "finetune", label, label]
    rows = {r["method"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"finetune", label} and float(rows[label]["params_per_task_mean"]) == 0.0
    assert float(rows[label]["task1_acc_mean"]) == pytest.approx(summary[label]["task_acc_mean"][1], abs=1e-6)
    files = set(os.listdir(out))
    assert {"accuracy_matrix_finetune.png", "accuracy_matrix_finetune_lr_0.01_optimizer_sgd.png",
            "acc_vs_params.png"} <= files


def test_compare_jobs_runs_in_parallel_processes_with_the_results_of_one(tmp_path):
    """--jobs 2 (two spawned processes) writes the same runs, in the same order, as one process, and resumes from
    the checkpoints its processes wrote; a run failing inside a process stops the comparison with one error line."""
    def argv(iters):
        return ["compare", "--methods", "finetune,er", "--scenarios", "task,class", "--seeds", "0,1", "--iters",
                str(iters), "--no-progress", *TINY]

    args = argv(5)

    def runs(out):
        return [(r["method"], r["scenario"], r["seed"], r["R"], r["b"], r["readout"])
                for r in json.load(open(out / "results.json"))["runs"]]

    p = cltk(*args, "--out", str(tmp_path / "one"), tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    par = ["--jobs", "2", "--out", str(tmp_path / "two"), "--checkpoint-every", "2"]
    p = cltk(*args, *par, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "[8/8]" in p.stdout
    one = runs(tmp_path / "one")
    assert [k[:3] for k in one] == [(m, sc, s) for sc in ("task", "class") for s in (0, 1) for m in ("finetune", "er")]
    assert runs(tmp_path / "two") == one
    p = cltk(*args, *par, "--resume", tmp_path=tmp_path)       # every run is read back from its last checkpoint
    assert p.returncode == 0, p.stderr
    assert runs(tmp_path / "two") == one
    bad = cltk(*argv(6), *par, "--resume", tmp_path=tmp_path)   # the checkpoints are of 5-iteration runs
    assert bad.returncode == 2 and bad.stderr.startswith("cltk: error:"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
