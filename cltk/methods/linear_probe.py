"""Linear probe: a frozen pretrained backbone (its pretrained BatchNorm statistics, always in inference mode) and
one linear head per task, trained on that task only. Zero forgetting in task-IL by construction; the reference point
for what per-task modulation (AWM) or masks (Piggyback) add on top of the features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from cltk.methods._task_model import check_task_model, task_optimizer
from cltk.methods.base import Method, MethodConfig, register
from cltk.nn.backbones import MultiHeadNet
from cltk.streams.base import Stream

__all__ = ["LinearProbe", "LinearProbeConfig"]


@dataclass
class LinearProbeConfig(MethodConfig):
    """Adam, lr 1e-3 for the heads."""


@register
class LinearProbe(Method):
    name = "linear-probe"
    description = "frozen pretrained backbone, one trained linear head per task"
    paper = "-"
    scenarios = ("task",)
    Config = LinearProbeConfig

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(check_task_model(self, model), stream)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return model

    def make_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        task = self.task.index if self.task is not None else 0
        model = self.model
        assert isinstance(model, MultiHeadNet)
        return task_optimizer(self.config, params, [], list(model.heads[task].parameters()), None)

    def added_parameters(self, task: int) -> int:
        """Task ``task``'s linear head."""
        model = self.model
        assert isinstance(model, MultiHeadNet)
        return sum(p.numel() for p in model.heads[task].parameters())

    def forward(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        assert isinstance(model, MultiHeadNet)
        model.backbone.eval()   # the loop's model.train() must not switch BatchNorm to batch statistics
        return model(x, t)
