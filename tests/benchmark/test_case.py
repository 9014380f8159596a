import argparse
import os
import subprocess
import textwrap

import pytest

import cltk.benchmark as bench
from cltk.benchmark.case import Case, discover, find_bench_dir, load_cases
from cltk.benchmark.memory import case_peak_extra_bytes, case_peaks_extra_bytes, peak_extra_bytes
from cltk.benchmark.results import read_rows

TOY = textwrap.dedent('''
    import torch
    from cltk.benchmark import Case

    N = 1 << 22  # 16 MiB of fp32

    def build():
        x = torch.rand(N)
        out = torch.empty(N)
        return {
            "alloc": lambda: (x * 2.0).sum(),           # allocates a temporary the size of x
            "inplace": lambda: torch.mul(x, 2.0, out=out),  # writes into preallocated memory
        }

    def cases(quick):
        # bytes: read x (4 N) and write N floats (4 N)
        return [Case(kernel="toy", mode="forward", shape=f"{N}", bytes_moved=8 * N,
                     providers=("alloc", "inplace"), baseline="alloc", build=build, runs=3, warmup=1,
                     memory=not quick)]
''')


@pytest.fixture
def toy_bench(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    (d / "bench_toy.py").write_text(TOY)
    (d / "helper.py").write_text("x = 1\n")  # not a bench file
    return d


def test_discovery_finds_bench_files_only(toy_bench):
    assert discover(str(toy_bench)) == {"toy": str(toy_bench / "bench_toy.py")}
    with pytest.raises(ValueError, match=r"--kernel must be one of \['toy'\], got 'nope'"):
        discover(str(toy_bench), "nope")
    cases = load_cases(str(toy_bench / "bench_toy.py"), quick=True)
    assert [c.id for c in cases] == ["toy/forward/4194304"]


def test_missing_bench_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bench/ folder next to the cltk package"):
        find_bench_dir(str(tmp_path))


def test_the_repository_bench_dir_is_found():
    assert os.path.isfile(os.path.join(find_bench_dir(), "bench_bandwidth.py"))


def test_case_validation_names_the_field():
    ok = dict(kernel="k", mode="forward", shape="s", bytes_moved=0, providers=("a",), baseline="a",
              build=lambda: {"a": lambda: None})
    Case(**ok)
    with pytest.raises(ValueError, match="Case.mode must be one of"):
        Case(**{**ok, "mode": "sideways"})
    with pytest.raises(ValueError, match=r"Case.baseline must be one of the providers \('a',\), got 'b'"):
        Case(**{**ok, "baseline": "b"})
    with pytest.raises(ValueError, match="Case.bytes_moved must be a non-negative int, got -1"):
        Case(**{**ok, "bytes_moved": -1})
    with pytest.raises(ValueError, match="Case.bandwidth must be one of"):
        Case(**{**ok, "bandwidth": "hbm"})
    c = Case(**{**ok, "build": lambda: {"b": lambda: None}})
    with pytest.raises(ValueError, match=r"build\(\) must return a dict with keys \['a'\], got \['b'\]"):
        c.build_checked()


def test_peak_extra_memory_sees_a_temporary_and_not_an_out_write(toy_bench):
    path = str(toy_bench / "bench_toy.py")
    alloc = case_peak_extra_bytes(path, "toy/forward/4194304", "alloc")
    inplace = case_peak_extra_bytes(path, "toy/forward/4194304", "inplace")
    # the 16 MiB temporary, within the slack of the kernel's per-CPU RSS counters (a few hundred KiB)
    assert alloc >= 15 * 2**20
    assert inplace < 1 * 2**20


def test_batched_peaks_match_one_process_per_provider(toy_bench):
    path = str(toy_bench / "bench_toy.py")
    both = case_peaks_extra_bytes(path, "toy/forward/4194304", ["alloc", "inplace"])
    assert set(both) == {"alloc", "inplace"}
    separate = case_peak_extra_bytes(path, "toy/forward/4194304", "alloc")
    assert abs(both["alloc"] - separate) < 2**20  # same 16 MiB temporary, within the RSS counters' slack
    assert both["inplace"] < 1 * 2**20
    # the order does not matter: the first provider's temporary is gone before the second is measured
    rev = case_peaks_extra_bytes(path, "toy/forward/4194304", ["inplace", "alloc"])
    assert rev["inplace"] < 1 * 2**20 and abs(rev["alloc"] - separate) < 2**20


def test_peak_extra_bytes_needs_a_spec():
    with pytest.raises(TypeError, match="spec must be a CallableSpec"):
        peak_extra_bytes(("torch", "ones"))


def test_main_runs_a_bench_and_appends_rows(toy_bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "find_bench_dir", lambda: str(toy_bench))
    monkeypatch.setattr(bench, "machine_bandwidth", lambda **kw: bench.measure_bandwidth(2**20, runs=2, warmup=0))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--kernel", "toy", "--out", str(out), "--quick"])
    assert bench.main(args) == 0
    assert bench.main(args) == 0
    rows = read_rows(str(out / "bench.csv"))
    assert [r["provider"] for r in rows] == ["alloc", "inplace", "alloc", "inplace"]
    assert float(rows[0]["ratio"]) == 1.0 and float(rows[1]["gbps"]) > 0 and float(rows[1]["pct_bandwidth"]) > 0
    assert rows[0]["peak_extra_bytes"] == ""  # quick: the toy case turns memory off
    assert (out / "bench_ratios.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "toy  forward  4194304" in text and "machine bandwidth" in text


def test_gpu_script_is_valid_bash_and_needs_an_out_dir():
    script = os.path.join(find_bench_dir(), "gpu.sh")
    subprocess.run(["bash", "-n", script], check=True)
    proc = subprocess.run(["bash", script], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: bench/gpu.sh OUT_DIR" in proc.stderr
