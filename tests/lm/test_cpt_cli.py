"""``cltk compare --benchmark bbc-cpt`` end to end with tiny sizes."""
import json

import numpy as np

from cltk.cli import main

TINY = ["--iters", "2", "--batch-size", "2", "--stream", "pretrain_steps=2", "--stream", "n_domains=3",
        "--stream", "max_heldout_blocks=4", "--model-arg", "d_model=32", "--model-arg", "n_layer=1",
        "--model-arg", "n_head=2", "--threads", "1"]


def test_compare_bbc_cpt_writes_results_and_heatmaps(tmp_path, capsys):
    out = tmp_path / "cpt"
    rc = main(["compare", "--benchmark", "bbc-cpt", "--methods", "vanilla,migu", "--seeds", "0,1",
               "--out", str(out), *TINY])
    assert rc == 0
    text = capsys.readouterr().out
    assert "avg ppl" in text and "BWT_ppl" in text and "vanilla" in text and "migu" in text
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["runs"]) == 4 and doc["settings"]["steps"] == 2
    for r in doc["runs"]:
        assert np.asarray(r["P"]).shape == (3, 3)
    assert [s["method"] for s in doc["summary"]] == ["vanilla", "migu"]
    assert (out / "results.csv").read_text().count("\n") == 5
    assert (out / "ppl_matrix_vanilla.png").stat().st_size > 1000
    assert len(list((out / "pretrain").glob("*.pt"))) == 2


def test_compare_bbc_cpt_rejects_bad_options(tmp_path, capsys):
    assert main(["compare", "--benchmark", "bbc-cpt", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown CPT method 'nope'" in capsys.readouterr().err
    assert main(["compare", "--benchmark", "bbc-cpt", "--stream", "bogus=1", "--out", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["compare", "--benchmark", "bbc-cpt", "--methods", "migu", "--set", "threshold=2",
                 "--out", str(tmp_path), *TINY]) == 2
    assert "threshold" in capsys.readouterr().err


def test_merge_of_per_seed_processes(tmp_path, capsys):
    from cltk.lm.cpt import merge_cpt_results
    for s in (0, 1):
        assert main(["compare", "--benchmark", "bbc-cpt", "--methods", "vanilla", "--seeds", str(s),
                     "--out", str(tmp_path / f"s{s}"), *TINY]) == 0
    runs = merge_cpt_results([str(tmp_path / "s0"), str(tmp_path / "s1")], str(tmp_path / "all"))
    doc = json.loads((tmp_path / "all" / "results.json").read_text())
    assert [r["seed"] for r in doc["runs"]] == [0, 1] == [r["seed"] for r in runs]
    assert doc["summary"][0]["n_seeds"] == 2 and doc["meta"]["processes"] == 2 and doc["meta"]["cpu_s"] > 0
