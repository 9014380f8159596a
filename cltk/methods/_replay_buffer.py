"""A reservoir-sampling replay buffer and the config fields the replay methods share.

:class:`ReservoirBuffer` keeps a uniform random sample of fixed size of everything passed to :meth:`add`
(Vitter's algorithm R, 1985): the first ``size`` examples fill it; example ``n`` (0-based) after that replaces a
slot drawn uniformly from ``0..n`` when the draw falls inside the buffer, so after ``N`` examples every one of them
is present with probability ``size / N``. It stores ``x``, ``y``, ``t`` (the task index) and, optionally, the
logits the model gave the example when it was stored (DER++).

Distributed training. ``er``, ``agem`` and ``derpp`` keep one global buffer: every rank adds the gathered global
batch (DER++ with the gathered logits) and, with the same seed, makes the same draws, sized from the global batch,
then uses its shard of each draw (A-GEM averages the reference gradient over the ranks), so a run with W
processes equals one process with the same global batch. Every rank must therefore use the same ``seed``.
(``icarl``'s exemplars are chosen after each task from the task's whole training set, which every rank holds, so
they are the same on every rank too.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from cltk import distributed as dist
from cltk.methods._task_bn import TaskBNConfig, TaskBNStats
from cltk.methods.base import Batch, Method, MethodConfig

__all__ = ["ReservoirBuffer", "ReplaySample", "ReplayConfig", "ReservoirReplay"]


class ReplaySample(NamedTuple):
    x: Tensor                  # [n, ...] stored inputs
    y: Tensor                  # int64 [n]
    t: Tensor                  # int64 [n] task index
    logits: Optional[Tensor]   # [n, n_outputs] when the buffer stores logits, else None
    index: Tensor              # int64 [n] slots the sample came from


class ReservoirBuffer:
    """Fixed-size uniform reservoir of examples, with its own seeded ``torch.Generator`` for every draw.

    Args:
        size: the most examples it ever holds (>= 1).
        seed: seed of the generator used for replacement and sampling draws.
        store_logits: also keep a ``logits`` row per example (:meth:`add` then requires ``logits``).

    Storage is allocated on the first :meth:`add`, with the dtype and device of the tensors given there.
    """

    def __init__(self, size: int, *, seed: int = 0, store_logits: bool = False) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ReservoirBuffer: size must be an integer >= 1, got {size!r}")
        self.size = size
        self.store_logits = store_logits
        self.n_seen = 0
        self.generator = torch.Generator().manual_seed(int(seed))
        self.x: Optional[Tensor] = None
        self.y: Optional[Tensor] = None
        self.t: Optional[Tensor] = None
        self.logits: Optional[Tensor] = None

    def __len__(self) -> int:
        return min(self.n_seen, self.size)

    # ------------------------------------------------------------------------------------------------- writing
    def _allocate(self, x: Tensor, logits: Optional[Tensor]) -> None:
        self.x = torch.zeros((self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.y = torch.zeros(self.size, dtype=torch.int64, device=x.device)
        self.t = torch.zeros(self.size, dtype=torch.int64, device=x.device)
        if self.store_logits:
            assert logits is not None
            self.logits = torch.zeros((self.size, *logits.shape[1:]), dtype=logits.dtype, device=x.device)

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, t: Tensor, logits: Optional[Tensor] = None) -> None:
        """Offer a batch of examples ``x`` [B, ...], ``y`` int64 [B], ``t`` int64 [B] (and ``logits`` [B, K]) to
        the reservoir, in order. Stored copies are detached; the inputs are not modified."""
        b = int(y.shape[0])
        if x.shape[0] != b or t.shape[0] != b:
            raise ValueError(f"ReservoirBuffer.add: x, y and t must have the same length, got "
                             f"{x.shape[0]}, {b}, {t.shape[0]}")
        if self.store_logits and (logits is None or logits.shape[0] != b):
            raise ValueError("ReservoirBuffer.add: logits [B, K] are required when store_logits=True, got "
                             f"{None if logits is None else tuple(logits.shape)}")
        if b == 0:
            return
        if self.x is None:
            self._allocate(x, logits)
        elif tuple(x.shape[1:]) != tuple(self.x.shape[1:]):
            raise ValueError(f"ReservoirBuffer.add: x must be [B, {', '.join(map(str, self.x.shape[1:]))}], "
                             f"got {tuple(x.shape)}")
        # algorithm R: example number n (0-based) goes to slot n while n < size, else to slot j ~ U{0..n} if
        # j < size. One float64 draw per example past the fill phase (exact for n < 2**52).
        pos = torch.arange(self.n_seen, self.n_seen + b, dtype=torch.int64)
        fill = pos < self.size
        slots = torch.where(fill, pos, torch.full_like(pos, -1))
        n_draw = int((~fill).sum())
        if n_draw:
            u = torch.rand(n_draw, dtype=torch.float64, generator=self.generator)
            j = (u * (pos[~fill] + 1).double()).floor().to(torch.int64)
            slots[~fill] = torch.where(j < self.size, j, torch.full_like(j, -1))
        self.n_seen += b
        keep = (slots >= 0).nonzero().flatten()
        if keep.numel() == 0:
            return
        # several examples of one batch can draw the same slot: the later one overwrites, as in a sequential pass
        slot_list = slots[keep].tolist()
        last: dict[int, int] = {}
        for i, s in zip(keep.tolist(), slot_list):
            last[s] = i
        dst = torch.tensor(list(last.keys()), dtype=torch.int64, device=self.y.device)
        src = torch.tensor(list(last.values()), dtype=torch.int64, device=x.device)
        self.x[dst] = x.detach()[src].to(self.x.dtype)
        self.y[dst] = y.detach()[src].to(self.y.device)
        self.t[dst] = t.detach()[src].to(self.t.device)
        if self.store_logits:
            self.logits[dst] = logits.detach()[src].to(self.logits.dtype)

    # ------------------------------------------------------------------------------------------------- reading
    def eligible(self, before_task: Optional[int] = None) -> Tensor:
        """Slots in use (int64), optionally only those of tasks ``< before_task``."""
        idx = torch.arange(len(self), dtype=torch.int64)
        if before_task is not None and len(self):
            idx = idx[(self.t[: len(self)].cpu() < before_task)]
        return idx

    def sample(self, n: int, *, balanced: bool = False, before_task: Optional[int] = None) -> Optional[ReplaySample]:
        """Draw ``min(n, available)`` stored examples without replacement (``None`` if none is available).

        ``balanced=True``: a class-balanced draw over the classes (``y``) present: each gets ``n // C`` or
        ``n // C + 1`` examples (the extra ones go to classes drawn at random), without replacement within a class
        while it has enough examples and with replacement beyond that, so exactly ``n`` are returned.
        ``before_task``: draw only from examples of tasks ``< before_task``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"ReservoirBuffer.sample: n must be an integer >= 0, got {n!r}")
        pool = self.eligible(before_task)
        if pool.numel() == 0 or n == 0:
            return None
        g = self.generator
        if not balanced:
            pick = pool[torch.randperm(pool.numel(), generator=g)[: min(n, pool.numel())]]
        else:
            labels = self.y[pool].cpu()
            classes = labels.unique()
            c = classes.numel()
            quota = torch.full((c,), n // c, dtype=torch.int64)
            quota[torch.randperm(c, generator=g)[: n % c]] += 1
            parts = []
            for k, cls in enumerate(classes.tolist()):
                members = pool[labels == cls]
                q = int(quota[k])
                order = torch.randperm(members.numel(), generator=g)
                if q > members.numel():
                    extra = torch.randint(0, members.numel(), (q - members.numel(),), generator=g)
                    order = torch.cat([order, extra])
                parts.append(members[order[:q]])
            pick = torch.cat(parts)
            pick = pick[torch.randperm(pick.numel(), generator=g)]
        dev = self.y.device
        pick_d = pick.to(dev)
        return ReplaySample(self.x[pick_d], self.y[pick_d], self.t[pick_d],
                            self.logits[pick_d] if self.store_logits else None, pick)

    # -------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"size": self.size, "store_logits": self.store_logits, "n_seen": self.n_seen,
                "generator": self.generator.get_state(),
                "x": None if self.x is None else self.x.clone(),
                "y": None if self.y is None else self.y.clone(),
                "t": None if self.t is None else self.t.clone(),
                "logits": None if self.logits is None else self.logits.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size or bool(state["store_logits"]) != self.store_logits:
            raise ValueError(f"ReservoirBuffer.load_state_dict: state is for size={state['size']}, "
                             f"store_logits={state['store_logits']}; this buffer has size={self.size}, "
                             f"store_logits={self.store_logits}")
        self.n_seen = int(state["n_seen"])
        self.generator.set_state(state["generator"])
        for name in ("x", "y", "t", "logits"):
            v = state[name]
            setattr(self, name, None if v is None else v.clone())


@dataclass
class ReplayConfig(TaskBNConfig):
    """Fields of every reservoir-replay method.

    ``buffer_size``: examples kept in all (200, the smallest memory of Buzzega et al. 2020's split-MNIST table);
    ``replay_batch_size``: examples replayed per step (0: as many as the current minibatch, as in Chaudhry et al.
    2019's ER); ``balanced``: class-balanced replay draws instead of uniform ones; ``seed``: seed of the buffer's
    generator (the same on every distributed rank: the draws must agree); ``bn_stats="task"``: each task evaluated with
    its own BatchNorm statistics (task-IL; :mod:`cltk.methods._task_bn`).
    """

    buffer_size: int = 200
    replay_batch_size: int = 0
    balanced: bool = False
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        self.check_int("buffer_size", 1)
        self.check_int("replay_batch_size", 0)
        self.check_int("seed", 0)
        self.check_bool("balanced")

    def replay_size(self, current: int) -> int:
        return self.replay_batch_size or current


class ReservoirReplay(TaskBNStats, Method):
    """Base of the methods whose memory is a reservoir of the stream's own minibatches (ER, A-GEM, DER++): the batch
    a step's ``loss`` leaves in ``_pending`` (all ranks' batches under torch.distributed) joins ``buffer`` after the
    update, so a step never replays its own batch; the buffer is checkpointed with the method. ``store_logits``: the
    buffer also keeps the logits ``loss`` left with the batch (``_pending_logits``)."""

    buffer: ReservoirBuffer
    store_logits = False

    def __init__(self, config: Optional[MethodConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.buffer = ReservoirBuffer(self.config.buffer_size, seed=self.config.seed, store_logits=self.store_logits)
        self._pending: Optional[Batch] = None
        self._pending_logits: Optional[Tensor] = None

    def _draw(self, n: int, before_task: Optional[int] = None) -> Optional[ReplaySample]:
        """A memory draw of ``n`` (global) examples (of tasks before ``before_task`` if given); under
        torch.distributed this rank's share of it (every rank drew the same examples); ``None`` if nothing to draw."""
        mem = self.buffer.sample(n, balanced=self.config.balanced, before_task=before_task)
        if mem is None or not dist.is_distributed():
            return mem
        w = dist.world_size()
        k = (int(mem.y.shape[0]) // w) * w
        if k == 0:
            return None
        return ReplaySample(*(None if v is None else dist.shard_of(v[:k]) for v in mem))

    def after_step(self, model) -> None:
        if self._pending is not None:
            x, y, t = self._pending
            logits = self._pending_logits
            if dist.is_distributed():
                x, y, t = (dist.all_gather_cat(v) for v in (x, y, t))
                logits = None if logits is None else dist.all_gather_cat(logits)
            self.buffer.add(x, y, t, logits)
            self._pending = self._pending_logits = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
