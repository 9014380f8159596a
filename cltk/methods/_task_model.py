"""Helpers shared by the methods that train per-task parts of a :class:`cltk.nn.backbones.MultiHeadNet`, and the
common base of the methods that convert a frozen backbone's conv / linear layers into per-task layers (AWM,
Piggyback)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from cltk.methods.base import Method, MethodConfig, build_optimizer
from cltk.nn.backbones import MultiHeadNet, TaskBatchNorm2d, convert_layers
from cltk.streams.base import Stream, Task

__all__ = ["check_task_model", "task_optimizer", "bn_affine_parameters", "recalibrate_bn", "FrozenBackboneConfig",
           "FrozenBackboneMethod"]


def check_task_model(method: Method, model: nn.Module) -> MultiHeadNet:
    if not isinstance(model, MultiHeadNet):
        raise TypeError(f"method {method.name!r} needs a cltk.nn.backbones.MultiHeadNet (a backbone with per-task "
                        f"heads, e.g. build_task_model(stream)), got {type(model).__name__}")
    return model


def bn_affine_parameters(backbone: nn.Module, task: int) -> list[Tensor]:
    """Task ``task``'s own BatchNorm scale and shift (those of :class:`TaskBatchNorm2d` with per-task affines)."""
    out: list[Tensor] = []
    for m in backbone.modules():
        if isinstance(m, TaskBatchNorm2d) and m.affine_per_task:
            out += [m.weights[task], m.biases[task]]
    return out


def task_optimizer(config: MethodConfig, allowed: Iterable[Tensor], own: list[Tensor], head: list[Tensor],
                   head_lr: Optional[float]) -> torch.optim.Optimizer:
    """An optimizer over exactly ``own`` (at ``config.lr``) and ``head`` (at ``head_lr``, default ``config.lr``),
    restricted to ``allowed`` (the parameters the loop offers)."""
    ok = {id(p) for p in allowed}
    groups = [{"params": [p for p in own if id(p) in ok], "lr": config.lr},
              {"params": [p for p in head if id(p) in ok], "lr": head_lr if head_lr is not None else config.lr}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise RuntimeError("task_optimizer: none of the task's parameters were offered to the optimizer")
    return build_optimizer(config, groups)


@torch.no_grad()
def recalibrate_bn(model: MultiHeadNet, task: int, x: Tensor, batches: int, batch_size: int = 64) -> None:
    """Recompute task ``task``'s BatchNorm statistics (every :class:`TaskBatchNorm2d` that tracks them) as the
    cumulative average over the first ``batches`` minibatches of ``x``, under the task's final weights; only the
    BatchNorm layers run in training mode (no dropout, no stochastic depth). Other tasks' statistics are untouched."""
    bns = [m for m in model.backbone.modules() if isinstance(m, TaskBatchNorm2d) and not m.frozen_stats]
    if not bns or batches < 1 or x.shape[0] == 0:
        return
    was = model.training
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.train()
        m.momentum = None
        m.num_batches_tracked[task] = 0
    try:
        for i in range(min(batches, -(-x.shape[0] // batch_size))):
            model(x[i * batch_size:(i + 1) * batch_size], task)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was)


@dataclass
class FrozenBackboneConfig(MethodConfig):
    """``head_lr``: the heads' learning rate (None: ``lr``); ``exclude_first`` / ``exclude_depthwise``: leave the stem /
    the depthwise convs unconverted; ``bn_stats``: ``"frozen"`` (the pretrained statistics, in training too) or
    ``"task"`` (per-task statistics, recalibrated at the end of each task); ``bn_affine``: ``"frozen"`` or ``"task"``
    (one scale and shift per task); ``bn_momentum``: None (cumulative average) or in (0, 1]; ``bn_recalibrate``:
    minibatches that recompute a task's statistics at its end (``bn_stats="task"``; 0: none)."""

    head_lr: Optional[float] = 1e-3
    exclude_first: bool = False
    exclude_depthwise: bool = False
    bn_stats: str = "frozen"
    bn_affine: str = "frozen"
    bn_momentum: Optional[float] = None
    bn_recalibrate: int = 16

    def validate(self) -> None:
        super().validate()
        if self.head_lr is not None:
            self.check_positive("head_lr")
        self.check_choice("bn_stats", ("task", "frozen"))
        self.check_choice("bn_affine", ("frozen", "task"))
        if self.bn_momentum is not None:
            self.check_range("bn_momentum", 0.0, 1.0, lo_open=True)
        self.check_int("bn_recalibrate", 0)
        self.check_bool("exclude_first", "exclude_depthwise")


class FrozenBackboneMethod(Method):
    """A frozen backbone whose conv / linear layers become per-task layers (``layer_factories``), every BatchNorm a
    :class:`TaskBatchNorm2d`, and one head per task (task-IL). Task t trains only ``layer_parameters(t)``, its
    BatchNorm affines (``bn_affine="task"``) and its head, so earlier tasks are untouched."""

    scenarios = ("task",)
    layer_kind = "converted"   # how load_state_dict's error names the layers

    def layer_factories(self, num_tasks: int) -> tuple[Callable[[nn.Conv2d], nn.Module], Callable[[nn.Linear], nn.Module]]:
        raise NotImplementedError

    def layer_parameters(self, task: int) -> list[Tensor]:
        raise NotImplementedError

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(check_task_model(self, model), stream)
        c = self.config
        n = len(stream.tasks)
        make_conv, make_linear = self.layer_factories(n)
        self.layer_names = convert_layers(
            model.backbone, make_conv=make_conv, make_linear=make_linear,
            make_bn=lambda m: TaskBatchNorm2d(m, n, affine_per_task=c.bn_affine == "task",
                                              frozen_stats=c.bn_stats == "frozen", momentum=c.bn_momentum),
            exclude_first=c.exclude_first, exclude_depthwise=c.exclude_depthwise)
        self.layers = [model.backbone.get_submodule(name) for name in self.layer_names]
        return model

    def _task_model(self) -> MultiHeadNet:
        model = self.model
        assert isinstance(model, MultiHeadNet)
        return model

    def own_parameters(self, task: int) -> list[Tensor]:
        """Task ``task``'s layer parameters and per-task BatchNorm affines (not its head)."""
        return self.layer_parameters(task) + bn_affine_parameters(self._task_model().backbone, task)

    def task_parameters(self, task: int) -> list[Tensor]:
        """Everything task ``task`` trains: :meth:`own_parameters` and its head."""
        return self.own_parameters(task) + list(self._task_model().heads[task].parameters())

    def added_parameters(self, task: int) -> int:
        return sum(p.numel() for p in self.task_parameters(task))

    def make_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        task = self.task.index if self.task is not None else 0
        head = list(self._task_model().heads[task].parameters())
        return task_optimizer(self.config, params, self.own_parameters(task), head, self.config.head_lr)

    def forward(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return model(x, t)

    def after_task(self, task: Task) -> None:
        if self.config.bn_stats == "task":   # store statistics that match the task's final weights
            recalibrate_bn(self._task_model(), task.index, task.train.x, self.config.bn_recalibrate)

    def state_dict(self) -> dict:
        return {"task": None if self.task is None else self.task.index, "layers": list(self.layer_names)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["layers"]) != list(self.layer_names):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved {self.layer_kind} layers differ from "
                             f"this model's ({len(state['layers'])} saved, {len(self.layer_names)} here)")
        if state["task"] is not None:
            self.task = self._need_stream().tasks[state["task"]]
