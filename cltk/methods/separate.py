"""Separate networks: one independent copy of the model per task, each trained only on its own task.

:meth:`Separate.setup` wraps the model into :class:`PerTaskModels`, which holds a deep copy per task (all starting
from the same initialisation) and routes every sample to the copy of its task index. Each task's optimizer holds
only that task's copy, so nothing is shared and nothing is forgotten.

Task-IL only: routing needs the task identity of each test sample, which domain-IL and class-IL do not give;
:meth:`setup` raises ``ValueError`` for them. Memory and compute grow linearly with the number of tasks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from cltk.methods.base import Method, MethodConfig, register
from cltk.streams.base import Stream


class PerTaskModels(nn.Module):
    """``n_tasks`` deep copies of ``model``; ``forward(x, t)`` runs sample b through copy ``t[b]``."""

    features_take_task = True

    def __init__(self, model: nn.Module, n_tasks: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList(copy.deepcopy(model) for _ in range(n_tasks))
        if not callable(getattr(model, "features", None)):
            self.features = None     # the copies have no features (e.g. MultiHeadNet): no readout either

    def _route(self, fn: str, x: Tensor, t: Tensor) -> Tensor:
        if t.shape != (x.shape[0],):
            raise ValueError(f"PerTaskModels: t must be int64 [B] with B = {x.shape[0]}, got {tuple(t.shape)}")
        out = None
        for k in torch.unique(t).tolist():
            if not 0 <= k < len(self.nets):
                raise ValueError(f"PerTaskModels: task index {k} out of range [0, {len(self.nets)})")
            sel = (t == k).nonzero(as_tuple=True)[0]
            net = self.nets[k]
            y = getattr(net, fn)(x[sel]) if fn != "forward" else net(x[sel])
            if out is None:
                out = y.new_zeros((x.shape[0],) + tuple(y.shape[1:]))
            out[sel] = y
        if out is None:  # empty batch
            y = self.nets[0](x) if fn == "forward" else getattr(self.nets[0], fn)(x)
            return y
        return out

    def forward(self, x: Tensor, t: Tensor) -> Tensor:  # type: ignore[override]
        return self._route("forward", x, t)

    def features(self, x: Tensor, t: Tensor) -> Tensor:
        return self._route("features", x, t)


@dataclass
class SeparateConfig(MethodConfig):
    """Adam, lr 1e-3 (van de Ven & Tolias 2019 use the same optimizer for every baseline)."""


@register
class Separate(Method):
    name = "separate"
    description = "one independent network per task, routed by task id (task-IL only; no forgetting)"
    paper = "-"
    scenarios = ("task",)
    Config = SeparateConfig

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        if stream.scenario not in self.scenarios:
            raise ValueError(f"method 'separate' needs the task id at test time and supports only the task "
                             f"scenario, got {stream.scenario!r}")
        wrapped = PerTaskModels(model, len(stream.tasks))
        return super().setup(wrapped, stream)

    def make_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        # only the current task's copy: the others must not move (weight decay would shrink them otherwise)
        if self.task is None or not isinstance(self.model, PerTaskModels):
            raise RuntimeError("method 'separate': make_optimizer is called after setup() and before_task()")
        return super().make_optimizer(self.model.nets[self.task.index].parameters())

    def added_parameters(self, task: int) -> int:
        """One full copy of the network. For a multi-head network (:class:`cltk.nn.backbones.MultiHeadNet`): its
        backbone without the unused ImageNet ``classifier`` and task ``task``'s head (the copy's other heads are
        never used)."""
        if not isinstance(self.model, PerTaskModels):
            raise RuntimeError("method 'separate': added_parameters is called after setup()")
        net = self.model.nets[task]
        heads = getattr(net, "heads", None)
        if isinstance(heads, nn.ModuleList) and hasattr(net, "backbone"):
            unused = getattr(net.backbone, "classifier", None)
            skip = {id(p) for p in unused.parameters()} if isinstance(unused, nn.Module) else set()
            return (sum(p.numel() for p in net.backbone.parameters() if id(p) not in skip)
                    + sum(p.numel() for p in heads[task].parameters()))
        return sum(p.numel() for p in net.parameters())

    def forward(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return model(x, t)
