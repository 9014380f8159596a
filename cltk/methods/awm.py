"""Adaptive Weight Modulation (AWM, arXiv 2311.15276): a frozen pretrained backbone whose every conv / linear
weight W is modulated per task by a low-resolution grid, ``W_t = W * up(M_t)``, ``up`` bicubic upsampling.

For task t only the grids M_t (``resolution`` (m1, m2), (4, 4) by default, capped at each weight's 2-D size) and
task t's linear head train; W never changes. So a task's function is fixed once it is trained: forgetting is zero by
construction (task-IL, the task id selects M_t and the head).

Mapping of a conv weight (out, in, kh, kw), depthwise (out, 1, kh, kw) included: it is modulated as its 2-D view
(out, in*kh*kw), i.e. the grid is interpolated over output channels x flattened fan-in (:mod:`cltk.ops.bicubic`).
``exclude_first`` leaves the stem conv unmodulated, ``exclude_depthwise`` the depthwise convs.

M_t is stored as the offset D_t = M_t - 1 (zeros at init) and applied as ``W + W * up(D_t)``, which equals
``W * up(M_t)`` mathematically and is exactly W at init (see :mod:`cltk.nn.modulated`).

BatchNorm (``bn_stats``, ``bn_affine``): every BatchNorm becomes a :class:`cltk.nn.backbones.TaskBatchNorm2d`.
``bn_stats="frozen"`` (default) always normalises with the pretrained statistics, in training too. ``"task"`` keeps
one set of statistics per task: batch statistics while task t trains, updating task t's running set (``bn_momentum``:
None = cumulative average, else an exponential factor), and at the end of task t (``after_task``) task t's set is
recomputed over ``bn_recalibrate`` minibatches of its training data under the final grids, stored, and used whenever
task t is evaluated; other tasks' sets are never touched. ``bn_affine="frozen"`` (default: only grids and heads
train) keeps the pretrained scale and shift; ``"task"`` trains one copy per task.
Why ``"frozen"`` is the default: on the 32x32 MNIST / Fashion-MNIST sequence (:mod:`cltk.streams.image_tasks`, 60
steps of 32, seed 0) task 0's test accuracy was 0.956 with the pretrained statistics, 0.42 with per-task running
statistics and no recalibration, and 0.74 with recalibration: at 32x32 the last stages see 1x1 / 2x2 maps, so batch
statistics over 32 images are noisy, and a row of M_t already rescales each output channel per task.

``fused`` computes every layer's W_t in one call of :func:`cltk.ops.bicubic_modulate_multi` per forward pass (one
native call per (device, dtype) instead of one per layer), written into persistent buffers when no gradient is
needed (evaluation); it gives the same bits as the per-layer path.

Optimisation: Adam; ``lr`` (1e-2) for the grids, ``head_lr`` (1e-3) for the heads. These are cltk's defaults, not
values taken from the paper (a grid has only m1*m2 entries per layer, so it gets a larger step than the heads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods._task_model import FrozenBackboneConfig, FrozenBackboneMethod
from cltk.methods.base import register
from cltk.nn.modulated import ModulatedConv2d, ModulatedLinear
from cltk.ops.bicubic import bicubic_modulate_multi
from cltk.streams.base import Stream

__all__ = ["AWM", "AWMConfig"]


class _Fusable:
    """Mixin: use the weight a :class:`_ModulationBank` precomputed for this forward pass, if there is one."""

    _w_eff: Optional[tuple[int, Tensor]] = None

    def effective_weight(self) -> Tensor:  # type: ignore[override]
        pre, self._w_eff = self._w_eff, None
        if pre is not None and pre[0] == self.task:  # type: ignore[attr-defined]
            return pre[1]
        return super().effective_weight()  # type: ignore[misc]


class AWMConv2d(_Fusable, ModulatedConv2d):
    pass


class AWMLinear(_Fusable, ModulatedLinear):
    pass


class _ModulationBank:
    """Computes W_t of every modulated layer with one multi-tensor call; persistent buffers when no grad."""

    def __init__(self, layers: list, align_corners: bool) -> None:
        self.layers = layers
        self.align_corners = align_corners
        self.buffers: Optional[list[Tensor]] = None

    def prepare(self, task: int) -> None:
        weights = [m.weight for m in self.layers]
        deltas = [m.deltas[task] for m in self.layers]
        if torch.is_grad_enabled():
            eff = bicubic_modulate_multi(weights, deltas, self.align_corners)
        else:
            if self.buffers is None or self.buffers[0].device != weights[0].device:
                self.buffers = [torch.empty_like(w) for w in weights]
            eff = bicubic_modulate_multi(weights, deltas, self.align_corners, out=self.buffers)
        for m, w, e in zip(self.layers, weights, eff):
            m._w_eff = (task, e.add_(w))


@dataclass
class AWMConfig(FrozenBackboneConfig):
    """``resolution``: grid (m1, m2) per weight (capped at the weight's 2-D size); ``fused``: one multi-tensor
    modulation call per forward pass; ``align_corners``: as in ``F.interpolate``; ``head_lr``, ``exclude_first``,
    ``exclude_depthwise``, ``bn_stats``, ``bn_affine``, ``bn_momentum``, ``bn_recalibrate``:
    :class:`cltk.methods._task_model.FrozenBackboneConfig`."""

    lr: float = 1e-2
    resolution: tuple = (4, 4)
    fused: bool = True
    align_corners: bool = False

    def validate(self) -> None:
        super().validate()
        r = self.resolution
        if (not isinstance(r, (tuple, list)) or len(r) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in r)):
            raise ValueError(f"{type(self).__name__}.resolution must be two integers >= 1 (m1, m2), got {r!r}")
        self.resolution = (int(r[0]), int(r[1]))
        self.check_bool("fused", "align_corners")


@register
class AWM(FrozenBackboneMethod):
    name = "awm"
    description = "frozen backbone, per-task low-resolution bicubic weight modulation grids and heads"
    paper = "arXiv 2311.15276"
    Config = AWMConfig
    layer_kind = "modulated"

    def layer_factories(self, num_tasks: int):
        c = self.config
        return (lambda m: AWMConv2d(m, c.resolution, num_tasks, c.align_corners),
                lambda m: AWMLinear(m, c.resolution, num_tasks, c.align_corners))

    def layer_parameters(self, task: int) -> list[Tensor]:
        return [m.deltas[task] for m in self.layers]

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(model, stream)
        c = self.config
        self.bank = _ModulationBank(self.layers, c.align_corners) if c.fused and self.layers else None
        model.before_features = self.bank.prepare if self.bank is not None else None
        return model
