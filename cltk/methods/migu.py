"""MIGU as a method: magnitude-based gradient updating (Du et al. 2024, arXiv 2406.17245).

Each task's optimizer is wrapped in :class:`cltk.optim.MIGU`: the L1 magnitude of every ``nn.Linear`` output is
cached per output feature during the forward pass, and each step updates only the weight rows whose magnitude
is at or above the layer's ``threshold`` quantile (T = 0.7 keeps the top 30%). No task labels and no replay.

As in the reference implementation the first task is trained unmasked (``mask_first_task=False``) and biases
are not masked (``mask_bias=False``); both are options. The output layer (the model's last ``nn.Linear``) is
not masked by default (``mask_head=False``): its rows are the classes, and in multi-head and class-incremental
settings the rows of classes not in the current batch carry the largest magnitudes without any gradient, so
masking by magnitude would freeze the current task's own class rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from cltk.methods._task_bn import TaskBNConfig, TaskBNStats
from cltk.methods.base import Method, register
from cltk.optim.migu import MIGU as MIGUOptimizer


@dataclass
class MIGUConfig(TaskBNConfig):
    """``threshold``: a step updates the weight rows at or above this quantile of the layer's cached output
    magnitudes (0.7: the top 30%); ``mask_bias``, ``mask_first_task``, ``mask_head``: also mask the biases, the
    first task, the output layer;
    ``bn_stats="task"``: each task evaluated with its own BatchNorm statistics (task-IL; :mod:`cltk.methods._task_bn`)."""

    threshold: float = 0.7
    mask_bias: bool = False
    mask_first_task: bool = False
    mask_head: bool = False

    def validate(self) -> None:
        super().validate()
        self.check_range("threshold", 0.0, 1.0, hi_open=True)
        self.check_bool("mask_bias", "mask_first_task", "mask_head")


@register
class MIGU(TaskBNStats, Method):
    name = "migu"
    description = "MIGU: update only the weight rows with the largest cached output magnitudes"
    paper = "Du et al. 2024, arXiv 2406.17245"
    Config = MIGUConfig

    def __init__(self, config: Optional[MIGUConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.optimizer: Optional[MIGUOptimizer] = None

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            self.optimizer.close()   # the previous task's hooks
        c = self.config
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        masked = nn.ModuleList(linears if c.mask_head or len(linears) < 2 else linears[:-1])
        self.optimizer = MIGUOptimizer(optimizer, masked, threshold=c.threshold, mask_bias=c.mask_bias,
                                       mask_first_task=c.mask_first_task)
        for _ in range(self.task.index + 1 if self.task is not None else 1):
            self.optimizer.begin_task()
        return self.optimizer

    def after_task(self, task) -> None:
        super().after_task(task)   # TaskBNStats: this task's BatchNorm statistics
        if self.optimizer is not None:
            self.optimizer.close()
            self.optimizer = None
