"""Atomic writes and safe checkpoint loading."""
import os
import pickle

import pytest
import torch

from cltk.checkpoint import (CheckpointError, atomic_write, atomic_write_text, checkpoint_name, latest_checkpoint,
                             load_checkpoint, save_checkpoint)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_round_trip_of_plain_state(tmp_path):
    state = {"model": {"w": torch.randn(3, 4)}, "step": 7, "rng": torch.get_rng_state(), "R": [[0.5, 0.25]],
             "name": "ewc"}
    p = save_checkpoint(state, tmp_path / "c.pt")
    got = load_checkpoint(p)
    assert torch.equal(got["model"]["w"], state["model"]["w"]) and got["step"] == 7 and got["R"] == [[0.5, 0.25]]
    assert torch.equal(got["rng"], state["rng"])


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "ckpt-000000-000000001.pt"
    torch.save({"x": _Evil()}, p)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="refusing to load .* not a plain-data checkpoint"):
        load_checkpoint(p)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not (tmp_path / "pwned").exists()
    assert latest_checkpoint(tmp_path) is None   # skipped, never loaded


def test_crash_mid_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, '{"ok": 1}')

    def torn(f):
        f.write(b'{"partial"')
        raise KeyboardInterrupt   # the writer dies mid-file

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, torn)
    assert target.read_text() == '{"ok": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]   # no temporary left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_of_a_new_file(tmp_path, umask):
    """Results, checkpoints and figures are readable as any file the user creates (0666 less the umask), not left
    at the temporary file's 0600."""
    from cltk.plots import plot_acc_vs_params
    from cltk.results import RunResult

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        save_checkpoint({"step": 1}, tmp_path / checkpoint_name(0, 1))
        run = RunResult(method="m", benchmark="b", scenario="task", seed=0, model="mlp", iters_per_task=1,
                        batch_size=1, R=[[0.5]], b=[0.1], params_per_task=[10])
        plot_acc_vs_params([run], str(tmp_path))
    finally:
        os.umask(old)
    names = ["results.json", checkpoint_name(0, 1), "acc_vs_params.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for name in names:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("{}")
    target.chmod(0o640)
    atomic_write_text(target, '{"ok": 1}')
    assert target.read_text() == '{"ok": 1}' and target.stat().st_mode & 0o777 == 0o640


def test_latest_checkpoint_skips_a_truncated_file(tmp_path):
    save_checkpoint({"step": 1}, tmp_path / checkpoint_name(0, 1))
    save_checkpoint({"step": 2}, tmp_path / checkpoint_name(0, 2))
    good = (tmp_path / checkpoint_name(0, 2)).read_bytes()
    (tmp_path / checkpoint_name(1, 0)).write_bytes(good[: len(good) // 2])
    path, state = latest_checkpoint(tmp_path)
    assert path.name == checkpoint_name(0, 2) and state["step"] == 2
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / checkpoint_name(1, 0))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    assert latest_checkpoint(tmp_path / "nodir") is None
