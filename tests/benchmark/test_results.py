import csv
import os

import pytest

from cltk.benchmark import results
from cltk.benchmark.results import COLUMNS, append_rows, read_rows


def _row(**over):
    row = {c: "" for c in COLUMNS}
    row.update(kernel="k", provider="p", mode="forward", shape="8x8", median_s=1.5e-3, p20_s=1e-3, p80_s=2e-3,
               runs=9, ratio=1.0, baseline="p", bytes_moved=256, threads=1)
    row.update(over)
    return row


def test_schema_has_the_issue_columns():
    for col in ("kernel", "provider", "mode", "shape", "median_s", "p20_s", "p80_s", "gbps", "pct_bandwidth",
                "peak_extra_bytes", "cpu_model", "threads", "torch_version", "commit", "timestamp"):
        assert col in COLUMNS


def test_append_creates_then_appends_in_schema_order(tmp_path):
    path = str(tmp_path / "sub" / "bench.csv")
    assert append_rows(path, [_row(provider="a")]) == 1
    assert append_rows(path, [_row(provider="b"), _row(provider="c", peak_extra_bytes=None)]) == 2
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == COLUMNS
    rows = read_rows(path)
    assert [r["provider"] for r in rows] == ["a", "b", "c"]
    assert float(rows[0]["median_s"]) == 1.5e-3
    assert rows[2]["peak_extra_bytes"] == ""
    assert sorted(os.listdir(tmp_path / "sub")) == ["bench.csv"]  # no temporary left behind


def test_bad_rows_are_refused_naming_the_columns(tmp_path):
    path = str(tmp_path / "bench.csv")
    bad = _row()
    del bad["shape"]
    with pytest.raises(ValueError, match=r"missing columns \['shape'\]"):
        append_rows(path, [bad])
    with pytest.raises(ValueError, match=r"unknown columns \['colour'\]"):
        append_rows(path, [_row(colour="red")])
    assert not os.path.exists(path)


def test_a_file_with_another_header_is_refused(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="does not match the schema"):
        append_rows(str(path), [_row()])
    assert path.read_text() == "a,b\n1,2\n"


def test_a_failed_replace_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "bench.csv")
    append_rows(path, [_row(provider="a")])
    before = open(path).read()

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        append_rows(path, [_row(provider="b")])
    assert open(path).read() == before


def test_environment_fields_describe_the_run():
    env = results.environment_fields("cpu", 1)
    assert env["threads"] == 1 and env["device"] == "cpu"
    assert env["cpu_model"] and env["torch_version"] and env["commit"] and env["timestamp"].endswith("+00:00")


def test_git_commit_is_dirty_for_source_changes_but_not_for_bench_results(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "bench" / "results" / "bench.csv").write_text("a\n")
    (tmp_path / "pkg" / "src.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    clean = results.git_commit(str(tmp_path / "pkg"))
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "bench" / "results" / "bench.csv").write_text("a\nb\n")    # what a bench run writes
    assert results.git_commit(str(tmp_path / "pkg")) == clean
    (tmp_path / "bench" / "results" / "bench.csv").write_text("a\n")
    (tmp_path / "README.md").write_text("untracked files do not count\n")
    assert results.git_commit(str(tmp_path / "pkg")) == clean
    (tmp_path / "pkg" / "src.py").write_text("x = 2\n")                    # a source change, outside the cwd too
    assert results.git_commit(str(tmp_path / "bench")) == clean + "-dirty"
