"""Experience replay (Chaudhry et al. 2019, "On tiny episodic memories in continual learning").

Every step trains on the current minibatch concatenated with a minibatch drawn from a reservoir memory of
earlier examples; the step's own examples then enter the reservoir. Each replayed example keeps its task index,
so :meth:`Method.task_loss` applies the right output mask per scenario (its own task's units in task-IL, every
unit seen so far in class-IL).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods._replay_buffer import ReplayConfig, ReservoirBuffer
from cltk.methods.base import Batch, Method, register
from cltk.streams.base import Stream


@dataclass
class ERConfig(ReplayConfig):
    """Reservoir ER. Chaudhry et al. replay a minibatch as large as the current one (``replay_batch_size=0``,
    their setting: 10 and 10) and study memories of 1-5 examples per class; the default ``buffer_size=200``
    follows Buzzega et al. 2020 (Mammoth, ``utils/best_args.py``: seq-mnist ER at 200, SGD lr 0.01, batch and
    replay batch 10)."""


@register
class ER(Method):
    name = "er"
    description = "experience replay: each minibatch plus one drawn from a reservoir memory"
    paper = "Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning (arXiv:1902.10486)"
    Config = ERConfig

    def __init__(self, config: Optional[ERConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.buffer = ReservoirBuffer(self.config.buffer_size, seed=self.config.seed)
        self._pending: Optional[Batch] = None

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        c = self.config
        x, y, t = batch
        mem = self.buffer.sample(c.replay_size(int(y.shape[0])), balanced=c.balanced)
        if mem is not None:
            x = torch.cat([x, mem.x.to(x.device, x.dtype)])
            y = torch.cat([y, mem.y.to(y.device)])
            t = torch.cat([t, mem.t.to(t.device)])
        self._pending = batch
        loss = self.task_loss(self.forward(model, x, t), y, t)
        pen = self.penalty(model)
        return loss if pen is None else loss + pen

    def after_step(self, model: nn.Module) -> None:
        # the step's examples join the memory after the update, so a step never replays its own batch
        if self._pending is not None:
            self.buffer.add(*self._pending)
            self._pending = None

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
