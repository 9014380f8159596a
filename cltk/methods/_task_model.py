"""Helpers shared by the methods that train per-task parts of a :class:`cltk.nn.backbones.MultiHeadNet`."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from cltk.methods.base import Method, MethodConfig, build_optimizer
from cltk.nn.backbones import MultiHeadNet, TaskBatchNorm2d

__all__ = ["check_task_model", "task_optimizer", "bn_affine_parameters", "recalibrate_bn"]


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
