"""cltk's MIGU optimizers under FSDP2 (``torch.distributed.fsdp.fully_shard``), 2 gloo processes on the CPU.

A small MLP (odd widths, so that the row shards are uneven: 21 rows split 11 + 10, 9 rows 5 + 4) is trained on real
MNIST-5k with every ``nn.Linear`` and the root sharded by ``fully_shard``; its parameters and gradients are DTensors
sharded on dim 0 (rows). The magnitudes come from the full (unsharded) layer outputs of each rank's batch shard and
are summed over the ranks, so every rank computes the same row masks, equal to one process's on the global batch;
each rank applies them to its own rows. The result must equal one process (no FSDP) with the same global batch:
the masks of every step exactly, the final weights within fp32 rounding.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cltk.distributed import destroy
from cltk.optim import MIGU, MIGUAdamW
from cltk.streams.builders import make_stream

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2)", allow_module_level=True)

STEPS, BATCH = 8, 16
KINDS = ["migu", "miguadamw"]    # MIGU(torch.optim.AdamW), and MIGUAdamW's fused masked step on the local shards


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    task = make_stream("split-mnist5k", "class", 0, n_tasks=2, classes_per_task=2, train_per_task=200,
                       test_per_task=20, image_size=7).tasks[0]
    return task.train.x.reshape(len(task.train.y), -1), task.train.y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(49, 21), nn.ReLU(), nn.Linear(21, 9), nn.ReLU(), nn.Linear(9, 4))


def _optimizer(kind, model):
    kw = dict(lr=1e-2, weight_decay=1e-2)
    if kind == "migu":
        return MIGU(torch.optim.AdamW(model.parameters(), **kw), model, threshold=0.6, mask_bias=True)
    return MIGUAdamW(model.parameters(), **kw, model=model, threshold=0.6, mask_bias=True)


def _train(kind, model, shard):
    x, y = _data()
    opt = _optimizer(kind, model)
    g = torch.Generator().manual_seed(1)
    masks = []
    for _ in range(STEPS):
        idx = torch.randint(0, len(y), (BATCH,), generator=g)[shard]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
        masks.append([m.clone() for m in opt.last_masks])
    opt.close()
    return masks


def _worker(rank, port, out):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")
    ok = False
    try:
        torch.set_num_threads(1)
        for kind in KINDS:
            model = _model()
            for m in model:
                if isinstance(m, nn.Linear):
                    fully_shard(m)
            fully_shard(model)
            w = model[0].weight
            assert isinstance(w, DTensor) and w.to_local().shape[0] == (11 if rank == 0 else 10)
            masks = _train(kind, model, slice(rank * BATCH // 2, (rank + 1) * BATCH // 2))
            full = {k: v.full_tensor() for k, v in model.state_dict().items()}
            torch.save({"masks": masks, "weights": full}, os.path.join(out, f"{kind}-{rank}.pt"))
        ok = True
    finally:   # a failed rank does not wait at the barrier: the other may be blocked in a collective
        destroy(wait_for_all=ok)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp2_two_processes_equal_one(kind, two_processes):
    model = _model()
    want_masks = _train(kind, model, slice(None))
    want = model.state_dict()
    assert sum(int((~m).sum()) for step in want_masks for m in step) > 0      # the masks do mask rows
    for r in (0, 1):
        got = torch.load(two_processes / f"{kind}-{r}.pt")
        for s, (a, b) in enumerate(zip(got["masks"], want_masks)):
            assert all(torch.equal(x, y) for x, y in zip(a, b)), f"rank {r}: the masks of step {s} differ"
        for k in want:
            torch.testing.assert_close(got["weights"][k], want[k], rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"rank {r} {k}: {m}")
