"""Data-parallel training: 2 gloo processes on the CPU give the results of 1 process with the same global batch.

The helpers of :mod:`cltk.distributed` are checked in a real 2-process gloo group (gradient averaging with a
parameter that has a gradient on one rank only, the mean of a method state, batch shards), and whole runs of
``cltk run --nproc 2`` and ``torchrun --nproc_per_node 2 -m cltk run`` are compared with ``cltk run`` in one
process: the same accuracy matrix and the same final weights up to fp32 rounding.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from cltk import distributed as dist
from cltk.checkpoint import checkpoint_name, load_checkpoint
from cltk.methods import available_methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["finetune", "ewc", "mas", "er", "agem", "derpp", "migu", "awm"]
N_TASKS = 3


def test_single_process_helpers_are_identities():
    assert not dist.is_distributed() and dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
    x = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_mean(x) is x and x.tolist() == [1.0, 2.0]
    assert dist.shard(6) == slice(0, 6)
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.all_gather_cat(x) is x and dist.shard_of(x) is x
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(3.0)
    assert dist.all_reduce_batchnorm_stats(bn) == 0 and bn.running_mean.tolist() == [3.0, 3.0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _helpers_worker(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_from_env("cpu")
    try:
        torch.manual_seed(0)
        lin, extra = torch.nn.Linear(4, 3), torch.nn.Parameter(torch.ones(2))
        x = torch.randn(8, 4)
        part = x[dist.shard(8)]
        loss = lin(part).square().mean()
        if rank == 1:
            loss = loss + extra.sum() * 3.0        # a gradient on rank 1 only
        loss.backward()
        dist.all_reduce_gradients([lin.weight, lin.bias, extra])
        state = dist.all_reduce_mean(torch.full((2,), float(rank + 1)))
        gathered = dist.all_gather_cat(part)
        mine = dist.shard_of(torch.arange(6))
        bns = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4, track_running_stats=False))
        bns(part)                                  # training mode: this rank's shard moves its running statistics
        n_bn = dist.all_reduce_batchnorm_stats(bns)
        torch.save({"gathered": gathered, "mine": mine, "w": lin.weight.grad, "b": lin.bias.grad,
                    "extra": extra.grad, "state": state, "n_bn": n_bn, "bn": bns[0].state_dict(),
                    "shard": (dist.shard(8).start, dist.shard(8).stop)}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy()


def test_helpers_in_two_gloo_processes(tmp_path):
    mp.spawn(_helpers_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    lin(x).square().mean().backward()
    for r in (0, 1):
        got = torch.load(tmp_path / f"{r}.pt")
        assert got["shard"] == (4 * r, 4 * r + 4)
        torch.testing.assert_close(got["w"], lin.weight.grad)
        torch.testing.assert_close(got["b"], lin.bias.grad)
        torch.testing.assert_close(got["extra"], torch.full((2,), 1.5))   # 3 on one rank of two
        assert got["state"].tolist() == [1.5, 1.5]
        assert torch.equal(got["gathered"], x)            # the shards in rank order are the global batch
        assert got["mine"].tolist() == [3 * r, 3 * r + 1, 3 * r + 2]
        assert got["n_bn"] == 2                           # running_mean and running_var of the tracking layer
        shards = [torch.nn.BatchNorm1d(4) for _ in range(2)]
        for k, bn in enumerate(shards):
            bn(x[4 * k:4 * k + 4])
        for key in ("running_mean", "running_var"):      # the mean of the two ranks' statistics
            torch.testing.assert_close(got["bn"][key], (shards[0].state_dict()[key] + shards[1].state_dict()[key]) / 2)
        whole = torch.nn.BatchNorm1d(4)
        whole(x)                                          # the running mean equals one process's on the global batch
        torch.testing.assert_close(got["bn"]["running_mean"], whole.running_mean)
        assert got["bn"]["num_batches_tracked"].item() == 1


def test_shard_needs_a_divisible_batch(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    assert dist.shard(6) == slice(3, 6)
    with pytest.raises(ValueError, match="not divisible by the number of processes 2"):
        dist.shard(5)


def env():
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for k in ("CLTK_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def scenario_of(name):
    scenarios = available_methods()[name].scenarios
    return "class" if "class" in scenarios else scenarios[0]


# awm modulates a pretrained EfficientNet-Lite0 on its own 4-task image sequence (stochastic depth off: its
# per-sample draws differ between a sharded and a whole batch); the others train an MLP. One step per task: a task's
# forward uses only its own grids and head, untouched before its step, so both runs take that step from the same
# weights and differ only in the rounding of the gradient's sums (grids within 6e-9). From the second step on the
# frozen ReLU6 network is not smooth at that scale: a ReLU6 input within fp32 rounding of a kink flips, and the grids
# move by up to 2e-5 (with 2 steps per task in task 1, with 4 in task 3, with 6 in task 2; docs/distributed_resume.md)
AWM_TASKS = 4


def n_tasks(name):
    return AWM_TASKS if name == "awm" else N_TASKS


def data_args(name):
    if name == "awm":
        return ["--benchmark", "mnist5k-fmnist-halves", "--model", "efficientnet-lite0",
                "--model-arg", "drop_connect_rate=0", "--iters", "1",
                "--stream", "train_per_task=48", "--stream", "test_per_task=24"]
    return ["--benchmark", "split-mnist5k", "--iters", "30", "--stream", f"n_tasks={N_TASKS}",
            "--stream", "classes_per_task=2", "--stream", "train_per_task=200", "--stream", "test_per_task=100",
            "--stream", "image_size=14"]


def cli_args(name, out):
    # --checkpoint-every beyond the task length: only the after-task checkpoints, whose last holds the final model.
    # Plain SGD: a sum in another order changes fp32 rounding, and Adam's m / sqrt(v) amplifies that in coordinates
    # whose gradient is near zero; SGD keeps the two runs' weights within rounding of each other.
    # (EWC's default lambda of 1e7 is tuned for Adam; with SGD it needs a strength SGD can take.)
    extra = ["--set", "lambda_=100"] if name == "ewc" else []
    if name == "mas":                  # an odd sample count: the ranks' shares differ (2 and 1)
        extra = ["--set", "samples=3", "--set", "lambda_=100"]
    if name in ("agem", "derpp"):      # replay from the second step on, and a replay draw divisible by 2
        extra += ["--set", "replay_batch_size=8"]
    return ["run", *extra, "--set", "optimizer=sgd", "--set", "lr=0.01", "--method", name, *data_args(name),
            "--scenario", scenario_of(name), "--seeds", "1",
            "--batch-size", "16", "--threads", "1", "--no-progress", "--out", str(out), "--checkpoint-every", "1000"]


def launch(cmd):
    p = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def outcome(name, out):
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        r = json.load(f)["runs"][0]
    ck = load_checkpoint(os.path.join(out, "checkpoints", f"{name}-{scenario_of(name)}-seed1",
                                      checkpoint_name(n_tasks(name), 0)))
    return r, ck["model"]


def compare(name, one, two):
    r1, m1 = outcome(name, one)
    r2, m2 = outcome(name, two)
    for k in m1:      # the same weights up to the rounding of a sum in another order (fp32)
        torch.testing.assert_close(m2[k], m1[k], rtol=1e-4, atol=1e-5, msg=lambda s: f"{name} {k}: {s}")
    assert r2["R"] == r1["R"] and r2["b"] == r1["b"]
    s1, s2 = r1["summary"], r2["summary"]
    assert all(s1[k] == s2[k] for k in ("acc", "bwt", "fwt", "forgetting"))


@pytest.mark.parametrize("name", METHODS)
def test_two_gloo_processes_equal_one(name, tmp_path):
    if name not in available_methods():
        pytest.skip(f"method {name!r} is not registered in this checkout")
    launch([sys.executable, "-m", "cltk", *cli_args(name, tmp_path / "one")])
    p = launch([sys.executable, "-m", "cltk", *cli_args(name, tmp_path / "two"), "--nproc", "2"])
    assert p.stdout.count(f"{scenario_of(name)}-IL {name} seed 1: ACC") == 1     # rank 0 alone reports
    with open(tmp_path / "two" / "results.json", encoding="utf-8") as f:
        assert json.load(f)["meta"]["processes"] == 2
    compare(name, tmp_path / "one", tmp_path / "two")


def bn_finetune_args(out, iters=1, checkpoint_every=1000):
    """Fine-tuning EfficientNet-Lite0 (BatchNorm layers that train) with per-task BatchNorm statistics."""
    args = data_args("awm")
    args[args.index("--iters") + 1] = str(iters)
    return ["run", "--method", "finetune", "--set", "bn_stats=task", "--set", "optimizer=sgd", "--set", "lr=0.01",
            *args, "--scenario", "task", "--seeds", "1", "--batch-size", "16", "--threads", "1", "--no-progress",
            "--out", str(out), "--checkpoint-every", str(checkpoint_every), "--keep-checkpoints", "100"]


def test_two_processes_average_batchnorm_statistics(tmp_path):
    """One step per task: each rank's BatchNorm layers see half of the batch. Task 0's stored running mean of the
    stem's BatchNorm (whose input is the same in both runs) equals the single-process one only when the ranks'
    statistics are averaged before they are stored."""
    launch([sys.executable, "-m", "cltk", *bn_finetune_args(tmp_path / "one")])
    launch([sys.executable, "-m", "cltk", *bn_finetune_args(tmp_path / "two"), "--nproc", "2"])
    stem = []
    for out in ("one", "two"):
        ck = load_checkpoint(os.path.join(tmp_path, out, "checkpoints", "finetune-task-seed1",
                                          checkpoint_name(AWM_TASKS, 0)))
        stem.append(ck["method"]["task_bn"][0][0])     # task 0's set, first buffer: the stem BatchNorm's mean
    # Averaged: within 7e-6 of one process (convolutions and means over batches of 8 and 16 round differently;
    # values up to 1.4). Rank 0's own statistics, not averaged: up to 9e-3 off.
    torch.testing.assert_close(stem[1], stem[0], rtol=0, atol=1e-4)


def test_two_processes_resumed_within_a_task_keep_batchnorm_statistics(tmp_path):
    """Two steps per task, a checkpoint after every step, two processes. Resumed from the checkpoint after task 0's
    first step, both ranks load rank 0's file; the run equals the uninterrupted one exactly only because the ranks'
    BatchNorm statistics are averaged before every checkpoint (otherwise rank 1 continues from its own in one run
    and from rank 0's in the other, and the statistics stored at the task's end differ)."""
    import shutil

    ref = tmp_path / "ref"
    launch([sys.executable, "-m", "cltk", *bn_finetune_args(ref, iters=2, checkpoint_every=1), "--nproc", "2"])
    cut = tmp_path / "cut"
    ckdir = cut / "checkpoints" / "finetune-task-seed1"
    ckdir.mkdir(parents=True)
    first = checkpoint_name(0, 1)
    shutil.copy(ref / "checkpoints" / "finetune-task-seed1" / first, ckdir / first)
    launch([sys.executable, "-m", "cltk", *bn_finetune_args(cut, iters=2, checkpoint_every=1), "--nproc", "2",
            "--resume"])
    final = checkpoint_name(AWM_TASKS, 0)
    a = load_checkpoint(ref / "checkpoints" / "finetune-task-seed1" / final)
    b = load_checkpoint(ckdir / final)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for task, stored in a["method"]["task_bn"].items():
        assert all(torch.equal(x, y) for x, y in zip(stored, b["method"]["task_bn"][task])), task
    with open(ref / "results.json", encoding="utf-8") as f, open(cut / "results.json", encoding="utf-8") as g:
        ra, rb = json.load(f)["runs"][0], json.load(g)["runs"][0]
    assert ra["R"] == rb["R"]


def test_torchrun_equals_one_process(tmp_path):
    launch([sys.executable, "-m", "cltk", *cli_args("finetune", tmp_path / "one")])
    launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(_free_port()), "-m", "cltk", *cli_args("finetune", tmp_path / "two")])
    compare("finetune", tmp_path / "one", tmp_path / "two")


def test_a_batch_not_divisible_by_the_processes_is_refused(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cltk", *cli_args("finetune", tmp_path), "--batch-size", "15",
                        "--nproc", "2"], env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "--batch-size 15 must be divisible by the number of processes 2" in p.stderr


def test_two_processes_killed_and_resumed_equal_uninterrupted(tmp_path):
    import signal
    import time

    args = cli_args("finetune", tmp_path / "x")[:-2] + ["--checkpoint-every", "3", "--nproc", "2"]
    with_out = lambda out: [a if a != str(tmp_path / "x") else str(out) for a in args]   # noqa: E731
    launch([sys.executable, "-m", "cltk", *with_out(tmp_path / "ref")])
    ckdir = tmp_path / "killed" / "checkpoints" / "finetune-class-seed1"
    p = subprocess.Popen([sys.executable, "-m", "cltk", *with_out(tmp_path / "killed")], env=env(), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    while not (ckdir.is_dir() and any(ckdir.iterdir())) and p.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    time.sleep(0.02)                             # soon after: the whole run takes seconds on an idle machine
    os.killpg(p.pid, signal.SIGKILL)             # the launcher and both ranks
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    left = sorted(f.name for f in ckdir.iterdir() if f.name.endswith(".pt"))
    assert left and left[-1] != checkpoint_name(N_TASKS, 0)
    launch([sys.executable, "-m", "cltk", *with_out(tmp_path / "killed"), "--resume"])
    runs = []
    for out in ("ref", "killed"):
        with open(tmp_path / out / "results.json", encoding="utf-8") as f:
            r = json.load(f)["runs"][0]
        runs.append((r["R"], r["b"], r["readout"]))
    assert runs[0] == runs[1]
