"""Checkpoint and resume: a run killed at any point and resumed gives exactly the uninterrupted run's results.

In-process: ``cltk.run`` interrupted by an exception at several steps and resumed, for every registered method.
Real processes: ``python -m cltk run`` killed with SIGKILL from outside at seeded random delays, and from inside in
the middle of a checkpoint write and during evaluation, then resumed with ``--resume`` until it finishes; the
final ``results.json`` must equal an uninterrupted run's (accuracy matrix, random-init row, readout, metrics).
"""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch

from cltk.checkpoint import checkpoint_name, load_checkpoint
from cltk.cli import main
from cltk.loop import run
from cltk.models import build_model
from cltk.methods import available_methods
from cltk.methods.base import get_method
from cltk.methods.finetune import Finetune
from cltk.streams.builders import make_stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESS_METHODS = ["finetune", "joint", "ewc", "er", "migu", "awm"]

TIMING = ("time_s", "time_per_task_s")   # wall-clock summary entries, which differ between any two runs


def scenario_of(name):
    scenarios = available_methods()[name].scenarios
    return "class" if "class" in scenarios else scenarios[0]


def tiny_stream(scenario, seed=1):
    return make_stream("split-mnist5k", scenario, seed, n_tasks=3, classes_per_task=2, train_per_task=200,
                       test_per_task=100, image_size=14)


def same(a, b):
    """Equal numbers, NaN equal to NaN, recursively."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


class Interrupt(Exception):
    pass


def interrupted_runs(make_method, stream_fn, kill_at, directory, **kw):
    """Run with checkpoints, raising after the optimizer steps in ``kill_at`` (counted over the whole run of each
    attempt), resuming each time, until a run finishes."""
    for k in list(kill_at) + [None]:
        m = make_method()
        count = [0]
        inner = m.after_step

        def after_step(model, inner=inner, count=count, k=k):
            inner(model)
            count[0] += 1
            if count[0] == k:
                raise Interrupt()

        m.after_step = after_step
        try:
            return run(m, "mlp", stream_fn(), checkpoint_dir=directory, resume=True, **kw)
        except Interrupt:
            continue
    raise AssertionError("unreachable")


KW = dict(iters_per_task=30, batch_size=16, progress=False, seed=1)
# methods whose setup is costly by default (meta-training) run here with a small configuration
FAST = {"attention-meta": dict(meta_episodes=1, encoder_steps=5, meta_pool=40, d_model=8, n_layers=1),
        "oml": dict(meta_steps=5, meta_per_class=20), "maml-rep": dict(meta_steps=5, meta_per_class=20)}


def method(name):
    return get_method(name, **FAST.get(name, {}))


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_resume_after_interruptions_equals_uninterrupted_in_process(name, tmp_path):
    sc = scenario_of(name)
    try:   # methods built for their own model (a pretrained backbone, a text encoder) are covered in processes
        method(name).setup(build_model("mlp", tiny_stream(sc)), tiny_stream(sc))
    except (TypeError, ValueError) as e:
        pytest.skip(f"{name} does not train the MLP: {e}")
    ref = run(method(name), "mlp", tiny_stream(sc), **KW)
    # killed mid-task (7), just after a checkpoint (12), in the second and third tasks, and again after resuming
    got = interrupted_runs(lambda: method(name), lambda: tiny_stream(sc), [7, 12, 23, 41, 5], tmp_path,
                           checkpoint_every=4, **KW)
    assert same(got.R, ref.R) and same(got.b, ref.b) and same(got.readout, ref.readout)
    s, r = got.summary(), ref.summary()
    assert s.keys() == r.keys()
    assert all(same(s[k], r[k]) for k in s if k not in TIMING)
    assert len(got.task_time_s) == 3 and all(x > 0 for x in got.task_time_s)


class NoisyFinetune(Finetune):
    """finetune whose loss is scaled by draws from python ``random``, numpy and torch (not registered): resuming
    is exact only if every global RNG is restored."""

    def loss(self, model, batch):
        scale = 1.0 + random.random() + float(np.random.rand()) + float(torch.rand(()))
        return super().loss(model, batch) * scale


def test_every_global_rng_is_restored(tmp_path):
    def fresh():
        random.seed(3)
        np.random.seed(3)
        return NoisyFinetune()

    ref = run(fresh(), "mlp", tiny_stream("class"), **KW)
    got = interrupted_runs(fresh, lambda: tiny_stream("class"), [9, 33], tmp_path, checkpoint_every=3, **KW)
    assert got.R == ref.R and got.b == ref.b


def test_checkpoint_contents_and_retention(tmp_path):
    run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, checkpoint_every=7, keep_checkpoints=3,
        **KW)
    names = sorted(p.name for p in tmp_path.iterdir())
    # steps 7, 14, 21, 28 of every task, one after every task: the newest three remain
    assert names == [checkpoint_name(2, 21), checkpoint_name(2, 28), checkpoint_name(3, 0)]
    ck = load_checkpoint(tmp_path / checkpoint_name(2, 28))
    assert ck["state"]["task"] == 2 and ck["state"]["step"] == 28 and len(ck["state"]["R"]) == 2
    assert set(ck) >= {"model", "optimizer", "method", "rng", "fingerprint", "state"}
    assert set(ck["rng"]) >= {"torch", "python", "numpy"}
    assert ck["optimizer"]["state"]      # Adam moments of the task in progress
    done = load_checkpoint(tmp_path / checkpoint_name(3, 0))
    assert done["optimizer"] is None and len(done["state"]["R"]) == 3


def test_resume_of_a_finished_run_trains_nothing_and_returns_its_results(tmp_path):
    ref = run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, checkpoint_every=10, **KW)
    m = get_method("finetune")
    steps = []
    m.after_step = lambda model: steps.append(1)
    again = run(m, "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, resume=True, **KW)
    assert steps == [] and again.R == ref.R and again.b == ref.b


def test_a_fresh_run_removes_older_checkpoints(tmp_path):
    run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, checkpoint_every=10,
        **dict(KW, iters_per_task=25))
    (tmp_path / ".ckpt-000001-000000004.pt.abc.tmp").write_bytes(b"torn")
    run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, checkpoint_every=0, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(2, 0), checkpoint_name(3, 0)]


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, checkpoint_every=5, **KW)
    with pytest.raises(ValueError, match="another run"):
        run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, resume=True, **dict(KW, seed=2))
    with pytest.raises(ValueError, match="another run"):
        run(get_method("finetune", lr=0.01), "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, resume=True,
            **KW)
    with pytest.raises(ValueError, match="another run"):
        run("joint", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, resume=True, **KW)


def test_a_torn_newest_checkpoint_is_skipped(tmp_path):
    ref = run("finetune", "mlp", tiny_stream("class"), **KW)
    got = interrupted_runs(lambda: get_method("finetune"), lambda: tiny_stream("class"), [50], tmp_path,
                           checkpoint_every=4, **KW)
    assert got.R == ref.R
    # a truncated file named like the newest checkpoint (as a writer without atomic_write could leave)
    newest = sorted(tmp_path.iterdir())[-1]
    (tmp_path / checkpoint_name(5, 0)).write_bytes(newest.read_bytes()[:100])
    again = run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, resume=True, **KW)
    assert again.R == ref.R


def test_bad_checkpoint_arguments():
    s = tiny_stream("class")
    with pytest.raises(ValueError, match="checkpoint_every"):
        run("finetune", "mlp", s, checkpoint_every=-1, **KW)
    with pytest.raises(ValueError, match="keep_checkpoints"):
        run("finetune", "mlp", s, checkpoint_dir="x", keep_checkpoints=0, **KW)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        run("finetune", "mlp", s, resume=True, **KW)


# ------------------------------------------------------------------------------------------- real processes

CLI_ITERS = 40
CLI_EVERY = 3


def data_args(name):
    # awm modulates a pretrained EfficientNet-Lite0 on its own 4-task image sequence (stochastic depth off: its
# per-sample draws differ between a sharded and a whole batch); the others train an MLP
    if name == "awm":
        return ["--benchmark", "mnist5k-fmnist-halves", "--model", "efficientnet-lite0",
                "--model-arg", "drop_connect_rate=0", "--stream", "train_per_task=48",
                "--stream", "test_per_task=24"]
    return ["--benchmark", "split-mnist5k", "--stream", "n_tasks=3", "--stream", "classes_per_task=2",
            "--stream", "train_per_task=200", "--stream", "test_per_task=100", "--stream", "image_size=14"]


def cli_args(name, out):
    return ["run", "--method", name, *data_args(name), "--scenario", scenario_of(name), "--seeds", "1",
            "--iters", str(CLI_ITERS), "--batch-size", "16", "--threads", "1", "--no-progress", "--out", str(out)]


def env():
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    e.pop("CLTK_DEBUG", None)
    return e


# Runs the cltk command in this process after arranging a SIGKILL of itself: in the middle of the N-th checkpoint
# write (half the bytes are in the temporary file), or at the M-th call of the evaluation.
INJECT = r"""
import io, os, signal, sys
import torch
import cltk.checkpoint as ck
import cltk.loop as loop
where, n = sys.argv[1], int(sys.argv[2])
count = [0]
if where == "write":
    def save_checkpoint(state, path):
        count[0] += 1
        if count[0] < n:
            return ck.atomic_write(path, lambda f: torch.save(state, f))
        buf = io.BytesIO()
        torch.save(state, buf)
        def torn(f):
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return ck.atomic_write(path, torn)
    ck.save_checkpoint = save_checkpoint
else:
    evaluate_task = loop.evaluate_task
    def counted(*a, **k):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate_task(*a, **k)
    loop.evaluate_task = counted
from cltk.cli import main
sys.exit(main(sys.argv[3:]))
"""


def ckpt_files(d):
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def external_kill(args, ckdir, target, delay):
    """Start the command, wait until it has written a checkpoint named ``target`` or later (any new one when
    ``target`` is None), sleep ``delay`` s, SIGKILL it."""
    before = set(ckpt_files(ckdir))
    p = subprocess.Popen([sys.executable, "-m", "cltk", *args], env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < 120:
        new = set(ckpt_files(ckdir)) - before
        if new and (target is None or max(new) >= target):
            break
        time.sleep(0.002)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    return p.returncode


def injected_kill(args, where, n):
    p = subprocess.run([sys.executable, "-c", INJECT, where, str(n), *args], env=env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    return p.returncode


def finish(args):
    p = subprocess.run([sys.executable, "-m", "cltk", *args], env=env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def final(out):
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        r = json.load(f)["runs"][0]
    for k in TIMING:
        r["summary"].pop(k)
    return {k: r[k] for k in ("R", "b", "readout", "summary")}


@pytest.mark.parametrize("name", PROCESS_METHODS)
def test_sigkill_and_resume_equals_uninterrupted(name, tmp_path):
    if name not in available_methods():
        pytest.skip(f"method {name!r} is not registered in this checkout")
    rng = random.Random(zlib.crc32(name.encode()))
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    assert main(cli_args(name, ref_out)) == 0                 # the uninterrupted run, in this process
    args = cli_args(name, out) + ["--checkpoint-every", str(CLI_EVERY)]
    ckdir = out / "checkpoints" / f"{name}-{scenario_of(name)}-seed1"
    writes_per_task = (CLI_ITERS - 1) // CLI_EVERY + 1
    seen = []
    # 1. the first attempt, killed from outside a random while (up to 50 ms) after a random checkpoint of task 0
    target = checkpoint_name(0, CLI_EVERY * rng.randint(1, writes_per_task - 1))
    assert external_kill(args, ckdir, target, rng.uniform(0.0, 0.05)) == -signal.SIGKILL
    seen.append(ckpt_files(ckdir)[-1])
    # 2. killed in the middle of writing a checkpoint (the torn temporary file stays behind)
    assert injected_kill(args + ["--resume"], "write", rng.randint(2, writes_per_task)) == -signal.SIGKILL
    assert any(n.startswith(".ckpt-") and n.endswith(".tmp") for n in os.listdir(ckdir))
    seen.append(ckpt_files(ckdir)[-1])
    # 3. killed during an evaluation after a task
    assert injected_kill(args + ["--resume"], "eval", rng.randint(1, 2)) == -signal.SIGKILL
    seen.append(ckpt_files(ckdir)[-1])
    # 4. from outside again
    code = external_kill(args + ["--resume"], ckdir, None, rng.uniform(0.0, 0.05))
    seen.append(ckpt_files(ckdir)[-1])
    # resume until it finishes
    finish(args + ["--resume"])
    assert code == -signal.SIGKILL or seen[-1] == checkpoint_name(3, 0)
    assert len(set(seen)) >= 3, seen                            # every attempt made progress
    assert any(not n.endswith("000000000.pt") for n in seen), seen   # some resumed within a task
    files = os.listdir(ckdir)
    assert not any(n.endswith(".tmp") for n in files) and len(files) <= 2
    assert final(out) == final(ref_out)


def test_cli_checkpoint_options_need_out(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cltk", "run", "--method", "finetune", "--benchmark", "split-mnist5k",
                        "--iters", "1", "--checkpoint-every", "2"], env=env(), cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "need --out" in p.stderr


def test_a_checkpoint_measured_on_another_split_is_refused(tmp_path):
    run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, checkpoint_every=5, **KW)
    with pytest.raises(ValueError, match="another run"):
        run("finetune", "mlp", tiny_stream("class"), checkpoint_dir=tmp_path, resume=True, eval_split="val", **KW)
