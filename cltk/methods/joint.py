"""Joint training: every task is trained on the union of its own and all earlier tasks' data (the upper bound).

After task k the model has been trained, for ``iters_per_task`` steps, on the concatenation of the training data of
tasks 0..k, each sample keeping its own task index (so task-IL still routes each sample to its own units). This is
the "Joint" baseline of van de Ven & Tolias 2019 (there trained incrementally the same way, on all data so far).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cltk.methods.base import Method, MethodConfig, register
from cltk.streams.base import Task


@dataclass
class JointConfig(MethodConfig):
    """Adam, lr 1e-3 (van de Ven & Tolias 2019)."""


@register
class Joint(Method):
    name = "joint"
    description = "multi-task training on all tasks seen so far (the upper bound)"
    paper = "van de Ven & Tolias 2019, Three scenarios for continual learning (Joint baseline)"
    Config = JointConfig

    def training_data(self, task: Task) -> tuple[Tensor, Tensor, Tensor]:
        stream = self._need_stream()
        seen = stream.tasks[: task.index + 1]
        x = torch.cat([s.train.x for s in seen])
        y = torch.cat([s.train.y for s in seen])
        t = torch.cat([torch.full_like(s.train.y, s.index) for s in seen])
        return x, y, t
