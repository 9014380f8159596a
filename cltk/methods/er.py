"""Experience replay (Chaudhry et al. 2019, "On tiny episodic memories in continual learning").

Every step trains on the current minibatch concatenated with a minibatch drawn from a reservoir memory of
earlier examples; the step's own examples then enter the reservoir. Each replayed example keeps its task index,
so :meth:`Method.task_loss` applies the right output mask per scenario (its own task's units in task-IL, every
unit seen so far in class-IL).

Under ``torch.distributed`` the memory is global (see :mod:`cltk.methods._replay_buffer`): the replay minibatch
is sized from the global batch (``replay_batch_size``, when set, counts globally), drawn identically on every
rank, and each rank trains on its contiguous share; the global batch is gathered into every rank's memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cltk import distributed as dist
from cltk.methods._replay_buffer import ReplayConfig, ReservoirReplay
from cltk.methods.base import Batch, register


@dataclass
class ERConfig(ReplayConfig):
    """Reservoir ER. Chaudhry et al. replay a minibatch as large as the current one (``replay_batch_size=0``,
    their setting: 10 and 10) and study memories of 1-5 examples per class; the default ``buffer_size=200``
    follows Buzzega et al. 2020 (Mammoth, ``utils/best_args.py``: seq-mnist ER at 200, SGD lr 0.01, batch and
    replay batch 10)."""


@register
class ER(ReservoirReplay):
    name = "er"
    description = "experience replay: each minibatch plus one drawn from a reservoir memory"
    paper = "Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning (arXiv:1902.10486)"
    Config = ERConfig

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        c = self.config
        x, y, t = batch
        mem = self._draw(c.replay_size(int(y.shape[0]) * dist.world_size()))
        if mem is not None:
            mx, my, mt = mem.x, mem.y, mem.t
            x = torch.cat([x, mx.to(x.device, x.dtype)])
            y = torch.cat([y, my.to(y.device)])
            t = torch.cat([t, mt.to(t.device)])
        self._pending = batch
        loss = self.task_loss(self.forward(model, x, t), y, t)
        pen = self.penalty(model)
        return loss if pen is None else loss + pen
