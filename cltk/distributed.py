"""Data-parallel training under ``torch.distributed``: the helpers the loop and the methods use.

:func:`cltk.run` trains data-parallel when a process group is up (``torchrun --nproc_per_node N -m cltk run ...``
or ``cltk run ... --nproc N``, which calls :func:`init_from_env` in every process):

* every rank draws the same global minibatch indices (the loop's generator is seeded identically everywhere) and
  trains on its own contiguous shard ``idx[rank*B/W : (rank+1)*B/W]`` of the global batch of size ``B``;
* after ``loss.backward()`` the loop averages the gradients over the ranks with :func:`all_reduce_gradients`
  (one collective over one flat buffer) *before* ``method.after_backward``, so every hook sees the gradient of
  the global batch. The model is not wrapped in ``DistributedDataParallel``: methods call the model themselves
  (penalties, replay, masks, several forwards per step, ``model.features``, ``named_parameters``), and a plain
  module keeps all of that working unchanged;
* evaluation, metrics, checkpoints and result files are done by rank 0 only; the other ranks wait for it.

With a loss that is a mean over the minibatch plus terms that do not depend on the shard (a penalty, or a replay
term every rank computes on the same replay draw, as every rank's global torch RNG is seeded the same), the
averaged gradient equals the single-process gradient of the global batch, so the results equal one process with
the same global batch up to the rounding of the sum (fp32).

``method.loss`` receives the rank's shard of the batch. A method whose state is computed from the data a rank sees
keeps it identical on every rank with these helpers (all no-ops in a single process, so methods call them
unconditionally):

* :func:`all_reduce_mean` for an estimate averaged over the data (for example a Fisher information computed on
  each rank's part of the data);
* :func:`all_gather_cat` for what the whole global batch contributes (for example the examples a replay buffer
  stores after each step: the rank-order concatenation of the shards *is* the global batch);
* :func:`shard_of` for the rank's part of something drawn identically on every rank (for example a replay batch
  drawn for the global batch size, so that the replayed examples split over the ranks like the current ones).

Hooks that only read the parameters or the gradients (penalties, gradient masks, projections) need nothing: the
parameters and the averaged gradients are the same on every rank.

BatchNorm's running statistics are updated by each rank from its own shard during a task. The loop averages them
over the ranks (:func:`all_reduce_batchnorm_stats`) at the end of every task, before ``method.after_task`` (which may
store them, as ``bn_stats="task"`` does) and before rank 0 evaluates, and before every checkpoint within a task (so
a resumed run continues from the state the uninterrupted one has). The averaged running mean is the single-process
running mean of the global batches (the shards are equal); the averaged running variance is the mean of the
shards' variances, which leaves out the spread between the shard means. In training mode BatchNorm normalises
with each shard's own batch statistics, so a network with BatchNorm layers that train does not follow the
single-process run exactly.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

import torch
from torch import Tensor

__all__ = ["is_distributed", "rank", "world_size", "is_main", "barrier", "all_reduce_mean", "all_reduce_gradients",
           "all_reduce_batchnorm_stats", "all_gather_cat", "broadcast_object", "broadcast_module", "shard", "shard_of",
           "init_from_env", "destroy"]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one process."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that evaluates and writes files."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def all_reduce_mean(x: Tensor) -> Tensor:
    """Average ``x`` over all ranks in place (and return it); a no-op in a single process.

    For method state estimated from each rank's own data, e.g. ``self.fisher[n] = all_reduce_mean(f)``.
    """
    if is_distributed():
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
        x.div_(world_size())
    return x


def all_reduce_gradients(params: Iterable[Tensor]) -> None:
    """Average the ``.grad`` of ``params`` over all ranks with one collective over one flat buffer.

    A parameter whose gradient is ``None`` on some ranks counts as a zero gradient there; it gets a gradient when
    any rank has one (its ``.grad`` stays ``None`` only where no rank produced one).
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    dev = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float()
                      for p in params] + [has])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    w = world_size()
    offset = 0
    flags = flat[-len(params):].tolist()
    for p, flag in zip(params, flags):
        n = p.numel()
        if flag > 0:
            g = flat[offset:offset + n].view_as(p).div_(w).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


def all_reduce_batchnorm_stats(module: torch.nn.Module) -> int:
    """Average the BatchNorm running statistics of ``module`` over all ranks, in place, with one collective over one
    flat buffer: every floating-point buffer named ``running_mean`` or ``running_var`` of its submodules
    (``nn.BatchNorm*`` and :class:`cltk.nn.backbones.TaskBatchNorm2d`'s per-task sets alike). Returns the number of
    buffers averaged; 0, with nothing done, in a single process or when ``module`` has none."""
    if not is_distributed():
        return 0
    bufs = list({id(b): b for name, b in module.named_buffers()
                 if name.rsplit(".", 1)[-1] in ("running_mean", "running_var") and b.is_floating_point()}.values())
    if not bufs:
        return 0
    flat = all_reduce_mean(torch.cat([b.detach().reshape(-1).double() for b in bufs]))
    offset = 0
    with torch.no_grad():
        for b in bufs:
            n = b.numel()
            b.copy_(flat[offset:offset + n].view_as(b))
            offset += n
    return len(bufs)


def all_gather_cat(x: Tensor) -> Tensor:
    """The rank-order concatenation along dim 0 of every rank's ``x`` (equal shapes), on every rank; ``x`` itself
    in a single process. For a batch shard this is the global batch."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shard_of(x: Tensor) -> Tensor:
    """This rank's contiguous part (along dim 0) of ``x``, which every rank holds identically."""
    return x[shard(int(x.shape[0]))] if is_distributed() else x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; for small plain values)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=src)


def shard(n: int) -> slice:
    """This rank's contiguous part of a global batch of ``n`` (``n`` divisible by the world size)."""
    w = world_size()
    if n % w:
        raise ValueError(f"the global batch size {n} is not divisible by the number of processes {w}")
    k = n // w
    return slice(rank() * k, (rank() + 1) * k)


def init_from_env(device: Optional[str] = None) -> Optional[torch.device]:
    """Initialise the process group from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``, ``LOCAL_RANK``) when ``WORLD_SIZE`` > 1: gloo on the CPU, nccl on CUDA.

    Returns the device this rank uses (``cuda:LOCAL_RANK`` for a CUDA ``device``), or ``None`` when not launched
    as several processes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    dist = torch.distributed
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r}: CUDA is not available in this torch build or machine")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def destroy(wait_for_all: bool = True) -> None:
    """Tear the process group down. ``wait_for_all``: first wait until every rank gets here, so that the ranks
    leave together (a rank that leaves while another is still working, e.g. rank 0 writing the results after the
    last collective, can abort in gloo's teardown). A rank that failed passes False: the others may be blocked
    in a collective and would never reach the barrier."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        try:
            if wait_for_all:
                dist.barrier()
        finally:
            dist.destroy_process_group()
